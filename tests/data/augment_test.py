"""Tests for clid_tf.data.augment: ranges, weak crops, Cutout, per-image randomness, seeding,
and every op against the PIL code of FixMatch's RandAugmentMC and USB's RandAugment
(microsoft/Semi-supervised-learning@1ef4cbe, semilearn/datasets/augmentation/randaugment.py)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image as image_mod
from PIL import ImageDraw as draw
from PIL import ImageEnhance as enhance
from PIL import ImageOps as ops_mod

from clid_tf.data import augment

SHAPES = ((8, 8, 1), (32, 32, 3))


def _images(n: int, shape: tuple[int, ...], seed: int = 0, *, no_grey: bool = False) -> np.ndarray:
    """float32 [n, H, W, C] of random integers in 0..255 (never 127 if no_grey)."""
    x = np.random.default_rng(seed).integers(0, 255, (n, *shape))
    if no_grey:
        x = np.where(x >= 127, x + 1, x)
    return x.astype(np.float32)


def _run(fn, x: np.ndarray, batch: int = 4) -> np.ndarray:
    """Applies fn through `from_tensor_slices(x).batch(batch).map(fn)`; returns all outputs."""
    ds = tf.data.Dataset.from_tensor_slices(x).batch(batch).map(fn)
    return np.concatenate([b.numpy() for b in ds])


def _window_match(out: np.ndarray, image: np.ndarray, pad: int) -> list[tuple[bool, int, int]]:
    """All (flipped, dy, dx) with out == crop at (dy, dx) of reflect-pad(flip?(image))."""
    h, w = image.shape[:2]
    found = []
    for flipped in (False, True):
        src = image[:, ::-1] if flipped else image
        padded = np.pad(src, ((pad, pad), (pad, pad), (0, 0)), mode='reflect')
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                if np.array_equal(padded[dy:dy + h, dx:dx + w], out):
                    found.append((flipped, dy, dx))
    return found


def _has_square(mask: np.ndarray, k: int) -> bool:
    """Whether the bool [H, W] mask contains an all-True k x k square."""
    s = np.pad(mask.astype(np.int64), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    sums = s[k:, k:] - s[:-k, k:] - s[k:, :-k] + s[:-k, :-k]
    return bool((sums == k * k).any())


def test_build_rejects_bad_arguments():
    with pytest.raises(ValueError, match='kind'):
        augment.build('medium', image_shape=(32, 32, 3), seed=0)
    with pytest.raises(ValueError, match='image_shape'):
        augment.build('weak', image_shape=(32, 32, 2), seed=0)
    with pytest.raises(ValueError, match='padding'):
        augment.build('weak', image_shape=(4, 4, 1), seed=0)


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('kind', augment.KINDS)
def test_shape_dtype_and_integer_range_are_kept(kind, shape):
    x = _images(12, shape)
    x[0] = 0.0  # constant images and the extremes must survive every op
    x[1] = 255.0
    out = _run(augment.build(kind, image_shape=shape, seed=1), x)
    assert out.shape == x.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0
    np.testing.assert_array_equal(out, np.round(out))


def test_none_is_the_identity():
    x = _images(8, (32, 32, 3))
    fn = augment.build('none', image_shape=(32, 32, 3), seed=0)
    np.testing.assert_array_equal(_run(fn, x), x)


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('flip', (True, False))
def test_weak_is_a_shifted_window_of_the_reflect_padded_image(shape, flip):
    x = _images(24, shape, seed=2)
    out = _run(augment.build('weak', image_shape=shape, seed=3, flip=flip), x)
    matches = [_window_match(o, i, pad=4) for o, i in zip(out, x)]
    assert all(matches), 'every output is a crop of the padded (possibly flipped) input'
    flips = {m[0][0] for m in matches}
    offsets = {m[0][1:] for m in matches}
    assert flips == ({False, True} if flip else {False})
    assert len(offsets) > 5, 'crop offsets are drawn per image'


@pytest.mark.parametrize('shape, side', (((32, 32, 3), 16), ((8, 8, 1), 4)))
def test_strong_ends_with_a_grey_cutout_square(shape, side):
    x = _images(64, shape, seed=4, no_grey=True)
    out = _run(augment.build('strong', image_shape=shape, seed=5), x, batch=16)
    grey = (out == augment.GREY).all(axis=-1)
    # PIL's inclusive box has sides in [side/2 + 1, side + 1], clipped at the right/bottom edge.
    assert all(_has_square(g, side // 2 + 1) for g in grey)
    assert not any(_has_square(g, side + 2) for g in grey)
    full = np.mean([_has_square(g, side) for g in grey])
    assert full > 0.4, f'most squares are not clipped (FixMatch: 61%), got {full:.0%}'


def test_grey_box_is_fixmatch_cutout_abs():
    w = h = 32
    v = 16
    centres = np.random.default_rng(6).uniform(0, 32, (40, 2)).astype(np.float32)
    centres[:4] = [[0, 0], [31.9, 31.9], [8.5, 23.99], [24.0, 7.0]]
    out = augment._grey_box(tf.zeros([40, h, w, 1]), tf.constant(centres), size=v).numpy()
    for got, (cx, cy) in zip(out[..., 0], centres):
        # FixMatch CutoutAbs on the same centre.
        x0, y0 = int(max(0, cx - v / 2.)), int(max(0, cy - v / 2.))
        x1, y1 = int(min(w, x0 + v)), int(min(h, y0 + v))
        img = image_mod.new('L', (w, h), 0)
        draw.Draw(img).rectangle((x0, y0, x1, y1), 127)
        np.testing.assert_array_equal(got, np.asarray(img, np.float32))


@pytest.mark.parametrize('shape', ((32, 32, 3), (32, 32, 1), (8, 8, 1)))
def test_every_op_level_and_sign_matches_fixmatch_pil(shape):
    affine = image_mod.Transform.AFFINE

    def fixmatch(img, name, level, sign):  # randaugment.py, fixmatch_augment_pool()
        f = level * 0.9 / 10 + 0.05
        t = sign * level * 0.3 / 10
        return {
                'AutoContrast': lambda: ops_mod.autocontrast(img),
                'Brightness': lambda: enhance.Brightness(img).enhance(f),
                'Color': lambda: enhance.Color(img).enhance(f),
                'Contrast': lambda: enhance.Contrast(img).enhance(f),
                'Equalize': lambda: ops_mod.equalize(img),
                'Identity': lambda: img,
                'Posterize': lambda: ops_mod.posterize(img, int(level * 4 / 10) + 4),
                'Rotate': lambda: img.rotate(sign * int(level * 30 / 10)),
                'Sharpness': lambda: enhance.Sharpness(img).enhance(f),
                'ShearX': lambda: img.transform(img.size, affine, (1, t, 0, 0, 1, 0)),
                'ShearY': lambda: img.transform(img.size, affine, (1, 0, 0, t, 1, 0)),
                'Solarize': lambda: ops_mod.solarize(img, 256 - int(level * 256 / 10)),
                'TranslateX': lambda: img.transform(
                        img.size, affine, (1, 0, int(t * img.size[0]), 0, 1, 0)),
                'TranslateY': lambda: img.transform(
                        img.size, affine, (1, 0, 0, 0, 1, int(t * img.size[1]))),
        }[name]()

    combos = [(k, level, sign) for k in range(len(augment.OPS)) for level in range(1, 10)
              for sign in (-1, 1)]
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, (len(combos), *shape))
    smooth = np.clip(128 + np.cumsum(rng.integers(-24, 25, (len(combos), *shape)), 2), 0, 255)
    x = np.where(np.arange(len(combos))[:, None, None, None] % 2 == 0, noise, smooth)
    x = x.astype(np.uint8)
    op, level, sign = (np.array(c) for c in zip(*combos))
    op = tf.constant(op, tf.int32)
    value = augment.fixmatch_value(op, tf.constant(level, tf.int32),
                                   tf.constant(sign, tf.float32), shape[:2])
    out = augment.apply_op(tf.constant(x, tf.float32), op, value).numpy()
    for got, image, (k, lv, sg) in zip(out, x, combos):
        pil = image_mod.fromarray(image[..., 0] if shape[-1] == 1 else image)
        want = np.asarray(fixmatch(pil, augment.OPS[k], lv, sg), np.float32).reshape(shape)
        np.testing.assert_array_equal(got, want, err_msg=f'{augment.OPS[k]} level {lv} sign {sg}')


def usb_op(img, name, v):
    """The authors' USB fork, `op(img, v)` at the value v drawn over the op's range:
    ruofanhu/CLID-MU@5cd0608, semi/semilearn/datasets/augmentation/randaugment.py
    (the same ops as microsoft/Semi-supervised-learning@1ef4cbe,
    semilearn/datasets/augmentation/randaugment.py)."""
    affine = image_mod.Transform.AFFINE
    return {
            'AutoContrast': lambda: ops_mod.autocontrast(img),
            'Brightness': lambda: enhance.Brightness(img).enhance(v),
            'Color': lambda: enhance.Color(img).enhance(v),
            'Contrast': lambda: enhance.Contrast(img).enhance(v),
            'Equalize': lambda: ops_mod.equalize(img),
            'Identity': lambda: img,
            'Posterize': lambda: ops_mod.posterize(img, max(1, int(v))),
            'Rotate': lambda: img.rotate(v),
            'Sharpness': lambda: enhance.Sharpness(img).enhance(v),
            'ShearX': lambda: img.transform(img.size, affine, (1, v, 0, 0, 1, 0)),
            'ShearY': lambda: img.transform(img.size, affine, (1, 0, 0, v, 1, 0)),
            'Solarize': lambda: ops_mod.solarize(img, v),
            'TranslateX': lambda: img.transform(img.size, affine, (1, 0, v * img.size[0], 0, 1, 0)),
            'TranslateY': lambda: img.transform(img.size, affine, (1, 0, 0, 0, 1, v * img.size[1])),
    }[name]()


# USB's augment_list(): each op's value range (its RandAugment(3, 5) ignores the magnitude;
# microsoft/Semi-supervised-learning@1ef4cbe, semilearn/datasets/augmentation/randaugment.py)
USB_RANGES = {'AutoContrast': (0, 1), 'Brightness': (0.05, 0.95), 'Color': (0.05, 0.95),
              'Contrast': (0.05, 0.95), 'Equalize': (0, 1), 'Identity': (0, 1),
              'Posterize': (4, 8), 'Rotate': (-30, 30), 'Sharpness': (0.05, 0.95),
              'ShearX': (-0.3, 0.3), 'ShearY': (-0.3, 0.3), 'Solarize': (0, 256),
              'TranslateX': (-0.3, 0.3), 'TranslateY': (-0.3, 0.3)}


def _pil_image(image: np.ndarray, shape) -> image_mod.Image:
    return image_mod.fromarray(image[..., 0] if shape[-1] == 1 else image)


def _test_images(n: int, shape, seed: int) -> np.ndarray:
    """uint8 [n, *shape]: noise and smooth images alternately (edges and flat regions)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (n, *shape))
    smooth = np.clip(128 + np.cumsum(rng.integers(-24, 25, (n, *shape)), 2), 0, 255)
    return np.where(np.arange(n)[:, None, None, None] % 2 == 0, noise, smooth).astype(np.uint8)


