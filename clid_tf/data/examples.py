"""Two small noisy-label datasets of the kinds Keras serves besides images, made here.

For the README's "your model, your data" examples, their tests and
tools/bench_your_data.py; numpy only, seeded, in the form a user's own data has.

  noisy_reviews   short review texts (str) with 3 sentiment classes, labelled by
                  annotators who confuse neighbouring sentiments (negative <-> neutral <->
                  positive), as crowd-sourced sentiment labels are.
  noisy_tabular   a two-input table (6 numeric columns and 1 categorical column) with
                  symmetric label noise.

Each returns (inputs, noisy labels int64 [n], true labels int64 [n]).
"""

from __future__ import annotations

import numpy as np

SENTIMENTS = ("negative", "neutral", "positive")
_WORDS = {
    "negative": "awful bad boring broken poor waste dull worst refund slow".split(),
    "neutral": "okay average fine decent plain usual standard fair middling so-so".split(),
    "positive": "great good lovely superb best excellent fun solid happy fast".split(),
}
_FILLER = ("the a this it was is product film phone really very quite and but my "
           "delivery story screen battery price").split()


def noisy_reviews(n: int = 2000, *, noise_rate: float = 0.4, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(texts: object array [n] of str, noisy labels [n], true labels [n]).

    A review of class c has 8-14 words: filler, 2-4 words of its own sentiment and 0-2 of
    a neighbouring one (mixed reviews). A `noise_rate` share of the labels moves to a
    neighbouring class (neutral to either side), as annotators disagree.
    """
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, len(SENTIMENTS), n)
    texts = []
    for label in clean:
        neighbour = 1 if label != 1 else rng.choice([0, 2])
        words = [*rng.choice(_FILLER, rng.integers(6, 9)),
                 *rng.choice(_WORDS[SENTIMENTS[label]], rng.integers(2, 5)),
                 *rng.choice(_WORDS[SENTIMENTS[neighbour]], rng.integers(0, 3))]
        texts.append(" ".join(rng.permutation(words)))
    flip = rng.random(n) < noise_rate
    step = np.where(clean == 1, rng.choice([-1, 1], n), np.where(clean == 0, 1, -1))
    noisy = np.where(flip, clean + step, clean)
    return np.array(texts, dtype=object), noisy.astype(np.int64), clean.astype(np.int64)


def noisy_tabular(n: int = 3000, *, noise_rate: float = 0.4, num_classes: int = 4,
                  seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """({'numbers': float32 [n, 6], 'category': int64 [n]}, noisy labels [n], true [n]).

    The class sets the mean of the numeric columns (overlapping clusters) and, for 70% of
    the rows, one of 2 categories of its own among 2 * num_classes (the rest: any
    category). A `noise_rate` share of the labels moves to another class, uniformly.
    """
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, num_classes, n)
    centres = rng.normal(0.0, 1.0, (num_classes, 6))
    numbers = (centres[clean] + rng.normal(0.0, 1.2, (n, 6))).astype(np.float32)
    own = 2 * clean + rng.integers(0, 2, n)
    category = np.where(rng.random(n) < 0.7, own, rng.integers(0, 2 * num_classes, n))
    flip = rng.random(n) < noise_rate
    noisy = np.where(flip, (clean + rng.integers(1, num_classes, n)) % num_classes, clean)
    return ({"numbers": numbers, "category": category.astype(np.int64)},
            noisy.astype(np.int64), clean.astype(np.int64))
