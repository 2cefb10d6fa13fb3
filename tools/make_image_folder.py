"""Writes a class-folder tree of small learnable images (for file-streaming benchmarks).

Each image is one of scikit-learn's 8x8 digits of its class, scaled up to --image_size,
shifted by up to 1/8 of the size, drawn in a random foreground colour on a random
background with pixel noise (the same files for the same flags), so a model can learn
the classes while no two files are equal. Classes are balanced (image i has digit
i % num_classes) and named by their digit word (zero, one, ...), so the sorted class
order differs from the digit order. Layout:

  OUT/CLASS/0000123.png                           (--val_images=0 --test_images=0)
  OUT/train/CLASS/..., OUT/val/..., OUT/test/...  (otherwise; empty splits are left out)

  python tools/make_image_folder.py --output_dir=/tmp/folder100k --num_images=100000
"""

from __future__ import annotations

import multiprocessing
import os
import time

import numpy as np
from absl import app, flags

import toolbox
from PIL import Image

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The tool's flags (defined only when run, so tests can import the module)."""
    flags.DEFINE_string("output_dir", None, "Folder to create (must not exist or be empty).")
    flags.DEFINE_integer("num_images", 10_000, "Training images.")
    flags.DEFINE_integer("val_images", 0, "Validation images (written to OUT/val).")
    flags.DEFINE_integer("test_images", 0, "Test images (written to OUT/test).")
    flags.DEFINE_integer("num_classes", 10, "Classes, 2..10 (digits 0 .. num_classes - 1).")
    flags.DEFINE_integer("image_size", 32, "Height and width of every image.")
    flags.DEFINE_enum("channels", "3", ["1", "3"], "1 for grey images, 3 for colour.")
    flags.DEFINE_enum("format", "png", ["png", "jpeg"], "File format (.png or .jpg files).")
    flags.DEFINE_integer("seed", 0, "Seed of the image content.")
    flags.DEFINE_integer("workers", 0, "Writer processes; 0: one per CPU core.")


CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_SPLIT_SEED = {"train": 0, "val": 1, "test": 2}
_CHUNK = 500  # images per worker task

_glyphs = None  # per worker: (float32 [1797, size, size] digits in 0..1, labels [1797])


def _load_digits(size: int) -> None:
    """Scales scikit-learn's digits up to size x size once per worker process."""
    global _glyphs
    from sklearn import datasets  # pylint: disable=import-outside-toplevel
    digits = datasets.load_digits()
    glyphs = [np.asarray(Image.fromarray(np.uint8(np.rint(d * 255 / 16))).resize(
        (size, size), Image.BILINEAR), np.float32) / 255.0 for d in digits.images]
    _glyphs = (np.stack(glyphs), digits.target)


def render(start: int, stop: int, *, num_classes: int, channels: int, seed: int) -> np.ndarray:
    """uint8 [stop - start, size, size, channels]: images start .. stop - 1 of a split
    (image i shows digit i % num_classes), drawn from the seed (seed, start) only."""
    glyphs, labels = _glyphs
    rng = np.random.default_rng([seed, start])
    size = glyphs.shape[1]
    shift = max(1, size // 8)
    images = []
    for i in range(start, stop):
        pool = np.flatnonzero(labels == i % num_classes)
        glyph = np.roll(glyphs[rng.choice(pool)], tuple(rng.integers(-shift, shift + 1, 2)),
                        axis=(0, 1))
        foreground, background = rng.uniform(0, 255, (2, channels))
        while np.abs(foreground - background).max() < 96:  # keep the digit visible
            foreground, background = rng.uniform(0, 255, (2, channels))
        images.append(background + glyph[..., None] * (foreground - background))
    pixels = np.stack(images) + rng.normal(0, 12, (stop - start, size, size, channels))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _write_chunk(task: tuple[str, int, int, int, int, str, int]) -> int:
    folder, start, stop, num_classes, channels, fmt, seed = task
    images = render(start, stop, num_classes=num_classes, channels=channels, seed=seed)
    suffix, options = ('jpg', {'quality': 95}) if fmt == 'jpeg' else ('png', {'compress_level': 1})
    for i, pixels in zip(range(start, stop), images):
        path = os.path.join(folder, CLASS_NAMES[i % num_classes], f"{i:07d}.{suffix}")
        Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(
            path, format=fmt.upper(), **options)
    return stop - start


def write_tree(out: str, counts: dict[str, int], *, num_classes: int, size: int, channels: int,
               fmt: str, seed: int, workers: int) -> None:
    """Writes counts[split] images per split (flat when only 'train' is non-empty)."""
    flat = all(n == 0 for split, n in counts.items() if split != "train")
    tasks = []
    for split, n in counts.items():
        if n == 0:
            continue
        folder = out if flat else os.path.join(out, split)
        for name in CLASS_NAMES[:num_classes]:
            os.makedirs(os.path.join(folder, name), exist_ok=True)
        split_seed = seed * 3 + _SPLIT_SEED[split]
        tasks += [(folder, a, min(a + _CHUNK, n), num_classes, channels, fmt, split_seed)
                  for a in range(0, n, _CHUNK)]
    with multiprocessing.get_context("fork").Pool(workers, initializer=_load_digits,
                                                  initargs=(size,)) as pool:
        for _ in pool.imap_unordered(_write_chunk, tasks):
            pass



def main(argv: list[str]) -> None:
    if len(argv) > 1:
        toolbox.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    out = FLAGS.output_dir
    if not out:
        toolbox.fail("--output_dir is required")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        toolbox.fail(f"--output_dir {out} exists and is not an empty folder; nothing written")
    if not 2 <= FLAGS.num_classes <= len(CLASS_NAMES):
        toolbox.fail(f"--num_classes must be 2..{len(CLASS_NAMES)}, got {FLAGS.num_classes}")
    if FLAGS.num_images < FLAGS.num_classes or min(FLAGS.val_images, FLAGS.test_images) < 0:
        toolbox.fail("--num_images must be at least --num_classes; --val_images, --test_images >= 0")
    if FLAGS.image_size < 8:
        toolbox.fail(f"--image_size must be at least 8, got {FLAGS.image_size}")
    counts = {"train": FLAGS.num_images, "val": FLAGS.val_images, "test": FLAGS.test_images}
    start = time.perf_counter()
    write_tree(out, counts, num_classes=FLAGS.num_classes, size=FLAGS.image_size,
               channels=int(FLAGS.channels), fmt=FLAGS.format, seed=FLAGS.seed,
               workers=FLAGS.workers or os.cpu_count() or 1)
    total = sum(counts.values())
    print(f"wrote {total} images ({', '.join(f'{s} {n}' for s, n in counts.items() if n)}) "
          f"to {out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    define_flags()
    app.run(main)
