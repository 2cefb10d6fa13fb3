"""Callbacks for a training run: per-epoch checkpoints and extra TensorBoard scalars."""

from __future__ import annotations

import keras
import tensorflow as tf


class CheckpointEveryEpoch(keras.callbacks.Callback):
    """Saves backbone, meta-net and both optimizers after every epoch.

    tf.train.CheckpointManager writes each checkpoint under a new name and only then updates
    its index file, so a crash never leaves the latest checkpoint half-written.
    """

    def __init__(self, directory: str, max_to_keep: int = 3):
        super().__init__()
        self.directory = directory
        self.max_to_keep = max_to_keep
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.manager = None

    def on_train_begin(self, logs=None):
        model = self.model
        parts = {"backbone": model.backbone, "optimizer": model.optimizer, "epoch": self.epoch}
        if getattr(model, "meta_net", None) is not None:
            parts.update(meta_net=model.meta_net, meta_optimizer=model.meta_optimizer)
        self.manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(**parts), self.directory, max_to_keep=self.max_to_keep)

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.assign(epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1)
