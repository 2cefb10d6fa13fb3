"""Synthetic label noise: pure, seeded numpy functions.

Every function is deterministic given its `seed` and never touches global RNG state.
Class-conditional kinds ('sym', 'pair', 'flip', ...) build a K x K transition matrix C
(row y is the distribution of the noisy label given clean label y) and sample each label
from its row; 'instance' builds one such row per sample from the image (Xia et al. 2020);
'confusion' builds it from a classifier's out-of-sample doubt about each image, the
structure of human labels such as CIFAR-N's (`confusion_probabilities`).

Conventions that differ between the authors' two code paths (ruofanhu/CLID-MU@5cd0608:
dataloader.py of the noisy-label scripts, semi/semilearn/core/utils/noise.py of the
semi-supervised ones): 'sym' is dataloader.py's `unif` noise (uniform_mix_C()),
C = rate/K * ones + (1 - rate) * I, so a label is kept with probability 1 - rate + rate/K and
the expected flip rate is rate*(K-1)/K; 'sym_exact' flips with probability exactly `rate` to
a uniformly random other class (SSL convention: build_uniform_P() of
semi/semilearn/core/utils/noise.py).

Matrices follow dataloader.py exactly: 'flip'/'flip2' are the one matrix of its
`flip_labels_C` / `flip_labels_C_two` (numpy's legacy generator seeded with 1, one
`choice` per row), whatever `seed` is, so seeds differ only in which samples flip;
'asym_cifar100' is the loss-correction convention (noise.py: `noisify_cifar100_asymmetric`):
next class within consecutive index blocks 5i..5i+4, the block's last class to its first.
'asym_cifar100_superclass' does the same within the true CIFAR-100 superclasses.
"""

from __future__ import annotations

import math

import numpy as np

KINDS: tuple[str, ...] = (
        'none', 'sym', 'sym_exact', 'pair', 'flip', 'flip2', 'asym_cifar10',
        'asym_cifar100', 'asym_cifar100_superclass', 'instance', 'hierarchical', 'confusion')
# Kinds drawn from the images themselves (they need the training images in memory).
IMAGE_KINDS: tuple[str, ...] = ('instance', 'confusion')

# Standard CIFAR-100 fine label -> coarse (superclass) label, 20 superclasses of 5 classes.
CIFAR100_COARSE: tuple[int, ...] = (
        4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
        6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
        5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
        10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
        16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13)

# CIFAR-10 asymmetric noise: truck->automobile, bird->airplane, cat<->dog, deer->horse.
CIFAR10_ASYM_MAP: dict[int, int] = {9: 1, 2: 0, 3: 5, 5: 3, 4: 7}

# the fixed seed of flip_labels_C / flip_labels_C_two (ruofanhu/CLID-MU@5cd0608, dataloader.py)
FLIP_MATRIX_SEED = 1
ASYM_CIFAR100_BLOCK = 5  # classes per consecutive index block of 'asym_cifar100'
# sd of the per-sample flip rate (`norm_std`: ruofanhu/CLID-MU@5cd0608, dataloader.py: CIFAR10)
INSTANCE_NORM_STD = 0.1
_INSTANCE_CHUNK = 1024  # rows of flattened images multiplied at once
CONFUSION_FOLDS = 5  # out-of-sample folds of the classifier that 'confusion' asks
CONFUSION_DIMS = 64  # principal components of the pixels that classifier reads

_REQUIRED_CLASSES = {'asym_cifar10': 10, 'asym_cifar100': 100,
                     'asym_cifar100_superclass': 100, 'hierarchical': 100}


# --------------------------------------------------------------------------- validation


