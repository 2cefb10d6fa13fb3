"""What the trainers' Keras models share: the checks of their meta-learning settings, a
`compile` with one optimizer per network and one per meta-net, the checkpoint parts, the
inference-mode `test_step` and the monitoring of meta weights on clean and noisy labels.

`MetaReweightModel` (one network), `DivideMixModel` (two) and `FixMatchModel` (one, plus
its EMA copy) subclass `TrainerModel`; each says which networks it trains with which
meta-nets (`networks`), which network(s) it predicts with (`predicting`), and keeps its
own `train_step`.
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Callable, Sequence

import keras
import tensorflow as tf

from clid_tf.core import lookahead
from clid_tf.core import objectives
from clid_tf.core import virtual
from clid_tf.data import user_data
from clid_tf.data.inputs import to_model
from clid_tf.models import user_models


def meta_objective_of(meta_objective: str | Callable[..., tf.Tensor], *, tau: float,
                      name: str | None = None) -> tuple[Callable[..., tf.Tensor], str]:
    """(fn(features [n, d], logits [n, K], labels [n] or None) -> scalar, the name logged
    as `meta_<name>`): a named objective of `objectives.meta_objective` or a function."""
    if isinstance(meta_objective, dict):  # a saved function (objective_config)
        meta_objective = keras.saving.deserialize_keras_object(meta_objective)
    if isinstance(meta_objective, str):
        return objectives.meta_objective(meta_objective, tau=tau), name or meta_objective
    given = getattr(meta_objective, "__name__", "objective")
    return meta_objective, name or ("objective" if given == "<lambda>" else given)


def objective_config(meta_objective) -> str | dict | None:
    """What get_config saves of the `meta_objective` argument: its name, or a function
    serialized by Keras (it loads if the function is registered with
    `keras.saving.register_keras_serializable`)."""
    if meta_objective is None or isinstance(meta_objective, (str, dict)):
        return meta_objective
    return keras.saving.serialize_keras_object(meta_objective)


def objective_labels(meta_objective) -> str:
    """What the named objective reads of the meta batch ('none', 'noisy' or 'clean';
    `objectives.META_OBJECTIVE_LABELS`); a user's function gets no labels."""
    if isinstance(meta_objective, str):
        return objectives.META_OBJECTIVE_LABELS.get(meta_objective, "none")
    return "none"


def check_virtual_step(virtual_step: str) -> None:
    """ValueError unless `virtual_step` is one of `lookahead.VIRTUAL_STEPS`."""
    if virtual_step not in lookahead.VIRTUAL_STEPS:
        raise ValueError(f"unknown virtual step {virtual_step!r}; choose from "
                         f"{lookahead.VIRTUAL_STEPS}")


def size_meta_net(meta_net, backbone: keras.Model) -> None:
    """Sizes a meta-net that is sized by the data (VRI: features and classes) for
    `backbone`; a meta-net without `build_for` is left as it is."""
    if meta_net is not None and hasattr(meta_net, "build_for"):
        meta_net.build_for(feature_dim=backbone.feature_dim,
                           num_classes=user_models.num_classes_of(backbone))


def check_meta_net(meta_net, what: str = "meta_net") -> None:
    """ValueError (one line) unless `meta_net` is None or a meta-net instance."""
    if meta_net is None:
        return
    if isinstance(meta_net, type):
        raise ValueError(f"{what} must be a meta-net instance, e.g. {meta_net.__name__}(), "
                         f"not the class {meta_net.__name__}")
    if not callable(getattr(meta_net, "weighted_loss", None)):
        raise ValueError(f"{what} must be a meta-net (clid_tf.WeightNet(), clid_tf.VRINet() "
                         f"or one with weighted_loss), got {type(meta_net).__name__}")


def takes_arguments(meta_net, *names: str) -> list[str]:
    """The `names` that the meta-net's `weighted_loss` does not take (none when it takes
    **kwargs)."""
    parameters = inspect.signature(meta_net.weighted_loss).parameters
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return []
    return [name for name in names if name not in parameters]


