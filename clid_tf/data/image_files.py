"""A user's image files: class-folder trees and "path label" lists, checked up front.

Three steps, all numpy + Pillow + os (no TensorFlow, so bad input is reported before
TensorFlow starts):

  folder_splits(PATH)        class subfolders, as keras.utils.image_dataset_from_directory
                             reads them; PATH/train, PATH/val, PATH/test where present.
  read_list(FILE, root=DIR)  "relative/path label" lines (Clothing1M, WebVision, ...).
  check_splits / check_images  a header-only scan of every file in a thread pool: format,
                             size and colour mode; truncated files caught by their end
                             marker. Gives the element shape (H, W, C) of the decoded images.

Each returns a `FileList` (paths, int64 labels, class names); decoding, resizing and
batching happen later, in tf.data (`clid_tf.data.inputs.FileInputs`). Every problem the user can
fix is a `DataError` with a one-line message.
"""

from __future__ import annotations

import concurrent.futures
import os
import warnings
from typing import Iterable, NamedTuple, Sequence

import numpy as np
from PIL import Image

from clid_tf import atomic_io
from clid_tf.errors import DataError

# The most pixels an image file may decode to (5000 x 5000): a small PNG can declare
# 20000 x 20000 pixels (a decompression bomb, over a GiB decoded). The header scan skips
# larger files (`read_header`) and every decode checks it first (`inputs.decode_checked`).
MAX_IMAGE_PIXELS = 25_000_000

# keras.utils.image_dataset_from_directory's extensions (matched case-insensitively).
IMAGE_EXTENSIONS = ('.bmp', '.gif', '.jpeg', '.jpg', '.png')
SPLIT_FOLDERS = ('train', 'val', 'test')

# Bad (unreadable or corrupt) files are skipped with a warning when there are at most this
# many AND at most this fraction of all files; more is an error.
MAX_BAD_FILES = 100
MAX_BAD_FRACTION = 0.01

# Pillow formats that tf.io.decode_image reads (MPO: a camera JPEG with extra frames).
# Folders only hold Keras' extensions; a list file may name WebP files too.
_FORMATS = {'PNG': 'PNG', 'JPEG': 'JPEG', 'MPO': 'JPEG', 'BMP': 'BMP', 'GIF': 'GIF',
            'WEBP': 'WEBP'}
# Pillow modes without colour. tf.io.decode_image gives 1 channel for them only from PNG
# and JPEG (BMP, GIF and WebP decode to 3 channels only).
_GREY_MODES = frozenset({'1', 'L', 'LA', 'La', 'I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F'})
_GREY_FORMATS = ('PNG', 'JPEG')
_TAIL_BYTES = 4096  # how far from the end an end-of-image marker is looked for
_CHUNK = 256  # files per thread-pool task
_THREADS = 32  # threads hide file-system latency (Pillow's parsing itself holds the GIL)
_EXAMPLES = 3  # example files named in a message


class FileList(NamedTuple):
    """Image files of one split and their labels.

    Attributes:
      paths: str [N] absolute, normalised file paths.
      labels: int64 [N] class indices in [0, len(class_names)).
      class_names: the K class names; index = label.
      root: absolute data root; `names()` are the paths relative to it.
    """
    paths: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    root: str

    def names(self) -> np.ndarray:
        """str [N] paths relative to `root` (as a results CSV names the samples)."""
        prefix = self.root.rstrip(os.sep) + os.sep
        return np.array([p[len(prefix):] if p.startswith(prefix) else os.path.relpath(p, self.root)
                         for p in self.paths.tolist()], dtype=str)

    def outside_root(self) -> np.ndarray:
        """bool [N]: the files that do not lie under `root` (a list file may name them:
        absolute paths, '..'); they are read as listed."""
        prefix = self.root.rstrip(os.sep) + os.sep
        return np.array([not p.startswith(prefix) for p in self.paths.tolist()], bool)

    def select(self, keep: np.ndarray) -> FileList:
        """The files where the bool [N] mask `keep` is True."""
        return self._replace(paths=self.paths[keep], labels=self.labels[keep])


# --------------------------------------------------------------------------- class folders