def _check_labels(labels: np.ndarray, num_classes: int, name: str = 'labels') -> np.ndarray:
    """Returns `labels` as int64 [N]; ValueError unless 1-D integers in [0, num_classes)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f'{name} must be 1-D, got shape {labels.shape}')
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f'{name} must be integers, got dtype {labels.dtype}')
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f'{name} must lie in [0, {num_classes}), got range '
                         f'[{labels.min()}, {labels.max()}]')
    return labels


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f'num_classes must be an integer >= 2, got {num_classes!r}')
    return int(num_classes)


def _check_rate(rate: float) -> float:
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:  # also rejects NaN
        raise ValueError(f'noise rate must lie in [0, 1], got {rate}')
    return rate


def _check_kind(kind: str, num_classes: int) -> None:
    if kind not in KINDS:
        raise ValueError(f'unknown noise kind {kind!r}; expected one of {", ".join(KINDS)}')
    needed = _REQUIRED_CLASSES.get(kind)
    if needed is not None and num_classes != needed:
        raise ValueError(f'noise kind {kind!r} needs num_classes={needed}, got {num_classes}')
    if kind == 'flip2' and num_classes < 3:
        raise ValueError(f"noise kind 'flip2' needs num_classes >= 3, got {num_classes}")


# ------------------------------------------------------------------- transition matrices


def _sym(rate: float, k: int) -> np.ndarray:
    return rate / k * np.ones((k, k)) + (1.0 - rate) * np.eye(k)


def _sym_exact(rate: float, k: int) -> np.ndarray:
    c = np.full((k, k), rate / (k - 1))
    np.fill_diagonal(c, 1.0 - rate)
    return c


def _from_targets(rate: float, targets: np.ndarray) -> np.ndarray:
    """Each class y moves w.p. `rate` to targets[y] (targets[y] == y means untouched)."""
    k = len(targets)
    c = np.eye(k)
    moved = np.flatnonzero(targets != np.arange(k))
    c[moved, moved] = 1.0 - rate
    c[moved, targets[moved]] += rate
    return c


def _flip(rate: float, k: int, *, n_targets: int) -> np.ndarray:
    """Each class spreads `rate` evenly over `n_targets` other classes, the authors'.

    ruofanhu/CLID-MU@5cd0608, dataloader.py (`flip_labels_C`, `flip_labels_C_two`) seeds
    numpy's legacy generator with 1 and draws each row's targets in turn: `choice(others)`
    for one target, `choice(others, 2, replace=False)` for two. A local RandomState(1) gives
    the same stream without touching numpy's global state.
    """
    legacy = np.random.RandomState(FLIP_MATRIX_SEED)
    c = (1.0 - rate) * np.eye(k)
    for y in range(k):
        others = np.delete(np.arange(k), y)
        if n_targets == 1:
            c[y, legacy.choice(others)] = rate
        else:
            c[y, legacy.choice(others, n_targets, replace=False)] = rate / n_targets
    return c


def _superclass_members() -> list[np.ndarray]:
    """Fine classes of each CIFAR-100 superclass, ascending: 20 arrays of 5 ints."""
    coarse = np.asarray(CIFAR100_COARSE)
    return [np.flatnonzero(coarse == s) for s in range(20)]


def _asym_cifar100(rate: float) -> np.ndarray:
    """Next class within index blocks 5i..5i+4, cyclic (`noisify_cifar100_asymmetric`)."""
    classes = np.arange(100)
    block_start = classes - classes % ASYM_CIFAR100_BLOCK
    return _from_targets(rate, block_start + (classes + 1) % ASYM_CIFAR100_BLOCK)


def _asym_cifar100_superclass(rate: float) -> np.ndarray:
    """Next class of the same true superclass (fine labels ascending), cyclic."""
    targets = np.arange(100)
    for members in _superclass_members():
        targets[members] = np.roll(members, -1)
    return _from_targets(rate, targets)


def _hierarchical(rate: float) -> np.ndarray:
    c = (1.0 - rate) * np.eye(100)
    for members in _superclass_members():
        for y in members:
            c[y, members[members != y]] = rate / (len(members) - 1)
    return c


def _matrix(kind: str, rate: float, k: int) -> np.ndarray:
    if kind == 'none':
        return np.eye(k)
    if kind == 'sym':
        return _sym(rate, k)
    if kind == 'sym_exact':
        return _sym_exact(rate, k)
    if kind == 'pair':
        return _from_targets(rate, (np.arange(k) + 1) % k)
    if kind == 'flip':
        return _flip(rate, k, n_targets=1)
    if kind == 'flip2':
        return _flip(rate, k, n_targets=2)
    if kind == 'asym_cifar10':
        targets = np.arange(10)
        targets[list(CIFAR10_ASYM_MAP)] = list(CIFAR10_ASYM_MAP.values())
        return _from_targets(rate, targets)
    if kind == 'asym_cifar100':
        return _asym_cifar100(rate)
    if kind == 'asym_cifar100_superclass':
        return _asym_cifar100_superclass(rate)
    if kind == 'hierarchical':
        return _hierarchical(rate)
    raise ValueError(f'noise kind {kind!r} has no class-level transition matrix')


def noise_matrix(*, kind: str, rate: float, num_classes: int) -> np.ndarray:
    """The designed transition matrix that `corrupt` samples from for a class-level kind.

    No matrix depends on a seed: 'flip'/'flip2' are the fixed-seed matrices of
    ruofanhu/CLID-MU@5cd0608, dataloader.py, whatever the seed of `corrupt`. 'instance' and
    'confusion' have no class-level matrix (ValueError).

    Args:
        kind: a name from KINDS other than 'instance' and 'confusion'.
        rate: noise rate in [0, 1].
        num_classes: K.

    Returns:
        float64 [K, K], C[i, j] = P(noisy = j | clean = i); rows sum to 1.
    """
    num_classes = _check_num_classes(num_classes)
    _check_kind(kind, num_classes)
    return _matrix(kind, _check_rate(rate), num_classes)


# --------------------------------------------------------------------------------- sampling


def _sample_rows(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One categorical draw per row of float [n, K] probabilities -> int64 [n]."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(len(probs)) * cdf[:, -1]
    return np.minimum((cdf <= u[:, None]).sum(axis=1), probs.shape[1] - 1).astype(np.int64)


def _sample_matrix(labels: np.ndarray, c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noisy = labels.copy()
    for y in np.flatnonzero(np.diag(c) < 1.0):
        idx = np.flatnonzero(labels == y)
        if idx.size:
            noisy[idx] = _sample_rows(np.broadcast_to(c[y], (idx.size, len(c))), rng)
    return noisy


def truncated_normal(mean: float, std: float, size: int, *, seed: int | np.random.Generator,
                     low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """Samples N(mean, std) truncated to [low, high] by rejection (no scipy).

    Args:
        mean: mean of the untruncated normal; should lie in [low, high] (acceptance >= 1/2).
        std: its standard deviation, > 0.
        size: number of samples.
        seed: an int seed or a numpy Generator.
        low: lower bound.
        high: upper bound.

    Returns:
        float64 [size] in [low, high].
    """
    rng = np.random.default_rng(seed)
    out = np.empty(size)
    todo = np.arange(size)
    while todo.size:
        draw = rng.normal(mean, std, todo.size)
        ok = (draw >= low) & (draw <= high)
        out[todo[ok]] = draw[ok]
        todo = todo[~ok]
    return out


def _softmax_rows(a: np.ndarray) -> np.ndarray:
    a = a - a.max(axis=1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(axis=1, keepdims=True)


def instance_probabilities(labels: np.ndarray, images: np.ndarray, *, rate: float,
                           num_classes: int, seed: int) -> np.ndarray:
    """Per-sample noisy-label distributions of Xia et al. 2020 instance-dependent noise.

    q_i ~ TruncNormal(rate, 0.1, [0, 1]); W ~ N(0, 1) of shape (K, D, K);
    a = x_i @ W[y_i] with x_i the raw flattened pixels as float (0..255, un-normalised);
    a[y_i] = -inf; P_i = q_i * softmax(a); P_i[y_i] += 1 - q_i.
    W is drawn one class at a time from a per-class child seed and the products are
    computed in chunks, so memory stays O(D*K + chunk*D + N*K).

    Args:
        labels: int [N] clean labels in [0, K).
        images: [N, ...] any numeric dtype (typically uint8 [N, H, W, C]); D = prod(...).
        rate: mean flip rate in [0, 1].
        num_classes: K.
        seed: the seed.

    Returns:
        float64 [N, K]; row i sums to 1 and P[i, labels[i]] = 1 - q_i.
    """
    num_classes = _check_num_classes(num_classes)
    labels = _check_labels(labels, num_classes)
    rate = _check_rate(rate)
    images = _check_images(images, len(labels))
    q_seq, *w_seqs = np.random.SeedSequence(seed).spawn(num_classes + 1)
    q = truncated_normal(rate, INSTANCE_NORM_STD, len(labels), seed=np.random.default_rng(q_seq))
    flat = images.reshape(len(labels), -1)
    probs = np.zeros((len(labels), num_classes))
    for y in range(num_classes):
        w = np.random.default_rng(w_seqs[y]).standard_normal((flat.shape[1], num_classes))
        idx = np.flatnonzero(labels == y)
        for start in range(0, idx.size, _INSTANCE_CHUNK):
            rows = idx[start:start + _INSTANCE_CHUNK]
            a = flat[rows].astype(np.float64) @ w
            a[:, y] = -np.inf
            probs[rows] = q[rows, None] * _softmax_rows(a)
            probs[rows, y] += 1.0 - q[rows]
    return probs


def _check_images(images: np.ndarray | None, n: int, kind: str = 'instance') -> np.ndarray:
    if images is None:
        raise ValueError(f"noise kind '{kind}' needs images")
    images = np.asarray(images)
    if images.ndim < 2 or len(images) != n:
        raise ValueError(f'images must have shape [N={n}, ...], got {images.shape}')
    if not (np.issubdtype(images.dtype, np.number) or images.dtype == np.bool_):
        raise ValueError(f'images must be numeric, got dtype {images.dtype}')
    return images


def confusion_probabilities(labels: np.ndarray, scores: np.ndarray, *, rate: float,
                            num_classes: int) -> np.ndarray:
    """Per-sample noisy-label distributions of human-like confusion noise.

    People mislabel the images they find ambiguous, and they pick the classes those images
    resemble (CIFAR-10N: cat <-> dog, truck <-> automobile, rarely cat -> truck). Given a
    classifier's out-of-sample probabilities s_i [K] for each image, sample i flips with
    probability q_i = min(1, c * d_i), d_i = 1 - s_i[y_i] its doubt about the given label,
    with c chosen so that the mean of q_i is `rate`; a flip goes to class j != y_i with
    probability s_ij / sum_{k != y_i} s_ik (the classes confused with it; uniform where
    the classifier gives the others no mass).

    Args:
        labels: int [N] clean labels in [0, K).
        scores: float [N, K] a classifier's out-of-sample class probabilities.
        rate: mean flip rate in [0, 1].
        num_classes: K.

    Returns:
        float64 [N, K]; row i sums to 1 and P[i, labels[i]] = 1 - q_i.

    Raises:
        ValueError: bad inputs, or a rate above what the doubts allow (every sample with
            any doubt flipped: the fraction of samples with d_i > 0).
    """
    num_classes = _check_num_classes(num_classes)
    labels = _check_labels(labels, num_classes)
    rate = _check_rate(rate)
    scores = np.asarray(scores, np.float64)
    if scores.shape != (len(labels), num_classes) or not np.all(np.isfinite(scores)):
        raise ValueError(f'scores must be finite floats of shape {(len(labels), num_classes)}, '
                         f'got {scores.shape}')
    rows = np.arange(len(labels))
    scores = np.clip(scores, 0.0, None)
    doubt = 1.0 - np.clip(scores[rows, labels], 0.0, 1.0)
    q = np.minimum(1.0, _doubt_scale(doubt, rate) * doubt)
    others = scores.copy()
    others[rows, labels] = 0.0
    mass = others.sum(axis=1, keepdims=True)
    uniform = np.full_like(others, 1.0 / (num_classes - 1))
    uniform[rows, labels] = 0.0
    others = np.where(mass > 0, others / np.where(mass > 0, mass, 1.0), uniform)
    probs = q[:, None] * others
    probs[rows, labels] += 1.0 - q
    return probs


def _doubt_scale(doubt: np.ndarray, rate: float) -> float:
    """c >= 0 with mean(min(1, c * doubt)) = rate (bisection; the mean grows with c)."""
    if rate == 0.0 or not doubt.size:
        return 0.0
    reachable = float(np.mean(doubt > 0))
    if rate > reachable:
        raise ValueError(f'confusion noise can flip at most {reachable:.3f} of these labels '
                         f'(the samples the classifier has any doubt about), not {rate}')
    low, high = 0.0, 1.0
    while np.mean(np.minimum(1.0, high * doubt)) < rate:
        high *= 2.0
    for _ in range(100):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if np.mean(np.minimum(1.0, mid * doubt)) < rate else (low, mid)
    return high


def confusion_scores(images: np.ndarray, labels: np.ndarray, *, num_classes: int,
                     seed: int) -> np.ndarray:
    """Out-of-sample class probabilities float64 [N, K] of a linear classifier of the
    pixels: standardised, projected on their first CONFUSION_DIMS principal components,
    multinomial logistic regression, each sample scored by the model of the
    CONFUSION_FOLDS folds that did not train on it (scikit-learn; seeded, deterministic).
    What 'confusion' noise reads as a person's doubt; labels must be the clean ones."""
    # deferred: scikit-learn (heavy) loads only when used, not with the command line
    # pylint: disable=import-outside-toplevel
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    flat = images.reshape(len(labels), -1).astype(np.float32)
    dims = min(CONFUSION_DIMS, flat.shape[1], len(labels) // CONFUSION_FOLDS)
    folds = StratifiedKFold(min(CONFUSION_FOLDS, int(np.bincount(labels).min())), shuffle=True,
                            random_state=seed)
    scores = np.zeros((len(labels), num_classes))
    for fit_rows, held in folds.split(flat, labels):
        model = make_pipeline(StandardScaler(), PCA(dims, random_state=seed),
                              LogisticRegression(max_iter=500))
        model.fit(flat[fit_rows], labels[fit_rows])
        scores[np.ix_(held, model.classes_)] = model.predict_proba(flat[held])
    return scores


# ------------------------------------------------------------------------------ public API


def corrupt(labels: np.ndarray, *, kind: str, rate: float, num_classes: int, seed: int,
            images: np.ndarray | None = None) -> np.ndarray:
    """Injects synthetic label noise of one kind.

    Kinds: 'none' (copy); 'sym' (`unif` of ruofanhu/CLID-MU@5cd0608, dataloader.py:
    C = rate/K + (1-rate) I, flip rate rate*(K-1)/K); 'sym_exact' (flip w.p. rate to a
    uniform other class); 'pair' (y -> (y+1) mod K); 'flip' (per class, one other class of
    that file's fixed matrix, `flip_labels_C` with seed 1); 'flip2' (two such classes, rate/2 each,
    `flip_labels_C_two`); 'asym_cifar10' (9->1, 2->0, 3<->5, 4->7, K=10); 'asym_cifar100'
    (next class within index blocks 5i..5i+4, 5i+4 -> 5i, K=100); 'asym_cifar100_superclass'
    (next class of the same CIFAR-100 superclass, cyclic, K=100); 'hierarchical' (uniform
    over the other 4 classes of the superclass, K=100);
    'instance' (Xia et al. 2020, see `instance_probabilities`; needs `images`; note that
    rate 0 still flips about 8% because q_i ~ TruncNormal(0, 0.1, [0, 1]), as in the
    authors' tools.py: get_instance_noisy_label(), same commit); 'confusion' (human-like:
    the doubtful images flip to the classes they resemble, `confusion_probabilities` of
    `confusion_scores`; needs `images`).

    Args:
        labels: int [N] clean labels in [0, num_classes).
        kind: one of KINDS.
        rate: noise rate in [0, 1].
        num_classes: K >= 2.
        seed: seed of the sampling (and of 'instance''s flip rates and W); no
            class-level matrix depends on it.
        images: [N, ...] raw images (0..255), needed by 'instance' and 'confusion' only.

    Returns:
        int64 [N] noisy labels (a new array).

    Raises:
        ValueError: unknown kind, rate outside [0, 1], labels out of range, 'instance' or
            'confusion' without images, or a kind used with the wrong num_classes.
    """
    num_classes = _check_num_classes(num_classes)
    _check_kind(kind, num_classes)
    rate = _check_rate(rate)
    labels = _check_labels(labels, num_classes)
    if kind == 'none':
        return labels.copy()
    if kind == 'instance':
        probs = instance_probabilities(labels, images, rate=rate, num_classes=num_classes,
                                       seed=seed)
    elif kind == 'confusion':
        scores = confusion_scores(_check_images(images, len(labels), kind), labels,
                                  num_classes=num_classes, seed=seed)
        probs = confusion_probabilities(labels, scores, rate=rate, num_classes=num_classes)
    if kind in IMAGE_KINDS:
        # Sampling uses its own stream, independent of those drawing q and W.
        sample_seq = np.random.SeedSequence([int(seed), 1])
        return _sample_rows(probs, np.random.default_rng(sample_seq))
    return _sample_matrix(labels, _matrix(kind, rate, num_classes),
                          np.random.default_rng(seed))


def transition_matrix(clean: np.ndarray, noisy: np.ndarray, *, num_classes: int) -> np.ndarray:
    """Realised transition matrix T[i, j] = P(noisy = j | clean = i).

    Args:
        clean: int [N] clean labels in [0, K).
        noisy: int [N] noisy labels in [0, K).
        num_classes: K.

    Returns:
        float64 [K, K]; rows of classes present in `clean` sum to 1, others are all zero.
    """
    num_classes = _check_num_classes(num_classes)
    clean = _check_labels(clean, num_classes, 'clean')
    noisy = _check_labels(noisy, num_classes, 'noisy')
    if clean.shape != noisy.shape:
        raise ValueError(f'clean and noisy differ in shape: {clean.shape} vs {noisy.shape}')
    counts = np.bincount(clean * num_classes + noisy, minlength=num_classes ** 2)
    counts = counts.reshape(num_classes, num_classes).astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def flip_rate(clean: np.ndarray, noisy: np.ndarray) -> float:
    """Fraction of labels changed; 0.0 for empty inputs.

    Args:
        clean: int [N] clean labels.
        noisy: int [N] noisy labels.

    Returns:
        mean(clean != noisy) as a Python float.
    """
    clean, noisy = np.asarray(clean), np.asarray(noisy)
    if clean.shape != noisy.shape:
        raise ValueError(f'clean and noisy differ in shape: {clean.shape} vs {noisy.shape}')
    return float(np.mean(clean != noisy)) if clean.size else 0.0


def imbalance_counts(n_max: int, *, gamma: float, num_classes: int) -> np.ndarray:
    """Per-class sizes n_c = floor(n_max * (1/gamma)^(c/(K-1))) (`--gamma` of
    ruofanhu/CLID-MU@5cd0608, main_vri.py; dataloader.py: make_imb_data()).

    Args:
        n_max: size of class 0 (the largest).
        gamma: imbalance ratio >= 1; 1 keeps n_max for every class.
        num_classes: K.

    Returns:
        int64 [K], non-increasing.
    """
    gamma = float(gamma)
    if not gamma >= 1.0:  # also rejects NaN
        raise ValueError(f'imbalance gamma must be >= 1, got {gamma}')
    denom = max(num_classes - 1, 1)
    return np.array([math.floor(n_max * (1.0 / gamma) ** (c / denom))
                     for c in range(num_classes)], dtype=np.int64)


def imbalance_indices(labels: np.ndarray, *, gamma: float, seed: int,
                      num_classes: int | None = None) -> np.ndarray:
    """Indices of a long-tailed subset: n_c samples of class c, chosen by the labels given.

    Pass the *true* labels (selection by true label after noise injection, as the authors'
    `--gamma` option: ruofanhu/CLID-MU@5cd0608, dataloader.py: get_imbalanced_dataset()).
    n_max is the size of the largest class; a class with fewer than n_c samples keeps all of
    them, so gamma = 1 keeps everything. Which samples of a class are kept is drawn
    uniformly from `seed`.

    Args:
        labels: int [N] true labels in [0, K).
        gamma: imbalance ratio >= 1.
        seed: the seed.
        num_classes: K; defaults to labels.max() + 1.

    Returns:
        int64 [M] sorted indices into `labels`.
    """
    labels = np.asarray(labels)
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 1
    num_classes = int(num_classes)
    labels = _check_labels(labels, max(num_classes, 1))
    per_class = np.bincount(labels, minlength=num_classes)
    sizes = imbalance_counts(int(per_class.max(initial=0)), gamma=gamma,
                             num_classes=num_classes)
    rng = np.random.default_rng(seed)
    kept = [rng.choice(np.flatnonzero(labels == c), size=min(sizes[c], per_class[c]),
                       replace=False) for c in range(num_classes)]
    return np.sort(np.concatenate(kept)).astype(np.int64)
