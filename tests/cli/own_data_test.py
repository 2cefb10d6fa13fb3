"""A user's own data through the command line: labels used as given, image folders and
list files streamed from disk, class names everywhere, the audit and the export of what
the label-free selection chose."""

import csv
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from clid_tf.data import sources
from clid_tf.data.sources.digits import load_digits
from clid_tf.evaluation import audit_sheet
from clid_tf.runs.folder import RunFolder
from tests.helpers import cli as cli_helpers
from tests.helpers.cli import run_cli

FAST = ["--epochs=3", "--warmup_epochs=1", "--meta_size=60", "--meta_batch_size=30",
        "--batch_size=30", "--verbose=0"]
NAMES = ("cat", "dog", "emu")


def _write_folder(root, split, count, seed):
    """count 8x8 grey PNGs per class; class c's images are brighter in row block c."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(NAMES):
        os.makedirs(os.path.join(root, split, name), exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 60, (8, 8))
            pixels[c * 2:c * 2 + 3] += 180
            Image.fromarray(pixels.astype(np.uint8)).save(
                os.path.join(root, split, name, f"{i:03d}.png"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("images"))
    _write_folder(root, "train", 70, 0)
    _write_folder(root, "val", 10, 1)
    _write_folder(root, "test", 15, 2)
    return root


@pytest.fixture(scope="module")
def folder_run(folder, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("runs") / "folder")
    proc = run_cli(f"--dataset=folder:{folder}", f"--workdir={workdir}", "--export=ensemble",
                   "--select_keep=2", "--select_epochs=all", "--audit", "--audit_folds=2", *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, proc


def test_folder_labels_reach_training_unaltered(folder, folder_run):
    workdir, proc = folder_run
    given = sources.load(f"folder:{folder}").train.labels
    with np.load(os.path.join(workdir, "split.npz")) as split:
        np.testing.assert_array_equal(split["noisy_labels"], given)
    results = json.load(open(os.path.join(workdir, "results.json")))
    assert results["flags"]["noise"] is None and results["realised_noise_rate"] is None
    assert "labels as given" in proc.stdout
    assert results["class_names"] == list(NAMES)
    assert results["num_train"] == 210 and results["num_val"] == 30
    assert results["num_test"] == 45
    assert len(results["history"]["val_accuracy"]) == 3  # Keras validates on val/ each epoch
    assert results["final_test_accuracy"] > 0.5


def test_audit_csv_names_files_and_classes(folder_run):
    workdir, _ = folder_run
    rows = list(csv.DictReader(open(os.path.join(workdir, "audit.csv"))))
    assert len(rows) == 210
    assert all(r["sample"].startswith("train/") and r["sample"].endswith(".png") for r in rows)
    assert {r["given_label"] for r in rows} == set(NAMES)
    assert rows[0]["rank"] == "1" and float(rows[0]["suspicion"]) >= float(rows[-1]["suspicion"])
    audit = json.load(open(os.path.join(workdir, "results.json")))["audit"]
    assert audit["folds"] == 2 and audit["true_noise_rate"] is None  # no truth known


def test_audit_pictures_show_the_ranked_files(folder, folder_run):
    """audit.png: the 64 most suspicious PNGs in rank order (8x8 upscaled 12x), in the
    run folder, in TensorBoard under audit/ and named by the look-at-it line."""
    workdir, proc = folder_run
    sheet = os.path.join(workdir, "audit.png")
    with Image.open(sheet) as image:
        image.verify()
    with Image.open(sheet) as image:
        width, height = image.size
    tile = 8 * 12
    assert width == 8 * (tile + 8)
    assert height == 8 * (tile + audit_sheet.CAPTION) + 24  # 8 lines of 8 tiles, a title
    audit = json.load(open(os.path.join(workdir, "results.json")))["audit"]
    drawn = ["sheet", "confusion"] + (["classes"] if audit["num_flagged"] else [])
    assert sorted(audit["pictures"]) == sorted(
        RunFolder(workdir).audit_pictures[name] for name in drawn)
    for path in audit["pictures"]:
        with Image.open(path) as image:
            image.verify()
    assert audit["pictures"][0] == sheet
    assert 0 < audit["pictures_seconds"] < audit["seconds"]
    shown = cli_helpers.images(os.path.join(workdir, "tensorboard", "audit"))
    assert set(shown) == {f"audit/{name}" for name in drawn}
    assert shown["audit/sheet"][0].shape[:2] == (height, width)
    look = [line for line in proc.stdout.splitlines() if line.startswith("look at it:")]
    assert look and look[0].endswith(f"open {sheet}"), look
    # The tiles' pixels are the CSV's first 64 files, read back from disk in rank order.
    rows = audit_sheet.read_rows(os.path.join(workdir, "audit.csv"))[:64]
    pixels = np.stack([np.asarray(Image.open(os.path.join(folder, r["sample"])))
                       for r in rows])
    drawn = np.asarray(Image.open(sheet).convert("L"), np.float32)
    for k in (0, 9, 63):
        line, column = divmod(k, 8)
        top, left = 24 + line * (tile + audit_sheet.CAPTION), column * (tile + 8) + 4
        block = drawn[top:top + tile, left:left + tile][6::12, 6::12]  # tile centres
        np.testing.assert_allclose(block, pixels[k], atol=2)


def test_ensemble_export_serves_the_kept_epochs_with_class_names(folder, folder_run):
    workdir, _ = folder_run
    kept = sorted(glob.glob(os.path.join(workdir, "checkpoints", "selected", "epoch-*.npz")))
    assert len(kept) == 2
    results = json.load(open(os.path.join(workdir, "results.json")))
    assert sorted(k["epoch"] for k in results["kept"]) == sorted(
        int(os.path.basename(p)[6:-4]) for p in kept)
    data = sources.load(f"folder:{folder}")
    images = np.stack([np.asarray(Image.open(p))[..., None] for p in data.test.inputs.files.paths])
    served = tf.saved_model.load(os.path.join(workdir, "saved_model")).signatures[
        "serving_default"](images=tf.constant(images))
    from clid_tf.models import backbones  # pylint: disable=import-outside-toplevel
    logits = []
    for path in kept:
        net = backbones.build("small_cnn", num_classes=3, input_shape=(8, 8, 1),
                              mean=data.mean, std=data.std)
        with np.load(path) as saved:
            net.set_weights([saved[f"arr_{i}"] for i in range(len(saved.files))])
        logits.append(net(images.astype(np.float32), training=False)[0].numpy())
    np.testing.assert_array_equal(served["class_ids"].numpy(), np.sum(logits, 0).argmax(1))
    assert {n.decode() for n in served["class_names"].numpy()} <= set(NAMES)


def test_npz_labels_are_used_as_given_and_noise_only_when_asked(tmp_path):
    digits = load_digits()
    path = str(tmp_path / "mine.npz")
    np.savez(path, x_train=digits.train.inputs.array[:300], y_train=digits.train.labels[:300])
    for extra, noisy in (([], False), (["--noise=sym", "--noise_rate=0.5"], True)):
        workdir = str(tmp_path / f"run{len(extra)}")
        proc = run_cli(f"--dataset=npz:{path}", f"--workdir={workdir}", "--export=selected",
                       *extra, *FAST)
        assert proc.returncode == 0, proc.stderr[-3000:]
        with np.load(os.path.join(workdir, "split.npz")) as split:
            changed = np.mean(split["noisy_labels"] != digits.train.labels[:300])
        assert (changed > 0.2) if noisy else changed == 0.0
        results = json.load(open(os.path.join(workdir, "results.json")))
        assert "final_test_accuracy" not in results  # no test split: no test metrics
        assert "no test split" in proc.stdout
        assert os.path.isdir(os.path.join(workdir, "saved_model"))


def test_list_file_with_val_split_and_selected_export(folder, tmp_path):
    data = sources.load(f"folder:{folder}")
    lines = [f"{name} {label}" for name, label in zip(data.train.inputs.names(),
                                                         data.train.labels)]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "names.txt").write_text("\n".join(NAMES) + "\n")
    workdir = str(tmp_path / "run")
    proc = run_cli(f"--dataset=list:{tmp_path / 'train.txt'}", f"--data_root={folder}",
                   f"--class_names_file={tmp_path / 'names.txt'}", "--val_split=0.2",
                   f"--workdir={workdir}", "--export=selected", *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.load(open(os.path.join(workdir, "results.json")))
    assert results["num_val"] == 42 and results["num_train"] == 168
    assert results["class_names"] == list(NAMES)
    assert len(results["history"]["val_accuracy"]) == 3
    selected = results["selected_epoch"]
    weights = os.path.join(workdir, "checkpoints", "selected", f"epoch-{selected}.npz")
    from clid_tf.models import backbones  # pylint: disable=import-outside-toplevel
    net = backbones.build("small_cnn", num_classes=3, input_shape=(8, 8, 1), mean=data.mean,
                          std=data.std)
    with np.load(weights) as saved:
        net.set_weights([saved[f"arr_{i}"] for i in range(len(saved.files))])
    images = np.stack([np.asarray(Image.open(p))[..., None]
                       for p in data.test.inputs.files.paths[:20]])
    served = tf.saved_model.load(os.path.join(workdir, "saved_model")).signatures[
        "serving_default"](images=tf.constant(images))
    want = tf.nn.softmax(net(images.astype(np.float32), training=False)[0]).numpy()
    np.testing.assert_allclose(served["probabilities"].numpy(), want, rtol=1e-5, atol=1e-6)


def test_an_image_corrupted_inside_stops_training_with_one_line(tmp_path):
    root = str(tmp_path / "images")
    _write_folder(root, "train", 30, 0)
    victim = os.path.join(root, "train", "dog", "003.png")
    data = bytearray(open(victim, "rb").read())
    start = data.find(b"IDAT") + 8  # inside the pixel data: header and IEND stay intact
    data[start:start + 10] = bytes(b ^ 0xFF for b in data[start:start + 10])
    open(victim, "wb").write(bytes(data))
    workdir = tmp_path / "run"
    proc = run_cli(f"--dataset=folder:{root}", f"--workdir={workdir}", *FAST)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines()
             if line.strip() and not line.startswith(("I0000", "W0000", "E0000", "WARNING: All"))]
    assert len(lines) == 1, proc.stderr
    assert f"the image file train/dog/003.png (under {root}) cannot be decoded" in lines[0]
    assert "no epoch had finished, so nothing of the run was kept" in lines[0]
    assert not workdir.exists()  # as the line says: the same command can run again
