"""Tests of clid_tf.data."""