def folder_splits(path: str | os.PathLike) -> dict[str, FileList]:
    """The splits of a class-folder tree.

    If PATH has a `train/` subfolder, PATH/train, PATH/val and PATH/test (the latter two
    optional) are the splits, and PATH may hold no other folders. Otherwise PATH itself is
    the train split. In each split, every non-hidden subfolder is a class (sorted names, as
    keras.utils.image_dataset_from_directory orders them) holding image files with a Keras
    extension (.bmp .gif .jpeg .jpg .png, any case), found recursively, sorted by folder
    then name (Keras' order with shuffle=False). Symbolic links are not followed: a linked
    class folder is refused, a linked subfolder is not entered, a linked image file is
    skipped as unusable (`read_header`). The classes are those of train; a val/test class
    folder must be one of them.

    Returns:
      {'train': FileList, and 'val' / 'test' where present}; every FileList has the train
      class names and root PATH (so names() are e.g. 'train/cat/1.png').

    Raises:
      DataError: PATH missing; no class folders; a split without images; fewer than two
        train classes with images; a val/test class unknown to train; unexpected folders.
    """
    root = os.path.abspath(os.fspath(path))
    if not os.path.isdir(root):
        raise _folder_error(root, 'no such folder' if not os.path.exists(root) else 'not a folder')
    subdirs = _class_folders(root)
    if 'train' not in subdirs:
        train = _class_tree(root, root, None)
        _check_train_classes(root, train)
        return {'train': train}
    unexpected = [d for d in subdirs if d not in SPLIT_FOLDERS]
    if unexpected:
        raise _folder_error(root, f"has train/, so its folders are the splits train, val, test, "
                                  f"but it also holds {_listing(unexpected)}")
    train = _class_tree(os.path.join(root, 'train'), root, None)
    _check_train_classes(os.path.join(root, 'train'), train)
    splits = {'train': train}
    for split in SPLIT_FOLDERS[1:]:
        if split in subdirs:
            splits[split] = _class_tree(os.path.join(root, split), root, train.class_names)
    return splits


def _folder_error(folder: str, problem: str) -> DataError:
    return DataError(_one_line(f'image folder {folder}: {problem}'))


def _class_folders(folder: str) -> list[str]:
    """Sorted non-hidden subfolder names (keras' class folders); a symbolic link to a
    folder is refused (links are not followed: its images would silently be missing)."""
    try:
        entries = sorted(os.listdir(folder))
    except OSError as err:
        raise _folder_error(folder, f'cannot list it ({err.strerror or err})') from err
    entries = [e for e in entries if not e.startswith('.')]
    linked = [e for e in entries if os.path.islink(os.path.join(folder, e))
              and os.path.isdir(os.path.join(folder, e))]
    if linked:
        raise _folder_error(folder, f'{_listing(linked)} is a symbolic link to a folder; links '
                                    'are not followed: put the images (or a copy) in a real '
                                    'folder there')
    return [e for e in entries if os.path.isdir(os.path.join(folder, e))]


def _class_tree(folder: str, root: str, known: tuple[str, ...] | None) -> FileList:
    """The images under folder/CLASS/...; classes mapped onto `known` when given."""
    classes = _class_folders(folder)
    if not classes:
        raise _folder_error(folder, 'has no class subfolders (expected CLASS/IMAGE files, '
                                    'or train/CLASS/IMAGE with optional val/ and test/)')
    if known is None:
        class_names = tuple(classes)
    else:
        unknown = [c for c in classes if c not in known]
        if unknown:
            raise _folder_error(folder, f'has class folders that train/ lacks: '
                                        f'{_listing(unknown)} (train classes: {_listing(known)})')
        class_names = known
    index = {name: i for i, name in enumerate(class_names)}
    paths, labels = [], []
    for name in classes:
        files = _image_files(os.path.join(folder, name))
        paths.extend(files)
        labels.extend([index[name]] * len(files))
    if not paths:
        raise _folder_error(folder, f'no image files ({" ".join(IMAGE_EXTENSIONS)}) in its '
                                    f'{len(classes)} class folders')
    return FileList(paths=np.array(paths, dtype=str), labels=np.array(labels, np.int64),
                    class_names=class_names, root=root)