def check_takes_sample_weights(meta_net, stream) -> None:
    """ValueError (one line) when the training `stream` carries sample weights but the
    meta-net's `weighted_loss` has no `sample_weight` argument (a user's own meta-net)."""
    spec = stream.element_spec
    batch = spec.get("train", spec.get("labeled", {})) if isinstance(spec, dict) else {}
    if meta_net is None or "sample_weight" not in batch:
        return
    if takes_arguments(meta_net, "sample_weight"):
        raise ValueError(f"{type(meta_net).__name__}.weighted_loss takes no sample_weight "
                         "argument, so it cannot use sample or class weights: drop them or "
                         "add the argument")


def optimizer_of(value, what: str):
    """An optimizer from what Keras' compile accepts: an instance, a name ('adam') or a
    config dict; None stays None. ValueError (one line) otherwise."""
    if value is None or isinstance(value, keras.optimizers.Optimizer):
        return value
    try:
        return keras.optimizers.get(value)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{what}: {str(error).splitlines()[0]}") from None


def uses_float16(model: keras.Model) -> bool:
    """Whether any layer of `model` computes in float16 (needs loss scaling)."""
    return any(layer.dtype_policy.name == "mixed_float16"
               for layer in model._flatten_layers())  # pylint: disable=protected-access


def backup_epoch(callbacks) -> int | None:
    """The epoch a keras.callbacks.BackupAndRestore among `callbacks` will resume at (its
    metadata file, read as it reads it), or None: the stream must start there too."""
    for callback in callbacks or ():
        if isinstance(callback, keras.callbacks.BackupAndRestore):
            path = callback._training_metadata_path  # pylint: disable=protected-access
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    return int(json.load(f)["epoch"])
    return None


