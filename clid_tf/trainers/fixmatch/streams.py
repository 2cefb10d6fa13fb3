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

from typing import Callable, Mapping

import numpy as np
import tensorflow as tf

from clid_tf.data import pipelines as data
from clid_tf.data.inputs import Inputs

Augment = Callable[..., tf.Tensor]  # fn(images float32 [b, ...], stateless_seed) -> same


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
               with_positions: bool = False) -> tf.data.Dataset:
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
    """
    common = dict(seed=seed, steps_per_epoch=steps_per_epoch, first_epoch=first_epoch)
    fields = {"label": np.asarray(labels).astype(np.int32)}
    if is_noisy is not None:
        fields["is_noisy"] = np.asarray(is_noisy, bool)
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
