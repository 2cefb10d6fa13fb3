"""tools/selection_study.py without training: its CLID against the library's, the uniform
baseline, the true-label diagnostics on a hand-made geometry, and the picks."""

import numpy as np
import pytest

import selection_study as study


def test_clid_terms_match_the_library_clid_with_negative_similarities():
    from clid_tf.core import clid as clid_lib  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)
    features = rng.normal(size=(20, 6))  # signed: the negative mask matters
    logits = rng.normal(size=(20, 4)) * 3
    for tau in (0.5, 0.1):
        value, _ = study.clid_terms(features, logits, tau)
        expected = float(clid_lib.clid(features.astype(np.float32),
                                       logits.astype(np.float32), tau=tau))
        assert value == pytest.approx(expected, rel=1e-5)


def test_identical_predictions_give_the_uniform_baseline_so_no_excess():
    rng = np.random.default_rng(1)
    features = np.abs(rng.normal(size=(12, 5)))
    logits = np.tile(rng.normal(size=(1, 3)), (12, 1))  # Q is uniform in every row
    value, uniform = study.clid_terms(features, logits, 0.5)
    assert value == pytest.approx(uniform, rel=1e-12)
    cos = study.unit_rows(features) @ study.unit_rows(features).T / 0.5
    s = np.exp(cos) / np.exp(cos).sum(axis=1, keepdims=True)
    assert uniform == pytest.approx(np.mean(-np.log(s + study.EPS)), rel=1e-12)


def test_true_label_diagnostics_on_two_orthogonal_classes():
    labels = np.repeat([0, 1], 12)
    features = np.where(labels[:, None] == 0, [1.0, 0.0], [0.0, 2.0])
    logits = np.where(labels[:, None] == 0, [3.0, 0.0], [0.0, 3.0])
    logits[0] = [0.0, 3.0]  # one wrong prediction
    found = study.true_label_diagnostics(features, logits, labels)
    assert found["class cosine gap"] == pytest.approx(1.0)  # cos 1 within, 0 across
    assert found["10-NN accuracy (true)"] == 1.0
    assert found["accuracy (true)"] == pytest.approx(23 / 24)


def test_table_picks_each_variants_lowest_eligible_epoch():
    rows = {"CLID": [1.0, 3.0, 2.0, 2.5], "CLID, centred features": [1.0, 2.0, 2.0, 1.5],
            "CLID excess": [0.0, -1.0, -2.0, -0.5], "mean cosine": [0.9, 0.8, 0.7, 0.6]}
    text = study.table([0.1, 0.2, 0.3, 0.4], rows, eligible_from=2)
    assert "| CLID | 1.000 | 3.000 | 2.000 | 2.500 |" in text
    assert "- CLID picks epoch 3: val (noisy) 0.300 against 0.400" in text
    assert "- CLID, centred features picks epoch 4: val (noisy) 0.400 against 0.400" in text
    assert "- CLID excess picks epoch 3:" in text