class TrainerModel(keras.Model):
    """The shared parts of a trainer's Keras model (module docstring).

    Subclasses set `virtual_step` before `compile` and define:
      networks(): [(backbone, meta-net or None)] in training order; the optimizers of
        `compile` pair with them.
      predicting(): the backbones whose mean logits are the model's prediction.
    """

    virtual_step = "sgd"

    @property
    def input_profile(self) -> user_data.InputProfile | None:
        """The shape, dtype and range of the inputs `fit` saw (export, augmentation)."""
        return getattr(self, "_input_profile", None)

    @input_profile.setter
    def input_profile(self, profile: user_data.InputProfile | None) -> None:
        object.__setattr__(self, "_input_profile", profile)  # not a tracked Keras attribute

    # ------------------------------------------------------------ what is trained
    def networks(self) -> list[tuple[keras.Model, keras.Model | None]]:
        raise NotImplementedError

    def predicting(self) -> list[keras.Model]:
        raise NotImplementedError

    @property
    def net_optimizers(self) -> list:
        """The networks' optimizers, in `networks()` order (empty before `compile`)."""
        return getattr(self, "_net_optimizers", [])

    @property
    def meta_optimizers(self) -> list:
        """The meta-nets' optimizers (None for a network without one; before `compile`,
        None for every network)."""
        return getattr(self, "_meta_optimizers", [None] * len(self.networks()))

    # ------------------------------------------------------------ compile
    def _compile_optimizers(self, optimizers: Sequence, meta_optimizers: Sequence | None,
                            *, loss=None, metrics=None, weighted_metrics=None,
                            **kwargs) -> None:
        """One optimizer per network and one per meta-net (None entries for none), each
        given as Keras' compile takes one (instance, name or config) and built on its
        variables; a copy of the real step must be possible where the virtual step is the
        optimizer's ('optimizer'). `metrics` are Keras' (`evaluate`, validation, and the
        training batches against their given labels), ["accuracy"] when not given (pass
        [] for none); `loss` is refused: the method defines the training loss."""
        if loss is not None:
            raise ValueError(f"{type(self).__name__} defines its own training loss (the "
                             "meta-net's weighted cross-entropy), so compile(loss=...) is not "
                             "supported: leave loss out")
        pairs = self.networks()
        optimizers = [optimizer_of(o, "optimizer") for o in optimizers]
        meta_optimizers = [None] * len(pairs) if meta_optimizers is None else [
            optimizer_of(o, "meta_optimizer") for o in meta_optimizers]
        if len(optimizers) != len(pairs) or len(meta_optimizers) != len(pairs):
            raise ValueError(f"{len(pairs)} networks need {len(pairs)} optimizers and meta "
                             f"optimizers; got {len(optimizers)} and {len(meta_optimizers)}")
        if any(meta_net is not None and meta_optimizer is None
               for (_, meta_net), meta_optimizer in zip(pairs, meta_optimizers)):
            raise ValueError("a meta-net needs a meta optimizer: compile(optimizer, "
                             "meta_optimizer)")
        if any(o is None for o in optimizers):
            raise ValueError("compile needs an optimizer for every network")
        if uses_float16(pairs[0][0]):  # dynamic loss scaling, as keras.Model does
            wrap = keras.optimizers.LossScaleOptimizer
            optimizers = [o if isinstance(o, wrap) else wrap(o) for o in optimizers]
            meta_optimizers = [o if o is None or isinstance(o, wrap) else wrap(o)
                               for o in meta_optimizers]
        super().compile(optimizer=optimizers[0],
                        metrics=["accuracy"] if metrics is None else metrics,
                        weighted_metrics=weighted_metrics, **kwargs)
        if self.user_metrics:  # int labels [B] against outputs [B, K]
            self._compile_metrics.build(tf.zeros([1], tf.int32),
                                        tf.zeros([1, self.num_classes], tf.float32))
        self._net_optimizers, self._meta_optimizers = optimizers, meta_optimizers
        for (net, meta_net), optimizer, meta_optimizer in zip(pairs, optimizers,
                                                              meta_optimizers):
            optimizer.build(net.trainable_variables)
            if meta_net is not None:
                meta_optimizer.build(meta_net.trainable_variables)
                if self.virtual_step == "optimizer":
                    lookahead.inner_optimizer(optimizer)  # refuses what it cannot copy

    @property
    def user_metrics(self) -> list:
        """The compiled metrics (Keras' CompileMetrics), or [] for none."""
        compiled = getattr(self, "_compile_metrics", None)
        # pylint: disable-next=protected-access
        given = None if compiled is None else (compiled._user_metrics
                                                or compiled._user_weighted_metrics)
        return [compiled] if given else []

    def get_compile_config(self):
        """Both kinds of optimizers and the metrics, so `keras.models.load_model`
        recompiles the model as it was (optimizer states are restored with the weights);
        None before `compile` (the loaded model is then uncompiled too)."""
        if not self.net_optimizers:
            return None
        config = {"optimizers": [keras.saving.serialize_keras_object(o)
                                 for o in self.net_optimizers],
                  "meta_optimizers": [None if o is None else
                                      keras.saving.serialize_keras_object(o)
                                      for o in self.meta_optimizers]}
        compiled = getattr(self, "_compile_config", None)
        if compiled is not None:
            config["metrics"] = compiled.config.get("metrics")
            config["weighted_metrics"] = compiled.config.get("weighted_metrics")
        return config

    def compile_from_config(self, config):
        optimizers = [keras.saving.deserialize_keras_object(o) for o in config["optimizers"]]
        meta = [None if o is None else keras.saving.deserialize_keras_object(o)
                for o in config["meta_optimizers"]]
        metrics = {k: keras.saving.deserialize_keras_object(config[k])
                   for k in ("metrics", "weighted_metrics") if config.get(k) is not None}
        self._compile_optimizers(optimizers, meta, **metrics)

    # ------------------------------------------------------------ checkpoints
    def checkpoint_parts(self) -> dict:
        """The trackables a resumable checkpoint holds: every network, meta-net and
        optimizer ('backbone', 'optimizer', 'meta_net', 'meta_optimizer'; numbered from 1
        when there are several networks)."""
        pairs = self.networks()
        parts = {}
        for k, ((net, meta_net), optimizer, meta_optimizer) in enumerate(zip(
                pairs, self.net_optimizers, self.meta_optimizers)):
            suffix = "" if len(pairs) == 1 else str(k + 1)
            parts[f"backbone{suffix}"] = net
            parts[f"optimizer{suffix}"] = optimizer
            if meta_net is not None:
                parts[f"meta_net{suffix}"] = meta_net
                parts[f"meta_optimizer{suffix}"] = meta_optimizer
        return parts

    # ------------------------------------------------------------ inference
    @property
    def num_classes(self) -> int:
        return user_models.num_classes_of(self.predicting()[0])

    @property
    def output_activation(self) -> str:
        """The activation the user's model applies to its logits ('softmax', 'linear',
        ...): `call` and `predict` apply it too."""
        return getattr(self.predicting()[0], "output_activation", "linear")

    def predict_logits(self, images, training: bool = False) -> tf.Tensor:
        """Raw inputs [B, ...] -> the mean logits [B, K] of the predicting networks."""
        nets = self.predicting()
        return tf.add_n([_at_least_float32(net(images, training=training)[0])
                         for net in nets]) / len(nets)

    def call(self, images, training=False):
        """Raw inputs [B, ...] -> what the user's model returns: its output activation
        applied to the mean logits of the predicting networks (probabilities for a
        softmax head, logits for a linear one). Inference mode always."""
        del training
        return keras.activations.get(self.output_activation)(self.predict_logits(images))

    def _init_test_metrics(self, loss_tracker: keras.metrics.Mean) -> None:
        """`test_step` reports its mean CE through the training loss tracker (as Keras'
        own models share one 'loss' metric, reset by `evaluate`)."""
        self.test_loss = loss_tracker

    def evaluation_metrics(self) -> list:
        """The compiled metrics: besides the loss, what `test_step` reports."""
        return list(self.user_metrics)

    def test_step(self, data):
        """`evaluate` (and validation) on (inputs, labels[, sample_weights]) or {'image',
        'label'[, 'sample_weight']} batches: the weighted mean CE of the prediction
        (`predict_logits`, inference mode) and the compiled metrics of what `call`
        returns. Labels may be [B], [B, 1] or one-hot [B, K]."""
        images, labels, weights = _unpack(data)
        labels = user_data.labels_in_graph(labels, self.num_classes)
        logits = self.predict_logits(images)
        self.test_loss.update_state(objectives.per_sample_ce(logits, labels),
                                    sample_weight=weights)
        return {"loss": self.test_loss.result(),
                **self.update_user_metrics(labels, logits, weights)}

    def update_user_metrics(self, labels, logits, sample_weight=None) -> dict:
        """Updates the compiled metrics on a training batch (against its given labels) and
        returns their results ({} without compiled metrics)."""
        if not self.user_metrics:
            return {}
        outputs = keras.activations.get(self.output_activation)(logits)
        self._compile_metrics.update_state(labels, outputs, sample_weight)
        return dict(self._compile_metrics.result())

    # ------------------------------------------------------------ export
    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None,
               **kwargs):
        """keras.Model.export, serving `call` (what the user's model returns). Without an
        `input_signature` it is the input shape and dtype `fit` saw (or the backbone's
        input shape, float32)."""
        if input_signature is None:
            specs = self.input_specs()
            if isinstance(specs, tf.TensorSpec):  # one input keeps its signature name
                specs = tf.TensorSpec(specs.shape, specs.dtype, name="inputs")
            input_signature = [specs]
        return super().export(filepath, format=format, verbose=verbose,
                              input_signature=input_signature, **kwargs)

    def input_specs(self):
        """tf.TensorSpec [None, ...] of the model's inputs as `fit` saw them (one, or a
        dict / tuple of them for several inputs), else of the backbone's Inputs; ValueError
        when neither is known."""
        if self.input_profile is not None:
            return self.input_profile.specs()
        try:
            structure = self.predicting()[0].input
        except (AttributeError, ValueError):  # a subclassed backbone has no Input
            structure = None
        if structure is None:
            raise ValueError("the model's input shape is not known yet: fit it first, or "
                             "pass input_signature")
        return tf.nest.map_structure(
            lambda t: tf.TensorSpec([None, *t.shape[1:]], t.dtype), structure)

    def profile_config(self) -> dict:
        """The `get_config` entry that keeps the input profile across save and load."""
        return {"input_profile": None if self.input_profile is None
                else self.input_profile.to_config()}

    @staticmethod
    def pop_user_extras(config: dict) -> dict:
        """Takes what `get_config` saves beside the constructor's arguments (the user's
        output activation, the input profile) out of `config`, for `restore_user_extras`."""
        return {"activation": config.pop("output_activation", "linear"),
                "profile": user_data.InputProfile.from_config(config.pop("input_profile", None))}

    def restore_user_extras(self, extras: dict) -> "TrainerModel":
        """Puts `pop_user_extras`' values back on a model built by `from_config`."""
        trained = [net for net, _ in self.networks()]
        for net in trained + [n for n in self.predicting() if all(n is not t for t in trained)]:
            net.output_activation = extras["activation"]
        self.input_profile = extras["profile"]
        return self

    # ------------------------------------------------------------ monitoring
    @staticmethod
    def weight_trackers() -> dict[str, keras.metrics.Mean]:
        """The trackers of the mean meta weight of clean and of noisy labels."""
        return {"clean": keras.metrics.Mean(name="weight_clean"),
                "noisy": keras.metrics.Mean(name="weight_noisy")}

    @staticmethod
    def log_weights(trackers: dict, weights: tf.Tensor, batch: dict) -> list:
        """Updates the clean/noisy weight trackers from per-sample weights [B] when the batch
        says which labels are noisy ('is_noisy', ground truth: monitoring only); returns
        the trackers updated."""
        if "is_noisy" not in batch:
            return []
        noisy = tf.cast(batch["is_noisy"], weights.dtype)
        trackers["noisy"].update_state(weights, sample_weight=noisy)
        trackers["clean"].update_state(weights, sample_weight=1.0 - noisy)
        return [trackers["clean"], trackers["noisy"]]