def _image_files(class_dir: str) -> list[str]:
    """Image files under class_dir, recursively (no folder links), in Keras' order."""
    found = []
    for folder, _, files in sorted(os.walk(class_dir), key=lambda walked: walked[0]):
        found.extend(os.path.join(folder, f) for f in sorted(files)
                     if f.lower().endswith(IMAGE_EXTENSIONS))
    return found


def _check_train_classes(folder: str, train: FileList) -> None:
    present = np.unique(train.labels)
    if len(present) < 2:
        raise _folder_error(folder, f'needs images of at least 2 classes, found only '
                                    f'{train.class_names[present[0]]!r}')


# --------------------------------------------------------------------------- list files

def read_list(file: str | os.PathLike, *, root: str | os.PathLike,
              class_names: Sequence[str] | None = None) -> FileList:
    """A "relative/path label" list file.

    Format: one sample per line, the path, whitespace, then the label, which is the last
    whitespace-separated token (so paths may contain spaces; labels may not). Leading and
    trailing whitespace is ignored; blank lines and lines starting with '#' are skipped.
    Paths are relative to `root`; an absolute path (or one with '..') is used as it is, and
    a note line counts the files that lie outside `root`. A listed symbolic link is not
    followed: the header scan skips it as unusable. Labels are either all
    integers or all class names:
      * integers: class indices; without `class_names` they must be 0..K-1 with K = max + 1
        and the class names are '0' .. 'K-1'; with `class_names` they index it.
      * names: without `class_names` the classes are the sorted unique names; with
        `class_names` every name must be one of them (their order gives the indices).
    Pass the train list's class names when reading a val/test list, or the names from a
    class-names file (`read_class_names`).

    Returns:
      FileList with root `root` (names() are the listed relative paths, normalised).

    Raises:
      DataError naming the file (and line): no such file/root, a line without a label,
        labels mixing integers and names, a label out of range or unknown, fewer than 2
        distinct labels, a file listed with two labels, or listed files that are missing
        (counted, with examples). A file listed twice with one label is a warning line.
    """
    file = os.path.abspath(os.fspath(file))
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise _list_error(file, f"data root {root} is "
                                f"{'not a folder' if os.path.exists(root) else 'missing'}")
    line_numbers, rel_paths, tokens = _parse_list(file)
    labels, names = _list_labels(file, line_numbers, tokens, class_names)
    paths = np.array([os.path.normpath(os.path.join(root, p)) for p in rel_paths], dtype=str)
    _check_repeats(file, line_numbers, paths, labels, names)
    exists = _parallel_map(os.path.isfile, paths.tolist())
    missing = np.flatnonzero(~np.array(exists, bool))
    if missing.size:
        examples = ', '.join(f'line {line_numbers[i]}: {rel_paths[i]}' for i in missing[:_EXAMPLES])
        raise _list_error(file, f'{missing.size} of {len(paths)} listed files are missing '
                                f'under {root}, e.g. {examples}')
    found = FileList(paths=paths, labels=labels, class_names=names, root=root)
    outside = np.flatnonzero(found.outside_root())
    if outside.size:
        examples = ', '.join(f'line {line_numbers[i]}: {rel_paths[i]}'
                             for i in outside[:_EXAMPLES])
        print(f'note: list file {file}: {outside.size} of {len(paths)} listed files lie '
              f'outside the data root {root} (e.g. {examples}); they are read as listed')
    return found


def _check_repeats(file: str, line_numbers: list[int], paths: np.ndarray,
                   labels: np.ndarray, names: Sequence[str]) -> None:
    """DataError for a file listed twice with two labels (which one is meant?); one
    warning line for a file listed twice with one label (it counts twice)."""
    first: dict[str, int] = {}
    repeated = []
    for i, path in enumerate(paths.tolist()):
        j = first.setdefault(path, i)
        if j == i:
            continue
        if labels[i] != labels[j]:
            raise _list_error(file, f'{path} is listed with two labels, {names[labels[j]]!r} '
                                    f'(line {line_numbers[j]}) and {names[labels[i]]!r}; give '
                                    'each file one label', line_numbers[i])
        repeated.append(f'line {line_numbers[i]} repeats line {line_numbers[j]}')
    if repeated:
        print(f'warning: list file {file}: {len(repeated)} line(s) repeat a file with the '
              f'same label, which then counts twice ({_listing(repeated, 3)})')


