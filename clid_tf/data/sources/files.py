"""`--dataset=folder:PATH` and `--dataset=list:FILE`: a user's image files, streamed.

folder:PATH   one subfolder per class (its name is the class name), or PATH/train,
              PATH/val, PATH/test each holding such subfolders.
list:FILE     "relative/path label" lines, paths relative to the list's folder or
              `data_root`, with `val_list`, `test_list` and `class_names_file`.

The files are checked by their headers (sizes, formats, truncation) before anything trains
(`image_files`) and read by `FileInputs` batch by batch, never as one array. The labels are
the user's: no noise is injected into them unless asked for.
"""

from __future__ import annotations

import os

from clid_tf.data import datasets
from clid_tf.data import image_files
from clid_tf.data.datasets import Dataset, Split
from clid_tf.data.inputs import FileInputs

LIST_SUFFIXES = (".txt", ".lst", ".list", ".csv")


def load(lists: dict[str, image_files.FileList], *, image_size: int | None = None,
         resize_shorter: int | None = None) -> Dataset:
    """The dataset of checked file lists (split name -> FileList, 'train' required)."""
    checked, shape, warnings = image_files.check_splits(lists, image_size=image_size)
    for warning in warnings:
        print(f"warning: {warning}")
    class_names = tuple(checked["train"].class_names)

    def split(name):
        if name not in checked:
            return None
        return Split(FileInputs(checked[name], shape, image_size=image_size,
                                resize_shorter=resize_shorter), checked[name].labels)

    return datasets.of_user_splits(split("train"), split("val"), split("test"), class_names)


class FolderSource:
    """The `Source` of 'folder:PATH'."""

    name = "folder"
    prefixed = True
    options = frozenset({"image_size", "resize_shorter"})
    human_labels = ()
    example = "folder:/data/pets"
    summary = "class subfolders, inside train/, val/ and test/ where present"

    def load(self, argument: str, *, image_size: int | None = None,
             resize_shorter: int | None = None) -> Dataset:
        return load(image_files.folder_splits(argument), image_size=image_size,
                    resize_shorter=resize_shorter)

    def claims(self, path: str) -> bool:
        return os.path.isdir(os.path.expanduser(path))


class ListSource:
    """The `Source` of 'list:FILE' (with its val and test lists and class names)."""

    name = "list"
    prefixed = True
    options = frozenset({"data_root", "image_size", "resize_shorter", "val_list",
                         "test_list", "class_names_file"})
    human_labels = ()
    example = "list:/data/train.txt"
    summary = "'relative/path label' lines, see --data_root"

    def load(self, argument: str, *, data_root: str | None = None,
             image_size: int | None = None, resize_shorter: int | None = None,
             val_list: str | None = None, test_list: str | None = None,
             class_names_file: str | None = None) -> Dataset:
        root = data_root if data_root is not None else os.path.dirname(
            os.path.abspath(argument))
        names = (None if class_names_file is None
                 else image_files.read_class_names(class_names_file))
        lists = {"train": image_files.read_list(argument, root=root, class_names=names)}
        for split, file in (("val", val_list), ("test", test_list)):
            if file:
                lists[split] = image_files.read_list(
                    file, root=root, class_names=lists["train"].class_names)
        return load(lists, image_size=image_size, resize_shorter=resize_shorter)

    def claims(self, path: str) -> bool:
        """A list file's suffix; a .csv only when its first line is 'path label' (a
        comma-separated table with a header is another source's)."""
        if not path.endswith(LIST_SUFFIXES):
            return False
        if not path.endswith(".csv") or not os.path.isfile(os.path.expanduser(path)):
            return True  # (a FIFO is never opened)
        try:
            with open(os.path.expanduser(path), "rb") as f:
                first = f.readline(4096)
        except OSError:
            return True
        return b"," not in first


SOURCES = (FolderSource(), ListSource())
