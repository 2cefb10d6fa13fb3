"""Callbacks of a training run: the warm-up switch, resumable checkpoints with run state,
and a NaN guard. They combine with any of Keras' own."""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import re

import keras
import numpy as np
import tensorflow as tf

from clid_tf import atomic_io
from clid_tf.runs import folder as run_folder
from clid_tf.errors import NonFiniteError, RunError


def checkpoint_of(parts: dict, **extra) -> tf.train.Checkpoint:
    """A tf.train.Checkpoint of `parts` (networks and optimizers) that holds every variable
    of each network.

    TensorFlow's object graph misses some Keras 3 state: layers a model keeps in a Python
    list (VRINet's hidden layers) and SeedGenerator states (VRI's noise, dropout masks). So
    the `variables` of each Keras model are saved again as one list, `<name>_variables`
    (the same variables: saved once, restored through either path).
    """
    lists = {f"{name}_variables": list(part.variables) for name, part in parts.items()
             if isinstance(part, keras.layers.Layer)}
    return tf.train.Checkpoint(**parts, **lists, **extra)


def restorer(parts: dict):
    """path -> restores the RunState checkpoint at `path` into `parts` (networks, meta-nets;
    optimizers may be left out); RunError (one line) when it does not match them."""
    checkpoint = checkpoint_of(parts)

    def restore(path: str) -> None:
        try:
            checkpoint.restore(path).expect_partial().assert_existing_objects_matched()
        except (AssertionError, tf.errors.OpError) as error:
            raise RunError(f"checkpoint {path} does not match the run's networks (flags.cfg "
                           f"changed?): {str(error).splitlines()[0]}") from error

    return restore


