"""Extra TensorBoard views of a CLID-MU run, beside the scalars of Keras' TensorBoard.

  MetaViews      per-epoch histograms of the meta weights of a fixed training subset (clean
                 vs noisy samples), and for WNet an image of its weighting function
                 weight = WNet(loss) over the subset's loss histogram; run `meta_views`.
  StepTimer      mean training-step time per epoch, logged as `step_time`.
  write_hparams  the run's hyperparameters and key metrics for the HParams tab.
  write_layout   a custom-scalars layout: meta-set CLID beside test accuracy, the learning
                 rates, and the clean vs noisy mean weights, one chart each.

Images are rasterised with numpy alone (no matplotlib): a line plot with axes, ticks and
3x5-pixel digit labels.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Callable, Iterator, NamedTuple, Sequence

import keras
import numpy as np
import tensorflow as tf
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import summary as custom_scalar_summary
from tensorboard.plugins.hparams import api as hp

from clid_tf import meta_nets
from clid_tf import objectives

Colour = tuple[int, int, int]

CURVE_COLOUR: Colour = (31, 119, 180)  # blue: the weighting function
CLEAN_COLOUR: Colour = (44, 160, 44)  # green: losses of clean samples
NOISY_COLOUR: Colour = (214, 39, 40)  # red: losses of noisy samples
ALL_COLOUR: Colour = (127, 127, 127)  # grey: losses when noise is unknown
AXIS_COLOUR: Colour = (0, 0, 0)
GRID_COLOUR: Colour = (225, 225, 225)
BACKGROUND: Colour = (255, 255, 255)

# Scalars (as Keras' TensorBoard names them, in its `train` run) shown in the HParams tab.
HPARAM_METRICS = ("epoch_test_accuracy", "epoch_meta_set_clid", "epoch_selected_accuracy",
                  "epoch_ensemble5_accuracy")


# ---------------------------------------------------------------- rasterising
class PlotArea(NamedTuple):
    """Inclusive pixel bounds of the data area of a plot and the data range it shows.

    x in [0, x_max] maps to columns left..right, y in [0, y_max] to rows bottom..top.
    """
    top: int
    bottom: int
    left: int
    right: int
    x_max: float
    y_max: float = 1.0

    def cols(self, x: np.ndarray) -> np.ndarray:
        """Float column of each x (clipped to the area). float [n] -> float [n]."""
        x = np.clip(np.asarray(x, np.float64), 0.0, self.x_max)
        return self.left + x / self.x_max * (self.right - self.left)

    def rows(self, y: np.ndarray) -> np.ndarray:
        """Float row of each y (clipped to the area; y_max at the top). float [n] -> [n]."""
        y = np.clip(np.asarray(y, np.float64), 0.0, self.y_max)
        return self.bottom - y / self.y_max * (self.bottom - self.top)


# Margins leave room for tick labels; the data area's height (bottom - top) is even for
# the default 240-pixel image, so y = y_max / 2 falls exactly on one row.
MARGIN_TOP, MARGIN_BOTTOM, MARGIN_LEFT, MARGIN_RIGHT = 10, 25, 40, 16


def plot_area(height: int, width: int, x_max: float, y_max: float = 1.0) -> PlotArea:
    """The data area of a height x width image with the module's fixed margins."""
    if height <= MARGIN_TOP + MARGIN_BOTTOM + 2 or width <= MARGIN_LEFT + MARGIN_RIGHT + 2:
        raise ValueError(f"image {height}x{width} is too small for a plot")
    if not x_max > 0 or not y_max > 0:
        raise ValueError(f"x_max and y_max must be positive, got {x_max}, {y_max}")
    return PlotArea(MARGIN_TOP, height - 1 - MARGIN_BOTTOM, MARGIN_LEFT,
                    width - 1 - MARGIN_RIGHT, float(x_max), float(y_max))


