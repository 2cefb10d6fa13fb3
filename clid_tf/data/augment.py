"""Batch image augmentation for tf.data (the authors' CIFAR pipelines, cited below).

`build(kind, image_shape=..., seed=...)` returns a function for `dataset.map` that takes a
batch of raw images, float32 [B, H, W, C] with integer values in 0..255 (unnormalised; the
model normalises), and returns a batch of the same shape, dtype and value range:

- 'none': the identity.
- 'weak': per image, a horizontal flip with probability 0.5 (`flip=False` disables it, e.g.
  for digits), then an HxW crop at a uniform offset of the image reflect-padded by `pad`
  pixels (torchvision RandomHorizontalFlip + RandomCrop(32, padding=4, reflect)).
- 'strong': weak, then FixMatch's RandAugmentMC(n=2, m=10): per image, 2 ops drawn with
  replacement from the 14-op pool `OPS`, each applied with probability 0.5 at an integer
  level drawn uniformly from [1, 10); then always CutoutAbs with a grey (127) square of half
  the image side (16 px on 32x32). The authors' single-network and DivideMix CIFAR-10
  scripts apply it to the training (and meta) images (ruofanhu/CLID-MU@5cd0608, rand_aug.py:
  RandAugmentMC; main_vri.py and main_wnet.py: build_dataset()).
- 'randaugment': weak, then USB's RandAugment(3, 5) as the authors' semi-supervised code
  builds its strong view (ruofanhu/CLID-MU@5cd0608,
  semi/semilearn/datasets/cv_datasets/cifar.py: get_cifar()): per image, 3 ops drawn with
  replacement from the same pool, each always applied, its value drawn uniformly over the
  op's whole range (`RANGES`: enhance factors in [0.05, 0.95), Posterize 4..7 bits, Rotate
  [-30, 30) degrees, Shear and Translate [-0.3, 0.3) of the side, Solarize threshold
  [0, 256)); no Cutout (the USB fork's `fixmatch=False`:
  semi/semilearn/datasets/augmentation/randaugment.py: RandAugment, same commit). The
  magnitude m plays no part there, as in USB (microsoft/Semi-supervised-learning@1ef4cbe,
  semilearn/datasets/augmentation/randaugment.py: RandAugment, which always adds Cutout).

Each op reproduces the PIL code of FixMatch's `randaugment.py` (kekmodel/FixMatch-pytorch)
and of USB's (Pillow 13; microsoft/Semi-supervised-learning@1ef4cbe,
semilearn/datasets/augmentation/randaugment.py) on uint8-valued images, quirks included:
FixMatch's Brightness/Color/Contrast/Sharpness factor is 0.05 + 0.09 * level, so always in [0.14,
0.86]; its Solarize threshold is 256 - int(25.6 * level); Rotate (angle mod 360, as
Image.rotate), Shear and Translate (whole pixels in FixMatch, fractional in USB) sample
nearest pixels with PIL's 16.16 fixed-point affine arithmetic and fill with black (0);
Equalize and AutoContrast build PIL's per-channel lookup tables; Color/Contrast use PIL's
integer RGB->L weights (Color is the identity on one channel, as on PIL mode 'L'). For
every op, level and sign these give the same pixels as PIL on the tested 32x32x3, 32x32x1
and 8x8x1 images. Cutout draws PIL's inclusive rectangle: x0 = int(max(0, U[0, W) - v/2)),
pixels x0..x0+v clipped to the image, so an interior square is (v+1)x(v+1) = 17x17 and
squares near the right or bottom edge shrink (down to 9x9 on 32x32). Differences from
FixMatch: none in the ops; the random draws come from TF's stateless generators instead of
Python's `random`/numpy, and the per-image work is vectorised (the batch is partitioned by
op, each op runs once on its share, results are stitched back).

Keras preprocessing layers are not used: `RandomCrop` takes one offset per batch and does not
reflect-pad, `RandAugment` has a different op pool, magnitudes and interpolation, and the Keras
random layers draw from their own stateful `SeedGenerator`, which takes no per-call seed, so
they could not share the single seed stream below.

Randomness and determinism: every draw is stateless (`tf.random.stateless_*`) from one [2]
seed per call. By default that seed comes from a CPU `tf.random.Generator` built from `seed`,
so two pipelines built with the same seed give the same images as long as the map runs
sequentially, while successive batches and epochs differ. With `num_parallel_calls` the order
in which calls take seeds is not fixed; for exact reproducibility there, pass a per-batch seed,
`fn(images, stateless_seed=s)` with `s` int32/int64 [2], e.g. from
`tf.data.Dataset.random(seed).batch(2)` zipped with the images. Cost on one CPU thread
(tf.data map) for a batch of 100 32x32x3 images: about 3 ms 'weak', 20 ms 'strong'.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from clid_tf import names

KINDS: tuple[str, ...] = ('none', 'weak', 'strong', 'randaugment')

# FixMatch pool, in the order of `fixmatch_augment_pool()`.
OPS: tuple[str, ...] = (
        'AutoContrast', 'Brightness', 'Color', 'Contrast', 'Equalize', 'Identity', 'Posterize',
        'Rotate', 'Sharpness', 'ShearX', 'ShearY', 'Solarize', 'TranslateX', 'TranslateY')
NUM_OPS = 2  # RandAugmentMC n
MAGNITUDE = 10  # RandAugmentMC m: levels are integers in [1, m)
PARAMETER_MAX = 10  # FixMatch's level scale: a parameter is level * max_v / PARAMETER_MAX
# USB's RandAugment(3, 5) and `augment_list` (microsoft/Semi-supervised-learning@1ef4cbe,
# semilearn/datasets/augmentation/randaugment.py): 3 ops, each always applied;
USB_NUM_OPS = 3
# the range [min, max) each op's value is drawn from, in OPS order.
RANGES: tuple[tuple[float, float], ...] = (
        (0, 1), (0.05, 0.95), (0.05, 0.95), (0.05, 0.95), (0, 1), (0, 1), (4, 8), (-30, 30),
        (0.05, 0.95), (-0.3, 0.3), (-0.3, 0.3), (0, 256), (-0.3, 0.3), (-0.3, 0.3))
CROP_PAD = names.CROP_PAD
GREY = 127.0
_OP = {name: i for i, name in enumerate(OPS)}


def build(kind: str, *, image_shape: Sequence[int], seed: int, flip: bool = True,
          pad: int = CROP_PAD, pixel_scale: float = 1.0) -> Callable[..., tf.Tensor]:
    """Augmentation function for `dataset.map` on batches of raw images.

    Args:
      kind: one of KINDS.
      image_shape: (H, W, C) of one image, C in {1, 3}.
      seed: seeds the stream of per-batch random draws.
      flip: random horizontal flips ('weak' and 'strong'); False for digits.
      pad: reflect padding before the random crop; must be < min(H, W).
      pixel_scale: the images are pixel values / pixel_scale: 1 for 0..255 (the
        project's convention), 255 for a user's images scaled to [0, 1]; the ops run on
        images * pixel_scale and the result is scaled back.

    Returns:
      fn(images, stateless_seed=None): images float32 [B, H, W, C] in 0..255 (/
      pixel_scale) -> float32 [B, H, W, C] in the same range. `stateless_seed` (int [2])
      replaces the internal generator.
    """
    if kind not in KINDS:
        raise ValueError(f"augmentation kind must be one of {KINDS}, got {kind!r}")
    if len(image_shape) != 3 or int(image_shape[2]) not in (1, 3):
        raise ValueError(f"image_shape must be (H, W, C) with C in (1, 3), got {image_shape}")
    h, w, _ = (int(d) for d in image_shape)
    if kind == 'none':
        return lambda images, stateless_seed=None: tf.cast(images, tf.float32)
    if not 0 <= pad < min(h, w):
        raise ValueError(f"reflect padding {pad} must be in [0, {min(h, w)})")
    with tf.device('/CPU:0'):
        generator = tf.random.Generator.from_seed(seed)

    def augment(images: tf.Tensor, stateless_seed: tf.Tensor | None = None) -> tf.Tensor:
        images = tf.ensure_shape(tf.cast(images, tf.float32), [None, *image_shape])
        if stateless_seed is None:
            stateless_seed = generator.make_seeds(1)[:, 0]
        s_weak, s_ops, s_cut = _split(stateless_seed, 3)
        images = _flip_and_crop(images, s_weak, flip=flip, pad=pad)
        if kind == 'strong':
            for s in _split(s_ops, NUM_OPS):
                images = _random_op(images, s)
            images = _cutout(images, s_cut, size=min(h, w) // 2)
        elif kind == 'randaugment':
            for op, value in zip(*randaugment_draws(s_ops, tf.shape(images)[0], (h, w))):
                images = apply_op(images, op, value)
        return images

    if pixel_scale == 1.0:
        return augment
    scale = float(pixel_scale)
    return lambda images, stateless_seed=None: augment(
        tf.cast(images, tf.float32) * scale, stateless_seed=stateless_seed) / scale


def _split(seed: tf.Tensor, n: int) -> list[tf.Tensor]:
    return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def _select(mask: tf.Tensor, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """tf.where(mask, a, b) with broadcasting, as arithmetic (several times faster on CPU).

    Exact here because all values are small integers.
    """
    return b + tf.cast(mask, b.dtype) * (a - b)


def _per_image(values: tf.Tensor) -> tf.Tensor:
    """[B] -> [B, 1, 1, 1], to broadcast against images [B, H, W, C]."""
    return tf.reshape(values, [-1, 1, 1, 1])


def _flip_and_crop(images: tf.Tensor, seed: tf.Tensor, *, flip: bool, pad: int) -> tf.Tensor:
    """Per-image random horizontal flip, then a random crop of the reflect-padded image.

    Reflect padding commutes with the flip, so both are one gather from the padded batch.
    """
    b = tf.shape(images)[0]
    h, w, c = images.shape[1:]
    s_flip, s_crop = _split(seed, 2)
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode='REFLECT')
    offsets = tf.random.stateless_uniform([b, 2], s_crop, 0, 2 * pad + 1, dtype=tf.int32)
    rows = offsets[:, :1, None] + tf.range(h)[None, :, None]  # [B, H, 1] padded row
    cols = offsets[:, 1:, None] + tf.range(w)[None, None, :]  # [B, 1, W] padded column
    if flip:
        flipped = tf.random.stateless_uniform([b, 1, 1], s_flip) < 0.5
        cols = tf.where(flipped, w + 2 * pad - 1 - cols, cols)
    index = tf.reshape(rows * (w + 2 * pad) + cols, [b, h * w])
    out = tf.gather(tf.reshape(padded, [b, -1, c]), index, batch_dims=1)
    return tf.reshape(out, [b, h, w, c])


def _random_op(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """One RandAugmentMC round: per image a pool op, applied with p=0.5 at a level in [1, m)."""
    b = tf.shape(images)[0]
    s_op, s_apply, s_level, s_sign = _split(seed, 4)
    op = tf.random.stateless_uniform([b], s_op, 0, len(OPS), dtype=tf.int32)
    applied = tf.random.stateless_uniform([b], s_apply) < 0.5
    level = tf.random.stateless_uniform([b], s_level, 1, MAGNITUDE, dtype=tf.int32)
    sign = tf.where(tf.random.stateless_uniform([b], s_sign) < 0.5, -1.0, 1.0)
    op = tf.where(applied, op, _OP['Identity'])
    return apply_op(images, op, fixmatch_value(op, level, sign, images.shape[1:3]))


def fixmatch_value(op: tf.Tensor, level: tf.Tensor, sign: tf.Tensor,
                   hw: Sequence[int]) -> tf.Tensor:
    """FixMatch's value of each op at its level (int [b] in [1, m)) and sign (+-1 [b]) for
    images of size hw = (H, W): float64 [b], in the terms of `apply_op`."""
    h, w = hw
    level = tf.cast(level, tf.float64)
    sign = tf.cast(sign, tf.float64)
    factor = level * 0.9 / PARAMETER_MAX + 0.05
    by_op = {
            'Posterize': tf.floor(level * 4 / PARAMETER_MAX) + 4,
            'Rotate': sign * tf.floor(level * 30 / PARAMETER_MAX),
            'Solarize': 256 - tf.floor(level * 256 / PARAMETER_MAX),
            'ShearX': sign * level * 0.3 / PARAMETER_MAX,
            'ShearY': sign * level * 0.3 / PARAMETER_MAX,
            'TranslateX': sign * tf.floor(level * 0.3 / PARAMETER_MAX * w),  # int(v * W)
            'TranslateY': sign * tf.floor(level * 0.3 / PARAMETER_MAX * h)}
    values = tf.stack([by_op.get(name, factor) for name in OPS], axis=1)  # [b, ops]
    return tf.gather(values, op, axis=1, batch_dims=1)


def randaugment_draws(seed: tf.Tensor, batch, hw: Sequence[int]
                      ) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
    """USB RandAugment(3, 5)'s draws for a batch of images of size hw = (H, W): 3 rounds of
    (op int32 [b], value float64 [b] in the terms of `apply_op`), each op uniform over the
    pool (with replacement) and always applied, its value uniform over the op's `RANGES`
    entry (a translation's fraction times the side: USB's `v * img.size`, not truncated;
    microsoft/Semi-supervised-learning@1ef4cbe, semilearn/datasets/augmentation/randaugment.py:
    RandAugment.__call__(), TranslateX())."""
    h, w = hw
    ops, values = [], []
    scale = [w if name == 'TranslateX' else h if name == 'TranslateY' else 1 for name in OPS]
    low = tf.constant([r[0] * k for r, k in zip(RANGES, scale)], tf.float64)
    high = tf.constant([r[1] * k for r, k in zip(RANGES, scale)], tf.float64)
    for s in _split(seed, USB_NUM_OPS):
        s_op, s_value = _split(s, 2)
        op = tf.random.stateless_uniform([batch], s_op, 0, len(OPS), dtype=tf.int32)
        unit = tf.random.stateless_uniform([batch], s_value, dtype=tf.float64)
        ops.append(op)
        values.append(tf.gather(low, op) + (tf.gather(high, op) - tf.gather(low, op)) * unit)
    return ops, values


def apply_op(images: tf.Tensor, op: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
    """Applies OPS[op[i]] with value[i] to image i, as PIL does.

    The value is the op's own parameter: the enhance factor of Brightness, Color, Contrast
    and Sharpness; the bits Posterize keeps (int(value)); Solarize's threshold; Rotate's
    angle in degrees (counter-clockwise); ShearX/Y's shear; TranslateX/Y's shift in pixels
    (whole in FixMatch, fractional in USB: microsoft/Semi-supervised-learning@1ef4cbe,
    semilearn/datasets/augmentation/randaugment.py: TranslateX()); unused by AutoContrast,
    Equalize and Identity.

    Args:
      images: float32 [B, H, W, C] in 0..255 (integer values).
      op: int [B] indices into OPS.
      value: float64 [B].

    The batch is partitioned by op, each op runs once on its images, and the results are
    stitched back in order: vectorised, and each image pays for one op only.
    """
    n = len(OPS)
    indices = tf.dynamic_partition(tf.range(tf.shape(images)[0]), op, n)
    parts = tf.dynamic_partition(images, op, n)
    values = tf.dynamic_partition(tf.cast(value, tf.float64), op, n)
    hw = images.shape[1:3]
    results = []
    for k, name in enumerate(OPS):
        if name in _PIXEL_OPS:
            results.append(_PIXEL_OPS[name](parts[k], values[k]))
        elif name == 'Identity':
            results.append(parts[k])
        else:
            results.append(_warp(parts[k], _pil_affine(name, values[k], hw)))
    return tf.ensure_shape(tf.dynamic_stitch(indices, results), images.shape)


def _pil_affine(name: str, value: tf.Tensor, hw: Sequence[int]) -> tf.Tensor:
    """float64 [B, 6] PIL AFFINE data (a, b, c, d, e, f) of a geometric op at its value.

    Output pixel (x, y) reads input (a x + b y + c, d x + e y + f). Rotate follows
    Image.rotate: the angle taken mod 360, about (W/2, H/2), cos/sin rounded to 15 decimals.
    """
    h, w = hw
    value = tf.cast(value, tf.float64)
    zero, one = tf.zeros_like(value), tf.ones_like(value)
    if name == 'Rotate':
        angle = -(tf.math.floormod(value, 360.0) * (math.pi / 180))
        cos = tf.round(tf.cos(angle) * 1e15) / 1e15
        sin = tf.round(tf.sin(angle) * 1e15) / 1e15
        cx, cy = w / 2, h / 2
        rows = [cos, sin, (cos * -cx + sin * -cy) + cx, -sin, cos, (-sin * -cx + cos * -cy) + cy]
    elif name == 'ShearX':
        rows = [one, value, zero, zero, one, zero]
    elif name == 'ShearY':
        rows = [one, zero, zero, value, one, zero]
    elif name == 'TranslateX':
        rows = [one, zero, value, zero, one, zero]
    elif name == 'TranslateY':
        rows = [one, zero, zero, zero, one, value]
    else:
        raise ValueError(f"{name!r} is not a geometric op")
    return tf.stack(rows, axis=1)


def _warp(images: tf.Tensor, coeffs: tf.Tensor) -> tf.Tensor:
    """PIL Image.transform(AFFINE, NEAREST, fill 0) per image, in its 16.16 fixed point.

    Output pixel (x, y) reads input (floor(a (x+.5) + b (y+.5) + c), floor(d (x+.5) + ...)),
    with PIL's rounding of the coefficients to multiples of 2**-16, so ties fall as in PIL.
    """
    h, w, ch = images.shape[1:]
    fixed = tf.cast(tf.floor(coeffs * 65536.0 + 0.5), tf.int64)  # [B, 6]
    a, b, _, d, e, _ = (fixed[:, i, None, None] for i in range(6))
    c0, f0 = (tf.cast(tf.floor(v * 65536.0 + 0.5), tf.int64)[:, None, None] for v in (
            coeffs[:, 2] + coeffs[:, 0] * 0.5 + coeffs[:, 1] * 0.5,
            coeffs[:, 5] + coeffs[:, 3] * 0.5 + coeffs[:, 4] * 0.5))
    xs = tf.range(w, dtype=tf.int64)[None, None, :]
    ys = tf.range(h, dtype=tf.int64)[None, :, None]
    x_in = tf.math.floordiv(c0 + xs * a + ys * b, 65536)  # [B, H, W]
    y_in = tf.math.floordiv(f0 + xs * d + ys * e, 65536)
    inside = (x_in >= 0) & (x_in < w) & (y_in >= 0) & (y_in < h)
    index = tf.clip_by_value(y_in, 0, h - 1) * w + tf.clip_by_value(x_in, 0, w - 1)
    out = tf.gather(tf.reshape(images, [-1, h * w, ch]), tf.reshape(index, [-1, h * w]),
                    batch_dims=1)
    return tf.reshape(out, [-1, h, w, ch]) * tf.cast(inside[..., None], tf.float32)


def _factor(value: tf.Tensor) -> tf.Tensor:
    """An enhance factor [b] as PIL's blend takes it (a C float), per image."""
    return _per_image(tf.cast(value, tf.float32))


def _blend(degenerate: tf.Tensor, x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL Image.blend(degenerate, x, factor), truncated to uint8 values."""
    return tf.floor(tf.clip_by_value(degenerate + factor * (x - degenerate), 0.0, 255.0))


def _luminance(x: tf.Tensor) -> tf.Tensor:
    """PIL's RGB -> L conversion, [B, H, W, C] -> [B, H, W, 1]; identity on C = 1."""
    if x.shape[-1] == 1:
        return x
    weights = tf.constant([19595.0, 38470.0, 7471.0])
    return tf.floor((tf.reduce_sum(x * weights, -1, keepdims=True) + 32768.0) / 65536.0)


def _auto_contrast(x: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
    del value
    lo = tf.reduce_min(x, [1, 2], keepdims=True)
    hi = tf.reduce_max(x, [1, 2], keepdims=True)
    x64, lo64 = tf.cast(x, tf.float64), tf.cast(lo, tf.float64)
    scale = 255.0 / tf.maximum(tf.cast(hi, tf.float64) - lo64, 1.0)  # PIL's double LUT maths
    out = tf.clip_by_value(tf.floor(x64 * scale - lo64 * scale), 0.0, 255.0)
    return _select(hi > lo, tf.cast(out, tf.float32), x)


def _brightness(x: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
    return _blend(tf.zeros_like(x), x, _factor(value))


def _color(x: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
    return _blend(_luminance(x), x, _factor(value))


def _contrast(x: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
    mean = tf.floor(tf.reduce_mean(_luminance(x), [1, 2, 3], keepdims=True) + 0.5)
    return _blend(mean, x, _factor(value))


def _equalize(x: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
    """PIL ImageOps.equalize per image and channel, via one bincount over the batch."""
    del value
    h, w, c = x.shape[1:]
    rows = tf.reshape(tf.transpose(tf.cast(x, tf.int32), [0, 3, 1, 2]), [-1, h * w])
    n = tf.shape(rows)[0]  # B * C histograms of 256 bins
    hist = tf.math.bincount(rows + 256 * tf.range(n)[:, None], minlength=n * 256,
                            maxlength=n * 256)
    hist = tf.reshape(hist, [n, 256])
    step = (h * w - tf.gather(hist, tf.reduce_max(rows, 1), batch_dims=1)) // 255
    cum = tf.cumsum(hist, axis=1, exclusive=True)
    lut = (step[:, None] // 2 + cum) // tf.maximum(step, 1)[:, None]
    lut = tf.where(step[:, None] > 0, tf.minimum(lut, 255), tf.range(256)[None])
    out = tf.cast(tf.gather(lut, rows, batch_dims=1), tf.float32)
    return tf.transpose(tf.reshape(out, [-1, c, h, w]), [0, 2, 3, 1])


def _posterize(x: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
    bits = tf.cast(_per_image(tf.floor(value)), tf.float32)  # PIL keeps int(value) bits
    quantum = tf.pow(2.0, 8.0 - bits)
    return tf.floor(x / quantum) * quantum


def _sharpness(x: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
    """Blend with PIL's SMOOTH filter (3x3, centre 5, others 1, /13; border pixels kept)."""
    h, w, c = x.shape[1:]
    kernel = np.ones((3, 3, c, 1), np.float32)
    kernel[1, 1] = 5.0
    smooth = tf.floor(tf.nn.depthwise_conv2d(x, kernel / 13.0, [1, 1, 1, 1], 'SAME') + 0.5)
    border = np.ones((1, h, w, 1), bool)
    border[:, 1:-1, 1:-1] = False
    return _blend(_select(border, x, smooth), x, _factor(value))


def _solarize(x: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
    """PIL's lut: pixels below the threshold kept, the others inverted (x < threshold in
    double, as PIL compares its int pixel with the float threshold)."""
    below = tf.cast(x, tf.float64) < _per_image(value)
    return _select(below, x, 255.0 - x)


_PIXEL_OPS = {
        'AutoContrast': _auto_contrast, 'Brightness': _brightness, 'Color': _color,
        'Contrast': _contrast, 'Equalize': _equalize, 'Posterize': _posterize,
        'Sharpness': _sharpness, 'Solarize': _solarize}


def _cutout(images: tf.Tensor, seed: tf.Tensor, *, size: int) -> tf.Tensor:
    """FixMatch CutoutAbs(img, size) at a uniform random centre per image."""
    h, w = images.shape[1], images.shape[2]
    return _grey_box(images, tf.random.stateless_uniform([tf.shape(images)[0], 2], seed) * [w, h],
                     size=size)


def _grey_box(images: tf.Tensor, centre: tf.Tensor, *, size: int) -> tf.Tensor:
    """Fills PIL's inclusive rectangle of CutoutAbs with GREY.

    Args:
      images: float32 [B, H, W, C].
      centre: float32 [B, 2] (x, y) in [0, W) x [0, H).
      size: side v: x0 = int(max(0, x - v/2)), x1 = min(W, x0 + v), pixels x0..x1 inclusive
        (clipped to the image); the same for y.

    Returns:
      float32 [B, H, W, C].
    """
    h, w = images.shape[1], images.shape[2]
    start = tf.floor(tf.maximum(0.0, centre - size / 2))
    end = start + size  # min(W, .) is implied by clipping the mask to the image
    xs, ys = tf.range(w, dtype=tf.float32), tf.range(h, dtype=tf.float32)
    in_x = (xs[None] >= start[:, :1]) & (xs[None] <= end[:, :1])  # [B, W]
    in_y = (ys[None] >= start[:, 1:]) & (ys[None] <= end[:, 1:])  # [B, H]
    return _select(in_y[:, :, None, None] & in_x[:, None, :, None], GREY, images)