@pytest.mark.parametrize('shape', ((32, 32, 3), (8, 8, 1)))
def test_every_usb_op_matches_the_usb_pil_code_over_its_range(shape):
    """Each op at values across its whole USB range (ends included), fractional
    translations and angles of either sign, against USB's PIL code (`usb_op`:
    microsoft/Semi-supervised-learning@1ef4cbe, semilearn/datasets/augmentation/randaugment.py)."""
    rng = np.random.default_rng(3)
    combos = []
    for k, name in enumerate(augment.OPS):
        low, high = USB_RANGES[name]
        for value in (low, high - 1e-9, *rng.uniform(low, high, 6)):
            combos.append((k, float(value)))
    x = _test_images(len(combos), shape, seed=4)
    op = tf.constant([k for k, _ in combos], tf.int32)
    # the value of a translation is in pixels: USB's v * side
    # (microsoft/Semi-supervised-learning@1ef4cbe,
    # semilearn/datasets/augmentation/randaugment.py: TranslateX())
    side = {'TranslateX': shape[1], 'TranslateY': shape[0]}
    pixels = tf.constant([v * side.get(augment.OPS[k], 1) for k, v in combos], tf.float64)
    out = augment.apply_op(tf.constant(x, tf.float32), op, pixels).numpy()
    for got, image, (k, v) in zip(out, x, combos):
        want = np.asarray(usb_op(_pil_image(image, shape), augment.OPS[k], v), np.float32)
        np.testing.assert_array_equal(got, want.reshape(shape),
                                      err_msg=f'{augment.OPS[k]} value {v}')