def render_curve(xs: np.ndarray, ys: np.ndarray, *, x_max: float, y_max: float = 1.0,
                 height: int = 240, width: int = 320,
                 histograms: Sequence[tuple[np.ndarray, Colour]] = (), bins: int = 40,
                 colour: Colour = CURVE_COLOUR) -> np.ndarray:
    """Line plot of y(x) over faint histogram bars, as an RGB image.

    Args:
      xs: float [n] increasing x values in [0, x_max].
      ys: float [n] curve values (clipped to [0, y_max]).
      x_max: right end of the x axis; y_max: top of the y axis.
      height, width: image size in pixels.
      histograms: (values float [m], colour) pairs drawn as translucent bars on `bins`
        equal bins of [0, x_max] (values outside or not finite are left out); the tallest bar of all
        reaches 90% of the plot height, so the bars show shape, not the y axis.
      colour: colour of the curve, drawn 1 pixel wide with exactly this RGB value.

    Returns:
      uint8 [height, width, 3].
    """
    area = plot_area(height, width, x_max, y_max)
    image = np.empty([height, width, 3], np.float64)
    image[:] = BACKGROUND
    _draw_grid(image, area)
    _draw_bars(image, area, histograms, bins)
    _draw_axes(image, area)
    image = np.round(image).astype(np.uint8)
    _draw_polyline(image, area, xs, ys, colour)
    return image


def _draw_grid(image: np.ndarray, area: PlotArea) -> None:
    for y in (0.5, 1.0):
        image[int(round(area.rows(y * area.y_max))), area.left:area.right + 1] = GRID_COLOUR


def _draw_bars(image: np.ndarray, area: PlotArea,
               histograms: Sequence[tuple[np.ndarray, Colour]], bins: int,
               alpha: float = 0.3) -> None:
    """Alpha-blends one bar per non-empty bin of each histogram into `image` (float)."""
    values = [np.asarray(v, np.float64) for v, _ in histograms]
    counts = [np.histogram(v[np.isfinite(v)], bins=bins, range=(0.0, area.x_max))[0]
              for v in values]
    peak = max([c.max() for c in counts if c.size], default=0)
    if peak == 0:
        return
    edges = np.round(area.cols(np.linspace(0.0, area.x_max, bins + 1))).astype(int)
    for count, (_, colour) in zip(counts, histograms):
        tops = np.round(area.rows(0.9 * area.y_max * count / peak)).astype(int)
        for i in np.flatnonzero(count):
            block = image[tops[i]:area.bottom + 1, edges[i]:max(edges[i + 1], edges[i] + 1)]
            block[:] = (1.0 - alpha) * block + alpha * np.asarray(colour, np.float64)


def _draw_axes(image: np.ndarray, area: PlotArea, tick: int = 4) -> None:
    """Axis lines just outside the data area, ticks and labels at 0, max/2 and max."""
    image[area.top:area.bottom + 2, area.left - 1] = AXIS_COLOUR
    image[area.bottom + 1, area.left - 1:area.right + 1] = AXIS_COLOUR
    for x in (0.0, area.x_max / 2, area.x_max):
        col = int(round(area.cols(x)))
        image[area.bottom + 1:area.bottom + 2 + tick, col] = AXIS_COLOUR
        label = _format_tick(x)
        _draw_text(image, label, area.bottom + 3 + tick, col - _text_width(label) // 2)
    for y in (0.0, area.y_max / 2, area.y_max):
        row = int(round(area.rows(y)))
        image[row, area.left - 1 - tick:area.left] = AXIS_COLOUR
        label = _format_tick(y)
        _draw_text(image, label, row - _GLYPH_HEIGHT * _SCALE // 2,
                   area.left - 3 - tick - _text_width(label))


def _draw_polyline(image: np.ndarray, area: PlotArea, xs: np.ndarray, ys: np.ndarray,
                   colour: Colour) -> None:
    """Joins consecutive points with straight 1-pixel segments (dense sampling)."""
    cols, rows = area.cols(xs), area.rows(ys)
    pixels = [(np.round(rows[:1]), np.round(cols[:1]))]
    for c0, r0, c1, r1 in zip(cols[:-1], rows[:-1], cols[1:], rows[1:]):
        n = int(np.ceil(max(abs(c1 - c0), abs(r1 - r0)))) + 1
        t = np.linspace(0.0, 1.0, n + 1)
        pixels.append((np.round(r0 + t * (r1 - r0)), np.round(c0 + t * (c1 - c0))))
    r = np.concatenate([p[0] for p in pixels]).astype(int)
    c = np.concatenate([p[1] for p in pixels]).astype(int)
    image[r, c] = colour


def _format_tick(value: float) -> str:
    if value == int(value) and value < 100:
        return str(int(value))
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


# 3x5 bitmap digits, drawn at _SCALE: enough for tick labels.
_GLYPHS = {
    "0": ("111", "101", "101", "101", "111"), "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"), "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"), "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"), "7": ("111", "001", "001", "001", "001"),
    "8": ("111", "101", "111", "101", "111"), "9": ("111", "101", "111", "001", "111"),
    ".": ("0", "0", "0", "0", "1"),
}
_GLYPH_HEIGHT, _SCALE, _SPACING = 5, 2, 1


