"""The label audit as pictures: the most suspicious training samples on a contact sheet.

  contact_sheet     the first `show` samples of the ranking, one tile each: the image as
                    the model saw it (its native pixels, upscaled by an integer factor
                    without smoothing when small), its name or index, the given and the
                    predicted label and the suspicion, in rank order
  table_sheet       the same columns as a table, for feature vectors (no images)
  class_sheet       the second sheet: for the most frequent (given -> predicted) confusions
                    among the flagged samples, a row of the most suspicious flagged samples
                    of that pair beside the least suspicious samples labelled with the given
                    class and with the predicted class, so a person can see whether a
                    flagged image looks like the one class or the other
  confusion_figure  given vs predicted labels of the flagged samples, as counts
  plot_label_issues the contact sheet from a user's images, labels and `find_label_issues`
                    result (or an audit.csv), for a notebook

Every function takes the rows of the audit table (`label_issues.table`, or audit.csv read
back) and only the images it shows, so streamed file data stay on disk. Figures are plain
`matplotlib.figure.Figure`s (Agg backend, never registered with pyplot).
"""

from __future__ import annotations

import csv
import math
import os
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from clid_tf import atomic_io
from clid_tf.evaluation import label_issues

SHOW = 64  # tiles on the contact sheet by default (--audit_show)
COLUMNS = 8  # tiles per row
TILE = 96  # the smallest tile side in pixels: small images are upscaled to at least this
CAPTION = 42  # pixels of caption under each tile (three lines)
_DPI = 100
_FONT = 6.5
PAIRS = 6  # rows of the class sheet
PER_GROUP = 4  # images per group in a class-sheet row


# ---------------------------------------------------------------- the rows
def read_rows(path: str) -> list[dict[str, Any]]:
    """The rows of an audit.csv, in rank order, with numbers as numbers."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [{k: label_issues.read_csv_text(v) for k, v in row.items()}
                for row in csv.DictReader(f)]
    for row in rows:
        row["rank"] = int(row["rank"])
        for key in ("suspicion", "given_label_prob", "predicted_prob"):
            row[key] = float(row[key])
        row["flagged"] = int(row["flagged"])
    return sorted(rows, key=lambda r: r["rank"])


def rows_of(issues, labels: np.ndarray, *, class_names: Sequence[str] | None = None,
            names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Audit rows (the columns the sheets show) of a `label_issues.LabelIssues`."""
    num_classes = issues.scores.probs.shape[1]
    known = tuple(getattr(issues, "class_names", ()) or ())
    labels, _ = label_issues.class_ids(labels, class_names=known or None)
    class_names = list(class_names or [str(k) for k in (known or range(num_classes))])
    names = list(names) if names is not None else [str(i) for i in range(len(labels))]
    return label_issues.table(names, issues.scores, labels, class_names=class_names,
                              flagged=getattr(issues, "flagged", None))


def display_images(images: np.ndarray) -> np.ndarray:
    """Images [n, H, W, C] (uint8 0..255, or floats in [0, 1] or [0, 255]) as floats in
    [0, 1] for imshow; one channel stays 2-D for a grey colormap."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        shown = images.astype(np.float32) / 255.0
    else:
        shown = images.astype(np.float32)
        if shown.size and shown.max() > 1.0:
            shown = shown / 255.0
    shown = np.clip(shown, 0.0, 1.0)
    return shown[..., 0] if shown.shape[-1] == 1 else shown


# ---------------------------------------------------------------- the sheets
def _tile_side(height: int, width: int) -> tuple[int, int]:
    """(tile width, tile height) in pixels: the image times the integer factor that makes
    its longer side at least TILE (1 for large images: their native pixels)."""
    factor = max(1, math.ceil(TILE / max(height, width)))
    return width * factor, height * factor


def _caption(row: dict[str, Any]) -> str:
    name = os.path.basename(str(row["sample"])) or str(row["sample"])
    return (f"#{row['rank']} {_short(name, 18)}\ngiven {_short(row['given_label'])}\n"
            f"pred {_short(row['predicted_label'])}  s={row['suspicion']:.3f}")


def _short(text: str, limit: int = 14) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit - 1] + "~"


def contact_sheet(images: np.ndarray, rows: Sequence[dict[str, Any]], *,
                  title: str = "") -> Figure:
    """One tile per row: images [n, H, W, C] in the rows' (rank) order."""
    shown = display_images(images)
    n = len(rows)
    width, height = _tile_side(shown.shape[1], shown.shape[2])
    columns = min(COLUMNS, max(n, 1))
    lines = max(1, math.ceil(n / columns))
    top = 24 if title else 4
    fig_w, fig_h = columns * (width + 8), lines * (height + CAPTION) + top
    figure = Figure(figsize=(fig_w / _DPI, fig_h / _DPI), dpi=_DPI)
    if title:
        figure.suptitle(title, fontsize=8, y=1 - 4 / fig_h, va="top")
    for k, row in enumerate(rows):
        line, column = divmod(k, columns)
        left = (column * (width + 8) + 4) / fig_w
        bottom = 1 - (top + line * (height + CAPTION) + height) / fig_h
        axes = figure.add_axes((left, bottom, width / fig_w, height / fig_h))
        axes.imshow(shown[k], cmap="gray" if shown[k].ndim == 2 else None, vmin=0, vmax=1,
                    interpolation="nearest")
        axes.set_xticks([])
        axes.set_yticks([])
        flipped = row.get("is_flipped")
        if flipped not in (None, ""):
            for spine in axes.spines.values():  # known truth (benchmarks): red = flipped
                spine.set_edgecolor("tab:red" if int(flipped) else "tab:green")
                spine.set_linewidth(2)
        axes.text(0.0, -0.04, _caption(row), transform=axes.transAxes, fontsize=_FONT,
                  va="top", ha="left", family="monospace")
    return figure


