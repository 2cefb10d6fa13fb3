"""What a Keras user brings: digits as float images in [0, 1] with flipped labels, and
plain functional, Sequential and subclassed classifiers with a softmax head.

Importable from a subprocess (`python -c "from tests.helpers import keras_users"`), so the
subclassed model is registered for `keras.models.load_model` there too.
"""

from __future__ import annotations

import keras
import numpy as np
from sklearn import datasets

NUM_CLASSES = 10
SHAPE = (8, 8, 1)


def digits(n: int = 600, *, flip_rate: float = 0.3, seed: int = 0):
    """(x float32 [n, 8, 8, 1] in [0, 1], noisy labels int64 [n], true labels int64 [n]):
    the first n of scikit-learn's digits, a `flip_rate` share flipped to another class."""
    loaded = datasets.load_digits()
    x = (loaded.images[:n, ..., None] / 16.0).astype(np.float32)
    clean = loaded.target[:n].astype(np.int64)
    rng = np.random.default_rng(seed)
    flip = rng.random(n) < flip_rate
    noisy = np.where(flip, (clean + rng.integers(1, NUM_CLASSES, n)) % NUM_CLASSES, clean)
    return x, noisy, clean


def functional(seed: int = 0, activation: str = "softmax") -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(SHAPE)
    hidden = keras.layers.Dense(32, activation="relu")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES, activation=activation)(hidden))


def sequential(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(),
                             keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(NUM_CLASSES), keras.layers.Softmax()])


@keras.saving.register_keras_serializable(package="keras_users")
class Subclassed(keras.Model):
    """A subclassed classifier: Flatten -> Dense(32, relu) -> Dense(K, softmax)."""

    def __init__(self, units: int = 32, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.flatten = keras.layers.Flatten()
        self.hidden = keras.layers.Dense(units, activation="relu")
        self.head = keras.layers.Dense(NUM_CLASSES, activation="softmax")

    def call(self, inputs, training=False):
        return self.head(self.hidden(self.flatten(inputs)))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def subclassed(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = Subclassed()
    model(np.zeros((1, *SHAPE), np.float32))  # built, as a user's model is after one call
    return model


BUILDERS = {"functional": functional, "sequential": sequential, "subclassed": subclassed}