class EveryEpochMetric(keras.callbacks.Callback):
    """Gives every named training metric a value in every epoch's logs: NaN for an epoch
    whose phase did not compute it (the meta loss in a warm-up epoch), so Keras' History
    lists keep one length, CSVLogger keeps its columns and pandas reads them. Put it first
    in the callback list: the logs dict it fills is the one every later callback reads."""

    def __init__(self, names):
        super().__init__()
        self.names = list(names)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            for name in self.names:
                logs.setdefault(name, float("nan"))


def checked_classifier(backbone: keras.Model, meta_scope: str) -> keras.Model:
    """A user's classifier as (logits, features) (`models.user_models.as_classifier`), with
    the meta scope checked against it (top:N needs N residual blocks)."""
    classifier = user_models.as_classifier(backbone)
    virtual.check_scope(classifier, meta_scope)
    return classifier


def _unpack(data):
    """(inputs, labels, sample weights or None) of an evaluation batch."""
    if isinstance(data, dict):
        return to_model(data["image"]), data["label"], data.get("sample_weight")
    if len(data) == 3:
        images, labels, weights = data
        return to_model(images), labels, weights
    images, labels = data
    return to_model(images), labels, None


def _at_least_float32(x: tf.Tensor) -> tf.Tensor:
    """float16 / bfloat16 logits as float32; float32 and float64 as they are."""
    return x if x.dtype in (tf.float32, tf.float64) else tf.cast(x, tf.float32)