def _text_width(text: str) -> int:
    return sum((len(_GLYPHS[ch][0]) + _SPACING) * _SCALE for ch in text) - _SPACING * _SCALE


def _draw_text(image: np.ndarray, text: str, row: int, col: int,
               colour: Colour = AXIS_COLOUR) -> None:
    """Draws digits and '.' with their top-left corner at (row, col); clipped to the image."""
    height, width = image.shape[:2]
    for ch in text:
        glyph = np.array([[bit == "1" for bit in line] for line in _GLYPHS[ch]])
        mask = np.kron(glyph, np.ones([_SCALE, _SCALE], bool))
        rr, cc = np.nonzero(mask)
        rr, cc = rr + row, cc + col
        keep = (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width)
        image[rr[keep], cc[keep]] = colour
        col += (glyph.shape[1] + _SPACING) * _SCALE


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
                             groups: Sequence[tuple[np.ndarray, Colour]] = (), *,
                             height: int = 240, width: int = 320,
                             points: int = 256) -> np.ndarray:
    """WNet's curve weight = WNet(loss) over the loss range of a sample, as an image.

    Args:
      meta_net: a WeightNet (losses float [n] -> weights float [n]).
      losses: float [m] per-sample losses; the x axis runs from 0 to the 99th
        percentile of the finite ones, and at least to 5.
      groups: (losses float [m_g], colour) drawn as faint histogram bars behind the curve.
      height, width: image size; points: grid size of the curve.

    Returns:
      uint8 [height, width, 3].
    """
    finite = np.asarray(losses, np.float64)
    finite = finite[np.isfinite(finite)]
    x_max = max(5.0, float(np.percentile(finite, 99))) if len(finite) else 5.0
    grid = np.linspace(0.0, x_max, points)
    curve = np.asarray(meta_net(tf.constant(grid, meta_net.compute_dtype)), np.float64)
    return render_curve(grid, curve, x_max=x_max, height=height, width=width,
                        histograms=groups)


class MetaViews(keras.callbacks.Callback):
    """Per-epoch meta-weight histograms (and WNet's weighting function) of a fixed subset.

    At the end of every epoch in which the model has a meta-net and `model.meta_active`
    (not during warm-up), the meta weights of a fixed random subset of the training set
    are computed with the backbone in inference mode (see `per_sample_meta_weights`) and
    written under `<logdir>/meta_views`, step = epoch (0-based, as Keras' TensorBoard):

      weights/clean, weights/noisy   histograms split by the ground-truth noise flags,
      weights/all                    instead, when the flags are unknown (is_noisy None),
      wnet/weighting_function        (WNet only) image uint8 [1, H, W, 3] of the curve
                                     WNet(loss), loss in [0, max(5, 99th pct)], over the
                                     clean (green) / noisy (red) loss histograms.

    The noise flags are ground truth for monitoring only; nothing here touches training
    (VRI's noise seed state is restored after sampling).
    """

    def __init__(self, logdir: str, images: np.ndarray, noisy_labels: np.ndarray,
                 is_noisy: np.ndarray | None = None, *, sample_size: int = 2000,
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

    def groups(self, values: np.ndarray) -> list[tuple[str, np.ndarray, Colour]]:
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
            if isinstance(meta_net, meta_nets.WeightNet):
                bars = [(values, colour) for _, values, colour in self.groups(losses)]
                image = weighting_function_image(meta_net, losses, bars)
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


def layout() -> layout_pb2.Layout:
    """Custom-scalars layout: three charts of Keras' per-epoch scalars (regex on tags)."""
    return layout_pb2.Layout(category=[layout_pb2.Category(title="CLID-MU", chart=[
        _multiline("meta-set CLID and test accuracy", "epoch_meta_set_clid",
                   "epoch_test_accuracy"),
        _multiline("learning rates", "epoch_lr", "epoch_meta_lr"),
        _multiline("mean meta weight: clean vs noisy", "epoch_weight_clean",
                   "epoch_weight_noisy"),
    ])])


def write_layout(logdir: str) -> None:
    """Writes `layout()` for TensorBoard's Custom Scalars tab into `logdir`."""
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        tf.summary.experimental.write_raw_pb(
            custom_scalar_summary.pb(layout()).SerializeToString(), step=0)
    writer.close()
