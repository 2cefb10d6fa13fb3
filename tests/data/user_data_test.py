"""Tests for clid_tf.data.user_data: what a Keras user passes to fit, checked against
plain numpy expectations, and the stream it becomes."""

import numpy as np
import pytest
import tensorflow as tf

from clid_tf.data import user_data

K = 4


@pytest.mark.parametrize("given, want", [
    (np.array([0, 3, 1]), [0, 3, 1]),
    (np.array([[0], [3], [1]]), [0, 3, 1]),
    (np.array([0.0, 3.0, 1.0]), [0, 3, 1]),
    (np.eye(K)[[2, 0, 3]], [2, 0, 3]),
    (np.array([True, False]), [1, 0]),
])
def test_accepted_labels_become_class_ids(given, want):
    got = user_data.check_labels(given, K)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("given, match", [
    (np.array([0.5, 1.0]), "fractional"),
    (np.array([0.0, np.nan]), "fractional or non-finite"),
    (np.array([0, 4]), "label 4, outside the model's classes 0..3"),
    (np.array([-1, 0]), "label -1"),
    (np.full((2, K), 0.25), "not one-hot"),
    (np.eye(3)[[0, 1]], r"int class ids \[N\] or \[N, 1\]"),
    (np.zeros((2, 2, 2)), "got shape"),
    (np.array(["a", "b"]), "integer class ids"),
])
def test_refused_labels_say_what_to_give(given, match):
    with pytest.raises(ValueError, match=match) as raised:
        user_data.check_labels(given, K)
    assert "\n" not in str(raised.value)


def test_sample_and_class_weights_multiply():
    labels = np.array([0, 1, 1, 2])
    got = user_data.check_sample_weights([1.0, 2.0, 0.5, 0.0], {0: 3.0, 1: 2.0, 2: 1.0},
                                         labels)
    np.testing.assert_allclose(got, [3.0, 4.0, 1.0, 0.0])
    assert user_data.check_sample_weights(None, None, labels) is None
    np.testing.assert_allclose(user_data.check_sample_weights([[1.0]] * 4, None, labels),
                               np.ones(4))


def test_class_weights_and_validation_split_follow_keras_own_helpers():
    """Against Keras 3's own code: a class the dict does not name weighs 1
    (`class_weight_to_sample_weights`); the split point is Keras' floor rule
    (`train_validation_split`), including where rounding would differ."""
    # pylint: disable-next=import-outside-toplevel
    from keras.src.trainers.data_adapters import array_slicing, data_adapter_utils
    labels = np.array([0, 1, 2, 3, 1, 0])
    given = {0: 2.0, 3: 0.5}
    np.testing.assert_allclose(user_data.check_sample_weights(None, given, labels),
                               data_adapter_utils.class_weight_to_sample_weights(labels, given))
    with pytest.raises(ValueError, match="class ids"):
        user_data.check_sample_weights(None, {"cat": 1.0}, labels)
    for n, fraction in ((10, 0.25), (7, 0.3), (600, 0.1), (5, 0.5), (9, 0.35)):
        x = np.arange(n)[:, None]
        (mine, *_), (held, *_) = user_data.split_validation(x, np.arange(n) % K, None, fraction)
        (train,), (validation,) = array_slicing.train_validation_split((x,), fraction)
        np.testing.assert_array_equal(mine, train)
        np.testing.assert_array_equal(held, validation)


def test_labels_in_graph_checks_every_batch():
    np.testing.assert_array_equal(user_data.labels_in_graph(tf.constant([[2], [0]]), K), [2, 0])
    np.testing.assert_array_equal(user_data.labels_in_graph(tf.eye(K)[1:3], K), [1, 2])
    with pytest.raises(tf.errors.InvalidArgumentError, match="integer class ids in 0..3"):
        user_data.labels_in_graph(tf.constant([1, 7]), K)
    with pytest.raises(tf.errors.InvalidArgumentError):
        user_data.labels_in_graph(tf.constant([1.5, 2.0]), K)


