"""Tests for clid_tf.evaluation.label_issues: the ranking from probabilities computed
elsewhere against numpy, the folds' fit arguments, and a plain compiled Keras model."""

import keras
import numpy as np
import pytest

import clid_tf
from tests.helpers import keras_users as users


@pytest.mark.parametrize("filter_by", ["confident_learning", "predicted_neq_given"])
def test_rank_label_issues_matches_its_numpy_definition(filter_by):
    """Suspicion, ranking and the flagged issues, most suspicious first (README's
    issues[:10] are the ten most suspicious), against numpy."""
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=200)
    labels = rng.integers(0, 5, 200)
    clean = np.where(rng.random(200) < 0.7, labels, (labels + 1) % 5)
    issues = clid_tf.rank_label_issues(labels, probs, clean_labels=clean, filter_by=filter_by)
    suspicion = 1.0 - probs[np.arange(200), labels]
    np.testing.assert_allclose(issues.suspicion, suspicion)
    np.testing.assert_array_equal(issues.ranked, np.argsort(-suspicion, kind="stable"))
    flagged = audit_filter(probs, labels, filter_by)
    np.testing.assert_array_equal(issues.flagged, flagged)
    np.testing.assert_array_equal(issues.issues, [i for i in issues.ranked if flagged[i]])
    assert np.all(np.diff(suspicion[issues.issues]) <= 0)  # most suspicious first
    assert issues.metrics["estimated_noise_rate"] == pytest.approx(flagged.mean())
    hits = np.sum((clean != labels) & flagged)
    assert issues.metrics["precision"] == pytest.approx(hits / flagged.sum())
    assert issues.scores.weights is None and issues.class_names == tuple(range(5))


def audit_filter(probs, labels, filter_by):
    """The filters written out again in numpy (cleanlab 2.9's confident learning)."""
    predicted = probs.argmax(axis=1)
    if filter_by == "predicted_neq_given":
        return predicted != labels
    k = probs.shape[1]
    thresholds = np.array([probs[labels == c, c].mean() for c in range(k)])
    flags = np.zeros(len(labels), bool)
    for i, row in enumerate(probs):
        confident = np.flatnonzero(row >= thresholds - 1e-6)
        if not len(confident):
            continue
        guess = confident[0] if len(confident) == 1 else int(np.argmax(row))
        flags[i] = guess != labels[i] and predicted[i] != labels[i]
    return flags


def test_labels_of_any_type_come_back_with_their_class_names():
    """String labels: ids in sorted order (or class_names' order, the columns'), the names
    kept; a label outside class_names or a class count that does not fit is one line."""
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4]])
    labels = np.array(["cat", "dog", "dog", "cat"])
    issues = clid_tf.rank_label_issues(labels, probs, filter_by="predicted_neq_given")
    assert issues.class_names == ("cat", "dog") and list(issues.issues) == [2]
    swapped = clid_tf.rank_label_issues(labels, probs[:, ::-1], class_names=["dog", "cat"])
    np.testing.assert_allclose(swapped.suspicion, issues.suspicion)
    with pytest.raises(ValueError, match="'emu' is not one of class_names"):
        clid_tf.rank_label_issues(np.array(["cat", "emu", "dog", "cat"]), probs,
                                  class_names=["cat", "dog"])
    with pytest.raises(ValueError, match="name 3 classes but pred_probs has 2 columns"):
        clid_tf.rank_label_issues(np.array(["cat", "emu", "dog", "cat"]), probs)


@pytest.mark.parametrize("labels, probs, match", [
    (np.zeros(3, int), np.full((3, 2), 0.7), "summing to 1"),
    (np.array([0, 2, 1]), np.full((3, 2), 0.5), "labels reach class 2"),
    (np.zeros(2, int), np.full((3, 2), 0.5), r"labels must be \[3\]"),
    (np.array([0, -1, 0]), np.full((3, 2), 0.5), "class ids >= 0"),
])
def test_rank_label_issues_refuses_bad_inputs(labels, probs, match):
    with pytest.raises(ValueError, match=match):
        clid_tf.rank_label_issues(labels, probs)


class _Recorded(clid_tf.MetaReweightModel):
    """A CLID-MU model that records its fit calls instead of training (the fold's
    arguments are what is tested)."""
    calls = []

    def fit(self, x=None, y=None, **kwargs):
        _Recorded.calls.append({**kwargs, "meta_active": self.meta_active, "n": len(x)})


def test_a_clid_mu_fold_trains_the_command_lines_defaults():
    """Without fit arguments: 30 epochs of batch 64, the first 5 of plain CE (then the
    meta steps from epoch 5 on), a meta set of a fifth of the fold, the fold's seed."""
    _Recorded.calls = []
    x, y, _ = users.digits(200)

    def build():
        model = _Recorded(users.functional(), clid_tf.WeightNet())
        model.compile("sgd", "adam")
        return model

    clid_tf.find_label_issues(build, x, y, folds=2, seed=3, verbose=False)
    warmup, meta = _Recorded.calls[:2]
    assert len(_Recorded.calls) == 4  # two fits per fold
    assert warmup["epochs"] == 5 and not warmup["meta_active"]
    assert meta["epochs"] == 30 and meta["initial_epoch"] == 5 and meta["meta_active"]
    assert meta["batch_size"] == 64 and meta["seed"] == 3
    assert meta["meta_size"] == meta["n"] // 5


def test_a_plain_compiled_keras_model_cross_fits():
    """Any compiled Keras classifier: fit gets Keras' arguments only, its softmax gives
    the probabilities, there are no meta weights; flipped labels rank first."""
    x, y, clean = users.digits(600)

    def build():
        model = users.functional()
        model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
        return model

    issues = clid_tf.find_label_issues(build, x, y, folds=2, epochs=8, verbose=False,
                                       clean_labels=clean)
    assert issues.scores.weights is None
    np.testing.assert_allclose(issues.scores.probs.sum(axis=1), 1.0, atol=1e-5)
    assert issues.metrics["roc_auc"] > 0.8


def test_audit_csv_cells_never_become_spreadsheet_formulas(tmp_path):
    """A file or class name that starts like a formula is written as literal text (a
    leading apostrophe) and read back as it was."""
    from clid_tf.evaluation import audit_sheet  # pylint: disable=import-outside-toplevel
    from clid_tf.evaluation import label_issues  # pylint: disable=import-outside-toplevel
    names = ["=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)", "'quoted", "plain.png"]
    rows = [{"rank": k + 1, "sample": name, "given_label": "=cmd|' /C calc'!A0",
             "predicted_label": "cat", "given_label_prob": 0.5, "predicted_prob": 0.5,
             "meta_weight": "", "suspicion": -0.5, "flagged": 1}
            for k, name in enumerate(names)]
    path = str(tmp_path / "audit.csv")
    label_issues.write_csv(path, rows)
    text = open(path).read()
    for name in names[:5]:
        assert f"\n{names.index(name) + 1},'{name[0]}" in text.replace('"', "")
    assert ",-0.5," in text  # numbers are numbers, not text
    read = audit_sheet.read_rows(path)
    assert [r["sample"] for r in read] == names
    assert {r["given_label"] for r in read} == {"=cmd|' /C calc'!A0"}
