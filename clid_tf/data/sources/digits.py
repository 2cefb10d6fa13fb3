"""`--dataset=digits`: scikit-learn's 8x8 digits, embedded: the offline default."""

from __future__ import annotations

import numpy as np

from clid_tf.data import datasets
from clid_tf.data.datasets import Dataset, Split
from clid_tf.data.inputs import ArrayInputs


def load_digits(*, test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits (1797 images, 10 classes), a fixed stratified split.

    The 0..16 grey levels are rescaled to 0..255 uint8 so digits look like any other image
    dataset to the pipeline and the exported model. A benchmark: its labels are clean.
    """
    # deferred: scikit-learn (heavy) loads only when used, not with the command line
    # pylint: disable=import-outside-toplevel
    from sklearn import datasets as sk_datasets
    from sklearn import model_selection

    digits = sk_datasets.load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
        images, labels, test_size=test_fraction, random_state=split_seed, stratify=labels)
    mean, std = datasets.array_stats(x_train)
    return Dataset(
        train=Split(ArrayInputs(x_train), y_train, y_train.copy()), val=None,
        test=Split(ArrayInputs(x_test), y_test), num_classes=10,
        class_names=tuple(str(c) for c in range(10)), mean=mean, std=std,
        labels_given=False)


class DigitsSource:
    """The `Source` of 'digits' (no options, no argument)."""

    name = "digits"
    prefixed = False
    options = frozenset()
    human_labels = ()
    example = "digits"
    summary = "offline scikit-learn 8x8 digits"

    def load(self, argument: str, **options) -> Dataset:
        del argument, options
        return load_digits()

    def claims(self, path: str) -> bool:
        del path
        return False


SOURCES = (DigitsSource(),)
