"""Variational Rectification Inference (VRI) meta-net.

VRI rectifies the logits rather than weighting the loss: for each training sample it
infers a per-class weight vector w in (0, 1)^K from the detached backbone feature and the
noisy label, and trains the classifier on softmax(w * logits). The weight is a sample of
the amortised posterior q(w | x, y~) = sigmoid(N(mu, exp(log_var))); the prior p(w | x)
is the same network with a zero vector in place of the label embedding.
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from clid_tf.core import distribute
from clid_tf.core import objectives
from clid_tf.metanets.precision import metanet_dtype


def kl_divergence(mu_q: tf.Tensor, log_var_q: tf.Tensor, mu_p: tf.Tensor,
                  log_var_p: tf.Tensor) -> tf.Tensor:
    """Mean elementwise KL(N(mu_q, exp(log_var_q)) || N(mu_p, exp(log_var_p))).

    0.5 * (lv_p - lv_q + (exp(lv_q) + (mu_q - mu_p)^2) / exp(lv_p) - 1), averaged over
    every element (batch and classes).

    Args:
      mu_q: float [B, K] posterior means.
      log_var_q: float [B, K] posterior log-variances.
      mu_p: float [B, K] prior means.
      log_var_p: float [B, K] prior log-variances.

    Returns:
      Scalar float, >= 0, and 0 when the two distributions are identical.
    """
    return tf.reduce_mean(kl_per_sample(mu_q, log_var_q, mu_p, log_var_p))


def kl_per_sample(mu_q: tf.Tensor, log_var_q: tf.Tensor, mu_p: tf.Tensor,
                  log_var_p: tf.Tensor) -> tf.Tensor:
    """The elementwise Gaussian KL of `kl_divergence` averaged over classes only. [B]."""
    ratio = (tf.exp(log_var_q) + tf.square(mu_q - mu_p)) * tf.exp(-log_var_p)
    return tf.reduce_mean(0.5 * (log_var_p - log_var_q + ratio - 1.0), axis=-1)


def _offset(seed: int | None, i: int) -> int | None:
    return None if seed is None else seed + i


def _xavier_dense(units: int, activation: str | None, seed: int | None,
                  name: str, dtype="float32") -> keras.layers.Dense:
    """Dense with torch.nn.init.xavier_normal_ (untruncated N(0, 2/(in+out))), zero bias."""
    init = keras.initializers.VarianceScaling(
        scale=1.0, mode="fan_avg", distribution="untruncated_normal", seed=seed)
    return keras.layers.Dense(units, activation=activation, kernel_initializer=init,
                              bias_initializer="zeros", name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package="clid_tf")
class VRINet(keras.Model):
    """VRI meta-net: (detached feature, noisy label) -> per-class logit weights [B, K].

    Architecture (ruofanhu/CLID-MU@5cd0608, meta_net.py: vri(576, 1024, 512, K)):
    concat(stop_gradient(features) [B, d], Embedding(K, embed_dim)(labels) [B, e]) ->
    Dense 1024 -> tanh -> Dense 512 -> tanh -> Dense 512 -> tanh -> heads `mean` and
    `log_var` (512 -> K). Dense kernels are Xavier-normal, biases zero; the embedding starts
    at N(0, 1), the PyTorch nn.Embedding default (the authors' vri.init_weights() only
    re-initialises its Linear layers).
    The layers are built in the constructor, so the variables exist before `compile`.

    `call(features, labels)` gives the posterior (mu, log_var), `prior(features)` the prior
    (mu_p, log_var_p); `weighted_loss` implements the `objectives.WeightedLoss` interface.
    """

    def __init__(self, num_classes: int | None = None, feature_dim: int | None = None, *,
                 embed_dim: int = 64, hidden: Sequence[int] = (1024, 512, 512),
                 kl_weight: float = 0.01, seed: int | None = None, **kwargs):
        """num_classes and feature_dim may be left None: `MetaReweightModel` sizes the
        net for its backbone (`build_for`). Under a mixed global dtype policy it computes
        in float32 (`precision.metanet_dtype`)."""
        kwargs.setdefault("dtype", metanet_dtype())
        super().__init__(**kwargs)
        self.embed_dim = int(embed_dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.kl_weight = float(kl_weight)
        self.seed = seed
        self.noise = keras.random.SeedGenerator(seed)
        self.num_classes = self.feature_dim = None
        if num_classes is not None and feature_dim is not None:
            self.build_for(feature_dim=feature_dim, num_classes=num_classes)

    def build_for(self, *, feature_dim: int, num_classes: int) -> None:
        """Creates the layers for features [B, feature_dim] and K = num_classes classes."""
        if self.num_classes is not None:
            if (self.num_classes, self.feature_dim) != (num_classes, feature_dim):
                raise ValueError(f"this VRINet is sized for {self.feature_dim}-d features and "
                                 f"{self.num_classes} classes, not {feature_dim} and "
                                 f"{num_classes}")
            return
        seed = self.seed
        self.num_classes = int(num_classes)
        self.feature_dim = int(feature_dim)
        policy = self.dtype_policy
        self.embedding = keras.layers.Embedding(
            self.num_classes, self.embed_dim, name="embedding", dtype=policy,
            embeddings_initializer=keras.initializers.RandomNormal(
                0.0, 1.0, seed=_offset(seed, 1)))
        self.hidden_layers = [_xavier_dense(units, "tanh", _offset(seed, 2 + i),
                                            f"hidden{i + 1}", policy)
                              for i, units in enumerate(self.hidden)]
        self.mean_head = _xavier_dense(self.num_classes, None,
                                       _offset(seed, 2 + len(self.hidden)), "mean", policy)
        self.log_var_head = _xavier_dense(self.num_classes, None,
                                          _offset(seed, 3 + len(self.hidden)), "log_var",
                                          policy)
        self._build_layers()

    def save_own_variables(self, store):
        """Keras' own variables and the noise generator's state (Keras saves no
        SeedGenerator state), so a saved and restored VRINet (`model.save`,
        keras.callbacks.BackupAndRestore) draws the eps it would have drawn."""
        super().save_own_variables(store)
        store["noise_state"] = self.noise.state

    def load_own_variables(self, store):
        if "noise_state" in store.keys():
            self.noise.state.assign(store["noise_state"])
        super().load_own_variables({k: store[k] for k in store.keys() if k != "noise_state"})

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "feature_dim": self.feature_dim, "embed_dim": self.embed_dim,
                "hidden": list(self.hidden), "kl_weight": self.kl_weight, "seed": self.seed}

    def _build_layers(self) -> None:
        self.embedding.build((None,))
        width = self.feature_dim + self.embed_dim
        for layer in self.hidden_layers:
            layer.build((None, width))
            width = layer.units
        self.mean_head.build((None, width))
        self.log_var_head.build((None, width))
        self.built = True

    def _encode(self, features: tf.Tensor, embedding: tf.Tensor):
        """MLP on concat(stop_gradient(features) [B, d], embedding [B, e]) -> (mu, log_var).

        The stop-gradient mirrors the authors' `feat.detach()` (ruofanhu/CLID-MU@5cd0608,
        main_vri.py: train()): the meta-net never sends gradient into the backbone through
        its input.
        """
        features = tf.cast(tf.stop_gradient(features), embedding.dtype)
        x = tf.concat([features, embedding], axis=-1)
        for layer in self.hidden_layers:
            x = layer(x)
        return self.mean_head(x), self.log_var_head(x)

    def call(self, features: tf.Tensor, labels: tf.Tensor):
        """Posterior q(w | x, y~). features float [B, d], labels int [B] -> 2 x float [B, K]."""
        return self._encode(features, self.embedding(labels))

    def prior(self, features: tf.Tensor):
        """Prior p(w | x): zero label embedding. features float [B, d] -> 2 x float [B, K]."""
        batch = tf.shape(features)[0]
        return self._encode(features, tf.zeros([batch, self.embed_dim], self.compute_dtype))

    def sample_weights(self, mu: tf.Tensor, log_var: tf.Tensor,
                       rows: tf.Tensor | None = None) -> tf.Tensor:
        """w = sigmoid(mu + exp(0.5 * log_var) * eps), eps ~ N(0, I) drawn afresh. [B, K].

        eps is drawn for the global batch [R*B, K] and this replica keeps its rows, so each
        sample gets the same eps on R replicas as on one device (replicas share the
        generator state). `rows` (int [B]) names those rows when they are not this
        replica's consecutive block (DivideMix's mixed batch); default: the block.
        """
        batch = tf.shape(mu)[0] * distribute.num_replicas()
        eps = keras.random.normal([batch, self.num_classes], dtype=mu.dtype, seed=self.noise)
        eps = distribute.replica_rows(eps) if rows is None else tf.gather(eps, rows)
        return tf.sigmoid(mu + tf.exp(0.5 * log_var) * eps)

    def label_weights(self, logits: tf.Tensor, features: tf.Tensor,
                      labels: tf.Tensor) -> tf.Tensor:
        """sigmoid(mu)[y~]: the weight of each sample's given-label logit at the posterior
        mean (no sampling noise). [B]."""
        del logits
        mu, _ = self(features, labels)
        return tf.gather(tf.sigmoid(mu), tf.cast(labels, tf.int32), axis=1, batch_dims=1)

    def weighted_loss(self, logits: tf.Tensor, features: tf.Tensor, labels: tf.Tensor, *,
                      regularize: bool = True, sample_weight: tf.Tensor | None = None,
                      per_sample_loss=None, rows=None) -> objectives.WeightedLoss:
        """Rectified training loss of a batch, differentiable in theta and phi.

        loss = mean_i s_i l_i(w_i * logits_i), l_i = CE(softmax(.), y~_i) by default (s = 1
        without sample weights):
        theta gets gradient through the logits, phi through w. eps is resampled on every
        call (virtual and actual step).

        The KL regulariser: the authors add lam * KL to the virtual loss
        (ruofanhu/CLID-MU@5cd0608, main_vri.py: train()), where it is a no-op: the meta-net
        input is detached, so the KL has no theta gradient, leaves theta' unchanged and
        never reaches phi. It also calls its `kl_loss(mu1, lv1, mu2, lv2)` (utilities.py)
        with std = exp(0.5 * log_var) (the second output of meta_net.py: vri.forward()) in
        the log-var slots. Here the KL is the correct Gaussian KL(q || p) with log-variances
        (`kl_divergence`), returned as `regularizer` = kl_weight * KL and NOT added to
        `loss`; `virtual.meta_gradients` adds it to the meta loss, so it regularises phi
        (posterior and prior, which share the network) as VRI's ELBO intends. Hence
        kl_weight = 0.01 is not the authors' lam = 0.01: kl_weight = 0 (`--vri_kl=0`) is the
        authors-equivalent setting (docs/benchmarks.md compares the two on digits).

        Args:
          logits: float [B, K] classifier outputs.
          features: float [B, d] penultimate backbone features (detached here).
          labels: int [B] noisy training labels.
          sample_weight: optional float [B] user weights s_i that scale each term.
          per_sample_loss: rectified logits [B, K] -> float [B], each sample's term
            (default CE on `labels`; DivideMix's rows of its MixMatch loss, whose mean is
            L_x + lambda L_u).
          rows: int [B] the global-batch rows of this replica's samples, when they are not
            its consecutive block (`sample_weights`).

        Returns:
          WeightedLoss(scalar loss, weights w float [B, K] in (0, 1), scalar regularizer).
        """
        mu, log_var = self(features, labels)
        weights = self.sample_weights(mu, log_var, rows=rows)
        rectified = tf.cast(weights, logits.dtype) * logits
        # Shares of global-batch means, so replicas' gradients sum to the 1-device ones.
        per_sample = (objectives.per_sample_ce(rectified, labels) if per_sample_loss is None
                      else per_sample_loss(rectified))
        if sample_weight is not None:
            per_sample = per_sample * tf.cast(sample_weight, per_sample.dtype)
        loss = distribute.global_mean(per_sample)
        if not regularize:  # the actual step: the KL would be discarded, skip the prior net
            return objectives.WeightedLoss(loss, weights, tf.zeros([], loss.dtype))
        mu_p, log_var_p = self.prior(features)
        regularizer = self.kl_weight * distribute.global_mean(
            kl_per_sample(mu, log_var, mu_p, log_var_p))
        return objectives.WeightedLoss(loss, weights, regularizer)


def build(*, num_classes: int, feature_dim: int, seed: int | None = None,
          vri_kl: float = 0.01, **options) -> VRINet:
    """The registry's 'vri' builder: a VRINet sized for K classes and d-dim features."""
    del options
    return VRINet(num_classes, feature_dim, kl_weight=vri_kl, seed=seed)
