"""Meta-set splits: which samples, which labels, and what stays in training."""

import numpy as np
import pytest

from clid_tf.data.sources.digits import load_digits
from clid_tf.data import meta_sets
from clid_tf.data import splits

DIGITS = load_digits()


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


def _reference_subset(labels, pool, *, size, num_classes, seed, epoch=0):
    """The authors' Clothing1M loop (ruofanhu/CLID-MU@5cd0608, sota/dataloader_clothing1M.py:
    clothing_dataset.__init__()), over the same seeded order: walk the shuffled list and
    keep a sample while its class has fewer than size // K."""
    order = pool[np.random.default_rng([seed, splits._SUBSET_KEY, epoch]).permutation(
        len(pool))]
    counts, kept = np.zeros(num_classes, int), []
    for index in order:
        if counts[labels[index]] < size // num_classes:
            counts[labels[index]] += 1
            kept.append(index)
    return np.sort(kept)


def test_balanced_subset_caps_each_class_as_the_reference_loop_does():
    rng = np.random.default_rng(0)
    labels = rng.choice(4, size=500, p=[0.5, 0.3, 0.15, 0.05])  # class 3 below the cap
    pool = np.sort(rng.choice(500, size=400, replace=False))
    subset = splits.balanced_subset(labels, pool, size=120, num_classes=4, seed=7)
    np.testing.assert_array_equal(
        subset, _reference_subset(labels, pool, size=120, num_classes=4, seed=7))
    counts = np.bincount(labels[subset], minlength=4)
    in_pool = np.bincount(labels[pool], minlength=4)
    np.testing.assert_array_equal(counts, np.minimum(in_pool, 30))  # cap 120 // 4
    assert counts[3] < 30 and np.isin(subset, pool).all() and len(set(subset)) == len(subset)
    again = splits.balanced_subset(labels, pool, size=120, num_classes=4, seed=7)
    np.testing.assert_array_equal(again, subset)  # seeded
    for other in (dict(seed=8), dict(seed=7, epoch=1)):
        drawn = splits.balanced_subset(labels, pool, size=120, num_classes=4, **other)
        assert not np.array_equal(drawn, subset)
        np.testing.assert_array_equal(np.bincount(labels[drawn], minlength=4), counts)
    with pytest.raises(ValueError, match="smaller than the number of classes"):
        splits.balanced_subset(labels, pool, size=3, num_classes=4, seed=7)


def test_training_subset_is_fixed_unless_resampled_each_epoch():
    fixed = _prepare("clid", train_subset=500)
    assert fixed.train_of_epoch is None  # the same samples every epoch
    np.testing.assert_array_equal(np.bincount(fixed.noisy_labels[fixed.train_indices],
                                              minlength=10), np.full(10, 50))
    assert np.isin(fixed.meta_indices, np.arange(1437)).all() and len(fixed.meta_indices) == 200
    resampled = _prepare("clid", train_subset=500, resample_subset=True)
    np.testing.assert_array_equal(resampled.train_of_epoch(0), resampled.train_indices)
    np.testing.assert_array_equal(resampled.train_indices, fixed.train_indices)
    later = resampled.train_of_epoch(3)
    assert len(later) == 500 and not np.array_equal(later, fixed.train_indices)
    np.testing.assert_array_equal(later, resampled.train_of_epoch(3))  # epoch-seeded
    with pytest.raises(ValueError, match="exceeds the 1437 training samples"):
        _prepare("clid", train_subset=2000)
    with pytest.raises(ValueError, match="needs a train_subset"):
        _prepare("clid", resample_subset=True)


def _with_val(dataset, labels):
    """`dataset` with its test split also as a validation split carrying `labels`."""
    from clid_tf.data import datasets  # pylint: disable=import-outside-toplevel
    return dataset._replace(val=datasets.Split(dataset.test.inputs, labels))


def test_a_val_meta_set_is_random_validation_images_whose_labels_are_never_read():
    labels = DIGITS.test.labels
    default = _prepare("clid", dataset=_with_val(DIGITS, labels), noise="none")
    assert default.meta_split == "train" and default.meta_inputs() is DIGITS.train.inputs
    setup = _prepare("clid", dataset=_with_val(DIGITS, labels), noise="none",
                     meta_source="val")
    assert setup.meta_split == "val" and setup.meta_labels is None
    assert setup.meta_inputs() is setup.dataset.val.inputs
    np.testing.assert_array_equal(setup.selection_indices, setup.meta_indices)
    assert len(setup.meta_indices) == 200 and setup.meta_indices.max() < len(labels)
    assert len(setup.train_indices) == 1437  # training keeps every training sample
    scrambled = _prepare("clid", dataset=_with_val(DIGITS, np.zeros_like(labels)),
                         noise="none", meta_source="val")
    np.testing.assert_array_equal(scrambled.meta_indices, setup.meta_indices)
    ce = _prepare("ce", dataset=_with_val(DIGITS, labels), noise="none", meta_source="val")
    assert ce.meta_indices is None and ce.meta_split == "val"
    np.testing.assert_array_equal(ce.selection_indices, setup.meta_indices)
    with pytest.raises(ValueError, match="needs a validation split"):
        _prepare("clid", meta_source="val")
    with pytest.raises(ValueError, match="exceeds the 360 validation images"):
        _prepare("clid", dataset=_with_val(DIGITS, labels), meta_source="val", meta_size=400)
    with pytest.raises(ValueError, match="method ce_clean needs one with labels"):
        _prepare("ce_clean", dataset=_with_val(DIGITS, labels), meta_source="val")


def test_a_redrawn_meta_set_changes_every_epoch_from_the_same_pool():
    setup = _prepare("clid", redraw_meta=True)
    np.testing.assert_array_equal(setup.meta_of_epoch(0), setup.meta_indices)
    np.testing.assert_array_equal(setup.meta_indices, _prepare("clid").meta_indices)
    later = [setup.meta_of_epoch(e) for e in (1, 2)]
    assert all(len(m) == 200 and np.isin(m, setup.train_indices).all() for m in later)
    assert not np.array_equal(later[0], setup.meta_indices)
    assert not np.array_equal(later[0], later[1])
    np.testing.assert_array_equal(setup.meta_of_epoch(1), later[0])
    with pytest.raises(ValueError, match="method ce_clean needs labels"):
        _prepare("ce_clean", redraw_meta=True)