def test_randaugment_draws_three_always_applied_ops_over_their_whole_ranges():
    """USB's RandAugment(3, 5) (microsoft/Semi-supervised-learning@1ef4cbe,
    semilearn/datasets/augmentation/randaugment.py: RandAugment.__call__()): 3 rounds, the op
    uniform over the 14 (Identity at 1/14, no extra 'not applied' draw), the value uniform
    over the op's range (a translation's fraction times the side)."""
    ops, values = augment.randaugment_draws(tf.constant([5, 6], tf.int64), 14000, (32, 24))
    assert len(ops) == len(values) == augment.USB_NUM_OPS == 3
    for op, value in zip(ops, values):
        op, value = op.numpy(), value.numpy()
        counts = np.bincount(op, minlength=len(augment.OPS))
        assert counts.min() > 850 and counts.max() < 1150, counts  # 1000 +- 4.7 sigma
        for k, name in enumerate(augment.OPS):
            low, high = USB_RANGES[name]
            scale = {'TranslateX': 24, 'TranslateY': 32}.get(name, 1)
            got = value[op == k] / scale
            assert low <= got.min() < low + 0.02 * (high - low), name
            assert high - 0.02 * (high - low) < got.max() < high, name
    assert not np.array_equal(ops[0].numpy(), ops[1].numpy())


