"""Tests for clid_tf.evaluation.audit_sheet: each tile shows the image and the columns of its
audit row in rank order, for image folders, npz images, TFDS-shaped mock data and (as a
table) feature vectors; the PNG opens with Pillow; the Python entry draws the same sheet."""

import io

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import clid_tf
from clid_tf.data import image_files
from clid_tf.data.inputs import ArrayInputs, FileInputs, read_numpy
from clid_tf.data.sources import tfds as tfds_images
from clid_tf.evaluation import audit_sheet
from clid_tf.evaluation import label_issues
from tests.data.sources.tfds_test import write_tfds_metadata
from tests.helpers import images as image_helpers

NAMES = ("cat", "dog", "emu")


def _scores(n, seed=0):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(3), size=n)
    given = rng.integers(0, 3, n)
    return label_issues.Scores(probs, None), given


def _rows_and_order(names, n, seed=0):
    scores, given = _scores(n, seed)
    rows = label_issues.table(names, scores, given, class_names=NAMES)
    order = label_issues.rank_by_suspicion(label_issues.suspicion_scores(scores.probs, given))
    return rows, order


def _check_tiles(figure, images, rows):
    """Tile k holds image k (as shown) and row k's caption; the PNG opens with Pillow."""
    tiles = [axes for axes in figure.axes if axes.images]
    assert len(tiles) == len(rows)
    shown = audit_sheet.display_images(images)
    for k, (axes, row) in enumerate(zip(tiles, rows)):
        np.testing.assert_allclose(np.asarray(axes.images[0].get_array()), shown[k])
        assert axes.texts[0].get_text() == audit_sheet._caption(row)  # pylint: disable=protected-access
        assert f"#{row['rank']} " in axes.texts[0].get_text()
        assert f"given {row['given_label']}" in axes.texts[0].get_text()
        assert f"pred {row['predicted_label']}" in axes.texts[0].get_text()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    buffer.seek(0)
    image = Image.open(buffer)
    image.verify()
    return image.size


def test_sheet_of_an_image_folder_reads_only_the_shown_files(tmp_path):
    root = str(tmp_path / "images")
    image_helpers.write_tree(root, {n: 10 for n in NAMES}, shape=(8, 8, 3))
    files = image_files.folder_splits(root)["train"]
    inputs = FileInputs(files, (8, 8, 3))
    rows, order = _rows_and_order(files.names(), len(files.paths))
    shown = read_numpy(inputs, order[:16])
    size = _check_tiles(audit_sheet.contact_sheet(shown, rows[:16]), shown, rows[:16])
    assert size == (8 * (96 + 8), 2 * (96 + audit_sheet.CAPTION) + 4)  # 8x8 upscaled 12x
    assert [r["sample"] for r in rows[:16]] == list(files.names()[order[:16]])


def test_sheet_of_npz_images_and_of_tfds_mock_data(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (30, 5, 7, 1), dtype=np.uint8)
    rows, order = _rows_and_order(np.arange(30), 30)
    shown = ArrayInputs(x).array[order[:10]]
    _check_tiles(audit_sheet.contact_sheet(shown, rows[:10]), shown, rows[:10])
    write_tfds_metadata("mnist", str(tmp_path), {"train": 60000, "test": 10000})
    with tfds.testing.mock_data(num_examples=12, data_dir=str(tmp_path)):
        mnist = tfds_images.load_tfds_image_classification("mnist")
    inputs = mnist.splits["train"].inputs
    rows, order = _rows_and_order(np.arange(12), 12)
    shown = read_numpy(inputs, order[:12])
    width, height = _check_tiles(audit_sheet.contact_sheet(shown, rows), shown, rows)
    assert width == 8 * (4 * 28 + 8)  # 28x28 upscaled 4x to 112


def test_feature_vectors_get_a_table_in_rank_order():
    rows, _ = _rows_and_order(np.arange(20), 20)
    figure = audit_sheet.table_sheet(rows[:7])
    table = figure.axes[0].tables[0]
    cells = table.get_celld()
    assert [cells[(k + 1, 0)].get_text().get_text() for k in range(7)] == \
        [str(r["rank"]) for r in rows[:7]]
    assert [cells[(k + 1, 2)].get_text().get_text() for k in range(7)] == \
        [r["given_label"] for r in rows[:7]]


def test_the_class_sheet_pairs_the_most_frequent_confusions():
    rows = [{"rank": k + 1, "sample": str(k), "given_label": g, "predicted_label": p,
             "suspicion": 1 - k / 10, "flagged": int(k < 5)}
            for k, (g, p) in enumerate([("cat", "dog"), ("cat", "dog"), ("emu", "dog"),
                                        ("cat", "dog"), ("emu", "cat"), ("dog", "dog"),
                                        ("cat", "cat"), ("dog", "dog"), ("cat", "cat")])]
    rows[3]["flagged"] = rows[5]["flagged"] = 1  # a flagged dog predicted dog: no pair
    assert audit_sheet.confused_pairs(rows) == [("cat", "dog", 3), ("emu", "dog", 1),
                                                ("emu", "cat", 1)]
    title, (flagged, given, predicted) = audit_sheet.class_sheet_rows(rows, per_group=2)[0]
    assert title.startswith("3 flagged: given cat, predicted dog")
    assert [r["rank"] for r in flagged] == [1, 2]
    assert [r["rank"] for r in given] == [9, 7]  # the least suspicious cats
    assert [r["rank"] for r in predicted] == [8, 6]
    counts = audit_sheet.confusion_figure(rows, NAMES).axes[0].images[0].get_array()
    np.testing.assert_array_equal(counts, [[0, 3, 0], [0, 1, 0], [1, 1, 0]])
    read = []

    def images_of(picked):  # counts what the class sheet reads
        read.extend(r["rank"] for r in picked)
        return np.zeros((len(picked), 4, 4, 1), np.uint8)

    figure = audit_sheet.class_sheet(images_of, rows, per_group=2)
    assert sorted(read) == sorted(set(read))  # each image read once
    assert set(read) == {1, 2, 9, 7, 8, 6, 3, 5}  # only what the lines show
    assert len([a for a in figure.axes if a.images]) == 6 + 5 + 5  # 3 lines of 3 groups


def test_plot_label_issues_from_a_result_and_from_an_audit_csv(tmp_path):
    x = np.random.default_rng(2).random((40, 6, 6)).astype(np.float32)  # [0, 1] floats
    scores, given = _scores(40, 3)
    issues = clid_tf.rank_label_issues(given, scores.probs)
    figure = clid_tf.plot_label_issues(x, given, issues, class_names=NAMES, show=9)
    rows = audit_sheet.rows_of(issues, given, class_names=NAMES)[:9]
    _check_tiles(figure, x[issues.ranked[:9]][..., None], rows)
    path = str(tmp_path / "audit.csv")
    label_issues.write_csv(path, label_issues.table(np.arange(40), scores, given,
                                                    class_names=NAMES))
    again = clid_tf.plot_label_issues(x, csv_path=path, show=9)
    _check_tiles(again, x[issues.ranked[:9]][..., None], rows)
    with pytest.raises(ValueError, match="either issues="):
        clid_tf.plot_label_issues(x, given)
