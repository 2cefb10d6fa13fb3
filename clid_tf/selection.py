"""Label-free model selection and checkpoint ensembling with CLID (METHOD.md section 7).

After every epoch the meta-set CLID of the classifier is measured in inference mode
(batch-size-weighted mean over shuffled meta batches). The test-set logits of the `keep`
epochs with the lowest meta CLID are kept; from them come

  acc_1  the single lowest-CLID epoch (model selection without clean labels),
  acc_3  argmax of the SUM of raw test logits of the 3 lowest-CLID epochs,
  acc_5  the same for the 5 lowest-CLID epochs.

Test labels are read only to report these accuracies, never to rank epochs. Meta images
are used as given (the reference strong-augments them; this project's pipeline does not
augment).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import keras
import numpy as np
import tensorflow as tf

from clid_tf import clid as clid_lib

# (raw images float32 [b, ...], training=False) -> (logits [b, K], features [b, d])
Forward = Callable[..., tuple]

ENSEMBLE_SIZES = (1, 3, 5)


# ---------------------------------------------------------------- meta-set CLID
def shuffled_batches(num_samples: int, *, batch_size: int, seed: int) -> list[np.ndarray]:
    """Index batches of one seeded shuffle of range(num_samples).

    All batches have `batch_size` samples except the last, which may be smaller. A last
    batch of a single sample is dropped: CLID of one sample is always -log(1 + eps) ~ 0
    (its only similarity is with itself), which says nothing about the model.

    Args:
      num_samples: N >= 2.
      batch_size: b >= 2.
      seed: seed of the permutation (numpy default_rng).

    Returns:
      List of int64 index arrays [n_b]; together a permutation of N or N - 1 indices.
    """
    if num_samples < 2:
        raise ValueError(f"CLID needs at least 2 meta samples, got {num_samples}")
    if batch_size < 2:
        raise ValueError(f"CLID needs meta batches of at least 2 samples, got {batch_size}")
    order = np.random.default_rng(seed).permutation(num_samples)
    batches = [order[i:i + batch_size] for i in range(0, num_samples, batch_size)]
    if len(batches[-1]) == 1:
        batches.pop()
    return batches


def weighted_mean(values: Sequence[float], sizes: Sequence[int]) -> float:
    """sum_b values_b * sizes_b / sum_b sizes_b."""
    sizes = np.asarray(sizes, dtype=np.float64)
    return float(np.dot(np.asarray(values, dtype=np.float64), sizes) / sizes.sum())


def meta_set_clid(backbone: Forward, images: np.ndarray, *, batch_size: int, tau: float,
                  seed: int) -> float:
    """Meta-set CLID in inference mode: sum_b CLID_b * n_b / N (reference `test_meta`).

    The meta images are shuffled with `seed` and cut into batches of `batch_size`; the last
    batch may be smaller. A last batch of one sample (degenerate CLID) is skipped, and N is
    then the number of samples actually scored (weights always sum to 1).

    Args:
      backbone: model (or any callable with its signature) mapping raw images
        float32 [b, ...] with training=False to (logits [b, K], features [b, d]).
      images: [N, ...] raw meta-set inputs (any numeric dtype; cast per batch).
      batch_size: meta batch size b (the reference uses 100, like the meta step).
      tau: CLID temperature.
      seed: shuffle seed; the same seed gives the same batches and so the same value.

    Returns:
      The weighted mean CLID, a Python float.
    """
    values, sizes = [], []
    for idx in shuffled_batches(len(images), batch_size=batch_size, seed=seed):
        logits, features = backbone(_as_float(images[idx]), training=False)
        values.append(float(clid_lib.clid_xla(features, logits, tau=tau)))
        sizes.append(len(idx))
    return weighted_mean(values, sizes)


# ---------------------------------------------------------------- test logits
def predict_logits(backbone: Forward, images: np.ndarray, *, batch_size: int) -> np.ndarray:
    """Inference-mode logits float32 [N, K] of raw images [N, ...], in order."""
    chunks = [np.asarray(backbone(_as_float(images[i:i + batch_size]), training=False)[0])
              for i in range(0, len(images), batch_size)]
    return np.concatenate(chunks, axis=0).astype(np.float32)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of logits [N, K] against int labels [N]."""
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))


