"""Extra TensorBoard views of a CLID-MU run, beside the scalars of Keras' TensorBoard.

  MetaViews      per-epoch histograms of the meta weights of a fixed training subset (clean
                 vs noisy samples), and for WNet an image of its weighting function
                 weight = WNet(loss) over the subset's loss histogram; run `meta_views`.
  StepTimer      mean training-step time per epoch, logged as `step_time`.
  write_hparams  the run's hyperparameters and key metrics for the HParams tab.
  write_layout   a custom-scalars layout: meta-set CLID beside test accuracy, the learning
                 rates, and the clean vs noisy mean weights, one chart each.

The weighting-function image is a matplotlib figure (axes, ticks, legend) rendered by the Agg
backend straight to pixels, as TensorBoard's image-summary guide renders figures.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Callable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import summary as custom_scalar_summary
from tensorboard.plugins.hparams import api as hp

from clid_tf.core import objectives

CURVE_COLOUR = "tab:blue"  # the weighting function
CLEAN_COLOUR = "tab:green"  # losses of clean samples
NOISY_COLOUR = "tab:red"  # losses of noisy samples
ALL_COLOUR = "tab:gray"  # losses when noise is unknown

# Scalars (as Keras' TensorBoard names them, in its `train` run) shown in the HParams tab.
HPARAM_METRICS = ("epoch_test_accuracy", "epoch_meta_set_clid", "epoch_selected_accuracy",
                  "epoch_ensemble5_accuracy")

FIGURE_SIZE = (640, 400)  # width, height in pixels of the weighting-function image
_DPI = 100


# ---------------------------------------------------------------- figures
def figure_to_image(figure: Figure) -> np.ndarray:
    """Renders a figure with the Agg backend. -> uint8 [height, width, 3] (RGB).

    The figure is a plain `matplotlib.figure.Figure`, never registered with pyplot, so
    nothing global is left open once it is dropped.
    """
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def weighting_function_figure(grid: np.ndarray, curve: np.ndarray,
                              groups: Sequence[tuple[str, np.ndarray, str]] = (), *,
                              title: str = "WNet weighting function",
                              size: tuple[int, int] = FIGURE_SIZE, bins: int = 40) -> Figure:
    """The curve weight(loss) over the histograms of the samples' losses.

    Left axis: the weight in [0, 1] (the curve, drawn on top); right axis: the number of
    samples per loss bin (translucent bars, one colour per group). The legend names the
    curve and each group with its size.

    Args:
      grid: float [n] increasing losses from 0 to the x-axis end.
      curve: float [n] the weight at each grid loss.
      groups: (name, losses float [m], colour) per group, e.g. clean and noisy samples;
        losses beyond the axis or not finite are left out of the bars.
      title: the figure title.
      size: (width, height) in pixels.
      bins: number of equal loss bins over the axis.

    Returns:
      a matplotlib Figure (render it with `figure_to_image`).
    """
    width, height = size
    figure = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, layout="constrained")
    weight_axis = figure.add_subplot()
    count_axis = weight_axis.twinx()
    x_max = float(grid[-1])
    edges = np.linspace(0.0, x_max, bins + 1)
    for name, losses, colour in groups:
        losses = np.asarray(losses, np.float64)
        count_axis.hist(losses[np.isfinite(losses)], bins=edges, color=colour, alpha=0.3,
                        label=f"{name} samples (n={len(losses)})")
    weight_axis.plot(grid, curve, color=CURVE_COLOUR, linewidth=2, label="WNet(loss)")
    weight_axis.set_zorder(count_axis.get_zorder() + 1)  # the curve in front of the bars
    weight_axis.patch.set_visible(False)
    weight_axis.set(xlim=(0.0, x_max), ylim=(0.0, 1.02), xlabel="per-sample CE loss",
                    ylabel="meta weight", title=title)
    count_axis.set_ylabel("samples per bin")
    weight_axis.grid(alpha=0.3)
    handles = [h for axis in (weight_axis, count_axis)
               for h in axis.get_legend_handles_labels()[0]]
    weight_axis.legend(handles=handles, loc="upper right", fontsize="small")
    return figure


# ---------------------------------------------------------------- meta weights
def sample_indices(num_samples: int, sample_size: int, seed: int) -> np.ndarray:
    """Sorted int64 [min(sample_size, N)]: a seeded random subset of range(N), no repeats."""
    size = min(int(sample_size), int(num_samples))
    return np.sort(np.random.default_rng(seed).choice(num_samples, size, replace=False))


@contextlib.contextmanager
def _preserved_state(net: keras.Model) -> Iterator[None]:
    """Restores the net's non-trainable variables (VRI's noise seed state) on exit.

    Sampling VRI weights advances its SeedGenerator; restoring it keeps the training run
    identical with and without these views.
    """
    saved = [v.numpy() for v in net.non_trainable_variables]
    try:
        yield
    finally:
        for variable, value in zip(net.non_trainable_variables, saved):
            variable.assign(value)


def per_sample_meta_weights(backbone: keras.Model, meta_net: keras.Model
                            ) -> Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """A tf.function (raw images [b, ...], noisy labels int [b]) -> (CE [b], weight [b]).

    The backbone runs in inference mode. The weight is the mean over the trailing axes of
    `meta_net.weighted_loss(logits, features, labels).weights`: for WNet the raw weight
    WNet(CE_i) in (0, 1) of the per-sample CE (before batch normalisation); for VRI the
    mean over classes of one posterior sample w_i in (0, 1)^K, drawn afresh each call
    (the same per-sample reduction as the model's `weight_clean`/`weight_noisy` metrics).
    """

    @tf.function(reduce_retracing=True)
    def compute(images, labels):
        logits, features = backbone(images, training=False)
        losses = objectives.per_sample_ce(logits, labels)
        weighted = meta_net.weighted_loss(logits, features, labels, regularize=False)
        return losses, tf.cast(weighted.per_sample_weights(), losses.dtype)

    return compute


def weighting_function_image(meta_net: keras.Model, losses: np.ndarray,
                             groups: Sequence[tuple[str, np.ndarray, str]] = (), *,
                             title: str = "WNet weighting function",
                             size: tuple[int, int] = FIGURE_SIZE,
                             points: int = 256) -> np.ndarray:
    """WNet's curve weight = WNet(loss) over the loss range of a sample, as an image.

    Args:
      meta_net: a WeightNet (losses float [n] -> weights float [n]).
      losses: float [m] per-sample losses; the x axis runs from 0 to the 99th
        percentile of the finite ones, and at least to 5.
      groups: (name, losses float [m_g], colour) drawn as histogram bars behind the curve.
      title: the figure title.
      size: (width, height) in pixels; points: grid size of the curve.

    Returns:
      uint8 [height, width, 3].
    """
    finite = np.asarray(losses, np.float64)
    finite = finite[np.isfinite(finite)]
    x_max = max(5.0, float(np.percentile(finite, 99))) if len(finite) else 5.0
    grid = np.linspace(0.0, x_max, points)
    curve = np.asarray(meta_net.weight_of_loss(tf.constant(grid, meta_net.compute_dtype)),
                       np.float64)
    return figure_to_image(weighting_function_figure(grid, curve, groups, title=title,
                                                     size=size))


class MetaViews(keras.callbacks.Callback):
    """Per-epoch meta-weight histograms (and WNet's weighting function) of a fixed subset.

    At the end of every epoch in which the model has a meta-net and `model.meta_active`
    (not during warm-up), the meta weights of a fixed random subset of the training set
    are computed with the backbone in inference mode (see `per_sample_meta_weights`) and
    written under `<logdir>/meta_views`, step = epoch (0-based, as Keras' TensorBoard):

      weights/clean, weights/noisy   histograms split by the ground-truth noise flags,
      weights/all                    instead, when the flags are unknown (is_noisy None),
      wnet/weighting_function        (WNet only) image uint8 [1, 400, 640, 3], a figure of
                                     the curve WNet(loss), loss in [0, max(5, 99th pct)],
                                     over the clean (green) / noisy (red) loss histograms,
                                     with axes, ticks and a legend.

    The noise flags are ground truth for monitoring only; nothing here touches training
    (VRI's noise seed state is restored after sampling).
    """

    def __init__(self, logdir: str, images: np.ndarray, noisy_labels: np.ndarray,
                 is_noisy: np.ndarray | None = None, *, sample_size: int = 1000,
                 seed: int = 0, eval_batch_size: int = 500):
        """Args:
          logdir: the TensorBoard folder (the one Keras' TensorBoard callback writes to).
          images: [N, ...] raw training inputs; noisy_labels: int [N] training labels.
          is_noisy: bool [N] ground-truth noise flags, or None.
          sample_size: size of the fixed subset (all N when N is smaller).
          seed: seed of the subset.
          eval_batch_size: inference batch size.
        """
        super().__init__()
        if len(images) != len(noisy_labels):
            raise ValueError(f"{len(images)} images but {len(noisy_labels)} labels")
        index = sample_indices(len(images), sample_size, seed)
        self.images = np.asarray(images)[index]
        self.labels = np.asarray(noisy_labels).astype(np.int32)[index]
        self.is_noisy = None if is_noisy is None else np.asarray(is_noisy, bool)[index]
        self.logdir = os.path.join(logdir, "meta_views")
        self.eval_batch_size = int(eval_batch_size)
        self._writer = None
        self._compute = None
        self._compute_for = None

    def on_epoch_end(self, epoch, logs=None):
        meta_net = getattr(self.model, "meta_net", None)
        if meta_net is None or not getattr(self.model, "meta_active", False):
            return
        losses, weights = self.meta_weights()
        self._write(int(epoch), meta_net, losses, weights)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def meta_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(per-sample CE float [n], per-sample meta weight float [n]) of the subset."""
        compute = self._function()
        losses, weights = [], []
        with _preserved_state(self.model.meta_net):
            for start in range(0, len(self.images), self.eval_batch_size):
                stop = start + self.eval_batch_size
                loss, weight = compute(tf.constant(self.images[start:stop], tf.float32),
                                       tf.constant(self.labels[start:stop]))
                losses.append(loss.numpy())
                weights.append(weight.numpy())
        return np.concatenate(losses), np.concatenate(weights)

    def groups(self, values: np.ndarray) -> list[tuple[str, np.ndarray, str]]:
        """(name, values of the group, colour): clean and noisy, or all; empty ones dropped."""
        if self.is_noisy is None:
            return [("all", values, ALL_COLOUR)]
        split = [("clean", values[~self.is_noisy], CLEAN_COLOUR),
                 ("noisy", values[self.is_noisy], NOISY_COLOUR)]
        return [g for g in split if len(g[1])]

    def _function(self):
        nets = (self.model.backbone, self.model.meta_net)
        if self._compute is None or self._compute_for != tuple(map(id, nets)):
            self._compute = per_sample_meta_weights(*nets)
            self._compute_for = tuple(map(id, nets))
        return self._compute

    def _write(self, epoch: int, meta_net: keras.Model, losses: np.ndarray,
               weights: np.ndarray) -> None:
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.logdir)
        with self._writer.as_default(step=epoch):
            for name, values, _ in self.groups(weights):
                tf.summary.histogram(f"weights/{name}", values)
            if hasattr(meta_net, "weight_of_loss"):  # a loss -> weight function (WNet)
                image = weighting_function_image(
                    meta_net, losses, self.groups(losses),
                    title=f"WNet weighting function after epoch {epoch + 1}")
                tf.summary.image("wnet/weighting_function", image[None])
        self._writer.flush()


# ---------------------------------------------------------------- step time
class StepTimer(keras.callbacks.Callback):
    """Mean wall-clock seconds per training step of each epoch, as epoch log `step_time`.

    Measured with time.perf_counter from batch begin to batch end. Keras converts the
    step's logs to Python numbers before `on_train_batch_end` reaches a callback that
    defines it, so the time covers the whole step, not just its dispatch (this also turns
    off Keras' asynchronous batch-end dispatch, as verbose=1 progress bars do). The first
    epoch of each `fit` includes tracing the train function. Put this callback BEFORE
    Keras' TensorBoard so the value is logged (`epoch_step_time`).
    """

    def __init__(self):
        super().__init__()
        self._times: list[float] = []
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self._start is not None:
            self._times.append(time.perf_counter() - self._start)
            self._start = None

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._times:
            logs["step_time"] = float(np.mean(self._times))


# ---------------------------------------------------------------- scalars
class TensorBoard(keras.callbacks.TensorBoard):
    """Keras' TensorBoard without the NaN placeholders of phases that did not run.

    The trainers give every metric a value in every epoch's logs (NaN for, e.g., the meta
    step during the warm-up) so History, CSVLogger and pandas line up; a chart draws
    those NaNs as broken points, so they are left out here and the curve starts at the
    first epoch that measured it. Same arguments as keras.callbacks.TensorBoard.
    """

    def on_epoch_end(self, epoch, logs=None):
        measured = {name: value for name, value in (logs or {}).items()
                    if not _is_nan(value)}
        super().on_epoch_end(epoch, measured)


def _is_nan(value) -> bool:
    try:
        return bool(np.isnan(value))
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------- HParams, layout
def hparam_value(value) -> bool | int | float | str:
    """A value the HParams plugin accepts: bool/int/float/str as is, numpy scalars as
    Python numbers, anything else (None, lists, ...) as its str()."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def write_hparams(logdir: str, hparams: dict, metrics: Sequence[str] = HPARAM_METRICS, *,
                  group: str = "train") -> None:
    """Writes the HParams experiment config and this run's hyperparameters, once.

    Call it at the start of a run with the TensorBoard folder; run TensorBoard on the
    parent of many runs' folders to compare them in the HParams tab. Each run writes the
    same config (the plugin reads the first it finds), so use the same hparams keys.

    Args:
      logdir: the TensorBoard folder of the run (the session).
      hparams: name -> value; values are converted with `hparam_value`.
      metrics: scalar tags to show per run, e.g. 'epoch_test_accuracy'.
      group: the subfolder holding those scalars ('train' for Keras' TensorBoard).
    """
    values = {str(k): hparam_value(v) for k, v in hparams.items()}
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        hp.hparams_config(hparams=[hp.HParam(name) for name in sorted(values)],
                          metrics=[hp.Metric(tag, group=group) for tag in metrics])
        hp.hparams(values)
    writer.close()


def _multiline(title: str, *tags: str) -> layout_pb2.Chart:
    return layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(
        tag=[f"^{tag}$" for tag in tags]))


CHARTS = (
    ("meta-set CLID and test accuracy", "epoch_meta_set_clid", "epoch_test_accuracy"),
    ("learning rates", "epoch_lr", "epoch_meta_lr"),
    ("mean meta weight: clean vs noisy", "epoch_weight_clean", "epoch_weight_noisy"),
)


def layout(charts: Sequence[Sequence[str]] = CHARTS) -> layout_pb2.Layout:
    """Custom-scalars layout: one chart of Keras' per-epoch scalars (regex on tags) per
    (title, *tags) of `charts` (default: the meta trainer's three)."""
    return layout_pb2.Layout(category=[layout_pb2.Category(title="CLID-MU", chart=[
        _multiline(title, *tags) for title, *tags in charts])])


def write_layout(logdir: str, charts: Sequence[Sequence[str]] = CHARTS) -> None:
    """Writes `layout(charts)` for TensorBoard's Custom Scalars tab into `logdir`."""
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        tf.summary.experimental.write_raw_pb(
            custom_scalar_summary.pb(layout(charts)).SerializeToString(), step=0)
    writer.close()
