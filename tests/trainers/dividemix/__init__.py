"""Tests of clid_tf.trainers.dividemix."""
