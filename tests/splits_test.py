"""Meta-set splits: which samples, which labels, and what stays in training."""

import numpy as np
import pytest

from clid_tf import meta_sets
from clid_tf import splits


def _prepare(method, **kwargs):
    args = dict(dataset="digits", data_dir=None, noise="sym", noise_rate=0.4,
                human_noise=False, method=method, meta_size=200, batch_size=100,
                meta_batch_size=100, seed=3)
    args.update(kwargs)
    return splits.prepare(**args)


def test_clid_meta_set_is_random_training_samples_without_labels():
    setup = _prepare("clid")
    assert setup.meta_labels is None  # label-free: no labels reach the meta step
    assert len(setup.meta_indices) == 200 and len(set(setup.meta_indices)) == 200
    assert np.isin(setup.meta_indices, setup.train_indices).all()  # they stay in training
    assert len(setup.train_indices) == 1437
    np.testing.assert_array_equal(_prepare("clid").meta_indices, setup.meta_indices)
    assert not np.array_equal(_prepare("clid", seed=4).meta_indices, setup.meta_indices)


@pytest.mark.parametrize("method,source", [("ce_clean", "clean"), ("ce_noisy", "noisy"),
                                           ("mae", "noisy")])
def test_labelled_meta_set_is_balanced_by_noisy_label_and_removed(method, source):
    setup = _prepare(method)
    meta = setup.meta_indices
    assert not np.isin(meta, setup.train_indices).any()
    assert len(setup.train_indices) + len(meta) == 1437
    np.testing.assert_array_equal(np.bincount(setup.noisy_labels[meta], minlength=10),
                                  np.full(10, 20))
    labels = setup.dataset.y_train_clean if source == "clean" else setup.noisy_labels
    np.testing.assert_array_equal(setup.meta_labels, labels[meta])
    if source == "clean":  # the oracle's labels differ from the noisy ones it is split by
        assert (setup.meta_labels != setup.noisy_labels[meta]).any()


def test_ce_has_a_selection_set_but_no_meta_set():
    setup = _prepare("ce")
    assert setup.meta_indices is None and len(setup.selection_indices) == 200


def test_imbalance_keeps_fewer_samples_of_later_classes():
    setup = _prepare("clid", imbalance_gamma=10.0, meta_size=50, meta_batch_size=50)
    counts = np.bincount(setup.dataset.y_train_clean[setup.train_indices], minlength=10)
    assert counts[0] > counts[9] * 5 and np.isin(setup.meta_indices, setup.train_indices).all()


def test_sizes_are_checked():
    with pytest.raises(ValueError, match="meta_size"):
        meta_sets.random_subset(10, size=11, seed=0)
    with pytest.raises(ValueError, match="meta_batch_size"):
        _prepare("clid", meta_size=50)
    with pytest.raises(ValueError, match="batch_size"):
        _prepare("clid", batch_size=2000)
