"""Where a split's raw inputs live, read by index inside tf.data.

An `Inputs` holds the inputs of one split (train, val or test) and reads any of them by
index, so that every pipeline (training batches, the meta set, label-free selection, the
small-loss reselection, the audit) is a stream of indices mapped to inputs, and nothing
needs the whole split in one array:

  ArrayInputs  inputs already in memory (digits, CIFAR, an npz): a gather per batch.
  FileInputs   image files on disk (a class-folder tree, a "path label" list file): each
               file is read, decoded and resized in parallel tf.data map calls
               (clid_tf.data.image_files).

Labels are not part of the inputs: they are small int arrays kept beside it
(`clid_tf.data.datasets.Split`), so that noise injection and meta-set splits stay numpy.
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterable, Protocol, Sequence

import numpy as np

from clid_tf.data.image_files import MAX_IMAGE_PIXELS, FileList


class Inputs(Protocol):
    """Raw inputs of one split, addressed by index 0 .. len - 1.

    Attributes:
      element_shape: shape of one input, (H, W, C) for images or (D,) for feature vectors.
      dtype: 'uint8' for images (0..255), or 'float32' for feature vectors or for a Python
        user's already-preprocessed float images.
    """

    element_shape: tuple[int, ...]
    dtype: str

    def __len__(self) -> int:
        ...

    def names(self) -> np.ndarray | None:
        """str [N] identifiers of the inputs (file paths), or None for arrays."""

    def fingerprint(self) -> str:
        """A short hex digest that changes when the inputs change (content for arrays;
        names, sizes and modification times for files): a resume compares it."""

    def read(self, indices, *, batch_size: int, drop_remainder: bool = False):
        """Maps a tf.data.Dataset of int64 scalar indices to batches (ids, inputs).

        Args:
          indices: tf.data.Dataset of int64 scalars in [0, len).
          batch_size: inputs per batch.
          drop_remainder: drop a last, smaller batch (static shapes for XLA).

        Returns:
          tf.data.Dataset of (int64 [b] indices, inputs [b, *element_shape] of `dtype`),
          in the order of `indices`.
        """


# Float images: at most this is the [0, 1] scale (round-off above 1 is clipped); at least
# UNIT_SCALE_TOP * 2 the [0, 255] scale; in between the scale cannot be told: refused.
UNIT_SCALE_TOP = 1.01


def float_pixel_scale(low: float, high: float, what: str) -> float:
    """The factor that brings float pixels in [low, high] to 0..255: 255 for the [0, 1]
    scale (high <= UNIT_SCALE_TOP, round-off such as 1.0000001 included), 1 for the
    [0, 255] scale (high >= 2). ValueError (one line) for a maximum in between, where one
    stray value would decide between two readings of every pixel, and for values outside
    both scales."""
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"{what} holds NaN or Inf")
    if high <= UNIT_SCALE_TOP:
        if low < -(UNIT_SCALE_TOP - 1.0):
            raise ValueError(f"{what}: image pixels must lie in [0, 1] or [0, 255], got "
                             f"[{low:g}, {high:g}]")
        return 255.0
    if high < 2 * UNIT_SCALE_TOP:
        raise ValueError(f"{what}: float pixels reach {high:g}, so it is neither clearly the "
                         "[0, 1] scale nor the [0, 255] one; clip them to [0, 1] or scale "
                         "them to [0, 255] before training")
    if low < -0.5 or high > 255.5:
        raise ValueError(f"{what}: image pixels must lie in [0, 1] or [0, 255], got "
                         f"[{low:g}, {high:g}]")
    return 1.0


def input_array(x, what: str = "x") -> np.ndarray:
    """One input array as the pipelines hold it: uint8 kept (pixels), floats and booleans
    as float32, integers kept (token ids, categories: int32 or int64, other integer types
    as int64), text as an object array of str or bytes (tf.string; what Keras' own fit
    takes, where numpy's fixed-width str arrays fail). ValueError (one line) otherwise."""
    array = np.asarray(x)
    if array.dtype == np.uint8 or array.dtype.kind in "iu":
        return array if array.dtype in (np.uint8, np.int32, np.int64) else array.astype(
            np.int64)
    if array.dtype.kind in "fb":
        return array.astype(np.float32, copy=False)
    if array.dtype.kind in "US":
        return array.astype(object)
    if array.dtype == object:
        flat = array.reshape(-1)
        if all(isinstance(v, str) for v in flat) or all(isinstance(v, bytes) for v in flat):
            return array
    raise ValueError(f"{what} must hold numbers or text, got dtype {array.dtype}")


def dtype_name(array: np.ndarray) -> str:
    """The name of an `input_array`'s dtype as TensorFlow calls it ('string' for text)."""
    return "string" if array.dtype.kind in "USO" else array.dtype.name


def to_model(inputs):
    """A batch of inputs (one tensor or a dict/list of them) as a model takes it: pixels
    (uint8) as float32; every other dtype as it is (float32, token ids, text), which a
    Keras functional model casts to its Inputs' dtypes itself."""
    # deferred: keeps TensorFlow out of the command line's checks
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return tf.nest.map_structure(
        lambda t: tf.cast(t, tf.float32) if t.dtype == tf.uint8 else t, inputs)


class ArrayInputs:
    """Inputs held in one numpy array [N, *element_shape]: uint8 images, float32 vectors
    or images, integer token ids, text (`input_array`)."""

    def __init__(self, array: np.ndarray):
        array = input_array(array)
        self.array = array
        self.element_shape = tuple(int(d) for d in array.shape[1:])
        self.dtype = dtype_name(array)
        self._table = None  # tf.constant, made on first read (TensorFlow imported late)

    def __len__(self) -> int:
        return len(self.array)

    def names(self) -> None:
        return None

    def fingerprint(self) -> str:
        return array_fingerprint(self.array)

    def table(self):
        """The inputs as one host tf.constant [N, *element_shape] (made once)."""
        # deferred: keeps TensorFlow out of the command line's checks
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        if self._table is None:
            with tf.device("/CPU:0"):  # tf.data runs on the host
                self._table = tf.constant(self.array)
        return self._table

    def read(self, indices, *, batch_size: int, drop_remainder: bool = False):
        # deferred: keeps TensorFlow out of the command line's checks
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        table = self.table()
        return indices.batch(batch_size, drop_remainder=drop_remainder).map(
            lambda ids: (ids, tf.nest.map_structure(lambda t: tf.gather(t, ids), table)))


class StructInputs(ArrayInputs):
    """The inputs of a model with several inputs: a dict (or list) of arrays, one per
    input, each [N, ...] of its own dtype; reads give the same structure of tensors (a
    list as a tuple: tf.data's structures have no lists, and Keras calls a model of list
    inputs with a tuple alike). `array` is that structure, `element_shape` and `dtype`
    are structures too."""

    def __init__(self, arrays):  # pylint: disable=super-init-not-called
        # deferred: keeps TensorFlow out of the command line's checks
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        arrays = tuple(arrays) if isinstance(arrays, list) else arrays
        arrays = tf.nest.map_structure(input_array, arrays)
        leaves = tf.nest.flatten(arrays)
        if not leaves:
            raise ValueError("x is an empty dict or list: give one array per model input")
        sizes = {len(a) for a in leaves}
        if len(sizes) != 1:
            raise ValueError(f"the inputs of x have different numbers of samples "
                             f"({sorted(sizes)}); give every input one row per sample")
        self.array = arrays
        self.element_shape = each_input(lambda a: tuple(int(d) for d in a.shape[1:]), arrays)
        self.dtype = each_input(dtype_name, arrays)
        self._table = None

    def __len__(self) -> int:
        # deferred: keeps TensorFlow out of the command line's checks
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        return len(tf.nest.flatten(self.array)[0])

    def fingerprint(self) -> str:
        # deferred: keeps TensorFlow out of the command line's checks
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        return hashlib.sha256("".join(array_fingerprint(a) for a in tf.nest.flatten(
            self.array)).encode()).hexdigest()[:16]

    def table(self):
        """The inputs as host tf.constants, in their structure (made once)."""
        # deferred: keeps TensorFlow out of the command line's checks
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        if self._table is None:
            with tf.device("/CPU:0"):
                self._table = tf.nest.map_structure(tf.constant, self.array)
        return self._table


def each_input(fn, *structures):
    """fn applied to each input of one input or of a dict / list / tuple of them (one level:
    a model's inputs), keeping that structure; for shapes, which are tuples themselves."""
    first = structures[0]
    if isinstance(first, dict):
        return {key: fn(*(s[key] for s in structures)) for key in first}
    if isinstance(first, (list, tuple)) and not isinstance(first[0] if first else 0, int):
        return type(first)(fn(*parts) for parts in zip(*structures))
    return fn(*structures)


def as_inputs(x) -> ArrayInputs:
    """A user's inputs as `Inputs`: one array (ArrayInputs) or a dict / list / tuple of
    arrays, one per model input (StructInputs)."""
    if isinstance(x, (dict, list, tuple)):
        return StructInputs(x)
    return ArrayInputs(x)


def take(x, index):
    """x[index] of one array or of every array of a dict / list of them."""
    # deferred: keeps TensorFlow out of the command line's checks
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return tf.nest.map_structure(lambda a: a[index], x)


def num_samples(x) -> int:
    """N of one array [N, ...] or of a dict / list of them."""
    # deferred: keeps TensorFlow out of the command line's checks
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return len(tf.nest.flatten(x)[0])


def read_numpy(source: Inputs, indices: Sequence[int], *, batch_size: int = 500) -> np.ndarray:
    """The inputs at `indices` as one numpy array [len(indices), *element_shape] (a
    structure of them for StructInputs).

    For small subsets only (a TensorBoard sample, a test fixture): it holds them all.
    """
    if isinstance(source, ArrayInputs):
        return take(source.array, np.asarray(indices, np.int64))
    # deferred: keeps TensorFlow out of the command line's checks
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    ids = tf.data.Dataset.from_tensor_slices(np.asarray(indices, np.int64))
    parts = [x for _, x in source.read(ids, batch_size=batch_size).as_numpy_iterator()]
    if not parts:
        return np.zeros((0, *source.element_shape), source.dtype)
    return np.concatenate(parts)


class FileInputs:
    """Image files read, decoded and resized by tf.data, in parallel map calls.

    Each index i becomes tf.io.read_file(paths[i]) -> `decode_image` (tf.io.decode_image
    with C channels, the first frame of a GIF; with image_size a resize to S x S, or with
    resize_shorter too, torchvision's Resize(R) then CenterCrop(S)) -> a shape check
    against element_shape. Nothing but the paths is held in memory.

    Args:
      files: the FileList (clid_tf.data.image_files), usually after check_splits.
      element_shape: (H, W, C) from check_splits: (S, S, C) when image_size is given, else
        the common size of all images.
      image_size: S to resize (or crop) to, or None when every image already has
        element_shape.
      resize_shorter: R >= S: resize each image so that its shorter side is R (aspect ratio
        kept), then crop its centre S x S (the authors' Clothing1M Resize(256) +
        CenterCrop(224): ruofanhu/CLID-MU@5cd0608, sota/dataloader_clothing1M.py:
        clothing_dataloader); None resizes straight to S x S.
    """

    def __init__(self, files: FileList, element_shape: Sequence[int], *,
                 image_size: int | None = None, resize_shorter: int | None = None):
        self.files = files
        self.element_shape = tuple(int(d) for d in element_shape)
        if len(self.element_shape) != 3 or self.element_shape[-1] not in (1, 3):
            raise ValueError(f"images need an (H, W, 1 or 3) shape, got {self.element_shape}")
        if image_size is not None and self.element_shape[:2] != (image_size, image_size):
            raise ValueError(f"element_shape {self.element_shape} does not match "
                             f"image_size {image_size}")
        check_resize(image_size, resize_shorter)
        self.image_size = image_size
        self.resize_shorter = resize_shorter
        self.dtype = "uint8"
        self._paths = None  # tf.constant string [N], made on first read

    def __len__(self) -> int:
        return len(self.files.paths)

    def names(self) -> np.ndarray:
        """str [N] file paths relative to the data root."""
        return self.files.names()

    def fingerprint(self) -> str:
        """Of the file names and how they are read (not their contents: `file_stats`
        tells which files changed, so a corrupt file can be replaced and the run
        resumed)."""
        digest = hashlib.sha256(repr((self.element_shape, self.image_size,
                                      self.resize_shorter)).encode())
        for name in self.names().tolist():
            digest.update(f"{name}\n".encode())
        return digest.hexdigest()[:16]

    def file_stats(self) -> np.ndarray:
        """int64 [N, 2]: each file's size and modification time (ns); -1 when missing."""
        stats = np.full((len(self), 2), -1, np.int64)
        for i, path in enumerate(self.files.paths.tolist()):
            try:
                stat = os.stat(path)
                stats[i] = stat.st_size, stat.st_mtime_ns
            except OSError:
                pass
        return stats

    def decode(self, encoded):
        """One encoded image (string tensor) -> uint8 [*element_shape], as training reads
        it: the serving SavedModel decodes a client's file bytes with this."""
        return decode_image(encoded, element_shape=self.element_shape,
                            image_size=self.image_size, resize_shorter=self.resize_shorter)

    def read(self, indices, *, batch_size: int, drop_remainder: bool = False):
        # deferred: keeps TensorFlow out of the command line's checks
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        if self._paths is None:
            with tf.device("/CPU:0"):
                self._paths = tf.constant(self.files.paths)
        paths, decode = self._paths, self.decode

        def load(i):
            return i, decode(tf.io.read_file(tf.gather(paths, i)))

        return indices.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(
            batch_size, drop_remainder=drop_remainder)


def check_resize(image_size: int | None, resize_shorter: int | None) -> None:
    """ValueError (one line) unless resize_shorter is None, or given with an image_size
    it can be cropped to (R >= S)."""
    if resize_shorter is None:
        return
    if image_size is None:
        raise ValueError(f"resize_shorter={resize_shorter} needs image_size (the side of "
                         "the centre crop)")
    if resize_shorter < image_size:
        raise ValueError(f"resize_shorter={resize_shorter} is smaller than the centre crop "
                         f"image_size={image_size}")


def encoded_size(encoded):
    """int64 [2] (height, width) an encoded PNG, GIF, BMP, JPEG or WebP string tensor
    declares, read from its header without decoding; (0, 0) for another format (which
    tf.io.decode_image does not read either)."""
    # deferred: keeps TensorFlow out of the command line's checks
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    padded = encoded + b"\0" * 32  # short files read as zeros

    def number(offset: int, size: int, big_endian: bool, signed: bool = False):
        raw = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, offset, size), tf.uint8),
                      tf.int64)
        places = range(size - 1, -1, -1) if big_endian else range(size)
        value = tf.add_n([raw[i] * 256 ** p for i, p in enumerate(places)])
        if signed:
            value = tf.where(value >= 2 ** (8 * size - 1), value - 2 ** (8 * size), value)
        return tf.abs(value)

    def webp():  # RIFF....WEBP, then a VP8 (lossy), VP8L (lossless) or VP8X chunk
        chunk = tf.strings.substr(padded, 12, 4)
        lossless = number(21, 4, False)  # 14 bits width - 1, then 14 bits height - 1
        return tf.case([
            (tf.equal(chunk, b"VP8 "), lambda: tf.stack([number(28, 2, False) % 16384,
                                                         number(26, 2, False) % 16384])),
            (tf.equal(chunk, b"VP8L"), lambda: tf.stack([(lossless // 16384) % 16384 + 1,
                                                         lossless % 16384 + 1])),
            (tf.equal(chunk, b"VP8X"), lambda: tf.stack([number(27, 3, False) + 1,
                                                         number(24, 3, False) + 1])),
        ], default=lambda: tf.zeros([2], tf.int64))

    magic = tf.strings.substr(padded, 0, 4)
    return tf.case([
        (tf.logical_and(tf.equal(magic, b"RIFF"),
                        tf.equal(tf.strings.substr(padded, 8, 4), b"WEBP")), webp),
        (tf.equal(magic, b"\x89PNG"), lambda: tf.stack([number(20, 4, True),
                                                        number(16, 4, True)])),
        (tf.equal(magic, b"GIF8"), lambda: tf.stack([number(8, 2, False),
                                                     number(6, 2, False)])),
        (tf.equal(tf.strings.substr(magic, 0, 2), b"BM"),
         lambda: tf.stack([number(22, 4, False, True), number(18, 4, False, True)])),
        (tf.equal(tf.strings.substr(magic, 0, 2), b"\xff\xd8"),
         lambda: tf.cast(tf.image.extract_jpeg_shape(encoded)[:2], tf.int64)),
    ], default=lambda: tf.zeros([2], tf.int64))


def decode_checked(encoded, channels: int):
    """uint8 [h, w, channels] of one encoded image, after checking from its header that it
    decodes to at most MAX_IMAGE_PIXELS pixels (InvalidArgumentError naming its size
    otherwise, before any pixel is decoded)."""
    # deferred: keeps TensorFlow out of the command line's checks
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    size = encoded_size(encoded)
    check = tf.debugging.assert_less_equal(
        size[0] * size[1], tf.constant(MAX_IMAGE_PIXELS, tf.int64),
        message=f"the image declares more than {MAX_IMAGE_PIXELS} pixels (height, width "
                "follow); it is not decoded")
    with tf.control_dependencies([check]):
        return tf.io.decode_image(encoded, channels=channels, dtype=tf.uint8,
                                  expand_animations=False)


def decode_image(encoded, *, element_shape: Sequence[int], image_size: int | None,
                 resize_shorter: int | None = None):
    """uint8 [H, W, C] from an encoded PNG/JPEG/BMP/GIF/WebP string tensor (at most
    MAX_IMAGE_PIXELS pixels, `decode_checked`).

    Shared by FileInputs and the TFDS sources, so both decode and resize alike. With
    `image_size` S alone: a bilinear antialiased tf.image.resize to (S, S) (the aspect
    ratio is not kept, as Keras' image_dataset_from_directory does by default). With
    `resize_shorter` R too: torchvision's Resize(R) + CenterCrop(S), i.e. the shorter side
    resized to R and the longer to floor(R * long / short), then the S x S crop at offsets
    round((h - S) / 2), round((w - S) / 2) (half to even, as Python's round). Resized
    pixels are rounded and clipped to uint8.
    """
    # deferred: keeps TensorFlow out of the command line's checks
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    image = decode_checked(encoded, element_shape[-1])
    if resize_shorter is not None:
        image = _resize_shorter_then_crop(image, resize_shorter, image_size)
    elif image_size is not None:
        image = _to_uint8(tf.image.resize(image, (image_size, image_size), antialias=True))
    return tf.ensure_shape(image, element_shape)


def _resize_shorter_then_crop(image, shorter: int, crop: int):
    """uint8 [H, W, C] -> its shorter side resized to `shorter` -> the centre crop x crop."""
    # deferred: keeps TensorFlow out of the command line's checks
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    hw = tf.shape(image)[:2]
    short, long = tf.reduce_min(hw), tf.reduce_max(hw)
    # torchvision: the short side becomes `shorter`, the long int(shorter * long / short)
    resized_long = (shorter * long) // short
    height = tf.where(hw[0] <= hw[1], shorter, resized_long)
    width = tf.where(hw[0] <= hw[1], resized_long, shorter)
    same = tf.logical_and(tf.equal(height, hw[0]), tf.equal(width, hw[1]))
    image = tf.cond(same, lambda: image, lambda: _to_uint8(
        tf.image.resize(image, tf.stack([height, width]), antialias=True)))
    top = tf.cast(tf.round(tf.cast(height - crop, tf.float64) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(width - crop, tf.float64) / 2.0), tf.int32)
    return image[top:top + crop, left:left + crop]


def _to_uint8(resized):
    # deferred: keeps TensorFlow out of the command line's checks
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


# ---------------------------------------------------------------- fingerprints
def array_fingerprint(array: np.ndarray) -> str:
    """sha256 (16 hex digits) of an array's dtype, shape and bytes."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()[:16]


def files_fingerprint(paths: Iterable[str], names: Iterable[str], *, extra=()) -> str:
    """sha256 (16 hex digits) of each file's name, size and modification time (ns), and
    `extra` (how the files are read): a replaced or touched file changes it, without
    reading the contents."""
    digest = hashlib.sha256(repr(tuple(extra)).encode())
    for path, name in zip(paths, names):
        try:
            stat = os.stat(path)
            digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{name}\0missing\n".encode())
    return digest.hexdigest()[:16]
