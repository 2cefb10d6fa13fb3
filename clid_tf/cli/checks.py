"""Every refusal of a flag combination and every default that depends on other flags.

`resolved()` gives the parsed flags as a trainer reads them (`TrainerFlags`): a flag not
given takes the trainer's default (`clid_tf.trainers.Trainer.defaults`), and one left
unset (None) one of `DEFAULTS` below. `check(flags)` raises RunError with the first
refusal that applies: a flag the trainer does not read, then the combinations no trainer
can run (`REFUSALS`), then the trainer's own (`Trainer.refusals`). They run right after
parsing, before any data is read, so a mistake is one line within seconds. A check of one
flag's value (a range, a known name) sits beside its definition in `clid_tf.cli.flags`;
checks that need the data (images for an image backbone) are the trainers'
`prepare_setup`'s.
"""

from __future__ import annotations

from typing import Any

from clid_tf import names
from clid_tf import trainers
from clid_tf.cli.flags import FLAGS, readers, reads, training_flag_names
from clid_tf.data import sources
from clid_tf.errors import RunError
from clid_tf.trainers import Refusal

BLOCK_BACKBONES = tuple(b for b in names.BACKBONES if b not in names.WITHOUT_BLOCKS)
# Defaults that follow another flag, for every trainer.
DEFAULTS = {
    "meta_augment": lambda f: f.augment,  # meta images augmented as training images
}


class TrainerFlags:
    """The parsed flags with the trainer's defaults filled in: `flags.meta_net` is
    --meta_net as given, else the trainer's default for it, else the flag's own. Read-only;
    the values stay in absl's FLAGS (nothing is copied)."""

    def __init__(self, values, trainer: trainers.Trainer):
        self._values = values
        self.trainer_spec = trainer  # (`trainer` is the flag: the trainer's name)

    def __getattr__(self, name: str) -> Any:
        if name in self.trainer_spec.defaults and not self._values[name].present:
            default = self.trainer_spec.defaults[name]
        else:
            value = getattr(self._values, name)
            if value is not None:
                return value
            default = DEFAULTS.get(name)
        return default(self) if callable(default) else default

    def given(self, name: str) -> bool:
        """Whether the flag was given (on the command line or in a flagfile)."""
        return self._values[name].present

    def at_flag_default(self, name: str) -> bool:
        """Whether the flag's value is the flag's own default (given or not)."""
        return self._values[name].value == self._values[name].default

    def read(self) -> dict[str, Any]:
        """Every flag the trainer reads -> its value as the trainer reads it."""
        return {name: getattr(self, name) for name in reads(self.trainer_spec)}

    def hparams(self) -> dict:
        """The values the trainer reads (TensorBoard's HParams), but the run's place and
        verbosity."""
        return {name: value for name, value in sorted(self.read().items())
                if name not in ("workdir", "resume", "verbose")}


def resolved(values=FLAGS) -> TrainerFlags:
    """The flags as the trainer of --trainer reads them."""
    return TrainerFlags(values, trainers.get(values.trainer))


def _human_noise_fits_dataset(f) -> str | None:
    """CIFAR-N trains on one of its human label sets, and only CIFAR-N has them."""
    sets = sources.human_label_sets().get(f.dataset)
    if sets and f.noise not in sets:
        what = "needs" if f.noise is None else f"has no human label set {f.noise!r}; it needs"
        return (f"--dataset={f.dataset} {what} --noise={'|'.join(sets)} (the human label "
                "set to train on)")
    if not sets and sources.is_human_label(f.noise):
        owner = next(name for name, sets in sources.human_label_sets().items()
                     if f.noise in sets)
        return (f"--noise={f.noise} is a human label set of {owner} (use --dataset={owner});"
                f" for synthetic noise on {f.dataset} use e.g. --noise=sym")
    return None


def _audit_refused(flags: TrainerFlags) -> str | None:
    """--audit needs a trainer with that audit."""
    return audit_refusal(flags.trainer_spec, flags.audit_folds) if flags.audit else None


def audit_refusal(spec: trainers.Trainer, folds: int) -> str | None:
    """Why `spec` cannot audit its labels out of sample (folds = K) or in sample (0), or
    None (the training's --audit and `python -m clid_tf.audit` ask the same)."""
    mode = "out_of_sample" if folds else "in_sample"
    if mode in spec.audits:
        return None
    if spec.audits:
        return (f"--trainer={spec.name} audits its labels in sample only: add --audit_folds=0"
                if "in_sample" in spec.audits else f"--trainer={spec.name} audits its labels "
                "out of sample only: use --audit_folds=K (2 or more)")
    auditing = ", ".join(t.name for t in trainers.registered() if t.audits)
    return (f"--audit: --trainer={spec.name} offers no label audit (the trainers with one: "
            f"{auditing})")


