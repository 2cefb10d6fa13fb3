"""The data of a semi-supervised run: a few noisy labels and many unlabeled samples
(FixMatch / FlexMatch). numpy only, on labels and indices, so bad sizes are one line before
TensorFlow starts.

  labeled     `num_labels / K` samples of every class (by true label where known), drawn
              once per seed; label noise is injected into these labels only
  unlabeled   the rest of the training split (or all of it with
              `include_labeled_in_unlabeled`); their labels are never read
  meta set    CLID's images: `meta_source='unlabeled'` a random `meta_size` subset of the
              unlabeled samples (the reported runs), `'labeled'` `meta_size / K` labeled
              samples per NOISY class that stay in the labeled set (the committed configs)
  held out    with `val_split`, a seeded part of the labeled samples kept out of training,
              scored against their noisy labels (hyper-parameters without test labels)

Every index is into the training split's source.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from clid_tf.data import datasets
from clid_tf.data import meta_sets
from clid_tf.data import noise as noise_lib
from clid_tf.data import sources
from clid_tf.data import splits

META_SOURCES = ("unlabeled", "labeled")
NO_LABEL = -1  # noisy_labels of the samples that have none (the unlabeled ones)


class SslSetup(NamedTuple):
    """A semi-supervised run's data; the fields of `splits.Setup` mean what they mean there.

    Attributes:
      dataset: the loaded data.
      noisy_labels: int64 [N]: the labels training sees for the labeled samples (noise
        injected), NO_LABEL (-1) for every other sample.
      train_indices: int64 [L] labeled samples trained on.
      meta_indices: int64 [M] the meta set (CLID's images).
      meta_labels: None: CLID reads no label.
      selection_indices: int64 [M] the meta set, whose CLID ranks the evaluations.
      val_indices: int64 [V] labeled samples held out of training, or None.
      unlabeled_indices: int64 [U] unlabeled samples.
      meta_source: 'unlabeled' or 'labeled'.
      meta_split, train_of_epoch, meta_of_epoch: as `splits.Setup`'s, fixed here (the meta
        set indexes the training split; nothing is re-drawn per epoch).
    """
    dataset: datasets.Dataset
    noisy_labels: np.ndarray
    train_indices: np.ndarray
    meta_indices: np.ndarray
    meta_labels: None
    selection_indices: np.ndarray
    val_indices: np.ndarray | None
    unlabeled_indices: np.ndarray
    meta_source: str
    meta_split: str = "train"
    train_of_epoch: None = None
    meta_of_epoch: None = None

    def meta_inputs(self):
        """The `Inputs` that meta_indices and selection_indices index."""
        return self.dataset.train.inputs


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream]))


def labeled_subset(labels: np.ndarray, *, num_labels: int, num_classes: int,
                   seed: int) -> np.ndarray:
    """int64 [num_labels] sorted: num_labels / K samples of every class of `labels`."""
    if num_labels < num_classes or num_labels % num_classes:
        raise ValueError(f"num_labels={num_labels} must be a positive multiple of the "
                         f"{num_classes} classes (num_labels / K labeled samples per class)")
    per_class = num_labels // num_classes
    return meta_sets.per_class_choice(
        labels, per_class=per_class, num_classes=num_classes, rng=_rng(seed, 31),
        too_few=lambda c, n: f"num_labels={num_labels} needs {per_class} labeled samples "
                             f"of class {c} and some left unlabeled; it has {n}")


def stratified_meta_set(indices: np.ndarray, noisy_labels: np.ndarray, *, size: int,
                        num_classes: int, seed: int) -> np.ndarray:
    """int64 sorted: size / K of `indices` per NOISY label (the committed configs' meta set,
    as the authors' fork: ruofanhu/CLID-MU@5cd0608, semi/semilearn/core/utils/build.py:
    get_meta_set()); they stay in training. The size is checked against them."""
    per_class = size // num_classes
    if per_class < 1:
        raise ValueError(f"meta_size={size} is smaller than the number of classes "
                         f"{num_classes}")
    rng = _rng(seed, 37)
    chosen = []
    for c in range(num_classes):
        members = indices[noisy_labels[indices] == c]
        if len(members) < per_class:
            raise ValueError(f"meta_size={size} takes {per_class} labeled samples of noisy "
                             f"class {c}; the labeled set has {len(members)}")
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def prepare(dataset: datasets.Dataset, *, num_labels: int, noise: str, noise_rate: float,
            seed: int, meta_source: str = "unlabeled", meta_size: int,
            include_labeled_in_unlabeled: bool = False, val_split: float = 0.0,
            batch_size: int, unlabeled_batch_size: int = 0,
            meta_batch_size: int) -> SslSetup:
    """Labeled/unlabeled split, noise on the labeled labels, meta set, size checks.

    Args:
      dataset: the loaded data.
      num_labels: labeled samples, a multiple of K.
      noise: a `noise.KINDS` name ('none' keeps the labels) or a CIFAR-N label-set name
        (already loaded as the labels: kept).
      noise_rate: rate of the synthetic noise.
      seed: seed of the split, the noise, the held-out part and the meta set.
      meta_source: 'unlabeled' or 'labeled' (module docstring).
      meta_size: meta-set size (a multiple of K is used for 'labeled').
      include_labeled_in_unlabeled: the unlabeled set is the whole training split
        (USB's include_lb_to_ulb, True by default in
        microsoft/Semi-supervised-learning@1ef4cbe, train.py; the authors' fork passes False:
        ruofanhu/CLID-MU@5cd0608, semi/semilearn/core/utils/build.py: get_dataset()).
      val_split: fraction of the labeled samples held out.
      batch_size, unlabeled_batch_size, meta_batch_size: batch sizes, checked against the
        parts they draw from (unlabeled_batch_size 0: no unlabeled batches).

    Raises:
      ValueError (or DataError from the noise) with a one-line message on bad input.
    """
    if meta_source not in META_SOURCES:
        raise ValueError(f"unknown meta source {meta_source!r}; choose from {META_SOURCES}")
    train, k = dataset.train, dataset.num_classes
    true = train.clean_labels if train.clean_labels is not None else train.labels
    labeled = labeled_subset(true, num_labels=num_labels, num_classes=k, seed=seed)
    noisy = np.full(len(train.labels), NO_LABEL, np.int64)
    noisy[labeled] = _noisy(dataset, labeled, noise=noise, noise_rate=noise_rate, seed=seed)
    everything = np.arange(len(noisy), dtype=np.int64)
    unlabeled = everything if include_labeled_in_unlabeled else np.setdiff1d(
        everything, labeled).astype(np.int64)
    labeled, val = splits.hold_out(labeled, val_split, seed, has_val=dataset.val is not None)
    if meta_source == "unlabeled":
        meta = unlabeled[meta_sets.random_subset(len(unlabeled), size=meta_size, seed=seed)]
    else:
        meta = stratified_meta_set(labeled, noisy, size=meta_size, num_classes=k, seed=seed)
    for size, part, text in (
            (batch_size, labeled, f"batch_size={batch_size} exceeds the {{}} labeled "
                                  "training samples"),
            (unlabeled_batch_size, unlabeled, f"the unlabeled batch (uratio * batch_size = "
                                              f"{unlabeled_batch_size}) exceeds the {{}} "
                                              "unlabeled samples"),
            (meta_batch_size, meta, f"meta_batch_size={meta_batch_size} exceeds the meta "
                                    "set ({} samples)")):
        if size > len(part):
            raise ValueError(text.format(len(part)))
    return SslSetup(dataset, noisy, labeled, meta, None, meta, val, unlabeled, meta_source)


def _noisy(dataset: datasets.Dataset, labeled: np.ndarray, *, noise: str,
           noise_rate: float, seed: int) -> np.ndarray:
    """int64 [L]: the labels of the labeled samples with `noise` injected."""
    given = dataset.train.labels[labeled]
    if noise == "none" or sources.is_human_label(noise):
        return given.astype(np.int64)
    images = None
    if noise in noise_lib.IMAGE_KINDS:
        array = getattr(dataset.train.inputs, "array", None)
        if array is None:
            raise ValueError(f"{noise} noise needs the training images in memory (arrays); "
                             "file data cannot use it")
        images = array[labeled]
    return noise_lib.corrupt(given, kind=noise, rate=noise_rate,
                             num_classes=dataset.num_classes, seed=seed, images=images)


def split_report(setup: SslSetup) -> dict:
    """Sizes of the parts and the realised noise of the labeled samples trained on."""
    return {**splits.noise_report(setup), "num_labeled": int(len(setup.train_indices)),
            "num_unlabeled": int(len(setup.unlabeled_indices)),
            "meta_source": setup.meta_source}
