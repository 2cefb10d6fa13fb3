"""The command line as a user drives it: real subprocess runs on digits, and bad input."""

import concurrent.futures
import glob
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from clid_tf.models import backbones
from clid_tf.data import sources
from clid_tf.data.sources.digits import load_digits

from tests.helpers import ROOT
from tests.helpers import cli as cli_helpers
from tests.helpers.cli import FAST, assert_one_line_error, run_cli


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
    plan = [line for line in proc.stdout.splitlines() if line.startswith("plan: ")]
    assert plan == [f"plan: digits (1437 train, 360 test, 10 classes), sym noise 0.4; trainer "
                    f"meta, method clid, meta-net wnet, backbone small_cnn; 2 epochs; results "
                    f"in {workdir}"], proc.stdout
    assert (f"look at it: tensorboard --logdir {workdir}/tensorboard ; cat "
            f"{workdir}/results.json ; python -m clid_tf.audit --workdir={workdir}"
            in proc.stdout.splitlines())


def test_tensorboard_events_hold_the_monitoring_scalars(finished_run):
    workdir, _ = finished_run
    scalars = cli_helpers.scalars(os.path.join(workdir, "tensorboard", "train"))
    results = json.load(open(os.path.join(workdir, "results.json")))
    for tag in ("epoch_loss", "epoch_lr", "epoch_meta_lr", "epoch_test_accuracy",
                "epoch_meta_set_clid", "epoch_selected_accuracy", "epoch_ensemble5_accuracy"):
        assert len(scalars[tag]) == 2, tag
    for tag in ("epoch_meta_clid", "epoch_weight_clean", "epoch_weight_noisy"):
        assert len(scalars[tag]) == 1, tag  # epoch 1 is the warm-up: NaN, not drawn
    np.testing.assert_allclose(scalars["epoch_test_accuracy"],
                               results["history"]["test_accuracy"], rtol=1e-6)
    assert results["history"]["meta_clid"][0] is None
    # With meta updates the meta-net weights clean samples above noisy ones.
    assert scalars["epoch_weight_clean"][0] > scalars["epoch_weight_noisy"][0]
    assert scalars["epoch_meta_clid"][0] > 1.0


def test_saved_model_in_fresh_process_matches_keras_model(finished_run, tmp_path):
    workdir, _ = finished_run
    data = load_digits()
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


