"""clid_tf: CLID-MU (label-free meta-learning for noisy labels) in TensorFlow/Keras 3."""

__version__ = "0.1.0"