def table_sheet(rows: Sequence[dict[str, Any]], *, title: str = "") -> Figure:
    """The rows as a table figure (feature-vector data: no images to show)."""
    header = ["rank", "sample", "given", "predicted", "suspicion"]
    cells = [[str(r["rank"]), _short(r["sample"], 24), _short(r["given_label"], 20),
              _short(r["predicted_label"], 20), f"{r['suspicion']:.3f}"] for r in rows]
    height = (len(cells) + 1) * 0.2 + (0.4 if title else 0.1)
    figure = Figure(figsize=(7.0, height), dpi=_DPI)
    axes = figure.add_axes((0.01, 0.01, 0.98, 0.98 - (0.3 / height if title else 0)))
    axes.axis("off")
    if title:
        figure.suptitle(title, fontsize=8)
    if cells:
        table = axes.table(cellText=cells, colLabels=header, loc="upper center",
                           cellLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(_FONT)
    return figure


def confused_pairs(rows: Sequence[dict[str, Any]], limit: int = PAIRS) -> list[tuple]:
    """The most frequent (given, predicted) label pairs among the flagged rows whose
    prediction disagrees with the label, with their counts: [(given, predicted, count)],
    most frequent first (ties: first seen)."""
    counts: dict[tuple[str, str], int] = {}
    for row in rows:
        if row["flagged"] and row["given_label"] != row["predicted_label"]:
            pair = (row["given_label"], row["predicted_label"])
            counts[pair] = counts.get(pair, 0) + 1
    return [(*pair, count) for pair, count in
            sorted(counts.items(), key=lambda item: -item[1])[:limit]]


def class_sheet_rows(rows: Sequence[dict[str, Any]], *, pairs: int = PAIRS,
                     per_group: int = PER_GROUP) -> list[tuple[str, list[list[dict]]]]:
    """What the class sheet shows, line by line: (title, [the pair's most suspicious
    flagged rows, the least suspicious rows given the first class, the least suspicious
    rows given the second]), each group at most `per_group` rows."""
    clean_by_label: dict[str, list] = {}
    for row in reversed(rows):  # least suspicious first
        clean_by_label.setdefault(row["given_label"], []).append(row)
    found = []
    for given, predicted, count in confused_pairs(rows, pairs):
        flagged = [r for r in rows if r["flagged"] and r["given_label"] == given
                   and r["predicted_label"] == predicted][:per_group]
        found.append((f"{count} flagged: given {_short(given)}, predicted {_short(predicted)}"
                      f"   |   least suspicious given {_short(given)}   |   least "
                      f"suspicious given {_short(predicted)}",
                      [flagged, clean_by_label.get(given, [])[:per_group],
                       clean_by_label.get(predicted, [])[:per_group]]))
    return found


def class_sheet(images_of, rows: Sequence[dict[str, Any]], *, pairs: int = PAIRS,
                per_group: int = PER_GROUP) -> Figure | None:
    """The second sheet (module docstring); `images_of(rows) -> images [n, H, W, C]`
    reads only the images shown. None when nothing is flagged."""
    lines = class_sheet_rows(rows, pairs=pairs, per_group=per_group)
    if not lines:
        return None
    shown = list({row["rank"]: row for _, groups in lines for group in groups
                  for row in group}.values())  # each image read once
    pixels = display_images(images_of(shown))
    image_of = {row["rank"]: pixels[k] for k, row in enumerate(shown)}
    width, height = _tile_side(pixels.shape[1], pixels.shape[2])
    gap = 20  # between the three groups of a line
    fig_w = 3 * per_group * (width + 8) + 2 * gap + 8
    line_h = height + CAPTION + 16
    fig_h = len(lines) * line_h + 8
    figure = Figure(figsize=(fig_w / _DPI, fig_h / _DPI), dpi=_DPI)
    for line, (title, groups) in enumerate(lines):
        top = line * line_h + 4
        figure.text(4 / fig_w, 1 - (top + 2) / fig_h, title, fontsize=7, va="top")
        for g, group in enumerate(groups):
            for k, row in enumerate(group):
                left = (4 + (g * per_group + k) * (width + 8) + g * gap) / fig_w
                bottom = 1 - (top + 14 + height) / fig_h
                axes = figure.add_axes((left, bottom, width / fig_w, height / fig_h))
                image = image_of[row["rank"]]
                axes.imshow(image, cmap="gray" if image.ndim == 2 else None,
                            vmin=0, vmax=1, interpolation="nearest")
                axes.set_xticks([])
                axes.set_yticks([])
                axes.text(0.0, -0.04, _caption(row), transform=axes.transAxes,
                          fontsize=_FONT, va="top", ha="left", family="monospace")
    return figure


def confusion_figure(rows: Sequence[dict[str, Any]], class_names: Sequence[str]) -> Figure:
    """Counts of given (rows) vs predicted (columns) labels among the flagged samples."""
    index = {name: k for k, name in enumerate(class_names)}
    counts = np.zeros((len(class_names), len(class_names)), np.int64)
    for row in rows:
        if row["flagged"]:
            counts[index[row["given_label"]], index[row["predicted_label"]]] += 1
    side = min(12.0, 2.0 + 0.35 * len(class_names))
    figure = Figure(figsize=(side, side), dpi=_DPI)
    axes = figure.add_subplot(1, 1, 1)
    axes.imshow(counts, cmap="Reds", interpolation="nearest")
    axes.set_xlabel("predicted label")
    axes.set_ylabel("given label")
    axes.set_title(f"flagged samples: {int(counts.sum())}", fontsize=9)
    if len(class_names) <= 30:
        ticks = range(len(class_names))
        axes.set_xticks(ticks, [_short(n, 10) for n in class_names], rotation=90, fontsize=6)
        axes.set_yticks(ticks, [_short(n, 10) for n in class_names], fontsize=6)
        for i, j in zip(*np.nonzero(counts)):
            axes.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=6)
    figure.tight_layout()
    return figure


