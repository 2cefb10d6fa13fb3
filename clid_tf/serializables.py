"""Registers clid_tf's Keras classes with Keras' serialization, without importing
TensorFlow at `import clid_tf`.

`keras.models.load_model("m.keras")` finds a saved `MetaReweightModel`, `WeightNet` or
`DenseLogits` by its registered name ('clid_tf>...') only if the module defining it has
run. `import clid_tf` must stay cheap (the command line checks its flags before
TensorFlow starts), so it calls `register_when_keras_loads()`: with Keras already imported
the modules below are imported at once (about 0.1 s); otherwise a one-shot import hook
imports them right after Keras itself finishes importing. Either way, once both
`clid_tf` and `keras` are imported, every class below is registered.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import pkgutil
import sys
import warnings

# The modules whose import registers a Keras-serializable class (the meta-nets and the
# layers the backbones and `as_classifier` use); each trainer package's `model.py` (its
# Keras model) is found by `modules()`.
MODULES: tuple[str, ...] = (
    "clid_tf.models.backbones",
    "clid_tf.models.resnets",
    "clid_tf.models.user_models",
    "clid_tf.metanets.wnet",
    "clid_tf.metanets.vri",
)
_TRAINERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trainers")


def modules() -> list[str]:
    """MODULES and the `model` module of every trainer package that has one."""
    packages = [p.name for p in pkgutil.iter_modules([_TRAINERS]) if p.ispkg]
    return [*MODULES, *(f"clid_tf.trainers.{name}.model" for name in sorted(packages)
                        if os.path.isfile(os.path.join(_TRAINERS, name, "model.py")))]


def register() -> None:
    """Imports every module of `modules()` (each registers its classes when it runs)."""
    for name in modules():
        importlib.import_module(name)


def _register_quietly() -> None:
    # A failure here must not break the user's `import keras`; loading a saved clid_tf
    # model would then fail with Keras' own "Could not locate class" message.
    try:
        register()
    except Exception as error:  # pylint: disable=broad-except
        warnings.warn(f"clid_tf could not register its Keras classes: {error}")


class _AfterKerasImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; when `keras` is about to be imported it lets the normal
    finders locate it and wraps its loader so that `register()` runs after Keras' own
    module code. Removes itself at that first import."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        _uninstall()
        spec = importlib.util.find_spec("keras")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _register_quietly()

        spec.loader.exec_module = exec_module
        return spec


_HOOK = _AfterKerasImport()


def _uninstall() -> None:
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


def register_when_keras_loads() -> None:
    """Registers now if Keras is loaded, else as soon as it is (see module docstring)."""
    if "keras" in sys.modules:
        _register_quietly()
    elif _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)