def test_validation_split_takes_the_last_part_before_any_shuffle():
    x, y, w = np.arange(10)[:, None], np.arange(10) % K, np.linspace(0, 1, 10)
    (tx, ty, tw), (vx, vy, vw) = user_data.split_validation(x, y, w, 0.3)
    np.testing.assert_array_equal(tx[:, 0], np.arange(7))
    np.testing.assert_array_equal(vx[:, 0], [7, 8, 9])
    np.testing.assert_array_equal(vy, [3, 0, 1])
    np.testing.assert_allclose(vw, w[7:])
    with pytest.raises(ValueError, match="empty part"):
        user_data.split_validation(x, y, None, 0.99)  # keeps floor(10 * 0.01) = 0


def test_a_dataset_becomes_named_batches_with_class_weights():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    y = np.array([0, 1, 2, 3, 0, 1])
    data = tf.data.Dataset.from_tensor_slices((x, y[:, None])).batch(4)
    batches = list(user_data.dataset_elements(data, K, {0: 2.0, 1: 1.0, 2: 1.0, 3: 0.5})
                   .as_numpy_iterator())
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), y)
    np.testing.assert_allclose(np.concatenate([b["sample_weight"] for b in batches]),
                               [2.0, 1.0, 1.0, 0.5, 2.0, 1.0])
    pixels = tf.data.Dataset.from_tensor_slices((x.astype(np.uint8), y)).batch(4)
    inputs, labels = user_data.arrays_of(pixels, K)
    assert inputs.dtype == np.uint8
    np.testing.assert_array_equal(labels, y)
    # the profile keeps the user's uint8 (the elements are cast to float32 for training)
    assert next(iter(user_data.dataset_elements(pixels, K)))["image"].dtype == tf.float32
    profile = user_data.profile_of_dataset(
        user_data.dataset_elements(pixels, K, None, cast=False))
    assert profile.dtype == "uint8" and profile.pixel_scale == 1.0


def test_the_input_profile_tells_the_pixel_range():
    floats = user_data.profile_of_array(np.random.default_rng(0).random((3, 4, 4, 1)))
    assert floats.pixel_scale == 255.0 and floats.is_image
    pixels = user_data.profile_of_array(np.full((3, 4, 4, 3), 200, np.uint8))
    assert pixels.pixel_scale == 1.0 and pixels.dtype == "uint8"
    assert user_data.InputProfile.from_config(floats.to_config()) == floats


def test_prepare_gives_steps_meta_set_and_weights():
    x = np.random.default_rng(0).random((100, 8, 8, 1)).astype(np.float32)
    y = np.arange(100) % K
    prepared = user_data.prepare(x, y, num_classes=K, batch_size=20, meta_size=30,
                                 meta_batch_size=10, seed=0, sample_weight=np.ones(100))
    element = next(iter(prepared.stream))
    assert prepared.steps == 5 and len(prepared.meta_set) == 30
    longer = user_data.prepare(x, y, num_classes=K, batch_size=20, meta_size=30,
                               meta_batch_size=10, seed=0, steps_per_epoch=7)
    assert longer.steps == 7  # the stream's epochs follow fit's steps_per_epoch
    assert set(element["train"]) == {"image", "label", "sample_weight"}
    assert set(element["meta"]) == {"image"}  # label-free
    assert element["meta"]["image"].shape == (10, 8, 8, 1)


def test_float_images_on_no_clear_scale_and_non_finite_inputs_are_refused():
    """Round-off above 1 is still the [0, 1] scale; a maximum of 1.5 is neither scale; one
    NaN would make every weight NaN after the first step."""
    x = np.full((6, 4, 4, 1), 0.5, np.float32)
    x[0, 0, 0, 0] = 1.0000001
    assert user_data.profile_of_array(x).pixel_scale == 255.0
    x[0, 0, 0, 0] = 1.5
    with pytest.raises(ValueError, match="float pixels reach 1.5"):
        user_data.profile_of_array(x)
    x[0, 0, 0, 0] = np.nan
    x[4, 1, 1, 0] = np.inf
    with pytest.raises(ValueError, match=r"x holds NaN or Inf in 2 of 6 samples \(the first "
                                         r"is sample 0\)"):
        user_data.in_memory(x, np.arange(6) % K, num_classes=K, validation=None)
