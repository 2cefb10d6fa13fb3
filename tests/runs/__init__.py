"""Tests of clid_tf.runs."""
