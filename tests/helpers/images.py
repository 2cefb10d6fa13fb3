"""Image files written the way users have them (Pillow)."""

import io
import os

import numpy as np
from PIL import Image


def pixels(seed: int, shape=(6, 5, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write_image(path, array: np.ndarray, fmt: str = 'PNG', **options) -> str:
    """Writes uint8 [H, W(, C)] with Pillow; returns the absolute path."""
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array).save(
        path, format=fmt, **options)
    return path


def write_tree(root, classes: dict[str, int], *, shape=(6, 5, 3), seed=0) -> list[str]:
    """root/CLASS/NN.png with the given number of images per class; their paths in order."""
    paths = []
    for k, (name, count) in enumerate(classes.items()):
        for i in range(count):
            paths.append(write_image(os.path.join(root, name, f'{i:02d}.png'),
                                     pixels(seed + 100 * k + i, shape)))
    return paths


def encoded(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()
