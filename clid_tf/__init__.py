"""clid_tf: CLID-MU (label-free meta-learning for noisy labels) in TensorFlow/Keras 3.

The Python API, for your own Keras model and data:

    import clid_tf, keras
    model = clid_tf.MetaReweightModel(my_keras_classifier, clid_tf.WeightNet(),
                                      meta_objective="clid")
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), keras.optimizers.Adam(1e-3))
    model.fit(x, y, epochs=30, callbacks=[clid_tf.WarmUp(5), clid_tf.ClidSelection()])

The names below are imported on first use, so `import clid_tf` (and the command line
before it has checked its input) does not start TensorFlow. The Keras classes are
registered for `keras.models.load_model` as soon as Keras is imported
(`clid_tf.serializables`).
"""

import importlib

from clid_tf import serializables as _serializables

__version__ = "0.2.0"

_EXPORTS = {
    "MetaReweightModel": "clid_tf.trainers.meta.model",
    "DivideMixModel": "clid_tf.trainers.dividemix.model",
    "FixMatchModel": "clid_tf.trainers.fixmatch.model",
    "WeightNet": "clid_tf.metanets.wnet",
    "VRINet": "clid_tf.metanets.vri",
    "WarmUp": "clid_tf.runs.callbacks",
    "NonFiniteGuard": "clid_tf.runs.callbacks",
    "RunState": "clid_tf.runs.callbacks",
    "ClidSelection": "clid_tf.evaluation.selection",
    "find_label_issues": "clid_tf.evaluation.label_issues",
    "rank_label_issues": "clid_tf.evaluation.label_issues",
    "LabelIssues": "clid_tf.evaluation.label_issues",
    "plot_label_issues": "clid_tf.evaluation.audit_sheet",
    "as_classifier": "clid_tf.models.user_models",
    "export_saved_model": "clid_tf.runs.export",
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


_serializables.register_when_keras_loads()