def read_class_names(file: str | os.PathLike) -> tuple[str, ...]:
    """Class names, one a line (index = line order; blank and '#' lines skipped)."""
    file = os.path.abspath(os.fspath(file))
    names = [line.strip() for _, line in _text_lines(file)]
    names = [n for n in names if n and not n.startswith('#')]
    if len(names) < 2:
        raise _list_error(file, f'a class-names file needs at least 2 names, found {len(names)}')
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise _list_error(file, f'class names appear more than once: {_listing(duplicated)}')
    return tuple(names)


def _list_error(file: str, problem: str, line: int | None = None) -> DataError:
    where = f'list file {file}' + (f' line {line}' if line is not None else '')
    return DataError(_one_line(f'{where}: {problem}'))


def _text_lines(file: str) -> Iterable[tuple[int, str]]:
    """(line number, line) pairs of a UTF-8 text file."""
    if not os.path.isfile(file):
        raise _list_error(file, 'no such file' if not os.path.exists(file) else 'not a file')
    try:
        with atomic_io.open_regular(file, 'rb') as f:
            lines = f.read().decode('utf-8').splitlines()
    except UnicodeDecodeError as err:
        raise _list_error(file, f'not UTF-8 text ({err.reason} at byte {err.start})') from err
    except OSError as err:
        raise _list_error(file, f'cannot read it ({err.strerror or err})') from err
    return enumerate(lines, start=1)


def _parse_list(file: str) -> tuple[list[int], list[str], list[str]]:
    """(line numbers, relative paths, label tokens) of the sample lines."""
    line_numbers, paths, tokens = [], [], []
    for number, line in _text_lines(file):
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise _list_error(file, f"expected 'relative/path label', got {line[:80]!r}", number)
        line_numbers.append(number)
        paths.append(parts[0])
        tokens.append(parts[1])
    if not paths:
        raise _list_error(file, "has no 'relative/path label' lines")
    return line_numbers, paths, tokens


def _list_labels(file: str, line_numbers: list[int], tokens: list[str],
                 class_names: Sequence[str] | None) -> tuple[np.ndarray, tuple[str, ...]]:
    """int64 labels and the class names from the label tokens (see read_list)."""
    is_int = np.array([_is_integer(t) for t in tokens], bool)
    if is_int.any() and not is_int.all():
        first_int, first_name = np.argmax(is_int), np.argmax(~is_int)
        raise _list_error(file, f'labels mix integers (line {line_numbers[first_int]}: '
                                f'{tokens[first_int]!r}) and names (line '
                                f'{line_numbers[first_name]}: {tokens[first_name]!r}); '
                                'use one kind')
    if is_int.all():
        values = [int(t) for t in tokens]  # Python ints: no int64 overflow
        if class_names is None:
            big = next((i for i, v in enumerate(values) if v >= len(values)), None)
            if big is not None:  # K = max + 1 classes would outnumber the files
                raise _list_error(file, f'label {values[big]} would make {values[big] + 1} '
                                        f'classes of {len(values)} files: labels are class ids '
                                        '0..K-1 and every class needs a file', line_numbers[big])
        num_classes = len(class_names) if class_names is not None else max(values) + 1
        bad = [i for i, v in enumerate(values) if not 0 <= v < num_classes]
        if bad:
            i = bad[0]
            limit = f' ({num_classes} class names)' if class_names is not None else ''
            raise _list_error(file, f'label {values[i]} is out of range 0..{num_classes - 1}'
                                    f'{limit}; {len(bad)} of {len(values)} labels are',
                              line_numbers[i])
        labels = np.array(values, np.int64)
        names = (tuple(class_names) if class_names is not None
                 else tuple(str(k) for k in range(num_classes)))
    else:
        names = tuple(class_names) if class_names is not None else tuple(sorted(set(tokens)))
        index = {name: k for k, name in enumerate(names)}
        unknown = [i for i, t in enumerate(tokens) if t not in index]
        if unknown:
            i = unknown[0]
            raise _list_error(file, f'unknown class {tokens[i]!r} (classes: {_listing(names)}); '
                                    f'{len(unknown)} of {len(tokens)} labels are unknown',
                              line_numbers[i])
        labels = np.array([index[t] for t in tokens], np.int64)
    present = np.unique(labels)
    if len(present) < 2:
        raise _list_error(file, f'all {len(labels)} files have label {tokens[0]!r}; '
                                'needs at least 2 classes')
    return labels, names