def _as_float(images: np.ndarray) -> tf.Tensor:
    return tf.convert_to_tensor(np.asarray(images), dtype=tf.float32)


def inference_function(backbone: keras.Model) -> Forward:
    """`backbone(images, training=False)` as a tf.function (graph speed; same result)."""
    compiled = tf.function(lambda images: backbone(images, training=False),
                           reduce_retracing=True)

    def forward(images, training: bool = False):
        if training:
            raise ValueError("selection runs the backbone in inference mode only")
        return compiled(images)

    return forward


# ---------------------------------------------------------------- top-k store
class Entry(NamedTuple):
    """One kept epoch: its ranking score, its (1-based) number and its test logits [N, K]."""
    score: float
    epoch: int
    logits: np.ndarray


def _rank_key(entry: Entry) -> tuple[float, int]:
    # NaN (a diverged epoch) ranks last; ties keep the earlier epoch.
    score = math.inf if math.isnan(entry.score) else entry.score
    return score, entry.epoch


class TopKLogits:
    """Test logits of the `max_size` epochs with the LOWEST score (reference
    `update_best_results_dict`); only those logits are held in memory."""

    def __init__(self, max_size: int = 5):
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self.max_size = int(max_size)
        self._entries: list[Entry] = []

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> list[Entry]:
        """Kept entries, best (lowest score, then earliest epoch) first."""
        return list(self._entries)

    def update(self, score: float, epoch: int, test_logits: np.ndarray) -> bool:
        """Offers one epoch; returns whether it is kept (it may displace the worst entry).

        Args:
          score: ranking score, lower is better (meta-set CLID).
          epoch: epoch number; on equal scores the earlier epoch wins.
          test_logits: float [N, K] raw test logits of that epoch.
        """
        entry = Entry(float(score), int(epoch), np.asarray(test_logits))
        entries = sorted([*self._entries, entry], key=_rank_key)
        self._entries = entries[:self.max_size]
        return any(e is entry for e in self._entries)

    def best_epochs(self, k: int | None = None) -> list[int]:
        """Epoch numbers of the best k entries (all kept entries when k is None)."""
        return [e.epoch for e in self._entries[:self._check_k(k)]]

    def ensemble_logits(self, k: int) -> np.ndarray:
        """Sum of the raw test logits float64 [N, K] of the best k entries."""
        k = self._check_k(k)
        return np.sum([e.logits.astype(np.float64) for e in self._entries[:k]], axis=0)

    def ensemble_accuracy(self, labels: np.ndarray, k: int) -> float:
        """Accuracy of argmax of the SUM of raw logits (not probabilities) of the best k."""
        return accuracy(self.ensemble_logits(k), labels)

    def _check_k(self, k: int | None) -> int:
        if k is None:
            return len(self._entries)
        if not 1 <= k <= len(self._entries):
            raise ValueError(f"k={k} must be in [1, {len(self._entries)}] (entries stored)")
        return int(k)


