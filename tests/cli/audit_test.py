"""The label audit: its pure metrics by hand, cross-fitting, and real CLI runs on digits
(in sample and out of sample) end to end."""

import csv
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from clid_tf.evaluation import label_issues as audit
from clid_tf.runs import folder as run_folder
from tests.helpers import ROOT
from tests.helpers import cli as cli_helpers

NUM_DIGITS_TRAIN = 1437


# ---------------------------------------------------------------- the command
def test_importing_the_command_defines_no_flags_and_starts_no_tensorflow():
    code = ("from absl import app, flags, logging; before = len(list(flags.FLAGS)); "
            "import clid_tf.audit; assert len(list(flags.FLAGS)) == before; "
            "import sys; assert 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


# ---------------------------------------------------------------- pure metrics
PROBS = np.array([[0.7, 0.2, 0.1],   # given 0: agrees       suspicion 0.3
                  [0.1, 0.8, 0.1],   # given 0: disagrees    suspicion 0.9
                  [0.3, 0.3, 0.4],   # given 2: agrees       suspicion 0.6
                  [0.05, 0.05, 0.9]])  # given 1: disagrees  suspicion 0.95
GIVEN = np.array([0, 0, 2, 1])
CLEAN = np.array([0, 1, 1, 1])  # samples 1 and 2 flipped


def test_suspicion_is_one_minus_probability_of_the_given_label():
    np.testing.assert_allclose(audit.suspicion_scores(PROBS, GIVEN), [0.3, 0.9, 0.6, 0.95])
    np.testing.assert_allclose(audit.given_label_probs(PROBS, GIVEN), [0.7, 0.1, 0.4, 0.05])


def test_rank_by_suspicion_is_descending_and_stable_on_ties():
    np.testing.assert_array_equal(audit.rank_by_suspicion([0.1, 0.9, 0.5, 0.9]), [1, 3, 2, 0])
    np.testing.assert_array_equal(audit.rank_by_suspicion(np.zeros(3)), [0, 1, 2])


def test_the_two_filters_by_hand():
    """predicted_neq_given: the argmax disagrees (samples 1, 3). confident_learning:
    thresholds = mean p of each class over its given samples (t0 = (0.7 + 0.1) / 2 = 0.4,
    t1 = 0.05, t2 = 0.4); sample 1's confident classes {1} (0.8 >= 0.05) differ from its
    label 0 and its argmax too: flagged; sample 3 (given 1) passes t1 (0.05) and t2 (0.9):
    several, so the argmax 2: flagged; sample 2 passes t2 only, its own label: not."""
    np.testing.assert_array_equal(
        audit.flag_issues(PROBS, GIVEN, filter_by="predicted_neq_given"), [0, 1, 0, 1])
    np.testing.assert_array_equal(
        audit.flag_issues(PROBS, GIVEN, filter_by="confident_learning"), [0, 1, 0, 1])
    # a sample whose argmax is wrong but below that class's threshold is not confident
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.45, 0.55], [0.1, 0.9], [0.3, 0.7]])
    given = np.array([0, 0, 0, 1, 1])  # t0 = (0.9 + 0.9 + 0.45) / 3 = 0.75, t1 = 0.8
    np.testing.assert_array_equal(
        audit.flag_issues(probs, given, filter_by="predicted_neq_given"), [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(
        audit.flag_issues(probs, given, filter_by="confident_learning"), [0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="filter_by must be one of"):
        audit.flag_issues(probs, given, filter_by="both")


def test_metrics_count_the_flagged_set():
    found = audit.metrics(PROBS, GIVEN, CLEAN, flagged=np.array([0, 1, 0, 1], bool))
    assert found["estimated_noise_rate"] == 0.5 and found["num_flagged"] == 2
    assert found["precision"] == 0.5 and found["recall"] == 0.5  # sample 1 of {1, 2}
    found = audit.metrics(PROBS, GIVEN, CLEAN, flagged=np.zeros(4, bool))
    assert found["precision"] is None and found["recall"] == 0.0


def test_roc_auc_against_a_hand_count():
    # flipped {0.35, 0.8} vs clean {0.1, 0.4}: 3 of the 4 pairs are ordered right.
    assert audit.roc_auc(np.array([0.1, 0.4, 0.35, 0.8]),
                         np.array([0, 0, 1, 1], bool)) == pytest.approx(0.75)
    assert audit.roc_auc(np.array([0.5, 0.5]), np.array([0, 1], bool)) == pytest.approx(0.5)
    assert audit.roc_auc(np.array([0.1, 0.2]), np.zeros(2, bool)) is None


def test_audit_metrics_with_and_without_clean_labels():
    unknown = audit.metrics(PROBS, GIVEN)
    assert unknown["estimated_noise_rate"] == 0.5 and unknown["num_flagged"] == 2
    assert unknown["num_train"] == 4
    assert all(unknown[k] is None for k in ("true_noise_rate", "precision", "recall",
                                            "roc_auc"))
    known = audit.metrics(PROBS, GIVEN, CLEAN)
    # Flagged = the 2 most suspicious: samples 3 (clean) and 1 (flipped).
    assert known["true_noise_rate"] == 0.5
    assert known["precision"] == 0.5 and known["recall"] == 0.5
    # flipped {0.9, 0.6} vs clean {0.3, 0.95}: 2 of 4 pairs ordered right.
    assert known["roc_auc"] == pytest.approx(0.5)


def test_audit_table_rows_are_sorted_and_complete():
    scores = audit.Scores(PROBS, np.array([0.9, 0.1, 0.5, 0.2]))
    names = ["a.png", "b.png", "c.png", "d.png"]
    rows = audit.table(names, scores, GIVEN, class_names=("cat", "dog", "emu"), clean=CLEAN)
    assert [r["sample"] for r in rows] == ["d.png", "b.png", "c.png", "a.png"]
    assert rows[0] == {"rank": 1, "sample": "d.png", "given_label": "dog",
                       "predicted_label": "emu", "given_label_prob": pytest.approx(0.05),
                       "predicted_prob": pytest.approx(0.9), "meta_weight": 0.2,
                       "suspicion": pytest.approx(0.95), "flagged": 1, "true_label": "dog",
                       "is_flipped": 0}
    assert [r["flagged"] for r in rows] == [1, 1, 0, 0]  # estimated noise rate 0.5
    assert [r["is_flipped"] for r in rows] == [0, 1, 1, 0]
    plain = audit.table(names, audit.Scores(PROBS, None), GIVEN, class_names=("a", "b", "c"))
    assert all(r["meta_weight"] == "" for r in plain)
    assert "true_label" not in plain[0] and "is_flipped" not in plain[0]


def test_outputs_are_written_atomically_and_results_are_merged(tmp_path):
    path = str(tmp_path / "audit.csv")
    audit.write_csv(path, [{"a": 1, "b": ""}, {"a": 2, "b": 0.5}])
    assert open(path).read().splitlines() == ["a,b", "1,", "2,0.5"]
    folder = run_folder.RunFolder(str(tmp_path))
    json.dump({"final_test_accuracy": 0.9, "audit": {"old": 1}}, open(folder.results_path, "w"))
    folder.merge_results("audit", {"roc_auc": 0.97})
    assert json.load(open(folder.results_path)) == {"final_test_accuracy": 0.9,
                                                    "audit": {"roc_auc": 0.97}}
    assert sorted(os.listdir(tmp_path)) == ["audit.csv", "results.json"]  # no .tmp left


# ---------------------------------------------------------------- cross-fitting
def test_folds_are_stratified_disjoint_and_seeded():
    labels = np.repeat([0, 1, 2], [30, 20, 10])
    folds = audit.folds_of(labels, folds=5, seed=3)
    assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(60))
    for fold in folds:
        np.testing.assert_array_equal(np.bincount(labels[fold], minlength=3), [6, 4, 2])
    again = audit.folds_of(labels, folds=5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(folds, again))
    assert not np.array_equal(audit.folds_of(labels, folds=5, seed=4)[0], folds[0])


def test_cross_fit_scores_every_sample_by_a_model_that_never_saw_it():
    labels = np.arange(40) % 4
    seen = []

    def train_fold(positions):
        trained_on = set(positions.tolist())
        seen.append(trained_on)

        def score(held):
            assert not trained_on & set(held.tolist())  # out of sample
            probs = np.zeros((len(held), 4))
            probs[:, len(seen) - 1] = 1.0  # marks which fold's model scored each sample
            return audit.Scores(probs, np.full(len(held), float(len(seen))))
        return score

    scores = audit.cross_fit(labels, train_fold, folds=4, seed=0)
    assert len(seen) == 4 and all(len(s) == 30 for s in seen)
    fold_of = scores.probs.argmax(1)
    for k in range(4):
        assert set(np.flatnonzero(fold_of == k)).isdisjoint(seen[k])
        np.testing.assert_array_equal(scores.weights[fold_of == k], k + 1)


# ---------------------------------------------------------------- real runs
def _env():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def _start(module, *args):
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def audited_runs(tmp_path_factory):
    """A 4-epoch CLID run and a 2-epoch CE run on digits (40% sym), each then audited.

    The two trainings run concurrently; each audit starts as soon as its run is done.
    """
    base = tmp_path_factory.mktemp("audit")
    common = ["--meta_size=100", "--verbose=0", "--export=none"]
    jobs = {"ce": ["--method=ce", "--epochs=2"],
            "clid": ["--epochs=4", "--warmup_epochs=1"]}
    training = {name: _start("clid_tf.train", f"--workdir={base / name}", *args, *common)
                for name, args in jobs.items()}
    audits = {}
    for name, proc in training.items():
        returncode, _, err = _finish(proc)
        assert returncode == 0, err[-3000:]
        audits[name] = _start("clid_tf.audit", f"--workdir={base / name}", "--audit_folds=0")
    return {name: (str(base / name), _finish(proc)) for name, proc in audits.items()}


def _read_csv(workdir):
    with open(os.path.join(workdir, "audit.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _check_arrays(workdir, rows, *, has_weights):
    """audit.npz holds the csv's numbers, in sample order: probabilities, labels, weights."""
    with np.load(os.path.join(workdir, "audit.npz")) as arrays:
        assert sorted(arrays.files) == sorted(["probs", "labels", "samples"]
                                              + ["weights"] * has_weights)
        probs, labels, samples = arrays["probs"], arrays["labels"], arrays["samples"]
        weights = arrays["weights"] if has_weights else None
    assert probs.shape == (NUM_DIGITS_TRAIN, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    split = np.load(os.path.join(workdir, "split.npz"))
    np.testing.assert_array_equal(samples, split["train_indices"])
    by_sample = {int(r["sample"]): r for r in rows}
    for i, sample in enumerate(samples):
        row = by_sample[int(sample)]
        assert str(labels[i]) == row["given_label"]  # digits' class names are the digits
        assert probs[i, labels[i]] == pytest.approx(float(row["given_label_prob"]), abs=1e-6)
        assert str(np.argmax(probs[i])) == row["predicted_label"]
        if has_weights:
            assert weights[i] == pytest.approx(float(row["meta_weight"]), abs=1e-6)


def _scalar_tags(event_dir):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tags = {}
    for path in glob.glob(os.path.join(event_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    tags[value.tag] = (event.step, float(tf.make_ndarray(value.tensor)))
    return tags


def test_audit_of_a_clid_run(audited_runs):
    workdir, (returncode, out, err) = audited_runs["clid"]
    assert returncode == 0, err[-3000:]
    assert "Audited 1437 training labels in sample" in out and "ROC AUC" in out
    rows = _read_csv(workdir)
    assert len(rows) == NUM_DIGITS_TRAIN
    assert sorted(int(r["sample"]) for r in rows) == list(range(NUM_DIGITS_TRAIN))
    suspicion = np.array([float(r["suspicion"]) for r in rows])
    assert np.all(np.diff(suspicion) <= 0)  # most suspicious first
    np.testing.assert_allclose(suspicion, [1 - float(r["given_label_prob"]) for r in rows],
                               atol=1e-12)
    weights = np.array([float(r["meta_weight"]) for r in rows])
    assert np.all((weights > 0) & (weights < 1))
    flipped = np.array([r["is_flipped"] == "1" for r in rows])
    assert np.array_equal(flipped, [r["true_label"] != r["given_label"] for r in rows])
    assert weights[flipped].mean() < weights[~flipped].mean()  # the meta-net agrees

    results = json.load(open(os.path.join(workdir, "results.json")))
    metrics = results["audit"]
    assert "final_test_accuracy" in results and "history" in results  # kept
    assert metrics["folds"] == 0 and metrics["has_meta_net"]
    assert metrics["num_train"] == NUM_DIGITS_TRAIN
    assert metrics["true_noise_rate"] == pytest.approx(results["realised_noise_rate"])
    assert metrics["true_noise_rate"] == pytest.approx(flipped.mean())
    assert metrics["roc_auc"] > 0.8
    assert metrics["precision"] > 0.6 and metrics["recall"] > 0.6
    assert abs(metrics["estimated_noise_rate"] - metrics["true_noise_rate"]) < 0.1
    assert metrics["num_flagged"] == round(metrics["estimated_noise_rate"] * len(rows))
    _check_arrays(workdir, rows, has_weights=True)

    tags = _scalar_tags(os.path.join(workdir, "tensorboard", "audit"))
    for name in ("precision", "recall", "roc_auc", "estimated_noise_rate"):
        step, value = tags[f"audit/{name}"]
        assert step == 0 and value == pytest.approx(metrics[name], rel=1e-6)
    # digits are 8x8 images: the pictures are drawn, in the folder and in TensorBoard
    assert metrics["pictures"] == [os.path.join(workdir, name) for name in
                                   ("audit.png", "audit_classes.png", "audit_confusion.png")]
    pictures = cli_helpers.images(os.path.join(workdir, "tensorboard", "audit"))
    assert sorted(pictures) == ["audit/classes", "audit/confusion", "audit/sheet"]


def test_audit_of_a_ce_run_has_no_meta_weights(audited_runs):
    workdir, (returncode, _, err) = audited_runs["ce"]
    assert returncode == 0, err[-3000:]
    rows = _read_csv(workdir)
    assert len(rows) == NUM_DIGITS_TRAIN
    assert all(r["meta_weight"] == "" for r in rows)
    _check_arrays(workdir, rows, has_weights=False)
    metrics = json.load(open(os.path.join(workdir, "results.json")))["audit"]
    assert not metrics["has_meta_net"] and metrics["folds"] == 0
    assert metrics["roc_auc"] > 0.8


def test_a_workdir_without_flags_or_checkpoints_is_one_error_line(audited_runs, tmp_path):
    no_flags = str(tmp_path / "empty")
    os.makedirs(no_flags)
    no_checkpoints = str(tmp_path / "flags_only")
    os.makedirs(no_checkpoints)
    shutil.copy(os.path.join(audited_runs["ce"][0], "flags.cfg"), no_checkpoints)
    for workdir, message in ((no_flags, "flags.cfg is unreadable"),
                             (no_checkpoints, "has no split.npz")):
        returncode, out, err = _finish(_start("clid_tf.audit", f"--workdir={workdir}",
                                              "--audit_folds=0"))
        assert returncode == 2
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
        assert "Traceback" not in err and out == ""
    assert os.listdir(no_flags) == []  # the refused audit left no lock file behind


def test_out_of_sample_audit_of_a_clid_run(audited_runs, tmp_path):
    workdir = str(tmp_path / "clid")
    shutil.copytree(audited_runs["clid"][0], workdir)
    returncode, out, err = _finish(_start("clid_tf.audit", f"--workdir={workdir}",
                                          "--audit_folds=2"), timeout=300)
    assert returncode == 0, err[-3000:]
    assert "audit: training fold 2 of 2" in out and "2-fold cross-fitting" in out
    metrics = json.load(open(os.path.join(workdir, "results.json")))["audit"]
    assert metrics["folds"] == 2 and metrics["has_meta_net"]
    assert metrics["roc_auc"] > 0.8
    rows = _read_csv(workdir)
    assert sorted(int(r["sample"]) for r in rows) == list(range(NUM_DIGITS_TRAIN))
