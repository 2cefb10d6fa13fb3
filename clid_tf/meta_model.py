"""`MetaReweightModel`: a Keras model whose train_step is the CLID-MU meta update.

One train_step per training batch (METHOD.md section 2.0):
  1. virtual step  theta' = theta - lr * grad_theta L_f(theta, phi)   (second order)
  2. meta step     phi <- meta_optimizer(grad_phi L_meta(theta'))     L_meta = CLID, ...
  3. actual step   theta <- optimizer(grad_theta L_f(theta, phi_new))
With no meta-net the step is plain cross-entropy training (method `ce`).
"""

from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf

from clid_tf import objectives
from clid_tf import virtual


def _with_l2(grads, variables, weight_decay: float):
    """PyTorch-style (coupled) weight decay: g + wd * v, which then goes through momentum."""
    if not weight_decay:
        return grads
    return [g + weight_decay * v for g, v in zip(grads, variables)]


class MetaReweightModel(keras.Model):
    """Classifier trained with a meta-net that weights (or rectifies) its per-sample losses.

    Data per step: {'train': {'image', 'label', optional 'is_noisy'}, 'meta': {'image',
    optional 'label'}}. 'is_noisy' is ground truth used for monitoring only; 'label' in the
    meta batch exists only for labelled meta objectives (ce_clean, ce_noisy, ...).
    """

    def __init__(self, backbone: keras.Model, meta_net: keras.Model | None = None, *,
                 meta_objective: Callable[..., tf.Tensor] | None = None,
                 meta_objective_name: str = "clid", warmup_steps: int = 0,
                 weight_decay: float = 5e-4, meta_weight_decay: float = 5e-4, **kwargs):
        super().__init__(**kwargs)
        if meta_net is not None and meta_objective is None:
            raise ValueError("a meta-net needs a meta objective")
        self.backbone = backbone
        self.meta_net = meta_net
        self.meta_objective = meta_objective
        self.warmup_steps = int(warmup_steps)
        self.weight_decay = float(weight_decay)
        self.meta_weight_decay = float(meta_weight_decay)
        mean = keras.metrics.Mean
        self.loss_tracker = mean(name="loss")
        self.lr_tracker = mean(name="lr")
        self.meta_trackers = {} if meta_net is None else {
            "meta": mean(name=f"meta_{meta_objective_name}"),
            "meta_lr": mean(name="meta_lr"),
            "clean": mean(name="weight_clean"),
            "noisy": mean(name="weight_noisy"),
        }
        self.test_accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.test_loss = mean(name="loss")

    @property
    def metrics(self):
        return [self.loss_tracker, self.lr_tracker, *self.meta_trackers.values(),
                self.test_accuracy, self.test_loss]

    def compile(self, optimizer, meta_optimizer=None, **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        self.meta_optimizer = meta_optimizer
        # Build optimizer state now: variables cannot be created inside the step's tf.cond.
        self.optimizer.build(self.backbone.trainable_variables)
        if self.meta_net is not None:
            if meta_optimizer is None:
                raise ValueError("a meta-net needs a meta optimizer")
            self.meta_optimizer.build(self.meta_net.trainable_variables)

    def call(self, images, training=False):
        """Raw images [B, ...] -> logits [B, K]."""
        return self.backbone(images, training=training)[0]

    # ---------------------------------------------------------------- the algorithm
    def train_step(self, data):
        batch = data["train"]
        lr = self.optimizer.learning_rate
        if self.meta_net is None:
            loss, weights = self._actual_step(batch, meta_active=False)
            return self._log(lr, loss, weights, batch, None, meta_active=False)
        meta_active = self.optimizer.iterations >= self.warmup_steps
        meta_loss = tf.cond(
            meta_active,
            lambda: tf.cast(self._virtual_and_meta_step(batch, data["meta"], lr), tf.float32),
            lambda: tf.constant(0.0))
        loss, weights = self._actual_step(batch, meta_active=meta_active)
        return self._log(lr, loss, weights, batch, meta_loss, meta_active=meta_active)

    def _virtual_and_meta_step(self, batch, meta_batch, lr) -> tf.Tensor:
        """Steps 1 and 2: hypergradient through the virtual step, then update phi."""
        result = virtual.meta_gradients(self.backbone, self.meta_net, batch, meta_batch,
                                        lr=lr, meta_objective=self.meta_objective)
        phi = self.meta_net.trainable_variables
        self.meta_optimizer.apply(_with_l2(result.meta_grads, phi, self.meta_weight_decay), phi)
        return result.meta_loss

    def _actual_step(self, batch, *, meta_active):
        """Step 3: weights from the updated meta-net (no gradient into phi), update theta."""
        theta = self.backbone.trainable_variables
        with tf.GradientTape() as tape:
            logits, features = self.backbone(batch["image"], training=True)
            if self.meta_net is None:
                loss, weights = self._plain_loss(logits, batch["label"])
            else:
                loss, weights = tf.cond(
                    meta_active,
                    lambda: self.meta_net.weighted_loss(logits, features, batch["label"])[:2],
                    lambda: self._plain_loss(logits, batch["label"]))
        grads = tape.gradient(loss, theta)
        self.optimizer.apply(_with_l2(grads, theta, self.weight_decay), theta)
        return loss, tf.stop_gradient(weights)

    @staticmethod
    def _plain_loss(logits, labels):
        losses = objectives.per_sample_ce(logits, labels)
        return tf.reduce_mean(losses), tf.ones_like(losses)

    # ---------------------------------------------------------------- monitoring
    def _log(self, lr, loss, weights, batch, meta_loss, *, meta_active):
        self.loss_tracker.update_state(loss)
        self.lr_tracker.update_state(lr)
        if self.meta_net is not None:
            active = tf.cast(meta_active, tf.float32)
            self.meta_trackers["meta"].update_state(meta_loss, sample_weight=active)
            self.meta_trackers["meta_lr"].update_state(self.meta_optimizer.learning_rate)
            if "is_noisy" in batch:
                per_sample = tf.reshape(weights, [tf.shape(weights)[0], -1])
                per_sample = tf.reduce_mean(per_sample, axis=1)
                noisy = tf.cast(batch["is_noisy"], tf.float32) * active
                clean = (1.0 - tf.cast(batch["is_noisy"], tf.float32)) * active
                self.meta_trackers["clean"].update_state(per_sample, sample_weight=clean)
                self.meta_trackers["noisy"].update_state(per_sample, sample_weight=noisy)
        return {m.name: m.result() for m in
                [self.loss_tracker, self.lr_tracker, *self.meta_trackers.values()]}

    def test_step(self, data):
        images, labels = data
        logits = self.backbone(images, training=False)[0]
        self.test_accuracy.update_state(labels, logits)
        self.test_loss.update_state(tf.reduce_mean(objectives.per_sample_ce(logits, labels)))
        return {"accuracy": self.test_accuracy.result(), "loss": self.test_loss.result()}