# ---------------------------------------------------------------- the callback
class ClidSelection(keras.callbacks.Callback):
    """Per-epoch meta-set CLID, CLID model selection and top-k logit ensembles.

    At the end of every epoch, with `self.model.backbone` in inference mode: meta-set CLID
    (shuffle seed = seed + epoch, epoch 1-based, so the value is reproducible), test logits
    and test accuracy; the epoch is offered to a `TopKLogits(keep)` store. These entries are
    added to the epoch `logs`:

      meta_set_clid       this epoch's meta-set CLID
      test_accuracy       this epoch's test accuracy
      selected_accuracy   test accuracy of the lowest-CLID epoch so far (acc_1)
      ensemble3_accuracy  top-3 logit-sum ensemble (over fewer epochs while fewer exist)
      ensemble5_accuracy  top-5 logit-sum ensemble (over at most `keep` epochs)

    Keras hands one logs dict to the callbacks in list order and appends History last, so
    History always records them, but this callback must come BEFORE TensorBoard (and any
    other callback that reads them) in `callbacks=[...]`.

    Works with any model exposing `.backbone` (raw images -> (logits, features)), including
    the plain `ce` method. State accumulates over every fit the instance is passed to.
    """

    def __init__(self, meta_images: np.ndarray, test_images: np.ndarray,
                 test_labels: np.ndarray, *, batch_size: int = 100, tau: float = 0.5,
                 keep: int = 5, seed: int = 0, eval_batch_size: int = 500):
        super().__init__()
        if len(test_images) != len(test_labels):
            raise ValueError(f"{len(test_images)} test images but {len(test_labels)} labels")
        shuffled_batches(len(meta_images), batch_size=batch_size, seed=seed)  # validates
        self.meta_images = meta_images
        self.test_images = test_images
        self.test_labels = np.asarray(test_labels).astype(np.int64)
        self.batch_size = int(batch_size)
        self.tau = float(tau)
        self.seed = int(seed)
        self.eval_batch_size = int(eval_batch_size)
        self.store = TopKLogits(keep)
        self.epochs: list[int] = []
        self.meta_clid: list[float] = []
        self.test_accuracy: list[float] = []
        self._forward: Forward | None = None

    def on_train_begin(self, logs=None):
        backbone = getattr(self.model, "backbone", None)
        if backbone is None:
            raise ValueError("ClidSelection needs a model with a `.backbone` attribute")
        self._forward = inference_function(backbone)

    def on_epoch_end(self, epoch, logs=None):
        number = int(epoch) + 1
        score = meta_set_clid(self._forward, self.meta_images, batch_size=self.batch_size,
                              tau=self.tau, seed=self.seed + number)
        logits = predict_logits(self._forward, self.test_images,
                                batch_size=self.eval_batch_size)
        self.epochs.append(number)
        self.meta_clid.append(score)
        self.test_accuracy.append(accuracy(logits, self.test_labels))
        self.store.update(score, number, logits)
        if logs is not None:
            logs.update(meta_set_clid=score, test_accuracy=self.test_accuracy[-1],
                        **self._accuracies())

    def _accuracies(self) -> dict[str, float]:
        """acc_1, acc_3, acc_5 over what the store holds (k capped at its size)."""
        names = {1: "selected_accuracy", 3: "ensemble3_accuracy", 5: "ensemble5_accuracy"}
        return {names[k]: self.store.ensemble_accuracy(self.test_labels, min(k, len(self.store)))
                for k in ENSEMBLE_SIZES}

    def get_state(self) -> dict[str, np.ndarray]:
        """Everything needed to continue after a restart, as numpy arrays (for an npz)."""
        entries = self.store.entries
        return {
            "selection_epochs": np.asarray(self.epochs, np.int64),
            "selection_meta_clid": np.asarray(self.meta_clid, np.float64),
            "selection_test_accuracy": np.asarray(self.test_accuracy, np.float64),
            "selection_store_scores": np.asarray([e.score for e in entries], np.float64),
            "selection_store_epochs": np.asarray([e.epoch for e in entries], np.int64),
            "selection_store_logits": (np.stack([e.logits for e in entries]) if entries
                                       else np.zeros((0,), np.float32)),
        }

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Restores what `get_state` returned."""
        self.epochs = [int(e) for e in state["selection_epochs"]]
        self.meta_clid = [float(v) for v in state["selection_meta_clid"]]
        self.test_accuracy = [float(v) for v in state["selection_test_accuracy"]]
        self.store = TopKLogits(self.store.max_size)
        for score, epoch, logits in zip(state["selection_store_scores"],
                                        state["selection_store_epochs"],
                                        state["selection_store_logits"]):
            self.store.update(float(score), int(epoch), logits)

    def summary(self) -> dict:
        """Final selection results.

        Returns:
          selected_epoch: 1-based epoch with the lowest meta CLID (earliest on ties).
          selected_accuracy, ensemble3_accuracy, ensemble5_accuracy: acc_1, acc_3, acc_5.
          kept: [{'epoch', 'meta_clid'}] of the stored epochs, best first.
          epochs, meta_clid, test_accuracy: per-epoch lists, in training order.
        """
        if not self.epochs:
            raise ValueError("no epoch has been recorded yet")
        return {
            "selected_epoch": self.store.best_epochs(1)[0],
            **self._accuracies(),
            "kept": [{"epoch": e.epoch, "meta_clid": e.score} for e in self.store.entries],
            "epochs": list(self.epochs),
            "meta_clid": list(self.meta_clid),
            "test_accuracy": list(self.test_accuracy),
        }
