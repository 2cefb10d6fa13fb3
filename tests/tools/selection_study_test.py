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
    assert found["class cosine gap (true)"] == pytest.approx(1.0)  # cos 1 within, 0 across
    assert found["10-NN accuracy (true)"] == 1.0
    assert found["accuracy (true)"] == pytest.approx(23 / 24)


def test_table_picks_each_variants_lowest_eligible_epoch():
    rows = {"CLID": [1.0, 3.0, 2.0, 2.5], "CLID, centred features": [1.0, 2.0, 2.0, 1.5],
            "CLID excess": [0.0, -1.0, -2.0, -0.5], "mean cosine": [0.9, 0.8, 0.7, 0.6]}
    text = study.table([0.1, 0.2, 0.3, 0.4], rows, eligible_from=2)
    assert "| CLID | 1.000 | 3.000 | 2.000 | 2.500 |" in text
    ranked = "every epoch ranked (--select_epochs=all), picks epoch"
    assert f"- CLID, {ranked} 3: val (noisy) 0.300 against 0.400" in text
    assert f"- CLID, centred features, {ranked} 4: val (noisy) 0.400 against 0.400" in text
    assert f"- CLID excess, {ranked} 3:" in text


def test_the_study_scores_an_epoch_as_the_selection_does():
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from clid_tf.data import pipelines  # pylint: disable=import-outside-toplevel
    from clid_tf.evaluation import selection  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(3)
    inputs = rng.normal(size=(250, 8)).astype(np.float32)  # batches of 100, 100 and 50
    to_features = tf.constant(rng.normal(size=(8, 6)), tf.float32)
    to_logits = tf.constant(rng.normal(size=(6, 4)) * 2, tf.float32)

    def backbone(x, training=False):
        del training
        features = tf.nn.relu(tf.matmul(tf.cast(x, tf.float32), to_features))
        return tf.matmul(features, to_logits), features

    logits, features = (np.asarray(t) for t in backbone(inputs))
    scores, diagnostics = study.study([{"features": features, "logits": logits}] * 2,
                                      tau=0.5, batch_size=100, seed=7, true_labels=None)
    assert diagnostics == {}
    for epoch in (1, 2):  # the selection scores epoch e with seed + e
        logged = selection.meta_set_clid(backbone, pipelines.as_part(inputs), batch_size=100,
                                         tau=0.5, seed=7 + epoch)
        assert scores["CLID"][epoch - 1] == pytest.approx(logged, rel=1e-5)
    assert np.isnan(scores["agreement with previous"][0])
    assert scores["agreement with previous"][1] == 1.0
