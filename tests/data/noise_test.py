"""Tests for clid_tf.data.noise: realised transition matrices, seeding, instance noise, imbalance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clid_tf.data import noise

CLASS_KINDS = ('sym', 'sym_exact', 'pair', 'flip', 'flip2', 'asym_cifar10', 'asym_cifar100',
               'asym_cifar100_superclass', 'hierarchical')
_K_FOR = {'asym_cifar100': 100, 'asym_cifar100_superclass': 100, 'hierarchical': 100}

# Two superclasses written out by name (aquatic mammals, people), independent of the table.
AQUATIC_MAMMALS = (4, 30, 55, 72, 95)  # beaver, dolphin, otter, seal, whale
PEOPLE = (2, 11, 35, 46, 98)  # baby, boy, girl, man, woman


def _labels(n: int, k: int, seed: int = 123) -> np.ndarray:
    """int64 [n] labels with every class equally represented, shuffled."""
    return np.random.default_rng(seed).permutation(np.arange(n) % k).astype(np.int64)


def _k(kind: str) -> int:
    return _K_FOR.get(kind, 10)


def _n(kind: str) -> int:
    return 500_000 if _k(kind) == 100 else 100_000


def _assert_matches(clean: np.ndarray, noisy: np.ndarray, expected: np.ndarray) -> None:
    """Realised transitions equal `expected`: exactly where 0 or 1, within 5 s.e. elsewhere.

    With 10k labels per class (K=10) the tolerance is at most 0.025 and the realised matrix
    must also be within 0.02 everywhere; with 5k per class (K=100) within 0.035.
    """
    k = len(expected)
    realised = noise.transition_matrix(clean, noisy, num_classes=k)
    per_row = np.bincount(clean, minlength=k)[:, None]
    se = np.sqrt(expected * (1.0 - expected) / per_row)
    tol = np.where((expected == 0.0) | (expected == 1.0), 1e-12, 5.0 * se + 0.002)
    np.testing.assert_array_less(np.abs(realised - expected), tol)
    assert np.abs(realised - expected).max() < (0.02 if k <= 10 else 0.035)


def _sym_expected(rate: float, k: int) -> np.ndarray:
    c = np.full((k, k), rate / k)
    np.fill_diagonal(c, 1.0 - rate + rate / k)
    return c


def _superclass_of() -> dict[int, list[int]]:
    coarse = noise.CIFAR100_COARSE
    return {s: [f for f in range(100) if coarse[f] == s] for s in range(20)}


# ---------------------------------------------------------------------------- constants


def test_kinds_are_the_public_names():
    assert noise.KINDS == ('none', 'sym', 'sym_exact', 'pair', 'flip', 'flip2',
                           'asym_cifar10', 'asym_cifar100', 'asym_cifar100_superclass',
                           'instance', 'hierarchical', 'confusion')
    assert noise.IMAGE_KINDS == ('instance', 'confusion')


def test_cifar100_table_has_20_superclasses_of_5():
    coarse = np.asarray(noise.CIFAR100_COARSE)
    assert coarse.shape == (100,)
    np.testing.assert_array_equal(np.bincount(coarse), np.full(20, 5))
    assert {coarse[f] for f in AQUATIC_MAMMALS} == {0}
    assert {coarse[f] for f in PEOPLE} == {14}


# ------------------------------------------------------------- class-level transition kinds


@pytest.mark.parametrize('k', [10, 100])
def test_sym_matches_reference_convention(k):
    rate = 0.4
    clean = _labels(100_000 if k == 10 else 500_000, k)
    noisy = noise.corrupt(clean, kind='sym', rate=rate, num_classes=k, seed=0)
    _assert_matches(clean, noisy, _sym_expected(rate, k))
    assert noise.flip_rate(clean, noisy) == pytest.approx(rate * (k - 1) / k, abs=0.01)


def test_sym_exact_flips_exactly_rate_to_other_classes():
    k, rate = 10, 0.4
    clean = _labels(100_000, k)
    noisy = noise.corrupt(clean, kind='sym_exact', rate=rate, num_classes=k, seed=0)
    expected = np.full((k, k), rate / (k - 1))
    np.fill_diagonal(expected, 1.0 - rate)
    _assert_matches(clean, noisy, expected)
    assert noise.flip_rate(clean, noisy) == pytest.approx(rate, abs=0.01)


def test_pair_flips_to_next_class():
    k, rate = 10, 0.3
    clean = _labels(100_000, k)
    noisy = noise.corrupt(clean, kind='pair', rate=rate, num_classes=k, seed=1)
    expected = (1.0 - rate) * np.eye(k)
    expected[np.arange(k), (np.arange(k) + 1) % k] = rate
    _assert_matches(clean, noisy, expected)


def test_pair_rate_one_shifts_every_label():
    clean = _labels(1000, 7)
    noisy = noise.corrupt(clean, kind='pair', rate=1.0, num_classes=7, seed=0)
    np.testing.assert_array_equal(noisy, (clean + 1) % 7)


# The authors' flip targets, written out by running flip_labels_C (one per row) and
# flip_labels_C_two (two per row) of ruofanhu/CLID-MU@5cd0608, dataloader.py, after
# np.random.seed(1): row y's targets, for K=10, 100.
FLIP_TARGETS = {
        10: (6, 9, 6, 0, 0, 1, 8, 6, 2, 4),
        100: (38, 13, 73, 10, 76, 6, 80, 65, 17, 1, 77, 72, 6, 26, 51, 21, 19, 85, 11, 29,
              30, 14, 51, 69, 88, 88, 95, 97, 87, 13, 9, 7, 64, 62, 22, 58, 1, 0, 61, 82,
              8, 89, 13, 48, 73, 30, 72, 3, 71, 21, 49, 58, 3, 69, 24, 43, 77, 26, 52, 81,
              41, 83, 15, 65, 69, 25, 99, 88, 7, 26, 25, 22, 9, 67, 23, 27, 37, 57, 84, 38,
              8, 32, 34, 10, 23, 15, 88, 25, 71, 93, 74, 62, 46, 32, 88, 23, 55, 65, 77, 3)}
FLIP2_TARGETS = {
        10: ((3, 9), (4, 8), (1, 8), (4, 8), (2, 5), (4, 7), (2, 9), (5, 8), (5, 6), (4, 5)),
        100: ((84, 93), (45, 70), (57, 60), (11, 41), (44, 46), (0, 96), (47, 92), (80, 91),
              (3, 17), (50, 53), (27, 91), (46, 55), (71, 76), (9, 42), (29, 82), (13, 61),
              (17, 93), (15, 54), (48, 91), (9, 17), (26, 27), (75, 84), (59, 72), (55, 71),
              (43, 83), (29, 95), (59, 83), (91, 99), (42, 75), (42, 63), (57, 99), (41, 94),
              (60, 87), (69, 93), (33, 66), (61, 98), (26, 59), (19, 44), (17, 90), (59, 71),
              (47, 89), (4, 26), (64, 88), (21, 53), (5, 33), (7, 89), (0, 64), (23, 80),
              (16, 68), (1, 82), (52, 73), (2, 23), (21, 40), (62, 96), (34, 76), (8, 44),
              (32, 58), (40, 49), (6, 89), (20, 89), (42, 75), (63, 66), (4, 25), (56, 99),
              (14, 22), (16, 90), (28, 65), (53, 63), (41, 71), (22, 79), (33, 61), (31, 99),
              (3, 23), (11, 74), (45, 94), (72, 74), (45, 87), (80, 99), (90, 97), (71, 92),
              (48, 55), (72, 90), (36, 60), (14, 43), (46, 58), (64, 90), (24, 60), (20, 56),
              (43, 96), (76, 99), (12, 65), (36, 75), (58, 80), (41, 72), (3, 37), (10, 46),
              (52, 87), (13, 69), (21, 45), (20, 96))}


# The authors' constructions, line by line (ruofanhu/CLID-MU@5cd0608: dataloader.py's flip_labels_C,
# flip_labels_C_two and uniform_mix_C; noise.py's build_for_cifar100, noisify_pairflip,
# noisify_cifar100_asymmetric and noisify_cifar10_asymmetric). numpy's legacy generator, as
# dataloader.py's np.random.seed(1) + np.random.choice; RandomState(1) gives the same stream
# locally.

def _reference_flip_labels_C(corruption_prob, num_classes, seed=1):
    rs = np.random.RandomState(seed)
    C = np.eye(num_classes) * (1 - corruption_prob)
    row_indices = np.arange(num_classes)
    for i in range(num_classes):
        C[i][rs.choice(row_indices[row_indices != i])] = corruption_prob
    return C


def _reference_flip_labels_C_two(corruption_prob, num_classes, seed=1):
    rs = np.random.RandomState(seed)
    C = np.eye(num_classes) * (1 - corruption_prob)
    row_indices = np.arange(num_classes)
    for i in range(num_classes):
        C[i][rs.choice(row_indices[row_indices != i], 2, replace=False)] = corruption_prob / 2
    return C


def _reference_uniform_mix_C(mixing_ratio, num_classes):
    return mixing_ratio * np.full((num_classes, num_classes), 1 / num_classes) + \
        (1 - mixing_ratio) * np.eye(num_classes)


def _reference_build_for_cifar100(size, noise_rate):  # also noise.py's noisify_pairflip
    P = (1. - noise_rate) * np.eye(size)
    for i in np.arange(size - 1):
        P[i, i + 1] = noise_rate
    P[size - 1, 0] = noise_rate
    return P


def _reference_cifar100_asymmetric(noise_rate):  # noisify_cifar100_asymmetric's P
    P = np.eye(100)
    for i in np.arange(20):
        init, end = i * 5, (i + 1) * 5
        P[init:end, init:end] = _reference_build_for_cifar100(5, noise_rate)
    return P


def _reference_cifar10_asymmetric(n):
    P = np.eye(10)
    P[9, 9], P[9, 1] = 1. - n, n  # truck -> automobile
    P[2, 2], P[2, 0] = 1. - n, n  # bird -> airplane
    P[3, 3], P[3, 5] = 1. - n, n  # cat -> dog
    P[5, 5], P[5, 3] = 1. - n, n  # dog -> cat
    P[4, 4], P[4, 7] = 1. - n, n  # deer -> horse
    return P


def _targets_matrix(rate, targets):
    c = (1.0 - rate) * np.eye(len(targets))
    for y, ts in enumerate(targets):
        c[y, list(np.atleast_1d(ts))] = rate / np.size(ts)
    return c


@pytest.mark.parametrize('kind,k,expected', [
        ('sym', 10, lambda r: _reference_uniform_mix_C(r, 10)),
        ('sym', 100, lambda r: _reference_uniform_mix_C(r, 100)),
        ('pair', 10, lambda r: _reference_build_for_cifar100(10, r)),
        ('pair', 100, lambda r: _reference_build_for_cifar100(100, r)),
        ('asym_cifar10', 10, _reference_cifar10_asymmetric),
        ('asym_cifar100', 100, _reference_cifar100_asymmetric),
        ('flip', 10, lambda r: _reference_flip_labels_C(r, 10)),
        ('flip', 100, lambda r: _reference_flip_labels_C(r, 100)),
        ('flip2', 10, lambda r: _reference_flip_labels_C_two(r, 10)),
        ('flip2', 100, lambda r: _reference_flip_labels_C_two(r, 100)),
])
def test_matrix_equals_the_reference_construction(kind, k, expected):
    for rate in (0.2, 0.4):
        np.testing.assert_allclose(noise.noise_matrix(kind=kind, rate=rate, num_classes=k),
                                   expected(rate), rtol=0, atol=1e-15)


@pytest.mark.parametrize('k', [10, 100])
def test_flip_matrices_are_the_written_out_reference_ones(k):
    rate = 0.4
    np.testing.assert_array_equal(noise.noise_matrix(kind='flip', rate=rate, num_classes=k),
                                  _targets_matrix(rate, FLIP_TARGETS[k]))
    np.testing.assert_array_equal(noise.noise_matrix(kind='flip2', rate=rate, num_classes=k),
                                  _targets_matrix(rate, FLIP2_TARGETS[k]))
    # The literals are what the authors' construction gives (guards them against typos;
    # ruofanhu/CLID-MU@5cd0608, dataloader.py).
    np.testing.assert_array_equal(_reference_flip_labels_C(rate, k),
                                  _targets_matrix(rate, FLIP_TARGETS[k]))
    np.testing.assert_array_equal(_reference_flip_labels_C_two(rate, k),
                                  _targets_matrix(rate, FLIP2_TARGETS[k]))


@pytest.mark.parametrize('kind', ['flip', 'flip2'])
def test_flip_matrix_is_one_for_every_seed(kind):
    """Seeds choose which samples flip, never where: the realised matrices of two seeds
    both match the one reference matrix, while the noisy labels differ."""
    k, rate = 10, 0.4
    c = noise.noise_matrix(kind=kind, rate=rate, num_classes=k)
    clean = _labels(100_000, k)
    first, second = (noise.corrupt(clean, kind=kind, rate=rate, num_classes=k, seed=s)
                     for s in (5, 6))
    assert not np.array_equal(first, second)
    _assert_matches(clean, first, c)
    _assert_matches(clean, second, c)
    assert not np.array_equal(c, noise.noise_matrix(kind='pair', rate=rate, num_classes=k))


def test_asym_cifar10_maps_only_the_named_classes():
    rate = 0.4
    clean = _labels(100_000, 10)
    noisy = noise.corrupt(clean, kind='asym_cifar10', rate=rate, num_classes=10, seed=2)
    expected = np.eye(10)
    for src, dst in {9: 1, 2: 0, 3: 5, 5: 3, 4: 7}.items():
        expected[src, src] = 1.0 - rate
        expected[src, dst] = rate
    _assert_matches(clean, noisy, expected)
    untouched = np.isin(clean, [0, 1, 6, 8])
    np.testing.assert_array_equal(noisy[untouched], clean[untouched])


def test_asym_cifar100_next_class_within_index_blocks_of_five():
    rate = 0.3
    clean = _labels(500_000, 100)
    noisy = noise.corrupt(clean, kind='asym_cifar100', rate=rate, num_classes=100, seed=3)
    np.testing.assert_array_equal(noisy // 5, clean // 5)
    expected = (1.0 - rate) * np.eye(100)
    for y in range(100):
        expected[y, y + 1 if y % 5 < 4 else y - 4] = rate
    _assert_matches(clean, noisy, expected)
    # Spelled out: 0->1->2->3->4->0, ..., 95->96->97->98->99->95 (not superclasses).
    assert expected[4, 0] == expected[3, 4] == expected[99, 95] == rate
    assert expected[AQUATIC_MAMMALS[0], AQUATIC_MAMMALS[1]] == 0.0


def test_asym_cifar100_superclass_next_class_in_superclass():
    rate = 0.3
    clean = _labels(500_000, 100)
    noisy = noise.corrupt(clean, kind='asym_cifar100_superclass', rate=rate, num_classes=100,
                          seed=3)
    coarse = np.asarray(noise.CIFAR100_COARSE)
    np.testing.assert_array_equal(coarse[noisy], coarse[clean])
    expected = (1.0 - rate) * np.eye(100)
    for members in _superclass_of().values():
        for i, y in enumerate(members):
            expected[y, members[(i + 1) % 5]] = rate
    _assert_matches(clean, noisy, expected)
    # Spelled out for one superclass: beaver->dolphin->otter->seal->whale->beaver.
    for src, dst in zip(AQUATIC_MAMMALS, AQUATIC_MAMMALS[1:] + AQUATIC_MAMMALS[:1]):
        assert expected[src, dst] == rate


def test_hierarchical_uniform_within_superclass():
    rate = 0.4
    clean = _labels(500_000, 100)
    noisy = noise.corrupt(clean, kind='hierarchical', rate=rate, num_classes=100, seed=4)
    coarse = np.asarray(noise.CIFAR100_COARSE)
    np.testing.assert_array_equal(coarse[noisy], coarse[clean])
    expected = (1.0 - rate) * np.eye(100)
    for members in _superclass_of().values():
        for y in members:
            expected[y, [o for o in members if o != y]] = rate / 4
    _assert_matches(clean, noisy, expected)
    np.testing.assert_allclose(expected[np.ix_(PEOPLE, PEOPLE)],
                               np.where(np.eye(5) > 0, 1.0 - rate, rate / 4))
    assert noise.flip_rate(clean, noisy) == pytest.approx(rate, abs=0.01)


@pytest.mark.parametrize('kind', CLASS_KINDS)
def test_noise_matrix_rows_sum_to_one_and_match_realised(kind):
    k = _k(kind)
    c = noise.noise_matrix(kind=kind, rate=0.35, num_classes=k)
    assert c.shape == (k, k) and c.dtype == np.float64
    np.testing.assert_allclose(c.sum(axis=1), 1.0)
    clean = _labels(_n(kind), k)
    noisy = noise.corrupt(clean, kind=kind, rate=0.35, num_classes=k, seed=9)
    _assert_matches(clean, noisy, c)
    np.testing.assert_allclose(noise.transition_matrix(clean, noisy, num_classes=k).sum(axis=1),
                               1.0)


@pytest.mark.parametrize('kind', CLASS_KINDS)
def test_rate_zero_changes_nothing(kind):
    clean = _labels(5000, _k(kind))
    noisy = noise.corrupt(clean, kind=kind, rate=0.0, num_classes=_k(kind), seed=0)
    np.testing.assert_array_equal(noisy, clean)


# ------------------------------------------------------------------- seeding and contracts


def _corrupt_small(kind: str, seed: int, clean: np.ndarray, images: np.ndarray) -> np.ndarray:
    return noise.corrupt(clean, kind=kind, rate=0.4, num_classes=_k(kind), seed=seed,
                         images=images if kind in noise.IMAGE_KINDS else None)


@pytest.mark.parametrize('kind', [k for k in noise.KINDS if k != 'none'])
def test_deterministic_per_seed_and_different_across_seeds(kind):
    k = _k(kind)
    clean = _labels(4000, k)
    images = np.random.default_rng(0).integers(0, 256, (4000, 4, 4, 1), dtype=np.uint8)
    before = clean.copy()
    a = _corrupt_small(kind, 11, clean, images)
    b = _corrupt_small(kind, 11, clean, images)
    c = _corrupt_small(kind, 12, clean, images)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.int64 and a.shape == clean.shape
    assert a.min() >= 0 and a.max() < k
    np.testing.assert_array_equal(clean, before)  # input untouched


def test_does_not_use_global_rng_state():
    clean = _labels(2000, 10)
    np.random.seed(0)
    a = noise.corrupt(clean, kind='sym', rate=0.5, num_classes=10, seed=1)
    np.random.seed(99)
    b = noise.corrupt(clean, kind='sym', rate=0.5, num_classes=10, seed=1)
    np.testing.assert_array_equal(a, b)


def test_none_returns_a_copy():
    clean = _labels(100, 10)
    out = noise.corrupt(clean, kind='none', rate=0.9, num_classes=10, seed=0)
    np.testing.assert_array_equal(out, clean)
    out[0] = (out[0] + 1) % 10
    assert out[0] != clean[0]
    assert out.dtype == np.int64


def test_accepts_other_integer_dtypes():
    clean = _labels(1000, 10).astype(np.uint8)
    out = noise.corrupt(clean, kind='sym', rate=0.5, num_classes=10, seed=0)
    assert out.dtype == np.int64


def test_transition_matrix_and_flip_rate_by_hand():
    clean = np.array([0, 0, 0, 0, 2, 2])
    noisy = np.array([0, 1, 1, 2, 2, 0])
    t = noise.transition_matrix(clean, noisy, num_classes=3)
    np.testing.assert_allclose(t, [[0.25, 0.5, 0.25], [0, 0, 0], [0.5, 0, 0.5]])
    assert t.dtype == np.float64
    assert noise.flip_rate(clean, noisy) == pytest.approx(4 / 6)
    assert noise.flip_rate(np.array([], np.int64), np.array([], np.int64)) == 0.0


# ------------------------------------------------------------------------ instance noise


def _instance_data(n: int = 5000, k: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, k, n).astype(np.int64),
            rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8))


def test_truncated_normal_bounds_and_mean():
    s = noise.truncated_normal(0.4, 0.1, 20_000, seed=0)
    assert s.min() >= 0.0 and s.max() <= 1.0
    assert s.mean() == pytest.approx(0.4, abs=0.005)
    assert s.std() == pytest.approx(0.1, abs=0.005)
    s0 = noise.truncated_normal(0.0, 0.1, 20_000, seed=1)
    assert s0.min() >= 0.0
    assert s0.mean() == pytest.approx(0.1 * math.sqrt(2 / math.pi), abs=0.004)  # half-normal


def test_instance_flip_rate_close_to_rate():
    clean, images = _instance_data()
    for rate in (0.2, 0.4):
        noisy = noise.corrupt(clean, kind='instance', rate=rate, num_classes=10, seed=0,
                              images=images)
        assert noise.flip_rate(clean, noisy) == pytest.approx(rate, abs=0.03)


def test_instance_probabilities_structure():
    clean, images = _instance_data(2000)
    p = noise.instance_probabilities(clean, images, rate=0.4, num_classes=10, seed=0)
    assert p.shape == (2000, 10) and p.dtype == np.float64
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert p.min() >= 0.0
    q = 1.0 - p[np.arange(2000), clean]  # the per-sample flip rate
    assert q.min() >= 0.0 and q.max() <= 1.0
    assert q.mean() == pytest.approx(0.4, abs=0.01)
    assert q.std() == pytest.approx(0.1, abs=0.01)


def test_instance_flip_targets_follow_the_image():
    k, n_copies = 10, 2000
    rng = np.random.default_rng(5)
    randoms = rng.integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
    zero = np.zeros((1, 8, 8, 1), np.uint8)
    distinct = np.concatenate([zero, randoms])  # 7 different images, all of class 0
    images = np.repeat(distinct, n_copies, axis=0)
    clean = np.zeros(len(images), np.int64)
    p = noise.instance_probabilities(clean, images, rate=0.4, num_classes=k, seed=3)
    # Flip distribution = P[i, 1:] / q_i: the same for copies of one image, whatever q_i is.
    flip_dist = (p[:, 1:] / p[:, 1:].sum(axis=1, keepdims=True)).reshape(7, n_copies, k - 1)
    np.testing.assert_allclose(flip_dist, np.repeat(flip_dist[:, :1], n_copies, axis=1),
                               atol=1e-12)
    dists = flip_dist[:, 0]
    # All-zero pixels give a = 0, hence uniform over the other classes; random 0..255 pixels
    # give large logits, hence a peaked distribution whose mode depends on the image.
    np.testing.assert_allclose(dists[0], 1.0 / (k - 1))
    assert dists[1:].max(axis=1).min() > 0.5
    assert len(set(dists[1:].argmax(axis=1).tolist())) > 1
    tv = 0.5 * np.abs(dists[:, None] - dists[None]).sum(axis=-1)
    assert tv[1:, 1:].max() > 0.5 and tv[0, 1:].min() > 0.3
    # The sampled labels show the same: flipped copies of image j follow dists[j].
    noisy = noise.corrupt(clean, kind='instance', rate=0.4, num_classes=k, seed=3, images=images)
    for j, group in enumerate(noisy.reshape(7, n_copies)):
        flipped = group[group != 0]
        freq = np.bincount(flipped - 1, minlength=k - 1) / len(flipped)
        np.testing.assert_allclose(freq, dists[j], atol=0.06)


def test_instance_logits_are_linear_in_raw_pixels():
    # a = x @ W[y] on raw pixel values: doubling one pixel doubles every logit, so log-ratios
    # of the flip distribution double (any normalisation such as /255 or mean/std would not).
    images = np.zeros((3, 2, 3), np.uint8)
    images[1, 0, 1] = 1
    images[2, 0, 1] = 2
    clean = np.array([2, 2, 2], np.int64)
    p = noise.instance_probabilities(clean, images, rate=0.3, num_classes=5, seed=4)
    logs = np.log(np.delete(p, 2, axis=1))
    ratios = logs - logs[:, :1]
    np.testing.assert_allclose(ratios[0], 0.0, atol=1e-12)  # zero image: uniform
    assert np.abs(ratios[1]).max() > 0.1
    np.testing.assert_allclose(ratios[2], 2.0 * ratios[1], rtol=1e-9, atol=1e-9)


def test_instance_flip_mass_is_q_and_goes_to_other_classes():
    clean, images = _instance_data(3000)
    p = noise.instance_probabilities(clean, images, rate=1.0, num_classes=10, seed=1)
    q = 1.0 - p[np.arange(3000), clean]
    # With rate 1 (q close to 1), the off-class mass is q and the clean-class mass 1 - q.
    p_off = p.copy()
    p_off[np.arange(3000), clean] = 0.0
    np.testing.assert_allclose(p_off.sum(axis=1), q)
    noisy = noise.corrupt(clean, kind='instance', rate=1.0, num_classes=10, seed=1,
                          images=images)
    assert noise.flip_rate(clean, noisy) == pytest.approx(q.mean(), abs=0.02)


@pytest.mark.parametrize('shape', [(6,), (4, 4, 3), (2, 3, 2, 2)])
def test_instance_any_image_shape(shape):
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 5, 500).astype(np.int64)
    images = rng.integers(0, 256, (500, *shape)).astype(np.uint8)
    noisy = noise.corrupt(clean, kind='instance', rate=0.3, num_classes=5, seed=0, images=images)
    assert noisy.shape == (500,) and noisy.dtype == np.int64
    assert noise.flip_rate(clean, noisy) == pytest.approx(0.3, abs=0.08)


def test_instance_chunking_does_not_change_the_result(monkeypatch):
    clean, images = _instance_data(700)
    full = noise.instance_probabilities(clean, images, rate=0.4, num_classes=10, seed=7)
    monkeypatch.setattr(noise, '_INSTANCE_CHUNK', 16)
    chunked = noise.instance_probabilities(clean, images, rate=0.4, num_classes=10, seed=7)
    np.testing.assert_allclose(chunked, full, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- confusion


def _digits():
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
    digits = load_digits()
    return digits.target.astype(np.int64), digits.images.astype(np.uint8)


def test_confusion_probabilities_flip_the_doubtful_to_what_they_resemble():
    """q_i = min(1, c (1 - s_i[y_i])) with mean rate; the flip goes to the other classes in
    proportion to the scores (uniform where they have none); a certain sample never flips."""
    labels = np.array([0, 0, 1, 2], np.int64)
    scores = np.array([[1.0, 0.0, 0.0],     # certain: never flips
                       [0.6, 0.3, 0.1],     # doubt 0.4, mostly towards class 1
                       [0.0, 0.2, 0.8],     # doubt 0.8, all towards class 2
                       [0.0, 0.0, 0.8]])    # doubt 0.2, no mass elsewhere: uniform
    p = noise.confusion_probabilities(labels, scores, rate=0.35, num_classes=3)
    q = 1.0 - p[np.arange(4), labels]
    c = 0.35 * 4 / (0.4 + 0.8 + 0.2)  # no q is capped at 1 at this rate
    np.testing.assert_allclose(q, c * np.array([0.0, 0.4, 0.8, 0.2]), atol=1e-9)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[1], [1 - q[1], q[1] * 0.75, q[1] * 0.25], atol=1e-9)
    np.testing.assert_allclose(p[2], [0.0, 1 - q[2], q[2]], atol=1e-9)
    np.testing.assert_allclose(p[3], [q[3] / 2, q[3] / 2, 1 - q[3]], atol=1e-9)
    capped = noise.confusion_probabilities(labels, scores, rate=0.6, num_classes=3)
    q = 1.0 - capped[np.arange(4), labels]
    assert q.mean() == pytest.approx(0.6) and q[2] == pytest.approx(1.0) and q[0] == 0.0
    with pytest.raises(ValueError, match='at most 0.750 of these labels'):
        noise.confusion_probabilities(labels, scores, rate=0.8, num_classes=3)
    with pytest.raises(ValueError, match='shape'):
        noise.confusion_probabilities(labels, scores[:, :2], rate=0.2, num_classes=3)


def test_confusion_noise_on_digits_is_human_like_and_seeded():
    """On real images the realised rate is the rate; the flips concentrate on a few
    confusable pairs (far from symmetric noise's spread), the flipped images are those a
    classifier doubts, and the labels are a function of the seed."""
    clean, images = _digits()
    noisy = noise.corrupt(clean, kind='confusion', rate=0.3, num_classes=10, seed=0,
                          images=images)
    assert noise.flip_rate(clean, noisy) == pytest.approx(0.3, abs=0.03)
    np.testing.assert_array_equal(noisy, noise.corrupt(
        clean, kind='confusion', rate=0.3, num_classes=10, seed=0, images=images))
    assert not np.array_equal(noisy, noise.corrupt(
        clean, kind='confusion', rate=0.3, num_classes=10, seed=1, images=images))
    t = noise.transition_matrix(clean, noisy, num_classes=10)
    np.fill_diagonal(t, 0.0)
    top_two = np.sort(t, axis=1)[:, -2:].sum(axis=1) / t.sum(axis=1)
    assert top_two.mean() > 0.5  # symmetric noise: 2 of 9 targets, 0.22
    scores = noise.confusion_scores(images, clean, num_classes=10, seed=0)
    doubt = 1.0 - scores[np.arange(len(clean)), clean]
    flipped = noisy != clean
    assert doubt[flipped].mean() > 3 * doubt[~flipped].mean()
    assert np.mean(scores.argmax(axis=1) == clean) > 0.85  # out of sample, still a classifier


# ----------------------------------------------------------------------------- imbalance


def test_imbalance_counts_follow_formula():
    k, gamma = 100, 100.0
    true = _labels(50_000, k)
    idx = noise.imbalance_indices(true, gamma=gamma, seed=0)
    counts = np.bincount(true[idx], minlength=k)
    expected = [int(np.floor(500 * (1 / gamma) ** (c / (k - 1)))) for c in range(k)]
    np.testing.assert_array_equal(counts, expected)
    assert counts[0] == 500 and counts[-1] == 5
    assert idx.dtype == np.int64
    assert np.all(np.diff(idx) > 0)  # sorted, unique


def test_imbalance_selects_by_the_labels_given():
    k = 10
    true = _labels(5000, k)
    noisy = noise.corrupt(true, kind='sym', rate=0.6, num_classes=k, seed=0)
    idx = noise.imbalance_indices(true, gamma=10.0, seed=0)
    expected = [math.floor(500 * 0.1 ** (c / 9)) for c in range(k)]
    np.testing.assert_array_equal(np.bincount(true[idx], minlength=k), expected)
    assert not np.array_equal(np.bincount(noisy[idx], minlength=k), expected)


def test_imbalance_seeding_and_gamma_one():
    true = _labels(3000, 10)
    a = noise.imbalance_indices(true, gamma=5.0, seed=1)
    np.testing.assert_array_equal(a, noise.imbalance_indices(true, gamma=5.0, seed=1))
    assert not np.array_equal(a, noise.imbalance_indices(true, gamma=5.0, seed=2))
    np.testing.assert_array_equal(noise.imbalance_indices(true, gamma=1.0, seed=0),
                                  np.arange(3000))


def test_imbalance_small_class_keeps_what_it_has():
    true = np.array([0] * 100 + [1] * 3 + [2] * 100, np.int64)
    idx = noise.imbalance_indices(true, gamma=4.0, seed=0)
    np.testing.assert_array_equal(np.bincount(true[idx]), [100, 3, 25])


# ---------------------------------------------------------------------------- ValueErrors


def _good(**overrides):
    args = dict(kind='sym', rate=0.4, num_classes=10, seed=0)
    args.update(overrides)
    return args


@pytest.mark.parametrize('labels,overrides,match', [
        (np.arange(10), dict(kind='gaussian'), 'unknown noise kind'),
        (np.arange(10), dict(rate=-0.1), r'\[0, 1\]'),
        (np.arange(10), dict(rate=1.5), r'\[0, 1\]'),
        (np.arange(10), dict(rate=float('nan')), r'\[0, 1\]'),
        (np.array([0, 10]), {}, 'must lie in'),
        (np.array([-1, 3]), {}, 'must lie in'),
        (np.zeros((2, 5), np.int64), {}, '1-D'),
        (np.array([0.0, 1.0]), {}, 'integers'),
        (np.arange(10), dict(kind='instance'), 'needs images'),
        (np.arange(10), dict(kind='confusion'), "'confusion' needs images"),
        (np.arange(10), dict(kind='instance', images=np.zeros((9, 4))), 'shape'),
        (np.arange(10), dict(kind='asym_cifar10', num_classes=100), 'num_classes=10'),
        (np.arange(10), dict(kind='asym_cifar100'), 'num_classes=100'),
        (np.arange(10), dict(kind='asym_cifar100_superclass'), 'num_classes=100'),
        (np.arange(10), dict(kind='hierarchical'), 'num_classes=100'),
        (np.arange(2), dict(kind='flip2', num_classes=2), '>= 3'),
        (np.arange(1), dict(num_classes=1), '>= 2'),
])
def test_corrupt_value_errors(labels, overrides, match):
    with pytest.raises(ValueError, match=match) as info:
        noise.corrupt(labels, **_good(**overrides))
    assert '\n' not in str(info.value)


def test_other_value_errors():
    with pytest.raises(ValueError, match='gamma'):
        noise.imbalance_indices(np.arange(10), gamma=0.5, seed=0)
    with pytest.raises(ValueError, match='differ in shape'):
        noise.transition_matrix(np.arange(3), np.arange(4), num_classes=5)
    with pytest.raises(ValueError, match='must lie in'):
        noise.transition_matrix(np.arange(3), np.array([0, 1, 7]), num_classes=5)
    with pytest.raises(ValueError, match='differ in shape'):
        noise.flip_rate(np.arange(3), np.arange(4))
    with pytest.raises(ValueError):
        noise.noise_matrix(kind='instance', rate=0.2, num_classes=10)
    with pytest.raises(ValueError):
        noise.noise_matrix(kind='confusion', rate=0.2, num_classes=10)