def save(figure: Figure, path: str) -> None:
    """Writes the figure as a PNG, to a temporary name first (no half-written file)."""
    with atomic_io.open_atomic(path, "wb") as f:
        figure.savefig(f, format="png", dpi=_DPI)


# ---------------------------------------------------------------- Python users
def plot_label_issues(images, labels=None, issues=None, *, csv_path: str | None = None,
                      class_names: Sequence[str] | None = None, show: int = SHOW,
                      root: str | None = None) -> Figure:
    """The contact sheet of the `show` most suspicious samples, for a notebook.

    Args:
      images: the training images as an array [N, H, W, C] (or [N, H, W]) in the order of
        `labels`, or None with `root` when the audit.csv names image files (relative to
        `root`, as an audit of file data writes them). Feature vectors [N, D] give a table.
      labels: int [N] the given labels (with `issues`).
      issues: the `find_label_issues` / `rank_label_issues` result.
      csv_path: an audit.csv instead of `issues` (then `labels` may be None).
      class_names: K names to print (default '0'..'K-1').
      show: how many samples.
      root: the data root of file names in `csv_path`.

    Returns:
      A matplotlib Figure (display it, or `figure.savefig(...)`).
    """
    if (issues is None) == (csv_path is None):
        raise ValueError("give either issues= (a find_label_issues result) or csv_path= "
                         "(an audit.csv)")
    if issues is not None:
        if labels is None:
            raise ValueError("give the given labels with issues=")
        rows = rows_of(issues, labels, class_names=class_names)
    else:
        rows = read_rows(csv_path)
    rows = rows[:show]
    if images is None:
        if root is None:
            raise ValueError("give images, or root= for an audit.csv of image files")
        shown = _read_files([os.path.join(root, str(r["sample"])) for r in rows])
    else:
        images = np.asarray(images)
        positions = [int(r["sample"]) for r in rows]
        shown = images[positions]
    if shown.ndim == 2:
        return table_sheet(rows)
    if shown.ndim == 3:
        shown = shown[..., None]
    return contact_sheet(shown, rows, title=f"the {len(rows)} most suspicious labels")


def _read_files(paths: Sequence[str]) -> np.ndarray:
    """uint8 [n, H, W, C] of image files (grey stays one channel, anything else RGB);
    ValueError when they differ in size (give the images as an array then)."""
    images = []
    for path in paths:
        with Image.open(path) as image:
            grey = image.mode in ("1", "L", "I", "I;16")
            images.append(np.asarray(image.convert("L" if grey else "RGB")))
    sizes = {image.shape for image in images}
    if len(sizes) > 1:
        raise ValueError(f"the image files have different sizes {sorted(sizes)[:2]}: pass "
                         "them as one array, resized as the model saw them, in images=")
    return np.stack(images)

