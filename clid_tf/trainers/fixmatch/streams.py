"""tf.data streams of the semi-supervised trainers.

One training element is {'labeled': ..., 'unlabeled': ..., 'meta': ...}:

  labeled    {'image': float32 [B, ...] weak view, 'label': int32 [B] noisy labels,
              optional 'is_noisy': bool [B] (ground truth, monitoring only)}
  unlabeled  {'weak': [uB, ...], 'strong': [uB, ...]} two views of the same images, plus
             'position': int32 [uB] (the sample's position in the unlabeled set, for
             FlexMatch's table) when asked for; no label of any kind
  meta       {'weak': [n, ...], 'strong': [n, ...]} (meta set from unlabeled images) or
             {'weak': [n, ...]} (from labeled ones); no label field at all

Every part is `data.epoch_batches` over its indices, so epoch e of a stream is a function
of (seed, e) alone (exact resume) and the images stream from their source. The views of a
batch are seeded by splitting the batch's stateless seed, one seed per view, so the weak
and strong views of an image are independent draws of the same image.
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import numpy as np
import tensorflow as tf

from clid_tf.data import augment as augment_lib
from clid_tf.data import pipelines as data
from clid_tf.data import user_data
from clid_tf.data.inputs import ArrayInputs, Inputs

Augment = Callable[..., tf.Tensor]  # fn(images float32 [b, ...], stateless_seed) -> same
CROP_RATIO = 0.875  # the weak view's crop keeps 87.5% of the side (USB's crop_ratio:
# microsoft/Semi-supervised-learning@1ef4cbe, train.py: --crop_ratio)


def views(image_shape, *, seed: int, flip: bool = True, strong: str = "randaugment",
          pixel_scale: float = 1.0) -> tuple[Augment, Augment]:
    """(weak, strong) views of images [H, W, C]: weak = flip (if `flip`) and a
    reflect-padded crop of side * (1 - CROP_RATIO) pixels (at least 1); strong = weak +
    `strong` ('randaugment': USB's RandAugment(3, 5), the authors' (ruofanhu/CLID-MU@5cd0608,
    semi/semilearn/datasets/cv_datasets/cifar.py: get_cifar()); 'strong': FixMatch's
    RandAugmentMC + Cutout). `pixel_scale` as `augment.build`."""
    pad = max(1, round(min(image_shape[:2]) * (1 - CROP_RATIO)))
    return tuple(augment_lib.build(kind, image_shape=image_shape, seed=seed, flip=flip,
                                   pad=pad, pixel_scale=pixel_scale)
                 for kind in ("weak", strong))


def view_batches(source: Inputs, indices: np.ndarray, *,
                 views: Mapping[str, Augment], batch_size: int, seed: int,
                 steps_per_epoch: int, first_epoch: int = 0,
                 fields: Mapping[str, np.ndarray] | None = None) -> tf.data.Dataset:
    """Endless batches {view name: float32 [b, ...] for each of `views`, **fields}: the
    same images through every view (`data.epoch_batches` for the rest)."""
    names = list(views)

    def augment(images, stateless_seed):
        seeds = tf.unstack(tf.random.experimental.stateless_split(stateless_seed, len(names)))
        return {name: views[name](images, stateless_seed=s) for name, s in zip(names, seeds)}

    batches = data.epoch_batches(source, indices, batch_size=batch_size, seed=seed,
                                 steps_per_epoch=steps_per_epoch, first_epoch=first_epoch,
                                 fields=fields, augment=augment)
    return batches.map(lambda b: {**b["image"], **{k: v for k, v in b.items() if k != "image"}})


def positions(indices: np.ndarray, num_samples: int) -> np.ndarray:
    """int32 [num_samples]: each sample's position in `indices`, -1 for the others."""
    table = np.full(num_samples, -1, np.int32)
    table[np.asarray(indices)] = np.arange(len(indices), dtype=np.int32)
    return table


def ssl_stream(source: Inputs, *, labeled: np.ndarray, labels: np.ndarray,
               unlabeled: np.ndarray, meta: np.ndarray | None, weak: Augment,
               strong: Augment, batch_size: int, unlabeled_batch_size: int,
               meta_batch_size: int = 0, meta_views: tuple[str, ...] = ("weak", "strong"),
               seed: int, steps_per_epoch: int, first_epoch: int = 0,
               is_noisy: np.ndarray | None = None,
               with_positions: bool = False,
               sample_weights: np.ndarray | None = None) -> tf.data.Dataset:
    """The training stream (module docstring), prefetched.

    Args:
      source: the training split's inputs.
      labeled: int [L] labeled indices; labels: int [N] their noisy labels (by source
        index; other entries are never read).
      unlabeled: int [U] unlabeled indices.
      meta: int [M] meta-set indices, or None for no meta batches (no loss-net).
      weak, strong: the two augmentations (`clid_tf.data.augment.build`).
      batch_size, unlabeled_batch_size, meta_batch_size: B, uB, n.
      meta_views: the views of the meta batch, ('weak', 'strong') or ('weak',).
      seed: stream seed (each part draws from its own offset of it).
      steps_per_epoch, first_epoch: as `data.epoch_batches`.
      is_noisy: bool [N] ground-truth noise flags (monitoring), or None.
      with_positions: unlabeled batches carry 'position' (FlexMatch).
      sample_weights: float [N] user weights of the labeled samples (by source index), or
        None: labeled batches then carry 'sample_weight'.
    """
    common = dict(seed=seed, steps_per_epoch=steps_per_epoch, first_epoch=first_epoch)
    fields = {"label": np.asarray(labels).astype(np.int32)}
    if is_noisy is not None:
        fields["is_noisy"] = np.asarray(is_noisy, bool)
    if sample_weights is not None:
        fields["sample_weight"] = np.asarray(sample_weights, np.float32)
    parts = {"labeled": view_batches(source, labeled, views={"image": weak},
                                     batch_size=batch_size, fields=fields, **common)}
    parts["unlabeled"] = view_batches(
        source, unlabeled, views={"weak": weak, "strong": strong},
        batch_size=unlabeled_batch_size, **{**common, "seed": seed + 2},
        fields={"position": positions(unlabeled, len(source))} if with_positions else None)
    if meta is not None:
        chosen = {"weak": weak, "strong": strong}
        parts["meta"] = view_batches(source, meta, views={v: chosen[v] for v in meta_views},
                                     batch_size=meta_batch_size,
                                     **{**common, "seed": seed + 1})
    return tf.data.Dataset.zip(parts).prefetch(tf.data.AUTOTUNE)


