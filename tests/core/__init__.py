"""Tests of clid_tf.core."""
