"""Tests of clid_tf.evaluation."""
