"""FixMatch and FlexMatch on a few noisy labels plus unlabeled images, with a loss-net
that weights the supervised term, trained by CLID through a differentiable copy of the
real SGD-Nesterov step. `model.FixMatchModel` is the Keras model (its pure loss parts
included), `streams` the labeled/unlabeled/meta streams, `cli` its adapter."""

from absl import flags

from clid_tf.trainers import META_NET_FLAGS, SEMI_SUPERVISED_FLAGS, Refusal, Trainer

OWN_FLAGS = ("ssl_strong_augment", "uratio", "p_cutoff", "ema_decay", "eval_every")


def define_flags() -> None:
    """The flags only FixMatch and FlexMatch read (--thresh_warmup: FlexMatch only)."""
    # randaugment: ruofanhu/CLID-MU@5cd0608, semi/semilearn/datasets/cv_datasets/cifar.py:
    # get_cifar() and semi/semilearn/datasets/augmentation/randaugment.py (no Cutout).
    flags.DEFINE_enum("ssl_strong_augment", "randaugment", ("randaugment", "strong"),
                      "FixMatch/FlexMatch: the strong view of unlabeled (and meta) images: "
                      "randaugment (USB's RandAugment(3, 5): 3 ops always applied at values "
                      "over their whole ranges, no Cutout; the authors' semi-supervised "
                      "code) or strong (FixMatch's RandAugmentMC(2, 10) + Cutout, as "
                      "--augment=strong).")
    flags.DEFINE_integer("uratio", 7, "FixMatch/FlexMatch: unlabeled batch = uratio x "
                         "--batch_size images (each seen weak and strong).", lower_bound=1)
    flags.DEFINE_float("p_cutoff", 0.95, "FixMatch/FlexMatch: confidence threshold of the "
                       "pseudo-labels (FlexMatch: of its best-learnt class).",
                       lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_bool("thresh_warmup", True, "FlexMatch: the class-wise normaliser counts "
                      "the unlabeled samples not yet confidently predicted too (warm-up of "
                      "the thresholds).")
    flags.DEFINE_float("ema_decay", 0.999, "FixMatch/FlexMatch: decay of the exponential "
                       "moving average of the parameters; the EMA network is what is "
                       "evaluated, selected and exported.", lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_integer("eval_every", 512, "FixMatch/FlexMatch: training iterations per "
                         "evaluation (one epoch: EMA test accuracy, meta-set CLID, "
                         "checkpoint); --epochs counts evaluations.", lower_bound=1)


def _semi_supervised(name: str) -> Trainer:
    return Trainer(
        name=name,
        summary=("few noisy labels plus unlabeled data, a loss-net trained by CLID"
                 + (" (FlexMatch's class-wise thresholds)" if name == "flexmatch" else "")),
        adapter="clid_tf.trainers.fixmatch.cli",
        reads=(*META_NET_FLAGS, *SEMI_SUPERVISED_FLAGS, "optimizer", "lambda_u", *OWN_FLAGS,
               *(("thresh_warmup",) if name == "flexmatch" else ())),
        define_flags=define_flags,
        defaults={"meta_net": "wnet", "virtual_step": "optimizer", "lambda_u": 1.0,
                  "select_augment": "weak"},
        refusals=(
            Refusal(lambda f: not f.num_labels,
                    f"--trainer={name} needs --num_labels (the number of labeled samples, "
                    "a multiple of the number of classes)"),
            Refusal(lambda f: f.method not in ("clid", "ce"),
                    lambda f: f"--trainer={name} trains its loss-net with --method=clid, or "
                              f"is plain {name} with --method=ce; --method={f.method} is "
                              "not available"),
            Refusal(lambda f: f.augment != "none",
                    f"--augment does not apply to --trainer={name}: labeled and meta images "
                    "take the weak view, unlabeled images the weak and the strong one"),
            Refusal(lambda f: bool(f.steps_per_epoch),
                    f"--steps_per_epoch does not apply to --trainer={name}; an epoch is "
                    "--eval_every iterations"),
            Refusal(lambda f: f.mixed_precision == "mixed_float16",
                    f"--mixed_precision=mixed_float16 is not available with --trainer={name} "
                    "(no loss scaling in its step); use mixed_bfloat16 or none"),
            Refusal(lambda f: f.imbalance_gamma != 1.0,
                    f"--imbalance_gamma is not available with --trainer={name} (its labeled "
                    "part is class-balanced)"),
        ),
        trains_on_unlabeled=True,
        length=lambda f: f"{f.epochs} evaluations every {f.eval_every} iterations")


TRAINERS = (_semi_supervised("fixmatch"), _semi_supervised("flexmatch"))