def _is_integer(token: str) -> bool:
    digits = token[1:] if token[:1] in '+-' else token
    return digits.isascii() and digits.isdigit()


# --------------------------------------------------------------------------- image checks

def check_images(file_list: FileList, *, image_size: int | None = None,
                 max_bad_files: int = MAX_BAD_FILES, max_bad_fraction: float = MAX_BAD_FRACTION,
                 ) -> tuple[FileList, tuple[int, int, int], list[str]]:
    """Header-only check of every file of one (training) list; see `check_splits`."""
    kept, shape, notes = check_splits({'train': file_list}, image_size=image_size,
                                      max_bad_files=max_bad_files,
                                      max_bad_fraction=max_bad_fraction)
    return kept['train'], shape, notes


def check_splits(splits: dict[str, FileList], *, image_size: int | None = None,
                 max_bad_files: int = MAX_BAD_FILES, max_bad_fraction: float = MAX_BAD_FRACTION,
                 ) -> tuple[dict[str, FileList], tuple[int, int, int], list[str]]:
    """Checks every image file of all splits with a header-only read; one element shape.

    Each file is opened with Pillow in a thread pool and only its header is parsed (format,
    size, colour mode; no pixel decode), plus a look at its last bytes for the end of the
    image (PNG IEND, JPEG EOI, GIF trailer; BMP: all pixel rows; WebP: Pillow's reader
    checks it), which is how a truncated download shows. Usable files are PNG, JPEG, BMP,
    GIF and WebP (what tf.io.decode_image reads) other than 1-bit BMP; data corrupted inside
    a file (not at its end) is not detected here and fails later, when tf.data decodes it.

    Unusable files are skipped with one counted warning when there are at most
    `max_bad_files` of them and at most `max_bad_fraction` of all files (both conditions);
    more is an error.

    Element shape: C = 1 when no image has colour and all are PNG/JPEG (BMP, GIF and WebP
    decode to 3 channels only), else 3 (grey images are then repeated to RGB by the decoder).
    Without image_size every image must have the same height and width; with it, images
    are resized to (image_size, image_size) when decoded.

    Args:
      splits: {'train': FileList, optional 'val', 'test'}.
      image_size: S to resize every image to S x S, or None.
      max_bad_files, max_bad_fraction: the skipping threshold above.

    Returns:
      (splits without the skipped files, (H, W, C), warnings: one-line strings to log).

    Raises:
      DataError: too many unusable files, a split left without usable files, mixed sizes
        without image_size, or a train split left with fewer than 2 classes.
    """
    if image_size is not None and image_size < 1:
        raise DataError(f'image_size must be a positive number of pixels, got {image_size}')
    names = list(splits)
    paths = np.concatenate([splits[s].paths for s in names])
    scan = scan_headers(paths.tolist())
    bad = scan.problems != None  # noqa: E711  (elementwise on an object array)
    notes = [_bad_files(paths, scan.problems, bad, max_bad_files, max_bad_fraction)] \
        if bad.any() else []
    kept, start = {}, 0
    for split in names:
        n = len(splits[split].paths)
        kept[split] = splits[split].select(~bad[start:start + n])
        start += n
        if not len(kept[split].paths):
            raise DataError(f'the {split} split has no usable image files (all {n} skipped)')
    good = np.flatnonzero(~bad)
    channels = 1 if scan.grey[good].all() else 3
    if image_size is None:
        heights, widths = scan.height[good], scan.width[good]
        other = np.flatnonzero((heights != heights[0]) | (widths != widths[0]))
        if other.size:
            a, b = good[0], good[other[0]]
            raise DataError(_one_line(
                    f'images have different sizes (height x width), e.g. {paths[a]} is '
                    f'{scan.height[a]}x{scan.width[a]} and {paths[b]} is '
                    f'{scan.height[b]}x{scan.width[b]}; pass --image_size=S to resize every '
                    'image to S x S'))
        shape = (int(heights[0]), int(widths[0]), channels)
    else:
        shape = (int(image_size), int(image_size), channels)
    notes.extend(_class_notes(kept['train'], splits['train'].root))
    return kept, shape, notes


