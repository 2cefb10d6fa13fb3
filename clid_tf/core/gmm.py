"""Which labels look clean: DivideMix's two-component Gaussian mixture on per-sample losses.

Pure numpy (and scikit-learn's GaussianMixture): the losses are min-max normalised, a
2-component GMM (`max_iter=10, reg_covar=5e-4, tol=1e-2`, DivideMix's options, seeded) is
fitted to them, and the posterior of the lower-mean component is each sample's probability
of a clean label. The small-loss meta sets (`trainers.meta.small_loss`) and DivideMix's
co-divide (`trainers.dividemix`) both use it.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

GMM_OPTIONS = {"n_components": 2, "max_iter": 10, "reg_covar": 5e-4, "tol": 1e-2}


def normalize_losses(losses: np.ndarray) -> np.ndarray:
    """Min-max normalises losses float [N] to [0, 1] (float64 [N]).

    Non-finite losses (a diverged sample) count as the largest finite loss. A constant
    input gives all zeros.
    """
    x = np.asarray(losses, dtype=np.float64).reshape(-1)
    finite = np.isfinite(x)
    if not finite.any():
        return np.zeros_like(x)
    high = x[finite].max()
    x = np.where(finite, x, high)
    span = high - x.min()
    return np.zeros_like(x) if span <= 0 else (x - x.min()) / span


def clean_probability(losses: np.ndarray, *, seed: int) -> np.ndarray:
    """Posterior of the lower-mean component of a 2-GMM fitted to the losses (DivideMix).

    Args:
      losses: float [N] per-sample losses (CE with the noisy labels).
      seed: `random_state` of the GMM (k-means initialisation); same seed, same output.

    Returns:
      float64 [N] in [0, 1]: probability that each sample's label is clean. With fewer than
      2 samples or constant losses nothing separates the samples: all 0.5.
    """
    x = normalize_losses(losses)
    if len(x) < 2 or np.all(x == x[0]):
        return np.full(len(x), 0.5)
    gmm = GaussianMixture(random_state=int(seed), **GMM_OPTIONS)
    with warnings.catch_warnings():  # 10 EM steps often stop before tol, as in DivideMix
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm.fit(x[:, None])
    posterior = gmm.predict_proba(x[:, None])
    return posterior[:, int(np.argmin(gmm.means_.reshape(-1)))].astype(np.float64)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-sample CE, float logits [N, K] and int labels [N] -> float64 [N]."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return log_norm - z[np.arange(len(z)), np.asarray(labels, dtype=np.int64)]