class RunState(keras.callbacks.Callback):
    """Checkpoints everything a resumed run needs, after every epoch, and resumes from the
    newest intact one.

    Epoch E is saved in two steps: `checkpoints/ckpt-E` (tf.train.CheckpointManager,
    `checkpoint_of`: the backbone, the meta-net with VRI's noise state, both optimizers with
    their iterations, hence the lr schedule's position, and the epoch), then
    `checkpoints/state-E.npz` (the per-epoch history, the label-free selection state and
    the sha256 of every ckpt-E file), written to a temporary name and renamed. The state
    file is the mark of a complete epoch: a crash at any moment leaves the epochs before
    complete. `restore` takes the newest epoch whose state file reads and whose checkpoint
    files match their checksums and restore; a damaged newer one is named in one line and
    skipped. Data order needs no state: every epoch's shuffles and augmentations are seeded
    by the epoch number (clid_tf.data.pipelines). (The small-loss meta set of
    ce_sloss/mae_sloss is exact for in-memory data; streamed from files, a few meta batches
    after each re-selection may still come from the previous one, so those runs resume
    close to, not bit-for-bit as.)
    """

    def __init__(self, directory: str, model: keras.Model, selection=(), max_to_keep: int = 3):
        """
        Args:
          directory: the checkpoint folder.
          model: a model with `checkpoint_parts()` (its networks and optimizers).
          selection: the `ClidSelection` callbacks whose state is kept (one per network).
          max_to_keep: epoch checkpoints kept for resuming.
        """
        super().__init__()
        self.directory = directory
        self.max_to_keep = max_to_keep
        self.selections = (list(selection) if isinstance(selection, (list, tuple))
                           else [] if selection is None else [selection])
        for kept in self.selections:
            if kept.directory is None:
                raise ValueError("a resumable run needs its ClidSelection to keep weights in "
                                 "files: give it directory=")
            kept.defer_prune = True  # pruned below, once the epoch's checkpoint exists
        self.history: dict[str, list[float | None]] = {}
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.checkpoint = checkpoint_of(model.checkpoint_parts(), epoch=self.epoch)
        os.makedirs(directory, exist_ok=True)
        self.manager = self._manager()

    def _manager(self, latest: int | None = None) -> tf.train.CheckpointManager:
        """A CheckpointManager that knows the folder's own ckpt-E files only: its index
        file (`checkpoint`, which TensorFlow trusts and whose listed paths it deletes as
        checkpoints age) is rewritten from them first, never read (`latest`: the epoch it
        points at, default the newest)."""
        epochs = saved_epochs(self.directory)
        index = os.path.join(self.directory, "checkpoint")
        atomic_io.remove_entry(index)
        if epochs:
            latest = epochs[-1] if latest is None else latest
            # each file's own time, all after the preserved mark: the manager prunes them
            # as it prunes the checkpoints it wrote itself
            times = [os.lstat(self._prefix(e) + ".index").st_mtime for e in epochs]
            tf.compat.v1.train.update_checkpoint_state(
                self.directory, f"ckpt-{latest}",
                all_model_checkpoint_paths=[f"ckpt-{e}" for e in epochs],
                all_model_checkpoint_timestamps=times,
                last_preserved_timestamp=min(times) - 1.0)
        return tf.train.CheckpointManager(self.checkpoint, self.directory,
                                          max_to_keep=self.max_to_keep)

    # ------------------------------------------------------------ resume
    def restore(self) -> int:
        """Restores the newest intact epoch and returns it (0 when no epoch was saved).

        Raises:
          RunError: checkpoints exist but none is intact (one line per reason).
        """
        epochs = sorted(saved_epochs(self.directory), reverse=True)
        damaged = []
        for epoch in epochs:
            reason = self._damage(epoch)
            if reason is None:
                self._use(epoch)
                if damaged:
                    print(f"note: skipped the damaged checkpoint of "
                          f"{_epochs_text([e for e, _ in damaged])} ({damaged[0][1]}); "
                          f"resuming after epoch {epoch}", flush=True)
                return epoch
            damaged.append((epoch, reason))
        if damaged:
            details = "; ".join(f"epoch {e}: {r}" for e, r in damaged)
            raise RunError(f"no intact checkpoint in {self.directory} ({details}); start a "
                           "new run in another --workdir")
        return 0

    def _damage(self, epoch: int) -> str | None:
        """Why epoch `epoch` cannot be resumed from, or None when it can (its state
        reads, its files are regular files that match their checksums,
        `runs.folder.read_state`, and TensorFlow restores it)."""
        state, reason = run_folder.read_state(self.directory, epoch)
        if reason is not None:
            return reason
        try:
            self.checkpoint.restore(self._prefix(epoch)).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as error:
            return f"TensorFlow cannot restore it: {str(error).splitlines()[0][:120]}"
        if int(self.epoch.numpy()) != epoch:
            return f"it holds epoch {int(self.epoch.numpy())}"
        self._state = state
        return None

    def _use(self, epoch: int) -> None:
        """Takes epoch `epoch`'s state (restored by `_damage`); drops the newer, damaged
        epochs and points the checkpoint index at the intact ones."""
        self.history = json.loads(str(self._state["history"]))
        for selection in self.selections:
            selection.set_state(dict(self._state))
            selection.prune()  # a crash may have come between a save and its prune
        for newer in [e for e in saved_epochs(self.directory) if e > epoch]:
            for path in glob.glob(self._prefix(newer) + ".*") + [self._state_path(newer)]:
                with contextlib.suppress(OSError):
                    os.remove(path)
        self.manager = self._manager(latest=epoch)

    # ------------------------------------------------------------ save
    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            column = self.history.setdefault(key, [None] * epoch)
            column.extend([None] * (epoch - len(column)))
            value = float(value)  # NaN: not computed this epoch (its phase did not run)
            column.append(value if math.isfinite(value) else None)
        self.epoch.assign(epoch + 1)
        prefix = self.manager.save(checkpoint_number=epoch + 1)
        files = sorted(glob.glob(glob.escape(prefix) + ".*"))
        checksums = {os.path.basename(f): atomic_io.file_sha256(f) for f in files}
        state = {"history": np.asarray(json.dumps(self.history)),
                 "checksums": np.asarray(json.dumps(checksums))}
        for selection in self.selections:
            state.update(selection.get_state())
        with atomic_io.open_atomic(self._state_path(epoch + 1), "wb") as f:
            np.savez(f, **state)
        self._drop_old_states()
        for selection in self.selections:
            selection.prune()

    def _prefix(self, epoch: int) -> str:
        return os.path.join(self.directory, f"ckpt-{epoch}")

    def _state_path(self, epoch: int) -> str:
        return os.path.join(self.directory, f"state-{epoch}.npz")

    def _drop_old_states(self) -> None:
        kept = {int(p.rsplit("-", 1)[1]) for p in self.manager.checkpoints}
        for path in glob.glob(os.path.join(self.directory, "state-*.npz")):
            number = int(re.search(r"state-(\d+)\.npz$", path).group(1))
            if number not in kept:
                os.remove(path)