def _pretrained_fits_backbone(f) -> str | None:
    """--pretrained only for the backbones with pretrained weights, which bring their own
    input convention (so no --standardize beside them)."""
    if f.pretrained in ("none", ""):
        return None
    if f.backbone != "resnet50":
        return (f"--pretrained={f.pretrained}: pretrained weights exist for "
                f"--backbone=resnet50 only, not {f.backbone} (use --pretrained=none)")
    if f.standardize is not None:
        return (f"--standardize={f.standardize} with --pretrained: the weights fix the "
                "input standardisation (keras.applications' caffe convention); drop "
                "--standardize")
    return None


def _found(check):
    """A Refusal from a check that returns its message or None."""
    return Refusal(lambda f: check(f) is not None, check)


# Combinations that no trainer can run.
REFUSALS = (
    _found(_audit_refused),
    _found(_human_noise_fits_dataset),
    _found(_pretrained_fits_backbone),
    Refusal(lambda f: f.lr_schedule == "multistep" and not f.lr_milestones,
            "--lr_schedule=multistep needs --lr_milestones (epochs, e.g. 80,120)"),
    Refusal(lambda f: f.strategy != "default" and f.meta_grad == "jvp",
            "--meta_grad=jvp runs on one replica only (TensorFlow's forward mode does not "
            "pass through the cross-replica BatchNorm); use --meta_grad=recompute"),
    Refusal(lambda f: f.strategy != "default" and f.jit_compile,
            "--jit_compile of the whole step fails under tf.distribute strategies (XLA "
            "cannot reach variables mirrored on other devices); the CLID kernel is "
            "XLA-compiled anyway"),
    Refusal(lambda f: f.resize_shorter is not None and (
        f.image_size is None or f.resize_shorter < f.image_size),
        "--resize_shorter=R needs --image_size=S with S <= R (the centre crop it resizes "
        "for)"),
    Refusal(lambda f: f.resample_subset_each_epoch and not f.train_subset,
            "--resample_subset_each_epoch needs --train_subset=N (the subset to draw)"),
    # The authors' Clothing1M script re-creates its Adam every epoch and so loses its decay:
    # ruofanhu/CLID-MU@5cd0608, sota/Train_clothing1M_vri.py:370 and 410-413.
    Refusal(lambda f: f.reset_optimizer_each_epoch and f.lr_schedule != "constant",
            "--reset_optimizer_each_epoch restarts the optimizer's iteration counter, and "
            "with it any lr schedule, every epoch (the reference loses its decay the same "
            "way): use --lr_schedule=constant"),
    Refusal(lambda f: f.meta_scope.startswith("top:")
            and f.backbone in names.WITHOUT_BLOCKS,
            lambda f: f"--meta_scope={f.meta_scope} needs a backbone with blocks "
                      f"({', '.join(BLOCK_BACKBONES)}); --backbone={f.backbone} has none"),
    Refusal(lambda f: f.meta_scope == "last_layer" and f.backbone == "vgg19_bn",
            "--meta_scope=last_layer steps a Dense head on the features; vgg19_bn's "
            "features feed an MLP (its CLID feature is the pooled conv feature): use "
            "--meta_scope=full"),
)


def unread(flags: TrainerFlags) -> list[str]:
    """One message per flag given that the trainer does not read: it would be ignored. A
    flag given at its default value changes nothing and passes (a flags.cfg of an older
    clid-tf, reused with --flagfile, names every flag)."""
    found = []
    by_flag = readers()
    name = flags.trainer_spec.name
    for flag in training_flag_names():
        if (flag in by_flag and name not in by_flag[flag] and flags.given(flag)
                and not flags.at_flag_default(flag)):
            others = by_flag[flag]
            found.append(f"--{flag} is read by --trainer={'|'.join(others)} only; "
                         f"--trainer={name} would ignore it: drop it"
                         + (" (or choose that trainer)" if len(others) == 1 else ""))
    return found


def refusals(flags: TrainerFlags) -> list[str]:
    """The messages of every refusal that applies: flags the trainer does not read, then
    the global refusals, then the trainer's own."""
    return (unread(flags) + [r.text(flags) for r in REFUSALS if r.applies(flags)]
            + flags.trainer_spec.refused(flags))


def check(flags: TrainerFlags) -> None:
    """RunError with the first refusal that applies to `flags`, if any."""
    found = refusals(flags)
    if found:
        raise RunError(found[0])