class HeaderScan(NamedTuple):
    """Header facts of N files; `problems[i]` is None for a usable file, else the reason."""
    height: np.ndarray  # int64 [N]
    width: np.ndarray  # int64 [N]
    grey: np.ndarray  # bool [N]: decodes to 1 channel (no colour, and PNG or JPEG)
    problems: np.ndarray  # object [N]: None or str


def scan_headers(paths: Sequence[str]) -> HeaderScan:
    """`read_header` of every path in a thread pool (the order of `paths`)."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # Pillow's DecompressionBombWarning, EXIF warnings
        headers = _parallel_map(read_header, list(paths))
    problems = np.empty(len(headers), object)
    problems[:] = [h[3] for h in headers]
    return HeaderScan(height=np.array([h[0] for h in headers], np.int64).reshape(-1),
                      width=np.array([h[1] for h in headers], np.int64).reshape(-1),
                      grey=np.array([h[2] for h in headers], bool).reshape(-1),
                      problems=problems)


def read_header(path: str) -> tuple[int, int, bool, str | None]:
    """(height, width, grey, problem) of one image file, from its header and last bytes;
    problem is None for a usable file, else the reason. Only regular files are read: a
    symbolic link is not followed and a FIFO or device is never opened for reading (so
    the scan cannot block); an image declaring more than MAX_IMAGE_PIXELS is unusable."""
    try:
        with atomic_io.open_regular(path, 'rb') as f, Image.open(f) as image:
            fmt = _FORMATS.get(image.format)
            if fmt is None:
                return _problem(f'{image.format} format, not PNG, JPEG, BMP, GIF or WebP')
            if fmt == 'BMP' and image.mode == '1':
                return _problem('1-bit BMP, which tf.io.decode_image cannot read')
            width, height = image.size
            if width < 1 or height < 1:
                return _problem(f'empty image ({width}x{height})')
            if width * height > MAX_IMAGE_PIXELS:
                return _problem(f'{width}x{height} pixels, more than the {MAX_IMAGE_PIXELS} '
                                'an image may decode to')
            if not _complete(fmt, f, image.tile[0] if image.tile else None):
                return _problem('truncated (the end of the image is missing)')
            return height, width, image.mode in _GREY_MODES and fmt in _GREY_FORMATS, None
    except atomic_io.NotRegularFileError as err:
        return _problem(f'{err.strerror} (only regular files are read; links are not followed)')
    except Image.UnidentifiedImageError:
        return _problem('unreadable (not an image file Pillow knows)')
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
        # Pillow reports broken headers as OSError, SyntaxError or ValueError
        return _problem(f'unreadable ({" ".join(str(err).split()) or type(err).__name__})')


def _problem(text: str) -> tuple[int, int, bool, str]:
    return 0, 0, False, text


def _complete(fmt: str, f, tile) -> bool:
    """Whether the open file ends the way a complete image of its format does."""
    if fmt == 'WEBP':
        return True  # Pillow's WebP reader already failed to open a truncated file
    size = f.seek(0, os.SEEK_END)
    if tile is None:
        return False
    if fmt == 'BMP':  # raw rows: offset + stride * height bytes (RLE BMPs are not checked)
        if tile.codec_name != 'raw':
            return True
        height = tile.extents[3] - tile.extents[1]
        return size >= tile.offset + tile.args[1] * height
    f.seek(max(tile.offset, size - _TAIL_BYTES))
    tail = f.read()
    if fmt == 'PNG':
        return b'IEND' in tail
    if fmt == 'JPEG':
        return b'\xff\xd9' in tail
    return tail.rstrip(b'\0').endswith(b';')  # GIF trailer


def _bad_files(paths: np.ndarray, problems: np.ndarray, bad: np.ndarray,
               max_bad_files: int, max_bad_fraction: float) -> str:
    """The counted warning for skipped files, or a DataError when there are too many."""
    count, total = int(bad.sum()), len(paths)
    examples = '; '.join(f'{paths[i]}: {problems[i]}' for i in np.flatnonzero(bad)[:_EXAMPLES])
    if count > max_bad_files or count > max_bad_fraction * total:
        raise DataError(_one_line(
                f'{count} of {total} image files are unreadable or corrupt, more than can be '
                f'skipped (at most {max_bad_files} files and {max_bad_fraction:.0%} of them), '
                f'e.g. {examples}'))
    return _one_line(f'skipped {count} of {total} image files that are unreadable or corrupt, '
                     f'e.g. {examples}')


def _class_notes(train: FileList, root: str) -> list[str]:
    """Errors about train classes after skipping: fewer than 2 classes, or a class left
    without images."""
    counts = np.bincount(train.labels, minlength=len(train.class_names))
    if (counts > 0).sum() < 2:
        raise DataError(_one_line(f'training images under {root}: usable images of at least '
                                  f'2 classes are needed, found {(counts > 0).sum()}'))
    empty = [train.class_names[k] for k in np.flatnonzero(counts == 0)]
    if empty:  # a class never seen in training cannot be learnt: refuse, do not guess
        raise DataError(_one_line(
            f'training images under {root}: {len(empty)} of {len(counts)} classes have no '
            f'usable training images ({_listing(empty)}); remove those class folders (or '
            'list lines) or add images'))
    return []


# --------------------------------------------------------------------------- helpers

def read_pixels(paths: Sequence[str], element_shape: Sequence[int]) -> np.ndarray:
    """Decoded images uint8 [n, H, W, C] with Pillow (no TensorFlow), each converted to
    C channels (L or RGB) and, if its size differs, resized bilinearly to H x W.

    For statistics (mean/std of a sample) before TensorFlow starts; the training pipeline
    decodes with TensorFlow (`sources.FileInputs`), whose resize differs by rounding. A
    file that fails to decode (corrupted inside, which the header check cannot see) is left
    out of the sample.
    """
    height, width, channels = (int(d) for d in element_shape)

    def read(path):
        try:
            with Image.open(path) as image:
                image = image.convert("L" if channels == 1 else "RGB")
                if image.size != (width, height):
                    image = image.resize((width, height), Image.BILINEAR)
                return np.asarray(image, np.uint8).reshape(height, width, channels)
        except (OSError, SyntaxError, ValueError):  # corrupt inside: left to training
            return None

    images = [x for x in _parallel_map(read, list(paths)) if x is not None]
    return np.stack(images) if images else np.zeros((0, height, width, channels), np.uint8)


def _parallel_map(fn, items: list) -> list:
    """[fn(x) for x in items] in a thread pool (file-system work), in order."""
    chunks = [items[i:i + _CHUNK] for i in range(0, len(items), _CHUNK)]
    if len(chunks) <= 1:
        return [fn(x) for x in items]
    with concurrent.futures.ThreadPoolExecutor(_THREADS) as pool:
        done = pool.map(lambda chunk: [fn(x) for x in chunk], chunks)
        return [y for part in done for y in part]


def _listing(names: Sequence[str], limit: int = 10) -> str:
    """'a, b, c' with at most `limit` names, then '... (N in all)'."""
    names = list(names)
    shown = ', '.join(names[:limit])
    return shown if len(names) <= limit else f'{shown}, ... ({len(names)} in all)'


def _one_line(text: str) -> str:
    return ' '.join(text.split())


def first_undecodable(paths: Sequence[str]) -> tuple[int, str] | None:
    """(position, reason) of the first file of `paths` that Pillow cannot fully decode, or
    None: what training hit when tf.data's decode failed (its message names no file)."""
    def problem(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                with Image.open(path) as image:
                    image.load()
            return None
        except Exception as error:  # pylint: disable=broad-except  # any decode failure
            return _one_line(f'{type(error).__name__}: {error}')[:160]

    paths = list(paths)
    for start in range(0, len(paths), 8 * _CHUNK):  # stops at the first bad chunk
        for i, reason in enumerate(_parallel_map(problem, paths[start:start + 8 * _CHUNK])):
            if reason is not None:
                return start + i, reason
    return None
