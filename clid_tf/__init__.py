"""clid_tf: CLID-MU (label-free meta-learning for noisy labels) in TensorFlow/Keras 3.

The Python API, for your own Keras model and data:

    import clid_tf, keras
    model = clid_tf.MetaReweightModel(my_keras_classifier, clid_tf.WeightNet(),
                                      meta_objective="clid")
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), keras.optimizers.Adam(1e-3))
    model.fit(x, y, epochs=30, callbacks=[clid_tf.WarmUp(5), clid_tf.ClidSelection()])

The names below are imported on first use, so `import clid_tf` (and the command line
before it has checked its input) does not start TensorFlow.
"""

import importlib

__version__ = "0.2.0"

_EXPORTS = {
    "MetaReweightModel": "clid_tf.meta_model",
    "DivideMixModel": "clid_tf.dividemix_model",
    "FixMatchModel": "clid_tf.fixmatch",
    "WeightNet": "clid_tf.meta_nets",
    "VRINet": "clid_tf.vri",
    "WarmUp": "clid_tf.callbacks",
    "NonFiniteGuard": "clid_tf.callbacks",
    "RunState": "clid_tf.callbacks",
    "ClidSelection": "clid_tf.selection",
    "find_label_issues": "clid_tf.label_issues",
    "as_classifier": "clid_tf.backbones",
    "export_saved_model": "clid_tf.export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'clid_tf' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])