@pytest.mark.slow  # covered by core/loss_scaling_test.py and keras_conformance float16 tests
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
        "serving_default"](images=tf.constant(load_digits().test.inputs.array[:8]))
    np.testing.assert_allclose(served["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-3)


def _entries(help_text):
    """Flag name -> the text of its entry ('--name  facts' and its help lines)."""
    entries, name = {}, None
    for line in help_text.splitlines():
        match = re.match(r"  --(?:\[no\])?(\w+)(?:  |$)", line)
        if match:
            name = match.group(1)
            entries[name] = line
        elif name and line.startswith("      "):
            entries[name] += " " + line.strip()
        else:
            name = None
    return entries


def test_help_shows_the_training_flags_grouped_with_defaults_and_ranges_and_exits_0():
    from clid_tf import cli
    from clid_tf.cli import flags as flagdefs
    cli.define_flags()
    proc = run_cli("--help")
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr[-2000:]
    out = proc.stdout
    titles = [title for title, _ in flagdefs.HELP_GROUPS]
    assert titles[:2] == ["run and output", "data and noise"]
    assert "\nread by --trainer=dividemix:\n  --p_threshold" in out  # then by trainer
    assert "\nread by --trainer=fixmatch|flexmatch:\n  --ssl_strong_augment" in out
    titles += [line[:-1] for line in out.splitlines() if line.startswith("read by --trainer=")]
    positions = [out.index(f"\n{title}:\n") for title in titles]
    assert positions == sorted(positions) and len(titles) > len(flagdefs.HELP_GROUPS) + 3
    entries = _entries(out)
    assert sorted(entries) == sorted(cli.training_flag_names())
    assert ("--trainer=dividemix: --meta_net=vri, --virtual_step=optimizer, --lambda_u=150.0, "
            "--select_augment=(weak if --augment is not none, else none)") in " ".join(out.split())
    assert "logtostderr" not in out and "helpfull:" not in out  # absl's flags only in --helpfull
    assert entries["noise_rate"].startswith(
        "  --noise_rate  default: 0.4; a number in the range [0.0, 1.0]")
    assert entries["method"].startswith("  --method  default: clid; one of ce, clid, entropy")
    assert entries["resume"].startswith("  --[no]resume  default: false")
    assert entries["lr_milestones"].startswith("  --lr_milestones  default: empty")
    assert "runs/<dataset>-<method or trainer>-<YYYYmmdd-HHMMSS>" in entries["workdir"]
    assert max(len(line) for line in out.splitlines()) <= 100
    for alias in ("-?", "--helpshort", "-help"):
        again = run_cli(alias)
        assert (again.returncode, again.stdout) == (0, out), alias
    full = run_cli("--helpfull", "--epochs=3")
    assert full.returncode == 0 and full.stdout.startswith(out.split("\n--helpfull")[0])
    assert full.stdout.index("absl.logging:") > full.stdout.index("distribution and speed:")
    assert "--[no]logtostderr" in full.stdout and "--verbosity" in full.stdout


def test_every_training_flag_is_read_by_every_trainer_or_named_by_the_trainers_that_read_it():
    from clid_tf import cli
    from clid_tf.cli import flags as flagdefs
    cli.define_flags()
    grouped = [name for _, names in flagdefs.HELP_GROUPS for name in names]
    assert len(grouped) == len(set(grouped)), "a flag is in two help groups"
    named = set(flagdefs.readers())
    assert set(cli.training_flag_names()) - set(grouped) - named == set(), \
        "add it to HELP_GROUPS (every trainer reads it) or to the reads of its trainers"
    assert set(grouped) & named == set(), "every trainer reads it: no trainer names it"
    assert set(grouped) | named == set(cli.training_flag_names())


def test_help_of_one_trainer_shows_its_flags_with_its_defaults():
    proc = run_cli("--trainer=dividemix", "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    entries = _entries(proc.stdout)
    assert "p_threshold" in entries and "lambda_u" in entries and "workdir" in entries
    assert not {"vri_kl", "meta_every", "uratio", "num_labels", "optimizer"} & set(entries)
    assert entries["lambda_u"].startswith("  --lambda_u  default: 150.0 (the trainer's)")
    assert entries["meta_net"].startswith("  --meta_net  default: vri (the trainer's)")
    assert "\ndefaults each trainer sets (" not in proc.stdout


def test_audit_and_benchmark_help_exit_0():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    audit = subprocess.run([sys.executable, "-m", "clid_tf.audit", "--help"], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=120)
    assert audit.returncode == 0, audit.stderr[-2000:]
    entries = _entries(audit.stdout)
    assert list(entries)[:2] == ["workdir", "audit_folds"]
    assert "The folder of a training run (required)" in entries["workdir"]
    assert "method" in entries and "resume" not in entries
    bench = subprocess.run([sys.executable, "tools/bench_accuracy.py", "--help"], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=120)
    assert bench.returncode == 0, bench.stderr[-2000:]
    assert {"out", "methods", "seeds", "extra"} <= set(_entries(bench.stdout))
    assert "noise_rate" not in _entries(bench.stdout)  # the tool's own flags only


def test_workdir_help_states_the_default_used():
    from absl.testing import flagsaver
    from clid_tf import cli
    from clid_tf.cli import checks
    from clid_tf.cli import commands
    cli.define_flags()
    assert "Default: runs/<dataset>-<method or trainer>-<YYYYmmdd-HHMMSS> under the current " \
           "folder, with ':' and '/' of --dataset as '_'" in cli.FLAGS["workdir"].help
    with flagsaver.flagsaver():
        cli.FLAGS.unparse_flags()
        cli.FLAGS(["x"])
        assert re.fullmatch(r"runs/digits-clid-\d{8}-\d{6}",
                            commands._default_workdir(checks.resolved()))
        cli.FLAGS(["x", "--dataset=npz:data/mine.npz", "--method=ce"])
        assert re.fullmatch(r"runs/npz_data_mine\.npz-ce-\d{8}-\d{6}",
                            commands._default_workdir(checks.resolved()))


def test_a_paper_benchmark_without_a_flagfile_names_the_paper_settings(tmp_path,
                                                                      monkeypatch):
    from absl.testing import flagsaver
    from clid_tf import cli
    from clid_tf.cli import commands
    cli.define_flags()
    settings = tmp_path / "mine.cfg"
    settings.write_text("--meta_size=1000\n")
    with flagsaver.flagsaver():
        cli.FLAGS.unparse_flags()
        cli.FLAGS(["x", "--dataset=cifar100"])
        assert commands.paper_setting_note() == (
            "note: these are the generic defaults (the digits demo's sizes); the paper's "
            "settings for cifar100 are in flags/cifar100_*.cfg (--flagfile=...)")
        argv = ["x", "--dataset=cifar100", f"--flagfile={settings}"]
        monkeypatch.setattr(sys, "argv", argv)  # the command line the run was given
        cli.FLAGS.unparse_flags()
        cli.FLAGS(argv)
        assert commands.paper_setting_note() is None
        monkeypatch.undo()
        cli.FLAGS.unparse_flags()
        cli.FLAGS(["x"])
        assert commands.paper_setting_note() is None


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


def _text(path, *lines):
    """A text file of these lines (a flagfile)."""
    path.write_text("\n".join(lines) + "\n")
    return path


TWO_BY_CLASS = ("a/0.png 0", "a/1.png 0", "b/0.png 1", "b/1.png 1")  # lines of `_list`


def _bad_inputs(tmp):
    """(case, command-line arguments, text the error line must contain): flags, conflicting
    combinations, flagfiles, npz data files and workdirs."""
    (tmp / "malformed.cfg").write_text("--method=clid\nthis line is not a flag\n")
    (tmp / "bad_value.cfg").write_text("--epochs=abc\n")
    (tmp / "typo.cfg").write_text("# a comment\n--metalr=0.01\n")
    (tmp / "outer.cfg").write_text(f"--epochs=3\n--flagfile={tmp / 'typo.cfg'}\n")
    (tmp / "inner_missing.cfg").write_text("--flagfile=flags/nowhere_inner.cfg\n")
    (tmp / "empty_data").mkdir()
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
        ("missing flagfile", ["--flagfile=flags/does_not_exist.cfg"],
         f"flagfile flags/does_not_exist.cfg not found relative to {ROOT}"),
        ("flagfile named without its folder", ["--flagfile=digits_sym40.cfg"],
         "did you mean flags/digits_sym40.cfg?"),
        ("flagfile naming a missing flagfile", [f"--flagfile={tmp / 'inner_missing.cfg'}"],
         f"flags/nowhere_inner.cfg (named on {tmp / 'inner_missing.cfg'} line 1) not found"),
        ("flagfile that is a folder", [f"--flagfile={tmp}"], "cannot be read"),
        ("malformed flagfile", [f"--flagfile={tmp / 'malformed.cfg'}"],
         f"{tmp / 'malformed.cfg'} line 2: 'this line is not a flag' is not a flag"),
        ("bad value in flagfile", [f"--flagfile={tmp / 'bad_value.cfg'}"],
         f"{tmp / 'bad_value.cfg'} line 1: --epochs=abc: expected a positive integer"),
        ("misspelt flag in flagfile", [f"--flagfile={tmp / 'typo.cfg'}"],
         f"{tmp / 'typo.cfg'} line 2: unknown flag --metalr; did you mean --meta_lr"),
        ("misspelt flag in a nested flagfile", [f"--flagfile={tmp / 'outer.cfg'}"],
         f"{tmp / 'typo.cfg'} line 2 (included from {tmp / 'outer.cfg'} line 2): unknown flag"),
        ("misspelt flag", ["--metalr=0.01"], "unknown flag --metalr; did you mean --meta_lr"),
        ("flag of another tool", ["--out=bench"], "unknown flag --out"),
        ("value for a boolean's no-form", ["--noresume=1"], "does not take an argument"),
        ("flag without its value", ["--dataset", "--epochs=1"], "--dataset has no value"),
        ("float for an integer", ["--epochs=3.5"], "--epochs=3.5: expected a positive integer"),
        ("word for a boolean", ["--resume=maybe"], "expected true or false"),
        ("one audit fold", ["--audit", "--audit_folds=1"], "--audit_folds=1 cannot cross-fit"),
        ("multistep without milestones", ["--lr_schedule=multistep"], "needs --lr_milestones"),
        ("CIFAR-N without a human label set", ["--dataset=cifar10_n"],
         "--dataset=cifar10_n needs --noise=aggre|worst"),
        ("the other CIFAR-N's label set", ["--dataset=cifar100_n", "--noise=worst"],
         "--noise=noisy100"),
        ("TFDS name typo", ["--dataset=tfds:mnsit", f"--data_dir={tmp / 'empty_data'}"],
         "unknown TFDS dataset 'mnsit'"),
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
        ("npz path without npz:", [f"--dataset={tmp / 'three.npz'}"],
         f"--dataset=npz:{tmp / 'three.npz'}"),
        ("folder path without folder:", [f"--dataset={tmp / 'one'}"],
         f"--dataset=folder:{tmp / 'one'}"),
        ("folder: naming a file", [f"--dataset=folder:{tmp / 'three.npz'}"], "not a folder"),
        ("list: naming a folder", [f"--dataset=list:{tmp / 'listed'}"], "not a file"),
        # --trainer=vri_single and the real-world data flags
        ("vri_single with WNet", ["--trainer=vri_single", "--meta_net=wnet"],
         "--trainer=vri_single trains the VRI rectifier"),
        ("vri_single without a meta objective", ["--trainer=vri_single", "--method=ce"],
         "--trainer=meta --method=ce"),
        ("resize without a crop size", ["--resize_shorter=40"], "needs --image_size"),
        ("resize below the crop", ["--resize_shorter=20", "--image_size=32"],
         "S <= R"),
        ("resize of arrays", ["--resize_shorter=40", "--image_size=32"], "--image_size"),
        ("pretrained weights for small_cnn", ["--pretrained=imagenet"], "resnet50 only"),
        ("pretrained weights file missing",
         ["--backbone=resnet50", f"--pretrained={tmp / 'nowhere.h5'}"], "no such weights file"),
        ("pretrained with its own standardisation",
         ["--backbone=resnet50", "--pretrained=imagenet", "--standardize=imagenet"],
         "drop --standardize"),
        ("ImageNet statistics of grey digits", ["--standardize=imagenet"], "RGB"),
        ("optimizer reset under a decaying schedule", ["--reset_optimizer_each_epoch"],
         "--lr_schedule=constant"),
        ("re-sampling without a subset", ["--resample_subset_each_epoch"],
         "needs --train_subset"),
        ("subset smaller than the classes", ["--train_subset=5"], "number of classes"),
        ("subset larger than training", ["--train_subset=5000"], "exceeds the 1437"),
        ("val meta set without a val split", ["--meta_source=val"],
         "needs a validation split"),
        ("val meta set for a labelled objective",
         [f"--dataset=list:{_list(tmp, 'trainlist', *TWO_BY_CLASS)}",
          f"--val_list={_list(tmp, 'vallist', 'a/0.png 0', 'b/0.png 1')}",
          "--meta_source=val", "--method=ce_noisy", "--meta_size=2", "--batch_size=2",
          "--meta_batch_size=2"], "needs one with labels"),
        ("re-drawn meta set for a labelled objective",
         ["--redraw_meta_each_epoch", "--method=ce_clean"], "needs labels"),
        ("top:N of vgg19_bn", ["--backbone=vgg19_bn", "--meta_scope=top:2"],
         "--backbone=vgg19_bn has none"),
        ("last_layer of vgg19_bn", ["--backbone=vgg19_bn", "--meta_scope=last_layer"],
         "vgg19_bn's features feed an MLP"),
        ("DivideMix with a labelled meta set", ["--trainer=dividemix", "--meta_net=vri",
                                                "--method=ce_clean"], "--method=ce_clean"),
        ("DivideMix with meta_every", ["--trainer=dividemix", "--meta_net=vri",
                                       "--meta_every=2"], "--meta_every"),
        ("DivideMix with a KL weight", ["--trainer=dividemix", "--meta_net=vri",
                                        "--vri_kl=0.1"], "--vri_kl"),
        ("DivideMix in float16", ["--trainer=dividemix", "--meta_net=vri",
                                  "--mixed_precision=mixed_float16"], "mixed_float16"),
        ("DivideMix audit by cross-fitting", ["--trainer=dividemix", "--meta_net=vri",
                                              "--audit"], "--audit_folds=0"),
        ("DivideMix under XLA", ["--trainer=dividemix", "--meta_net=vri", "--jit_compile"],
         "--jit_compile"),
        # the semi-supervised split and trainers (issue 12)
        ("fixmatch without --num_labels", ["--trainer=fixmatch"], "needs --num_labels"),
        ("fixmatch with an oracle meta set", ["--trainer=fixmatch", "--num_labels=200",
                                              "--method=ce_clean"], "--method=ce_clean"),
        ("fixmatch with --augment", ["--trainer=fixmatch", "--num_labels=200",
                                     "--augment=strong"], "weak view"),
        ("fixmatch with --steps_per_epoch", ["--trainer=fixmatch", "--num_labels=200",
                                             "--steps_per_epoch=5"], "--eval_every"),
        ("fixmatch with float16", ["--trainer=fixmatch", "--num_labels=200",
                                   "--mixed_precision=mixed_float16"], "mixed_bfloat16"),
        ("num_labels not a multiple of the classes", ["--trainer=fixmatch",
                                                      "--num_labels=205"], "multiple"),
        ("more labels than the data", ["--trainer=fixmatch", "--num_labels=2000"],
         "left unlabeled"),
        ("unlabeled batch larger than the unlabeled set",
         ["--trainer=fixmatch", "--num_labels=200", "--uratio=20"], "uratio * batch_size"),
        ("labeled meta set larger than the labeled part",
         ["--trainer=fixmatch", "--num_labels=200", "--ssl_meta_source=labeled",
          "--meta_size=500"], "noisy class"),
        ("num_labels with an oracle meta trainer", ["--num_labels=200", "--method=ce_clean"],
         "--method=ce_clean"),
        ("num_labels with DivideMix", ["--trainer=dividemix", "--num_labels=200"],
         "--num_labels"),
        # a flag the chosen trainer does not read (issue 29)
        ("another trainer's flags", ["--trainer=meta", "--p_threshold=0.3", "--uratio=3"],
         "--p_threshold is read by --trainer=dividemix only; --trainer=meta would ignore it"),
        ("another trainer's flag in a flagfile",
         [f"--flagfile={_text(tmp / 'ssl.cfg', '--uratio=3')}"],
         "--uratio is read by --trainer=fixmatch|flexmatch only"),
        ("FlexMatch's flag with fixmatch", ["--trainer=fixmatch", "--num_labels=200",
                                           "--nothresh_warmup"], "--thresh_warmup"),
        ("fixmatch without an audit", ["--trainer=fixmatch", "--num_labels=200", "--audit"],
         "offers no label audit (the trainers with one: meta, vri_single, dividemix)"),
        ("fixmatch on feature vectors",
         [_npz(tmp / "flat_ssl.npz", x_train=np.zeros((40, 5)), x_test=np.zeros((10, 5))),
          "--backbone=mlp", "--trainer=fixmatch", "--num_labels=9"], "images"),
    ]


def test_bad_input_table_gives_one_error_line_each(tmp_path):
    """Each mistake: exit 2, one `error:` line naming it, within 10 s, no workdir (two
    cases at a time; each case is timed on its own)."""
    cases = _bad_inputs(tmp_path)
    assert len(cases) >= 76

    def attempt(index_case):
        index, (case, args, needle) = index_case
        workdir = tmp_path / f"run{index}"
        started = time.monotonic()
        proc = run_cli(f"--workdir={workdir}", "--verbose=0", *args)
        return case, needle, proc, time.monotonic() - started, workdir

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for case, needle, proc, seconds, workdir in pool.map(attempt, enumerate(cases)):
            try:
                assert_one_line_error(proc, needle)
            except AssertionError as error:
                raise AssertionError(f"case {case!r}: {error}") from error
            assert not workdir.exists(), f"case {case!r} left a workdir behind"
            assert seconds < 10, f"case {case!r} took {seconds:.1f} s"


def test_a_strategy_that_cannot_start_is_one_line(tmp_path):
    """--strategy=tpu without a TPU: one line, no workdir (after TensorFlow starts: seconds
    more than the table's cases)."""
    proc = run_cli(f"--workdir={tmp_path / 'run'}", "--strategy=tpu")
    assert_one_line_error(proc, "--strategy=tpu cannot start here")
    assert not (tmp_path / "run").exists()


def test_a_backbone_the_data_cannot_have_is_one_line(tmp_path):
    """A refusal found when the model is built (after TensorFlow starts: seconds more than
    the table's cases): one line, no workdir."""
    proc = run_cli(f"--workdir={tmp_path / 'run'}", "--backbone=vgg19_bn")
    assert_one_line_error(proc, "--backbone=vgg19_bn: vgg19_bn halves its input 5 times")
    assert not (tmp_path / "run").exists()


def test_pretrained_imagenet_offline_and_uncached_is_one_line_at_once(tmp_path, monkeypatch,
                                                                      capsys):
    """--pretrained=imagenet with no cached weights file and no network: one line naming
    the file to fetch and --pretrained=PATH, before TensorFlow starts; cached, it is used."""
    from absl.testing import flagsaver
    from clid_tf import cli
    from clid_tf.data.sources import cifar as tfds_cifar
    from clid_tf.cli import checks
    from clid_tf.trainers import parts
    cli.define_flags()
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(tfds_cifar, "online", lambda: False)
    workdir = tmp_path / "run"
    args = ["x", f"--workdir={workdir}", "--backbone=resnet50", "--pretrained=imagenet"]
    with flagsaver.flagsaver():
        cli.FLAGS.unparse_flags()
        cli.parse_flags(args)
        started = time.monotonic()
        with pytest.raises(SystemExit) as stop:
            cli.main(["x"])
        assert time.monotonic() - started < 10
        cached = tmp_path / "keras" / "models" / parts.RESNET50_WEIGHTS
        cached.parent.mkdir(parents=True)
        cached.write_bytes(b"")
        assert parts.pretrained_weights(checks.resolved()) == str(cached)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert stop.value.code == 2 and len(lines) == 1, lines
    assert parts.RESNET50_WEIGHTS_URL in lines[0] and "--pretrained=PATH" in lines[0]
    assert not workdir.exists()


def test_from_another_folder_flagfile_paths_are_explained_and_nothing_is_left(tmp_path):
    """Run where a new user might (not the repository root), without --workdir: a nested
    flagfile path names its file, line and the folder to run from; a failed start leaves
    the folder as it was (no runs/); --resume without --workdir is refused."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT}

    def run_here(*args):
        return subprocess.run([sys.executable, "-m", "clid_tf.train", *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)

    nested = os.path.join(ROOT, "flags", "digits_sym40.cfg")
    with open(nested) as f:  # the 1-based line that includes digits_common.cfg
        line = 1 + [row.strip() for row in f].index("--flagfile=flags/digits_common.cfg")
    assert_one_line_error(run_here(f"--flagfile={nested}"),
                           f"flagfile flags/digits_common.cfg (named on {nested} line {line}) "
                           f"not found relative to {tmp_path}")
    assert f"run from {ROOT}" in run_here(f"--flagfile={nested}").stderr
    assert_one_line_error(run_here("--dataset=npz:nowhere.npz"), "nowhere.npz")
    assert_one_line_error(run_here("--resume"), "--resume needs --workdir")
    assert_one_line_error(run_here("--workdir=~/clid_tf_never/run", "--epochs=0"), "epochs")
    assert os.listdir(tmp_path) == []


def test_offline_cifar10_without_data_is_one_line_at_once(tmp_path, monkeypatch, capsys):
    """No prepared CIFAR-10 and no internet: one line with the way to prepare it, before
    any download is tried; online, TFDS is asked to download it (as usual)."""
    from absl.testing import flagsaver
    from clid_tf import cli
    from clid_tf.data.sources import cifar as tfds_cifar
    import tensorflow_datasets as tfds
    cli.define_flags()
    workdir, empty = tmp_path / "run", tmp_path / "tfds"
    empty.mkdir()
    args = ["x", f"--workdir={workdir}", "--dataset=cifar10", f"--data_dir={empty}"]
    monkeypatch.setattr(tfds_cifar, "online", lambda: False)
    with flagsaver.flagsaver():
        cli.FLAGS.unparse_flags()
        cli.parse_flags(args)
        started = time.monotonic()
        with pytest.raises(SystemExit) as stop:
            cli.main(["x"])
        seconds = time.monotonic() - started
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert stop.value.code == 2 and len(lines) == 1, lines
    assert "'cifar10' is not available" in lines[0] and "download_and_prepare" in lines[0]
    assert seconds < 10 and not workdir.exists()

    asked = []
    monkeypatch.setattr(tfds_cifar, "online", lambda: True)
    monkeypatch.setattr(tfds, "load", lambda name, **kw: asked.append(name) or 1 / 0)
    with flagsaver.flagsaver():
        cli.FLAGS.unparse_flags()
        cli.parse_flags(args)
        with pytest.raises(SystemExit):
            cli.main(["x"])
    assert asked == ["cifar10"]  # online: the download is TFDS's to do
    assert not workdir.exists()


def test_the_noise_flag_offers_every_human_label_set_of_the_sources():
    from clid_tf.cli import flags as flagdefs
    flagdefs.define_flags()
    offered = set(flagdefs.FLAGS["noise"].parser.enum_values)
    assert {"worst", "aggre", "rand1", "rand2", "rand3", "noisy100"} <= offered
    assert set(sources.human_labels()) == {"worst", "aggre", "rand1", "rand2", "rand3",
                                           "noisy100"}


def test_existing_run_is_refused_and_left_intact(tmp_path):
    workdir = tmp_path / "earlier"
    workdir.mkdir()
    (workdir / "results.json").write_text('{"final_test_accuracy": 0.9}')
    proc = run_cli(f"--workdir={workdir}", *FAST)
    assert_one_line_error(proc, "not empty")
    assert (workdir / "results.json").read_text() == '{"final_test_accuracy": 0.9}'
    assert sorted(os.listdir(workdir)) == ["results.json"]


def test_unwritable_workdir_is_refused(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    proc = run_cli(f"--workdir={blocker / 'run'}", *FAST)
    assert_one_line_error(proc, "cannot be written")


def test_every_backbone_name_has_a_builder():
    from clid_tf import names
    assert set(backbones._body_builders()) == set(names.BACKBONES)


def test_flag_errors_are_reported_before_tensorflow_loads():
    proc = subprocess.run(
        [sys.executable, "-c",
         "import sys\nfrom clid_tf import train\nsys.argv = ['x', '--method=bogus']\n"
         "try:\n    train.run_main()\nexcept SystemExit:\n    pass\n"
         "print('tensorflow' in sys.modules)"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stdout + proc.stderr
