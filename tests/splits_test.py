"""Meta-set splits: which samples, which labels, and what stays in training."""

import numpy as np
import pytest

from clid_tf import loaders
from clid_tf import meta_sets
from clid_tf import splits

DIGITS = loaders.load_digits()


def _prepare(method, dataset=DIGITS, **kwargs):
    args = dict(noise="sym", noise_rate=0.4, method=method, meta_size=200, batch_size=100,
                meta_batch_size=100, seed=3)
    args.update(kwargs)
    return splits.prepare(dataset, **args)


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
    labels = setup.dataset.train.clean_labels if source == "clean" else setup.noisy_labels
    np.testing.assert_array_equal(setup.meta_labels, labels[meta])
    if source == "clean":  # the oracle's labels differ from the noisy ones it is split by
        assert (setup.meta_labels != setup.noisy_labels[meta]).any()


def test_ce_has_a_selection_set_but_no_meta_set():
    setup = _prepare("ce")
    assert setup.meta_indices is None and len(setup.selection_indices) == 200


def test_imbalance_keeps_fewer_samples_of_later_classes():
    setup = _prepare("clid", imbalance_gamma=10.0, meta_size=50, meta_batch_size=50)
    counts = np.bincount(setup.dataset.train.clean_labels[setup.train_indices], minlength=10)
    assert counts[0] > counts[9] * 5 and np.isin(setup.meta_indices, setup.train_indices).all()


def test_sizes_are_checked():
    with pytest.raises(ValueError, match="meta_size"):
        meta_sets.random_subset(10, size=11, seed=0)
    with pytest.raises(ValueError, match="meta_batch_size"):
        _prepare("clid", meta_size=50)
    with pytest.raises(ValueError, match="batch_size"):
        _prepare("clid", batch_size=2000)


def test_val_split_holds_out_noisy_training_samples():
    setup = _prepare("clid", val_split=0.2)
    val, train = setup.val_indices, setup.train_indices
    assert len(val) == round(0.2 * 1437) and len(train) + len(val) == 1437
    assert not np.isin(val, train).any()
    assert np.isin(setup.meta_indices, train).all()  # the meta set is drawn from training
    np.testing.assert_array_equal(_prepare("clid", val_split=0.2).val_indices, val)
    with pytest.raises(ValueError, match="val_split"):
        _prepare("clid", val_split=1.0)


def test_no_noise_keeps_the_given_labels():
    setup = _prepare("clid", noise="none")
    np.testing.assert_array_equal(setup.noisy_labels, DIGITS.train.labels)


def test_instance_noise_needs_images_in_memory():
    class NoArray:  # a streamed source: no `array` attribute
        element_shape, dtype = (8, 8, 1), "uint8"

        def __len__(self):
            return 1437

    streamed = DIGITS._replace(train=DIGITS.train._replace(inputs=NoArray()))
    with pytest.raises(ValueError, match="instance noise needs the training images in memory"):
        _prepare("clid", dataset=streamed, noise="instance")
