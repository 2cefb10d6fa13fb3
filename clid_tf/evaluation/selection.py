"""Label-free model selection and checkpoint ensembling with CLID.

After every epoch the meta-set CLID of the classifier is measured in inference mode
(batch-size-weighted mean over shuffled meta batches). The test-set logits of the `keep`
epochs with the lowest meta CLID are kept; from them come

  acc_1  the single lowest-CLID epoch (model selection without clean labels),
  acc_3  argmax of the SUM of raw test logits of the 3 lowest-CLID epochs,
  acc_5  the same for the 5 lowest-CLID epochs.

Only epochs trained at the lowest learning rate of the run so far compete (`match_lr`, the
default): CLID sees how consistent the features and the predictions are, not the error that
the weight noise of a larger learning rate adds, so an epoch in the middle of an anneal can
score a lower CLID than the better, annealed epochs after it. When the learning rate drops
below every earlier epoch's, the kept epochs are dropped and the competition restarts at the
new rate; epochs at a higher rate (a warm restart's climb) are scored but never kept. Under a
single anneal the selection is therefore the last epoch; under a step schedule it chooses
within the last step, under a periodic cosine among the troughs, under a constant rate among
all epochs (`match_lr=False` ranks every epoch, as the authors' code does).

Test labels are read only to report these accuracies, never to rank epochs. The meta images
are scored as they are, or through the training augmentation (`augment`; the authors'
code scores them strongly augmented, as its loader augments every training image:
ruofanhu/CLID-MU@5cd0608, dataloader.py: CIFAR10.__getitem__()).
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Callable, NamedTuple, Sequence

import keras
import numpy as np
import tensorflow as tf

from clid_tf import atomic_io
from clid_tf.core import clid as clid_lib
from clid_tf.data import pipelines as data

# (raw images float32 [b, ...], training=False) -> (logits [b, K], features [b, d])
Forward = Callable[..., tuple]

ENSEMBLE_SIZES = (1, 3, 5)

# Two epochs' learning rates within this relative tolerance are the same rate (float32 noise).
LR_RTOL = 1e-4


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


def meta_set_clid(backbone: Forward, meta: data.Part, *, batch_size: int, tau: float,
                  seed: int, augment: Callable[..., tf.Tensor] | None = None) -> float:
    """Meta-set CLID in inference mode: sum_b CLID_b * n_b / N (`test_meta` in
    ruofanhu/CLID-MU@5cd0608, utilities.py).

    The meta samples are shuffled with `seed` and cut into batches of `batch_size`; the last
    batch may be smaller. A last batch of one sample (degenerate CLID) is skipped, and N is
    then the number of samples actually scored (weights always sum to 1).

    Args:
      backbone: model (or any callable with its signature) mapping raw inputs
        float32 [b, ...] with training=False to (logits [b, K], features [b, d]).
      meta: the meta set (a source and its indices); its labels are never read.
      batch_size: meta batch size b (the authors use 100, like the meta step: --meta_bsz
        in main_vri.py).
      tau: CLID temperature.
      seed: shuffle seed; the same seed gives the same batches and so the same value.
      augment: batch augmentation of the training pipeline (the authors' code scores its
        meta images strongly augmented: ruofanhu/CLID-MU@5cd0608, dataloader.py:
        CIFAR10.__getitem__()), seeded by (seed, batch); None scores them as they are.

    Returns:
      The weighted mean CLID, a Python float.
    """
    order = np.concatenate(shuffled_batches(len(meta), batch_size=batch_size, seed=seed))
    values, sizes = [], []
    for b, (_, images) in enumerate(data.ordered_batches(meta.inputs, meta.ids()[order],
                                                         batch_size=batch_size)):
        if augment is not None:
            images = augment(images, stateless_seed=tf.constant([seed, b], tf.int64))
        logits, features = backbone(images, training=False)
        values.append(float(clid_lib.clid_xla(features, logits, tau=tau)))
        sizes.append(int(logits.shape[0]))
    return weighted_mean(values, sizes)


# ---------------------------------------------------------------- logits
def predict_logits(backbone: Forward, part: data.Part, *, batch_size: int) -> np.ndarray:
    """Inference-mode logits float32 [n, K] of the part's inputs, in order."""
    chunks = [np.asarray(backbone(images, training=False)[0])
              for _, images in data.ordered_batches(part.inputs, part.ids(),
                                                    batch_size=batch_size)]
    return np.concatenate(chunks, axis=0).astype(np.float32)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of logits [N, K] against int labels [N]."""
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))


def _fed_spec(tensor) -> tf.TensorSpec:
    """The spec of the batches the pipelines feed to an Input: pixels and floats arrive as
    float32 (`inputs.to_model`), token ids and text as they are."""
    dtype = tf.as_dtype(tensor.dtype)
    return tf.TensorSpec([None, *tensor.shape[1:]],
                         tf.float32 if dtype.is_floating or dtype == tf.uint8 else dtype)


def inference_function(backbone: keras.Model) -> Forward:
    """`backbone(images, training=False)` as a tf.function (graph speed; same result),
    traced once for every batch size when the backbone declares its input shape."""
    try:
        structure = backbone.input if getattr(backbone, "inputs", None) else None
    except AttributeError:  # a Sequential model never called: its one Input
        structure = backbone.inputs[0]
    if isinstance(structure, list):  # the pipelines hold several inputs as a tuple
        structure = tuple(structure)
    signature = None if structure is None else [tf.nest.map_structure(_fed_spec, structure)]
    compiled = tf.function(lambda images: backbone(images, training=False),
                           input_signature=signature, reduce_retracing=True)

    def forward(images, training: bool = False):
        if training:
            raise ValueError("selection runs the backbone in inference mode only")
        return compiled(images)

    return forward


# ---------------------------------------------------------------- top-k store
class Entry(NamedTuple):
    """One kept epoch: its ranking score, its (1-based) number and its test logits [N, K]
    (None without a test set)."""
    score: float
    epoch: int
    logits: np.ndarray | None


def _rank_key(entry: Entry) -> tuple[float, int]:
    # NaN (a diverged epoch) ranks last; ties keep the earlier epoch.
    score = math.inf if math.isnan(entry.score) else entry.score
    return score, entry.epoch


class TopKLogits:
    """The `max_size` epochs with the LOWEST score and their test logits
    (`update_best_results_dict` in ruofanhu/CLID-MU@5cd0608, utilities.py); only those
    logits are held in memory."""

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

    def update(self, score: float, epoch: int, test_logits: np.ndarray | None = None) -> bool:
        """Offers one epoch; returns whether it is kept (it may displace the worst entry).

        Args:
          score: ranking score, lower is better (meta-set CLID).
          epoch: epoch number; on equal scores the earlier epoch wins.
          test_logits: float [N, K] raw test logits of that epoch, or None.
        """
        entry = Entry(float(score), int(epoch),
                      None if test_logits is None else np.asarray(test_logits))
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


def merged_top_k(stores: Sequence[TopKLogits], k: int) -> list[tuple[int, Entry]]:
    """The k lowest-score entries over several stores (DivideMix's two networks,
    `best_results_dict_double` in ruofanhu/CLID-MU@5cd0608, sota/utils.py): (store index,
    entry) pairs, best first; ties go to the earlier epoch, then to the lower store index. k
    is capped at the entries stored."""
    pool = [(i, entry) for i, store in enumerate(stores) for entry in store.entries]
    return sorted(pool, key=lambda item: (*_rank_key(item[1]), item[0]))[:k]


def merged_ensemble_logits(stores: Sequence[TopKLogits], k: int) -> np.ndarray:
    """Sum of the raw test logits float64 [N, K] of the `merged_top_k` entries."""
    return np.sum([entry.logits.astype(np.float64) for _, entry in merged_top_k(stores, k)],
                  axis=0)


def lowest_score_epoch(scores: Sequence[float], epochs: Sequence[int]) -> int:
    """The 1-based epoch among `epochs` whose score (`scores[epoch - 1]`) a `TopKLogits`
    store ranks first: the lowest, a NaN last, the earlier epoch on ties."""
    store = TopKLogits(1)
    for epoch in epochs:
        store.update(scores[epoch - 1], epoch)
    return store.best_epochs(1)[0]


def rate_verdict(floor: float, rate: float) -> tuple[float, bool, bool]:
    """One epoch at learning rate `rate` against the pool's rate `floor` (inf for none):
    (the pool's rate after it, whether the pool restarts, whether the epoch competes). A rate
    below the floor by more than `LR_RTOL` restarts the pool at that rate."""
    restart = rate < floor * (1.0 - LR_RTOL)
    floor = rate if restart else floor
    return floor, restart, rate <= floor * (1.0 + LR_RTOL)


def lowest_rate_epochs(rates: Sequence[float], eligible_from: int = 1) -> list[int]:
    """The 1-based epochs, from `eligible_from` on, that `ClidSelection(match_lr=True)` has
    chosen from once the epochs of `rates` (one learning rate per epoch, in order) are done:
    those at the lowest rate (`rate_verdict`)."""
    floor, chosen = math.inf, []
    for epoch, rate in enumerate(rates, 1):
        if epoch >= eligible_from:
            floor, restart, competes = rate_verdict(floor, float(rate))
            chosen = ([] if restart else chosen) + ([epoch] if competes else [])
    return chosen


# ---------------------------------------------------------------- the callback
class ClidSelection(keras.callbacks.Callback):
    """Per-epoch meta-set CLID, label-free model selection and top-k logit ensembles.

    At the end of every epoch, with the backbone in inference mode: the meta-set CLID
    (shuffle seed = seed + epoch, epoch 1-based, so the value is reproducible), and, when a
    test part is given, the test logits and accuracy. An eligible epoch is offered to a
    `TopKLogits(keep)` store ranked by CLID alone; the weights of every kept epoch are kept
    too (in memory, or as files in `directory`), so the selected epoch and the top-k
    ensemble can be exported after training. Logged into the epoch `logs`:

      meta_set_clid       this epoch's meta-set CLID (label-free)
      test_accuracy       this epoch's test accuracy                     (with a test part)
      selected_accuracy   test accuracy of the lowest-CLID epoch so far (acc_1)
      ensemble3_accuracy  top-3 logit-sum ensemble (over fewer epochs while fewer exist)
      ensemble5_accuracy  top-5 logit-sum ensemble (over at most `keep` epochs)

    Keras hands one logs dict to the callbacks in list order and appends History last, so
    put this callback BEFORE TensorBoard (and any other reader of these logs).

    Args:
      meta: the meta set (`data.Part`, an `Inputs`, or an array of inputs); None uses the meta
        set `MetaReweightModel.fit` drew (`model.meta_set`).
      test: a test part with labels (a `data.Part`, or (inputs, labels)), or None. Test
        labels are read only to report accuracies, never to rank epochs.
      batch_size: meta batch size of the CLID (the training meta batch size).
      tau: CLID temperature.
      keep: how many lowest-CLID epochs to keep (weights and test logits).
      seed: shuffle seed base.
      eval_batch_size: batch size of the test pass.
      augment: score the meta set through this batch augmentation (seeded), or None.
      directory: keep the weights of the kept epochs as `epoch-E.npz` files here (needed
        to resume); None keeps them in memory.
      backbone: the network to score; None uses `model.backbone`.
      prefix: prepended to every logged name (e.g. 'net1_' for one of two networks).
      eligible_from: the first (1-based) epoch the store may keep: earlier epochs are
        scored and logged but never selected (DivideMix keeps its warm-up out, as the
        authors' pools start after it: ruofanhu/CLID-MU@5cd0608,
        sota/Train_cifar_vri_mix.py:472-527). 1: every epoch. With `WarmUp(w)`,
        eligible_from=w+1 keeps the plain cross-entropy epochs out: a network early in
        training can score a low CLID while it still predicts nearly one class for
        everything.
      match_lr: compare only epochs at the lowest learning rate so far (module docstring);
        False ranks every eligible epoch.
      learning_rate: () -> the network's current learning rate (its optimizer's
        `learning_rate`), read as each epoch begins, so after any callback before this one
        has set the epoch's rate (put a LearningRateScheduler before this callback); None
        reads the compiled model's `optimizer` (a two-network model's first network's).
    """

    def __init__(self, meta=None, *, test=None, batch_size: int = 100, tau: float = 0.5,
                 keep: int = 5, seed: int = 0, eval_batch_size: int = 500,
                 augment: Callable[..., tf.Tensor] | None = None,
                 directory: str | None = None, backbone: keras.Model | None = None,
                 prefix: str = "", eligible_from: int = 1, match_lr: bool = True,
                 learning_rate: Callable[[], Any] | None = None):
        super().__init__()
        self.eligible_from = int(eligible_from)
        self.match_lr = bool(match_lr)
        self.learning_rate = learning_rate  # None: the model's current optimizer's
        self.lr_floor = math.inf  # the learning rate the kept epochs share (match_lr)
        self.eligible: list[int] = []  # epochs offered to the store since the last restart
        self._epoch_rate: float | None = None  # read as the epoch began
        self.meta = None if meta is None else data.as_part(meta)
        self.test = None if test is None else data.as_part(test)
        if self.test is not None and self.test.labels is None:
            raise ValueError("the test part needs labels")
        self.batch_size = int(batch_size)
        if self.meta is not None:
            shuffled_batches(len(self.meta), batch_size=self.batch_size, seed=seed)  # validates
        self.tau = float(tau)
        self.seed = int(seed)
        self.eval_batch_size = int(eval_batch_size)
        self.augment = augment
        self.directory = directory
        self.prefix = prefix
        self._backbone = backbone
        self.store = TopKLogits(keep)
        self.epochs: list[int] = []
        self.meta_clid: list[float] = []
        self.test_accuracy: list[float] = []
        self._weights: dict[int, list[np.ndarray]] = {}  # memory mode: epoch -> weights
        self._forward: Forward | None = None
        self.defer_prune = False  # set by RunState, which prunes after its checkpoint
        self._forward_of: keras.Model | None = None  # the backbone _forward runs
        self.last_test_logits: np.ndarray | None = None  # the last epoch's [N, K]

    @property
    def backbone(self) -> keras.Model:
        backbone = self._backbone or getattr(self.model, "backbone", None)
        if backbone is None:
            raise ValueError("ClidSelection needs a model with a `.backbone` attribute "
                             "(or a backbone= argument)")
        return backbone

    def on_train_begin(self, logs=None):
        if self.meta is None:
            meta = getattr(self.model, "meta_set", None)
            if meta is None:
                raise ValueError("ClidSelection needs a meta set: pass meta=, or fit a "
                                 "MetaReweightModel on arrays or a dataset (it draws one)")
            self.meta = data.as_part(meta)
        if self._forward_of is not self.backbone:  # a fit per epoch (DivideMix): no retrace
            self._forward, self._forward_of = inference_function(self.backbone), self.backbone
        self._epoch_rate = None
        if self.match_lr and self.learning_rate is None:
            if getattr(self.model, "optimizer", None) is None:
                raise ValueError("ClidSelection compares epochs trained at the lowest learning "
                                 "rate and reads it from the model's optimizer: compile the "
                                 "model, pass learning_rate=, or match_lr=False to rank every "
                                 "epoch")

    def on_epoch_begin(self, epoch, logs=None):
        if self.match_lr:
            self._epoch_rate = self._current_rate()

    def _current_rate(self) -> float:
        rate = (self.model.optimizer.learning_rate if self.learning_rate is None
                else self.learning_rate())
        return float(np.asarray(rate))

    def on_epoch_end(self, epoch, logs=None):
        number = int(epoch) + 1
        score = meta_set_clid(self._forward, self.meta, batch_size=self.batch_size,
                              tau=self.tau, seed=self.seed + number, augment=self.augment)
        logits = None
        if self.test is not None:
            logits = predict_logits(self._forward, self.test, batch_size=self.eval_batch_size)
            self.test_accuracy.append(accuracy(logits, self.test.labels))
            self.last_test_logits = logits
        self.epochs.append(number)
        self.meta_clid.append(score)
        if self._admit(number):
            self.eligible.append(number)
            if self.store.update(score, number, logits):
                self._keep_weights(number)
        if not self.defer_prune:
            self.prune()
        if logs is not None:
            logs[self.prefix + "meta_set_clid"] = score
            if self.test is not None:
                logs[self.prefix + "test_accuracy"] = self.test_accuracy[-1]
                if len(self.store):  # nothing selected yet before the first eligible epoch
                    logs.update({self.prefix + k: v for k, v in self._accuracies().items()})

    def _admit(self, number: int) -> bool:
        """Whether epoch `number` competes; at a new lowest learning rate the store restarts
        first (`prune` then deletes the dropped epochs' weights)."""
        if number < self.eligible_from:
            return False
        if not self.match_lr:
            return True
        rate = self._current_rate() if self._epoch_rate is None else self._epoch_rate
        self._epoch_rate = None
        self.lr_floor, restart, competes = rate_verdict(self.lr_floor, rate)
        if restart:
            self.store = TopKLogits(self.store.max_size)
            self.eligible = []
        return competes

    # ------------------------------------------------------------ kept weights
    def _weights_path(self, epoch: int) -> str:
        return os.path.join(self.directory, f"{self.prefix}epoch-{epoch}.npz")

    def _keep_weights(self, epoch: int) -> None:
        weights = [np.array(w) for w in self.backbone.get_weights()]
        if self.directory is None:
            self._weights[epoch] = weights
            return
        os.makedirs(self.directory, exist_ok=True)
        with atomic_io.open_atomic(self._weights_path(epoch), "wb") as f:
            np.savez(f, *weights)

    def prune(self) -> None:
        """Deletes the kept weights of epochs the store no longer holds. `RunState` defers
        this (`defer_prune`) until its checkpoint of the epoch is written, so a crash in
        between never leaves a checkpointed store naming deleted weights."""
        kept = set(self.store.best_epochs())
        for epoch in [e for e in self._weights if e not in kept]:
            del self._weights[epoch]
        if self.directory is not None and os.path.isdir(self.directory):
            for name in os.listdir(self.directory):
                match = re.fullmatch(re.escape(self.prefix) + r"epoch-(\d+)\.npz", name)
                if match and int(match.group(1)) not in kept:
                    os.remove(os.path.join(self.directory, name))

    def load_weights(self, network: keras.Model, epoch: int) -> None:
        """Sets `network` (same architecture as the backbone) to the kept epoch's weights."""
        if epoch not in self.store.best_epochs():
            raise ValueError(f"epoch {epoch} is not among the kept epochs "
                             f"{self.store.best_epochs()}")
        if self.directory is None:
            network.set_weights(self._weights[epoch])
            return
        with np.load(self._weights_path(epoch)) as saved:
            network.set_weights([saved[f"arr_{i}"] for i in range(len(saved.files))])

    def members(self, k: int) -> list[keras.Model]:
        """Copies of the backbone holding the weights of the k lowest-CLID epochs (for
        inference and export: the copies have no `head` attribute)."""
        members = []
        for epoch in self.store.best_epochs(k):
            clone = keras.models.clone_model(self.backbone)  # no `head`: for inference
            self.load_weights(clone, epoch)
            members.append(clone)
        return members

    # ------------------------------------------------------------ results
    def _accuracies(self) -> dict[str, float]:
        """acc_1, acc_3, acc_5 over what the store holds (k capped at its size)."""
        names = {1: "selected_accuracy", 3: "ensemble3_accuracy", 5: "ensemble5_accuracy"}
        return {names[k]: self.store.ensemble_accuracy(self.test.labels,
                                                       min(k, len(self.store)))
                for k in ENSEMBLE_SIZES}

    def get_state(self) -> dict[str, np.ndarray]:
        """Everything needed to continue after a restart, as numpy arrays (for an npz);
        the kept weights are the files in `directory`."""
        entries = self.store.entries
        has_logits = bool(entries) and entries[0].logits is not None
        p = self.prefix
        return {
            f"{p}selection_epochs": np.asarray(self.epochs, np.int64),
            f"{p}selection_meta_clid": np.asarray(self.meta_clid, np.float64),
            f"{p}selection_test_accuracy": np.asarray(self.test_accuracy, np.float64),
            f"{p}selection_store_scores": np.asarray([e.score for e in entries], np.float64),
            f"{p}selection_store_epochs": np.asarray([e.epoch for e in entries], np.int64),
            f"{p}selection_store_logits": (np.stack([e.logits for e in entries]) if has_logits
                                           else np.zeros((0,), np.float32)),
            f"{p}selection_lr_floor": np.asarray(self.lr_floor, np.float64),
            f"{p}selection_eligible": np.asarray(self.eligible, np.int64),
        }

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Restores what `get_state` returned."""
        p = self.prefix
        self.epochs = [int(e) for e in state[f"{p}selection_epochs"]]
        self.meta_clid = [float(v) for v in state[f"{p}selection_meta_clid"]]
        self.test_accuracy = [float(v) for v in state[f"{p}selection_test_accuracy"]]
        if f"{p}selection_lr_floor" in state:
            self.lr_floor = float(state[f"{p}selection_lr_floor"])
            self.eligible = [int(e) for e in state[f"{p}selection_eligible"]]
        else:  # written before match_lr existed: the run goes on ranking every epoch
            self.match_lr = False
            self.eligible = [e for e in self.epochs if e >= self.eligible_from]
        self.store = TopKLogits(self.store.max_size)
        logits = state[f"{p}selection_store_logits"]
        for i, (score, epoch) in enumerate(zip(state[f"{p}selection_store_scores"],
                                               state[f"{p}selection_store_epochs"])):
            self.store.update(float(score), int(epoch), logits[i] if len(logits) else None)

    def summary(self) -> dict:
        """Final selection results.

        Returns:
          selected_epoch: 1-based epoch with the lowest meta CLID (earliest on ties) among
            the eligible ones.
          eligible_epochs: the 1-based epochs the selection chose from (after the warm-up;
            with match_lr those at the lowest learning rate).
          eligible_from: the first epoch the selection could keep.
          kept: [{'epoch', 'meta_clid'}] of the stored epochs, best first.
          epochs, meta_clid: per-epoch lists, in training order.
          With a test part also selected_accuracy, ensemble3_accuracy, ensemble5_accuracy
          (acc_1, acc_3, acc_5) and the per-epoch test_accuracy list.
        """
        if not len(self.store):
            raise ValueError("no eligible epoch has been recorded yet" if self.epochs else
                             "no epoch has been recorded yet")
        summary = {
            "selected_epoch": self.store.best_epochs(1)[0],
            "kept": [{"epoch": e.epoch, "meta_clid": e.score} for e in self.store.entries],
            "epochs": list(self.epochs),
            "meta_clid": list(self.meta_clid),
            "eligible_epochs": list(self.eligible),
            "eligible_from": self.eligible_from,
        }
        if self.test is not None:
            summary.update(self._accuracies(), test_accuracy=list(self.test_accuracy))
        return summary
