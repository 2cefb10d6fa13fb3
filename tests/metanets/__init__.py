"""Tests of clid_tf.metanets."""