class UserStream(NamedTuple):
    """A user's fit arguments as the semi-supervised trainers' input."""
    stream: tf.data.Dataset
    steps: int                        # iterations per epoch
    num_unlabeled: int                # the unlabeled pool (FlexMatch's table size)
    validation_data: object
    profile: user_data.InputProfile


def from_user_data(x, y, unlabeled, *, num_classes: int, with_meta: bool, batch_size: int,
                   uratio: int, meta_size: int, meta_batch_size: int, meta_source: str,
                   include_labeled: bool, seed: int, steps_per_epoch: int | None,
                   first_epoch: int, strong: str = "randaugment", flip: bool = True,
                   with_positions: bool = False, sample_weight=None, class_weight=None,
                   validation_split: float = 0.0, validation_data=None) -> UserStream:
    """The training stream from labeled arrays (x, y) or a batched Dataset, and unlabeled
    images (an array, or a Dataset of image batches or of (images, ...) tuples), both read
    into memory. The views take the inputs' own pixel range; an epoch is one pass over the
    unlabeled images unless `steps_per_epoch` says otherwise; the meta set is `meta_size`
    random unlabeled images (weak and strong views) or labeled ones (`meta_source`)."""
    x, labels, weights, validation = user_data.in_memory(
        x, y, num_classes=num_classes,
        validation=user_data.checked_validation_data(validation_data, num_classes),
        sample_weight=sample_weight, class_weight=class_weight,
        validation_split=validation_split)
    if unlabeled is None:
        raise ValueError("FixMatch / FlexMatch train on unlabeled images too: pass "
                         "fit(x, y, unlabeled=images)")
    x = data.image_array(x, "FixMatchModel")
    pool = _images_of(unlabeled)
    profile = user_data.profile_of_array(x)
    pool_scale = user_data.profile_of_array(pool).pixel_scale
    if len(pool) and len(x) and pool_scale != profile.pixel_scale:
        raise ValueError("the labeled and the unlabeled images are on different pixel "
                         "scales (one in [0, 1], the other in [0, 255]): give both on one")
    if not profile.is_image:
        raise ValueError(f"FixMatch / FlexMatch need images [N, H, W, C] for their weak and "
                         f"strong views; these inputs are {profile.shape}")
    if pool.shape[1:] != x.shape[1:]:
        raise ValueError(f"unlabeled images have shape {pool.shape[1:]}, the labeled ones "
                         f"{x.shape[1:]}")
    if pool.dtype != x.dtype:
        pool = pool.astype(x.dtype) if x.dtype == np.float32 else pool.astype(np.float32)
        x = x.astype(pool.dtype)
    labeled = np.arange(len(x), dtype=np.int64)
    unlabeled_ids = len(x) + np.arange(len(pool), dtype=np.int64)
    if include_labeled:
        unlabeled_ids = np.concatenate([labeled, unlabeled_ids])
    source = ArrayInputs(np.concatenate([x, pool]))
    table = np.zeros(len(source), np.int32)
    table[labeled] = labels
    weight_table = None
    if weights is not None:
        weight_table = np.zeros(len(source), np.float32)
        weight_table[labeled] = weights
    meta = None
    if with_meta:
        candidates = unlabeled_ids if meta_source == "unlabeled" else labeled
        rng = np.random.default_rng(seed)
        meta = np.sort(rng.choice(candidates, min(meta_size, len(candidates)), replace=False))
    steps = steps_per_epoch or max(1, len(unlabeled_ids) // (uratio * batch_size))
    weak, strong_view = views(profile.shape, seed=seed, flip=flip, strong=strong,
                              pixel_scale=profile.pixel_scale)
    stream = ssl_stream(
        source, labeled=labeled, labels=table, unlabeled=unlabeled_ids, meta=meta,
        weak=weak, strong=strong_view, batch_size=min(batch_size, len(labeled)),
        unlabeled_batch_size=min(uratio * batch_size, len(unlabeled_ids)),
        meta_batch_size=0 if meta is None else min(meta_batch_size, len(meta)),
        meta_views=("weak", "strong") if meta_source == "unlabeled" else ("weak",),
        seed=seed, steps_per_epoch=steps, first_epoch=first_epoch,
        with_positions=with_positions, sample_weights=weight_table)
    return UserStream(stream, steps, len(unlabeled_ids), validation, profile)


def _images_of(unlabeled) -> np.ndarray:
    """The unlabeled images as one array, from an array or a Dataset of batches."""
    if not isinstance(unlabeled, tf.data.Dataset):
        return data.image_array(unlabeled, "FixMatchModel")
    batches = []
    for element in unlabeled.as_numpy_iterator():
        images = element[0] if isinstance(element, tuple) else (
            element["image"] if isinstance(element, dict) else element)
        batches.append(images)
    if not batches:
        raise ValueError("the unlabeled Dataset is empty")
    return data.image_array(np.concatenate(batches), "FixMatchModel")
