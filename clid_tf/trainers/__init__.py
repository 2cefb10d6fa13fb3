"""Trainers: the training schemes `--trainer` names, what each must provide, one registry.

A trainer is a package: its Keras model (a `train_step` that reads like its algorithm),
its pure math, its input streams, and `cli.py`, the adapter that builds those parts from
the parsed flags into a `runner.Plan`, which the runner runs with the services every
trainer shares (checkpoints, selection, TensorBoard, export, results). The package's
`__init__.py` declares its `Trainer` (no TensorFlow there): its names, the defaults of the
flags it resolves its own way, the flag combinations it refuses, and where its adapter is.
The built-in trainers:

  meta         one network, a meta-net (WNet or VRI) trained through a virtual step
  vri_single   one network with the VRI rectifier and the real optimizer's virtual step
               (the authors' Clothing1M and Animal-10N scheme: ruofanhu/CLID-MU@5cd0608,
               sota/Train_clothing1M_vri.py and sota/Train_animal_vri.py)
  dividemix    two networks, GMM co-divide, MixMatch, optionally VRI + CLID
  fixmatch, flexmatch
               a few noisy labels plus unlabeled images, a loss-net trained by CLID

The command line, the audit and the run folder use a trainer only through `Trainer` and
its `Adapter`: a new trainer is one package and one `register(...)` call. A trainer reads
the flags every trainer reads (`clid_tf.cli.flags.HELP_GROUPS`) and the ones it names in
`reads`: those several trainers share (`META_NET_FLAGS`, ...) and its own, which its
`define_flags` defines beside its declaration. A flag the chosen trainer does not read is
refused, so nothing given is silently ignored.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable, Mapping, Protocol, Sequence


@dataclasses.dataclass(frozen=True)
class Refusal:
    """A flag combination a trainer cannot run.

    Attributes:
      applies: flags -> whether the combination is present (the flags as the trainer sees
        them: its defaults filled in, `clid_tf.cli.checks.TrainerFlags`).
      message: the one line that says why and what to give instead (or flags -> it).
    """
    applies: Callable[[Any], bool]
    message: str | Callable[[Any], str]

    def text(self, flags) -> str:
        return self.message(flags) if callable(self.message) else self.message


# Flags several trainers read (defined in `clid_tf.cli.flags`); a trainer lists the groups
# that apply in its `reads`.
# (The meta set's size, batch and CLID temperature are every trainer's: the runner's
# label-free selection scores that set.)
META_NET_FLAGS = ("method", "meta_net", "warmup_epochs", "meta_optimizer", "meta_lr",
                  "meta_weight_decay", "meta_grad", "meta_scope", "virtual_step")
# --num_labels: a few labels plus unlabeled data.
SEMI_SUPERVISED_FLAGS = ("num_labels", "include_lb_to_ulb", "ssl_meta_source")


@dataclasses.dataclass(frozen=True)
class Trainer:
    """A training scheme as the command line knows it.

    Attributes:
      name: the --trainer value.
      summary: one line for --help.
      adapter: the module with the `Adapter` functions, imported when a run starts.
      reads: the flags it reads beyond every trainer's (shared groups such as
        META_NET_FLAGS, and its own); any other flag given with it is refused.
      define_flags: defines its own flags (absl DEFINE_* calls, next to the declaration),
        called once when the command line defines its flags; None for none.
      defaults: flag name -> the value (or flags -> value) used when the flag is not
        given; any flag it reads may have one, and --help shows it.
      refusals: the flag combinations this trainer refuses, checked right after parsing.
      audits: the label audits it offers: 'in_sample' (its own checkpoints) and/or
        'out_of_sample' (K models trained by cross-fitting); empty for none.
      trains_on_unlabeled: whether the unlabeled part of --num_labels is trained on.
      length: flags -> how long the run trains, for the plan line (default "N epochs").
    """
    name: str
    summary: str
    adapter: str
    reads: tuple[str, ...] = ()
    define_flags: Callable[[], None] | None = None
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    refusals: Sequence[Refusal] = ()
    audits: tuple[str, ...] = ()
    trains_on_unlabeled: bool = False
    length: Callable[[Any], str] | None = None

    def module(self) -> "Adapter":
        """The adapter module (imports the trainer's TensorFlow parts)."""
        return importlib.import_module(self.adapter)

    def describe_length(self, flags) -> str:
        """'30 epochs' (or the trainer's own `length`)."""
        if self.length is not None:
            return self.length(flags)
        return f"{flags.epochs} epoch{'s' if flags.epochs != 1 else ''}"

    def refused(self, flags) -> list[str]:
        """The messages of the refusals that apply to `flags`."""
        return [r.text(flags) for r in self.refusals if r.applies(flags)]


class Adapter(Protocol):
    """What a trainer's `cli.py` provides. `flags` are the parsed flags with the trainer's
    defaults filled in; `setup` is the trainer's own data object (numpy only). Only
    `build` is required: `clid_tf.trainers.runner` has the defaults of the others and runs
    the plan (checkpoints and resume, selection, TensorBoard, export, results.json)."""

    def prepare_setup(self, flags) -> Any:
        """The run's data: loaded, noise injected, split; bad input raises RunError or
        DataError (one line) before TensorFlow starts. Default: `parts.noisy_setup`."""

    def split_arrays(self, flags, setup) -> dict:
        """What RUN/split.npz holds: labels and indices, checked again on resume. Default:
        the setup's noisy labels and its training, meta and held-out indices."""

    def build(self, flags, setup) -> Any:
        """The `runner.Plan`: the compiled model, its stream, its own callbacks and what it
        predicts with."""

    def in_sample_scores(self, flags, folder, setup) -> Any:
        """`evaluation.label_issues.Scores` of the training samples under the run's last
        checkpoints (only if 'in_sample' in the trainer's audits). Default: the plan's
        networks (and a one-network model's meta-net) under each, averaged."""

    def out_of_sample_scores(self, flags, setup, *, folds: int) -> Any:
        """The same, out of sample by K-fold cross-fitting (only if 'out_of_sample').
        Default: each fold's plan fitted on the setup that `fold_of(flags, setup,
        train_indices)` returns (default: the setup with those training indices)."""


_REGISTRY: dict[str, Trainer] = {}
_LOADED = []  # whether the built-in trainers are registered


def register(trainer: Trainer) -> Trainer:
    """Makes `--trainer=trainer.name` run `trainer` (replacing one of the same name)."""
    _REGISTRY[trainer.name] = trainer
    return trainer


def unregister(name: str) -> None:
    """Removes a registered trainer (a test's toy one, say)."""
    _REGISTRY.pop(name, None)


def _builtins() -> None:
    if not _LOADED:
        _LOADED.append(True)
        # every package here declares TRAINERS in its TensorFlow-free __init__
        for package in sorted(pkgutil.iter_modules(__path__), key=_builtin_order):
            if package.ispkg:
                module = importlib.import_module(f"{__name__}.{package.name}")
                for trainer in module.TRAINERS:
                    _REGISTRY.setdefault(trainer.name, trainer)


def _builtin_order(package) -> tuple:
    """The one-network trainer first (the default), then by name."""
    return (package.name != "meta", package.name)


def registered() -> tuple[Trainer, ...]:
    """Every registered trainer, built-in first."""
    _builtins()
    return tuple(_REGISTRY.values())


def names() -> tuple[str, ...]:
    """The --trainer values, built-in first."""
    _builtins()
    return tuple(_REGISTRY)


def get(name: str) -> Trainer:
    """The trainer named `name`; ValueError (listing the names) for an unknown one."""
    _builtins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown trainer {name!r}; choose from {', '.join(_REGISTRY)}")
    return _REGISTRY[name]
