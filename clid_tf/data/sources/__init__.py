"""Dataset sources: what a `--dataset` value names, found in one registry.

A source turns the value into a `datasets.Dataset`: per split its `Inputs` (read by index
inside tf.data) with int64 labels beside them, the class names and the input statistics.
The built-in sources:

  digits        scikit-learn's 8x8 digits, embedded: the offline default       digits.py
  cifar10, cifar100, cifar10_n, cifar100_n
                TFDS CIFAR and CIFAR-N (human noisy labels), in memory        cifar.py
  npz:PATH      a user's arrays                                               npz.py
  folder:PATH   a user's class-folder tree of image files, streamed           files.py
  list:FILE     a user's "relative/path label" list files, streamed           files.py
  tfds:NAME     any prepared TFDS image classification dataset                tfds.py

A new source is one module that defines an object with the attributes of `Source` and one
`register(...)` call; `--dataset`, its help and its checks find it here. Nothing here imports
TensorFlow, so the command line checks its input before TensorFlow starts. Every failure the
user can fix is a `DataError`, one line.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from clid_tf.data import inputs
from clid_tf.data.datasets import Dataset
from clid_tf.data.sources import cifar, digits, files, npz, tfds
from clid_tf.errors import DataError

# Loader options a source may take (the command line's flags of the same names).
OPTIONS = ("human_label", "data_dir", "data_root", "image_size", "val_list", "test_list",
           "class_names_file", "resize_shorter")


class Source(Protocol):
    """One kind of dataset the command line can name.

    Attributes:
      name: the --dataset value ('digits'), or for a prefixed source its prefix without
        the colon ('npz' for 'npz:PATH').
      prefixed: whether the source is named 'NAME:ARGUMENT' (a path, a TFDS name).
      options: the names in `OPTIONS` its `load` takes; any other option given is refused
        with one line.
      human_labels: label sets of human annotators that --noise may choose (CIFAR-N's
        'worst', 'aggre', ...); empty for every other source.
      example: an example of the --dataset value, for messages ('npz:/data/mine.npz').
      summary: a few words for --help ('arrays'); optional.
    """

    name: str
    prefixed: bool
    options: frozenset[str]
    human_labels: tuple[str, ...]
    example: str

    def load(self, argument: str, **options) -> Dataset:
        """The dataset; `argument` is what follows 'NAME:' ('' for an unprefixed source).
        Raises DataError (one line) for anything the user can fix."""

    def claims(self, path: str) -> bool:
        """Whether a bare path given as --dataset looks like this source's data (a folder,
        an .npz, a list file): the command line then suggests 'NAME:path'."""


_REGISTRY: dict[str, Source] = {}


def register(source: Source) -> Source:
    """Adds `source` under its name (replacing a source of the same name); returns it."""
    if not source.name or ":" in source.name:
        raise ValueError(f"a source's name is a word without ':', got {source.name!r}")
    unknown = set(source.options) - set(OPTIONS)
    if unknown:
        raise ValueError(f"source {source.name!r} declares unknown options {sorted(unknown)}; "
                         f"the options are {', '.join(OPTIONS)}")
    _REGISTRY[source.name] = source
    return source


def unregister(name: str) -> None:
    """Removes a registered source (a test's toy source, say)."""
    _REGISTRY.pop(name, None)


def registered() -> list[Source]:
    """Every registered source, in registration order."""
    return list(_REGISTRY.values())


def described() -> str:
    """The registered sources for --help: "'digits' (offline ...), 'npz:/data/mine.npz'
    (arrays), ...": a name, or a prefixed source's example, and its summary."""
    return ", ".join(f"'{s.example if s.prefixed else s.name}'"
                     + (f" ({s.summary})" if getattr(s, "summary", "") else "")
                     for s in _REGISTRY.values())


def names() -> list[str]:
    """The --dataset forms: 'digits', 'cifar10', ..., 'npz:...', 'folder:...'."""
    return [s.name + (":..." if s.prefixed else "") for s in _REGISTRY.values()]


def find(value: str) -> tuple[Source, str]:
    """(the source a --dataset value names, the argument after its prefix).

    Raises:
      DataError: an unknown name (listing the known ones), or a prefix without argument.
    """
    kind, colon, argument = value.partition(":")
    source = _REGISTRY.get(kind)
    if source is None or bool(colon) != source.prefixed:
        raise DataError(f"unknown dataset {value!r}; valid: {', '.join(names())}")
    if source.prefixed and not argument:
        raise DataError(f"'{kind}:' needs an argument, e.g. {source.example}")
    return source, argument


def load(value: str, **options) -> Dataset:
    """Loads the dataset a --dataset value names.

    Args:
      value: 'digits', 'cifar10', or a prefixed 'npz:PATH', 'folder:PATH', 'list:FILE',
        'tfds:NAME' (or a registered source's).
      **options: any of `OPTIONS`; None means not given. An option the source does not
        take is refused, naming the sources that do.

    Raises:
      DataError: one line: an unknown name, an option that does not apply, or any
        problem the source finds in the data.
    """
    source, argument = find(value)
    given = {k: v for k, v in options.items() if v is not None}
    for option in given:
        if option not in OPTIONS:
            raise TypeError(f"unknown loader option {option!r}; options: {', '.join(OPTIONS)}")
        if option not in source.options:
            raise DataError(_not_applicable(option, given[option], value))
    try:
        inputs.check_resize(given.get("image_size"), given.get("resize_shorter"))
    except ValueError as error:
        raise DataError(str(error)) from error
    return source.load(argument, **given)


def _not_applicable(option: str, value, dataset: str) -> str:
    """The one line for an option `dataset`'s source does not take."""
    takers = [s for s in _REGISTRY.values() if option in s.options]
    if option == "human_label":
        return (f"dataset {dataset!r} has no human noisy labels; drop human_label={value!r} "
                f"(only {', '.join(s.name for s in takers)})")
    kinds = [s.name + (":" if s.prefixed else "") for s in takers]
    return f"--{option} applies to {_listed(kinds)} data, not {dataset}"


def _listed(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def human_label_sets() -> dict[str, tuple[str, ...]]:
    """Source name -> the human label sets --noise may choose on it (CIFAR-N's)."""
    return {s.name: tuple(s.human_labels) for s in _REGISTRY.values() if s.human_labels}


def human_labels() -> tuple[str, ...]:
    """Every --noise value that names a source's human label set (CIFAR-N's)."""
    return tuple(n for s in _REGISTRY.values() for n in s.human_labels)


def is_human_label(noise: str | None) -> bool:
    """Whether a --noise value names a human label set of some source (CIFAR-N's)."""
    return any(noise in s.human_labels for s in _REGISTRY.values())


def claiming(path: str) -> list[Source]:
    """The prefixed sources whose data a bare path looks like (a folder, an .npz, ...)."""
    return [s for s in _REGISTRY.values() if s.prefixed and s.claims(path)]


def _register_builtins() -> None:
    for module in (digits, cifar, npz, files, tfds):
        for source in module.SOURCES:
            register(source)


_register_builtins()