@pytest.mark.parametrize('shape', ((32, 32, 3), (8, 8, 1)))
def test_the_randaugment_view_is_the_weak_view_then_three_usb_ops_and_no_cutout(shape):
    """The pipeline's strong view, image by image: the weak view (same seed), then the three
    drawn USB ops in order through USB's PIL code (`usb_op`:
    microsoft/Semi-supervised-learning@1ef4cbe, semilearn/datasets/augmentation/randaugment.py);
    nothing else (no Cutout square, as the fork's fixmatch=False:
    ruofanhu/CLID-MU@5cd0608, semi/semilearn/datasets/augmentation/randaugment.py)."""
    x = _images(12, shape, seed=21)
    seed = tf.constant([8, 9], tf.int64)
    strong = augment.build('randaugment', image_shape=shape, seed=0, pad=1)
    weak = augment.build('weak', image_shape=shape, seed=0, pad=1)
    got = strong(tf.constant(x), stateless_seed=seed).numpy()
    first = weak(tf.constant(x), stateless_seed=seed).numpy().astype(np.uint8)
    _, s_ops, _ = augment._split(seed, 3)
    ops, values = augment.randaugment_draws(s_ops, len(x), shape[:2])
    side = {'TranslateX': shape[1], 'TranslateY': shape[0]}
    for i, image in enumerate(first):
        pil = _pil_image(image, shape)
        for op, value in zip(ops, values):
            name = augment.OPS[int(op[i])]
            pil = usb_op(pil, name, float(value[i]) / side.get(name, 1))
        np.testing.assert_array_equal(got[i], np.asarray(pil, np.float32).reshape(shape))


@pytest.mark.parametrize('kind, distinct', (('weak', 10), ('strong', 14), ('randaugment', 14)))
def test_images_in_a_batch_get_different_augmentations(kind, distinct):
    x = np.repeat(_images(1, (32, 32, 3), seed=8), 16, axis=0)
    out = _run(augment.build(kind, image_shape=(32, 32, 3), seed=9), x, batch=16)
    assert len({o.tobytes() for o in out}) >= distinct


@pytest.mark.parametrize('kind', ('weak', 'strong', 'randaugment'))
def test_same_seed_gives_the_same_pipeline_outputs(kind):
    x = _images(12, (32, 32, 3), seed=10)

    def outputs(seed):
        return _run(augment.build(kind, image_shape=(32, 32, 3), seed=seed), x)

    first = outputs(11)
    np.testing.assert_array_equal(first, outputs(11))
    assert not np.array_equal(first, outputs(12))


def test_each_pass_over_a_dataset_draws_new_augmentations():
    x = _images(8, (32, 32, 3), seed=13)
    ds = tf.data.Dataset.from_tensor_slices(x).batch(4).map(
            augment.build('strong', image_shape=(32, 32, 3), seed=14))
    epoch1, epoch2 = (np.concatenate([b.numpy() for b in ds]) for _ in range(2))
    assert not np.array_equal(epoch1, epoch2)


def test_runs_in_graph_mode_inside_tf_data_and_parallel_map_with_explicit_seeds():
    fn = augment.build('strong', image_shape=(8, 8, 1), seed=15, flip=False)
    eager_at_trace = []

    def traced(images, seed):
        eager_at_trace.append(tf.executing_eagerly())
        return {'image': fn(images, stateless_seed=seed)}

    x = _images(32, (8, 8, 1), seed=16)

    def outputs():
        ds = tf.data.Dataset.zip(tf.data.Dataset.from_tensor_slices(x).batch(4),
                                 tf.data.Dataset.random(seed=17).batch(2))
        ds = ds.map(traced, num_parallel_calls=4, deterministic=True)
        return np.concatenate([b['image'].numpy() for b in ds])

    np.testing.assert_array_equal(outputs(), outputs())
    assert eager_at_trace and not any(eager_at_trace)


@pytest.mark.parametrize('kind', ('weak', 'strong', 'randaugment'))
def test_images_in_zero_one_augment_as_their_pixels_do(kind):
    """pixel_scale=255: images scaled to [0, 1] go through the same ops as their 0..255
    pixels (the ops run on images * 255) and come back in [0, 1]."""
    pixels = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3)).astype(np.float32)
    seed = tf.constant([1, 2], tf.int64)
    want = augment.build(kind, image_shape=(8, 8, 3), seed=0, pad=2)(
        tf.constant(pixels), stateless_seed=seed).numpy()
    got = augment.build(kind, image_shape=(8, 8, 3), seed=0, pad=2, pixel_scale=255.0)(
        tf.constant(pixels / 255.0, tf.float32), stateless_seed=seed).numpy()
    assert got.min() >= 0.0 and got.max() <= 1.0 + 1e-6
    np.testing.assert_allclose(got * 255.0, want, atol=1e-3)