def saved_epochs(directory: str) -> list[int]:
    """The epochs with a checkpoint (a ckpt-E.index file) in `directory`, any state."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(directory), "ckpt-*.index")):
        match = re.search(r"ckpt-(\d+)\.index$", path)
        if match:
            found.append(int(match.group(1)))
    return sorted(found)


def _epochs_text(epochs: list[int]) -> str:
    return ("epoch " if len(epochs) == 1 else "epochs ") + ", ".join(map(str, epochs))


class WarmUp(keras.callbacks.Callback):
    """Plain cross-entropy for the first `epochs` epochs, meta updates after.

    Sets `model.meta_active` at the start of every epoch and, when it changes, traces the
    train function anew (the switch is a Python value read at tracing, so each phase runs
    its own graph at full speed). Resuming with `initial_epoch` picks the right phase.
    """

    def __init__(self, epochs: int):
        super().__init__()
        if epochs < 0:
            raise ValueError(f"warm-up epochs must be >= 0, got {epochs}")
        self.epochs = int(epochs)

    def on_epoch_begin(self, epoch, logs=None):
        self._switch(epoch < self.epochs)

    def _switch(self, warming_up: bool) -> None:
        active = not warming_up and getattr(self.model, "meta_net", None) is not None
        if active != self.model.meta_active:
            self.model.meta_active = active
            self.model.make_train_function(force=True)


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops training at the first step whose loss, meta loss or meta weight is NaN/Inf, and
    at the end of an epoch whose model or meta-net variables (BN statistics included) are.

    It must come before RunState in the callback list: raising before the checkpoint is
    written keeps the last good checkpoint the latest.
    """

    WATCHED = ("loss", "meta_", "weight_")

    def __init__(self, steps_per_epoch: int | None = None):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        for variable in self.model.variables:
            if "float" in str(variable.dtype) and not bool(
                    tf.reduce_all(tf.math.is_finite(variable.value))):
                raise NonFiniteError(
                    f"non-finite values in {variable.path} at the end of epoch {epoch + 1}; "
                    f"training stopped and {self._kept(epoch)}")

    def _kept(self, epoch: int) -> str:
        return (f"the last good checkpoint (epoch {epoch}) is kept" if epoch
                else "no checkpoint had been written yet")

    def on_train_batch_end(self, batch, logs=None):
        for name, value in (logs or {}).items():
            if name.startswith(self.WATCHED) and not math.isfinite(float(value)):
                where = f"epoch {self._epoch + 1}, step {batch + 1}"
                if self.steps_per_epoch:
                    where += f" (global step {self._epoch * self.steps_per_epoch + batch + 1})"
                raise NonFiniteError(
                    f"non-finite {name} ({float(value)}) at {where}; training stopped and "
                    f"{self._kept(self._epoch)}")


class ResetOptimizer(keras.callbacks.Callback):
    """Restarts the classifier optimizer at the start of every epoch, as creating a new one
    would (the authors' Clothing1M script re-creates its Adam every epoch: ruofanhu/CLID-MU@5cd0608,
    sota/Train_clothing1M_vri.py:370; for parity only): its iteration counter and slots
    (momentum; Adam's moments) are zeroed, so Adam's bias correction starts again at t = 1.
    Its learning rate is kept; a schedule read from the iteration counter restarts at its
    first epoch, as that script's step decay (l. 410-413) is lost, so give a constant one. A
    LossScaleOptimizer keeps its loss scale.
    """

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.model.optimizer
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)
        rate = getattr(optimizer, "_learning_rate", None)
        for variable in optimizer.variables:
            if variable is not rate:
                variable.assign(tf.zeros_like(variable))
