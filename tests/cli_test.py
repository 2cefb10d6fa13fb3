"""The command line as a user drives it: real subprocess runs on digits, and bad input."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from clid_tf import backbones
from clid_tf import datasets
from clid_tf import loaders

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--epochs=2", "--warmup_epochs=1", "--meta_size=100", "--verbose=0"]


def run_cli(*args, cwd=ROOT):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "clid_tf.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run") / "clid")
    proc = run_cli(f"--workdir={workdir}", "--flagfile=flags/digits_sym40.cfg", "--export=last",
                   *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, proc


def test_run_writes_results_flags_checkpoints(finished_run):
    workdir, proc = finished_run
    results = json.load(open(os.path.join(workdir, "results.json")))
    for key in ("final_test_accuracy", "best_test_accuracy", "realised_noise_rate",
                "selected_accuracy", "ensemble5_accuracy", "noise_transition_matrix"):
        assert key in results
    assert 0.0 <= results["final_test_accuracy"] <= results["best_test_accuracy"] <= 1.0
    assert results["final_test_accuracy"] > 0.3  # far above chance after 2 epochs
    # sym 0.4 with K = 10 flips 36% of labels in expectation
    assert abs(results["realised_noise_rate"] - 0.36) < 0.05
    assert results["flags"]["method"] == "clid" and results["flags"]["epochs"] == 2
    assert results["flags"]["noise_rate"] == 0.4
    assert len(results["history"]["meta_clid"]) == 2  # None for the warm-up epoch
    assert "--method=clid" in open(os.path.join(workdir, "flags.cfg")).read()
    assert glob.glob(os.path.join(workdir, "checkpoints", "ckpt-2.index"))
    assert "test accuracy: final" in proc.stdout


def _scalars(event_dir):
    """tag -> values in step order, over every event file (one per fit phase)."""
    values = {}
    for path in glob.glob(os.path.join(event_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                number = (tf.make_ndarray(value.tensor) if value.HasField("tensor")
                          else value.simple_value)
                values.setdefault(value.tag, []).append((event.step, float(number)))
    return {tag: [v for _, v in sorted(pairs)] for tag, pairs in values.items()}


def test_tensorboard_events_hold_the_monitoring_scalars(finished_run):
    workdir, _ = finished_run
    scalars = _scalars(os.path.join(workdir, "tensorboard", "train"))
    results = json.load(open(os.path.join(workdir, "results.json")))
    for tag in ("epoch_loss", "epoch_lr", "epoch_meta_lr", "epoch_test_accuracy",
                "epoch_meta_set_clid", "epoch_selected_accuracy", "epoch_ensemble5_accuracy"):
        assert len(scalars[tag]) == 2, tag
    for tag in ("epoch_meta_clid", "epoch_weight_clean", "epoch_weight_noisy"):
        assert len(scalars[tag]) == 1, tag  # epoch 1 is the warm-up: no meta updates
    np.testing.assert_allclose(scalars["epoch_test_accuracy"],
                               results["history"]["test_accuracy"], rtol=1e-6)
    assert results["history"]["meta_clid"][0] is None
    # With meta updates the meta-net weights clean samples above noisy ones.
    assert scalars["epoch_weight_clean"][0] > scalars["epoch_weight_noisy"][0]
    assert scalars["epoch_meta_clid"][0] > 1.0


def test_saved_model_in_fresh_process_matches_keras_model(finished_run, tmp_path):
    workdir, _ = finished_run
    data = loaders.load_digits()
    images = data.test.inputs.array[:16]
    np.save(tmp_path / "images.npy", images)
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        "model = tf.saved_model.load(sys.argv[1])\n"
        "out = model.signatures['serving_default'](images=tf.constant(np.load(sys.argv[2])))\n"
        "np.save(sys.argv[3], out['probabilities'].numpy())\n"
        "np.save(sys.argv[4], out['class_ids'].numpy())\n")
    proc = subprocess.run(
        [sys.executable, "-c", script, os.path.join(workdir, "saved_model"),
         str(tmp_path / "images.npy"), str(tmp_path / "probs.npy"), str(tmp_path / "ids.npy")],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The Keras model, restored from the run's last checkpoint.
    backbone = backbones.build("small_cnn", num_classes=10, input_shape=(8, 8, 1),
                               mean=data.mean, std=data.std)
    checkpoint = tf.train.Checkpoint(backbone=backbone)
    checkpoint.restore(tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
                       ).expect_partial()
    logits, _ = backbone(images.astype(np.float32), training=False)
    want = tf.nn.softmax(logits).numpy()
    served = np.load(tmp_path / "probs.npy")
    np.testing.assert_allclose(served, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.load(tmp_path / "ids.npy"), want.argmax(axis=1))
    np.testing.assert_allclose(served.sum(axis=1), 1.0, rtol=1e-5)


def test_float16_run_logs_and_checkpoints_loss_scales_and_serves(tmp_path):
    """--mixed_precision=mixed_float16 end to end: both loss scales are logged and
    checkpointed (so a resumed run continues with them), and the SavedModel serves."""
    workdir = str(tmp_path / "f16")
    proc = run_cli(f"--workdir={workdir}", "--mixed_precision=mixed_float16", *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = json.load(open(os.path.join(workdir, "results.json")))["history"]
    assert len(history["loss_scale"]) == 2 and len(history["meta_loss_scale"]) == 2
    assert all(0 < s <= 2.0**15 for s in history["loss_scale"] + history["meta_loss_scale"])
    reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints"))
    saved = sorted(float(reader.get_tensor(name)) for name in reader.get_variable_to_shape_map()
                   if "dynamic_scale" in name)
    assert saved == sorted([history["loss_scale"][-1], history["meta_loss_scale"][-1]])
    served = tf.saved_model.load(os.path.join(workdir, "saved_model")).signatures[
        "serving_default"](images=tf.constant(loaders.load_digits().test.inputs.array[:8]))
    np.testing.assert_allclose(served["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-3)


def test_helpfull_documents_every_flag():
    proc = run_cli("--helpfull")
    assert proc.returncode in (0, 1)  # absl exits 1 after printing help
    assert "Traceback" not in proc.stderr
    for name in ("workdir", "dataset", "noise", "noise_rate", "method", "meta_size", "tau",
                 "warmup_epochs", "meta_optimizer", "meta_lr", "lr_schedule", "backbone"):
        assert f"--{name}" in proc.stdout, name


def _assert_one_line_error(proc, needle):
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:") and needle in lines[0], lines[0]


def _npz(path, **overrides):
    """A valid small image npz, with some arrays replaced or (value None) removed."""
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (40, 8, 8), dtype=np.uint8),
              "y_train": rng.integers(0, 3, 40), "x_test": rng.integers(0, 256, (10, 8, 8),
                                                                        dtype=np.uint8),
              "y_test": rng.integers(0, 3, 10)}
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return f"--dataset=npz:{path}"


def _folder(path, classes, corrupt=0):
    """A class-folder tree of small PNGs: classes = {name: [(height, width), ...]}; the
    first `corrupt` files of each class are cut short."""
    from PIL import Image
    path.mkdir()
    rng = np.random.default_rng(0)
    for name, sizes in classes.items():
        (path / name).mkdir()
        for i, (h, w) in enumerate(sizes):
            file = path / name / f"{i}.png"
            Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(file)
            if i < corrupt:
                file.write_bytes(file.read_bytes()[:20])
    return path


def _list(tmp, name, *lines):
    """A list file beside two class folders a/ and b/ of 8x8 PNGs (made once)."""
    if not (tmp / "listed").exists():
        _folder(tmp / "listed", {"a": [(8, 8)] * 2, "b": [(8, 8)] * 2})
        (tmp / "one_name.txt").write_text("only\nsecond\n")
    path = tmp / "listed" / f"{name}.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def _bad_inputs(tmp):
    """(case, command-line arguments, text the error line must contain): flags, conflicting
    combinations, flagfiles, npz data files and workdirs."""
    (tmp / "malformed.cfg").write_text("--method=clid\nthis line is not a flag\n")
    (tmp / "bad_value.cfg").write_text("--epochs=abc\n")
    (tmp / "pickled.npz").write_bytes(b"")
    np.savez(tmp / "pickled.npz", x_train=np.array([{"a": 1}] * 4, dtype=object),
             y_train=np.zeros(4), x_test=np.zeros((2, 8, 8)), y_test=np.zeros(2))
    return [
        ("rate above 1", ["--noise_rate=1.5"], "noise_rate"),
        ("negative rate", ["--noise_rate=-0.1"], "noise_rate"),
        ("unknown method", ["--method=bogus"], "method"),
        ("unknown dataset", ["--dataset=imagenet"], "imagenet"),
        ("unknown backbone", ["--backbone=vgg99"], "backbone"),
        ("zero epochs", ["--epochs=0"], "epochs"),
        ("negative lr", ["--lr=-1"], "lr"),
        ("bad milestones", ["--lr_schedule=multistep", "--lr_milestones=a,3"], "lr_milestones"),
        ("meta set larger than training", ["--meta_size=5000"], "meta_size"),
        ("clean meta set too large", ["--method=ce_clean", "--meta_size=5000"], "meta_size"),
        ("batch larger than training", ["--batch_size=5000"], "batch_size"),
        ("stray argument", ["stray_argument"], "stray_argument"),
        ("jvp with a multi-replica strategy", ["--strategy=mirrored", "--meta_grad=jvp"],
         "meta_grad=jvp"),
        ("human noise on digits", ["--noise=worst"], "worst"),
        ("asym CIFAR-10 noise on a 3-class npz",
         [_npz(tmp / "three.npz"), "--noise=asym_cifar10"], "10"),
        ("ce_clean without clean labels", [_npz(tmp / "noclean.npz"), "--method=ce_clean",
                                           "--meta_size=6", "--batch_size=8",
                                           "--meta_batch_size=4"], "clean"),
        ("augmentation of feature vectors",
         [_npz(tmp / "flat.npz", x_train=np.zeros((40, 5)), x_test=np.zeros((10, 5))),
          "--backbone=mlp", "--augment=weak", "--meta_size=10", "--batch_size=8",
          "--meta_batch_size=8"], "augment"),
        ("missing flagfile", ["--flagfile=flags/does_not_exist.cfg"], "does_not_exist"),
        ("malformed flagfile", [f"--flagfile={tmp / 'malformed.cfg'}"], "not a flag"),
        ("bad value in flagfile", [f"--flagfile={tmp / 'bad_value.cfg'}"], "epochs"),
        ("missing npz", [f"--dataset=npz:{tmp / 'nowhere.npz'}"], "nowhere.npz"),
        ("npz missing a key", [_npz(tmp / "nokey.npz", y_test=None)], "y_test"),
        ("pickled npz", [f"--dataset=npz:{tmp / 'pickled.npz'}"], "pickle"),
        ("npz wrong shape", [_npz(tmp / "shape.npz", x_train=np.zeros(40))], "x_train"),
        ("npz labels out of range", [_npz(tmp / "neg.npz", y_train=-np.ones(40, int))],
         "y_train"),
        ("npz NaN features",
         [_npz(tmp / "nan.npz", x_train=np.full((40, 8, 8), np.nan))], "NaN"),
        ("npz empty split", [_npz(tmp / "empty.npz", x_test=np.zeros((0, 8, 8), np.uint8),
                                  y_test=np.zeros(0, int))], "empty"),
        ("npz labels 1..K", [_npz(tmp / "onebased.npz", y_train=np.arange(40) % 3 + 1,
                                  y_test=np.arange(10) % 3 + 1)], "class 0"),
        ("feature vectors with a convolutional backbone",
         [_npz(tmp / "vectors.npz", x_train=np.zeros((40, 5)), x_test=np.zeros((10, 5)))],
         "--backbone=mlp"),
        ("folder without class folders", [f"--dataset=folder:{_folder(tmp / 'empty', {})}"],
         "no class subfolders"),
        ("folder without images",
         [f"--dataset=folder:{_folder(tmp / 'noimages', {'a': [], 'b': []})}"],
         "no image files"),
        ("folder with one class",
         [f"--dataset=folder:{_folder(tmp / 'one', {'cat': [(8, 8)] * 4})}"], "2 classes"),
        ("folder of mixed sizes",
         [f"--dataset=folder:{_folder(tmp / 'mixed', {'a': [(8, 8)] * 3, 'b': [(9, 7)] * 3})}"],
         "--image_size"),
        ("folder of corrupt images",
         [f"--dataset=folder:{_folder(tmp / 'corrupt', {'a': [(8, 8)] * 3, 'b': [(8, 8)] * 3}, corrupt=2)}"],
         "corrupt"),
        ("list line without a label", [f"--dataset=list:{_list(tmp, 'nolabel', 'a/0.png')}"],
         "line 1"),
        ("list naming a missing file",
         [f"--dataset=list:{_list(tmp, 'missing', 'a/0.png 0', 'nowhere.png 1')}"], "missing"),
        ("list label out of range",
         [f"--dataset=list:{_list(tmp, 'range', 'a/0.png 0', 'b/0.png 5')}",
          f"--class_names_file={tmp / 'one_name.txt'}"], "class"),
        ("image size on arrays", ["--image_size=32"], "--image_size"),
    ]


def test_bad_input_table_gives_one_error_line_each(tmp_path):
    cases = _bad_inputs(tmp_path)
    assert len(cases) >= 20
    for case, args, needle in cases:
        workdir = tmp_path / "run"
        proc = run_cli(f"--workdir={workdir}", "--verbose=0", *args)
        try:
            _assert_one_line_error(proc, needle)
        except AssertionError as error:
            raise AssertionError(f"case {case!r}: {error}") from error
        assert not workdir.exists(), f"case {case!r} left a workdir behind"


def test_existing_run_is_refused_and_left_intact(tmp_path):
    workdir = tmp_path / "earlier"
    workdir.mkdir()
    (workdir / "results.json").write_text('{"final_test_accuracy": 0.9}')
    proc = run_cli(f"--workdir={workdir}", *FAST)
    _assert_one_line_error(proc, "not empty")
    assert (workdir / "results.json").read_text() == '{"final_test_accuracy": 0.9}'
    assert sorted(os.listdir(workdir)) == ["results.json"]


def test_unwritable_workdir_is_refused(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    proc = run_cli(f"--workdir={blocker / 'run'}", *FAST)
    _assert_one_line_error(proc, "cannot be written")


def test_backbone_flag_names_match_the_registry():
    from clid_tf import cli
    assert tuple(cli.BACKBONES) == tuple(backbones.BACKBONES)


def test_flag_errors_are_reported_before_tensorflow_loads():
    proc = subprocess.run(
        [sys.executable, "-c",
         "import sys\nfrom clid_tf import train\nsys.argv = ['x', '--method=bogus']\n"
         "try:\n    train.run_main()\nexcept SystemExit:\n    pass\n"
         "print('tensorflow' in sys.modules)"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stdout + proc.stderr
