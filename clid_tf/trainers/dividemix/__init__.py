"""DivideMix: two networks, each network's GMM divides the training data into a labeled
and an unlabeled part for the other, MixMatch with co-guessing and co-refinement;
optionally each network's VRI rectifier trained by CLID through a differentiable copy of
its real optimizer step. `mixmatch` holds the pure math, `streams` the per-epoch input
streams, `model.DivideMixModel` the Keras model, `cli` its adapter."""

from absl import flags

from clid_tf.trainers import META_NET_FLAGS, Refusal, Trainer

METHODS = ("ce", "clid", "entropy")
OWN_FLAGS = ("p_threshold", "mixup_alpha", "sharpen_temperature", "rampup_epochs", "clip_norm",
             "guess_bn_mode")


def define_flags() -> None:
    """The flags only DivideMix reads."""
    flags.DEFINE_float("p_threshold", 0.5, "DivideMix: a sample is labeled for one network "
                       "when the other network's GMM clean probability exceeds this.",
                       lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_float("mixup_alpha", 4.0, "DivideMix: MixMatch's Beta(alpha, alpha) "
                       "mixing weight (l = max(l, 1 - l)).", lower_bound=1e-6)
    flags.DEFINE_float("sharpen_temperature", 0.5, "DivideMix: temperature T of the "
                       "sharpened co-guessed and co-refined targets.", lower_bound=1e-6)
    flags.DEFINE_integer("rampup_epochs", 16, "DivideMix: lambda_u ramps up linearly over "
                         "this many epochs after the warm-up (0: at once).", lower_bound=0)
    flags.DEFINE_float("clip_norm", 0.8, "DivideMix: global-norm clip of the actual step's "
                       "gradient (the virtual step is never clipped); 0 = no clipping.",
                       lower_bound=0.0)
    flags.DEFINE_enum("guess_bn_mode", "train", ("train", "inference"), "DivideMix: the "
                      "trained network's co-guessing forwards in train mode (batch "
                      "statistics, BN statistics updated, as DivideMix) or inference mode.")
    # FixMatch / FlexMatch

def _weak_when_training_augments(f) -> str:
    """weak if --augment is not none, else none"""
    return "none" if f.augment == "none" else "weak"


DIVIDEMIX = Trainer(
    name="dividemix",
    summary="two networks, GMM co-divide, MixMatch, optionally the VRI rectifier trained "
            "by CLID",
    adapter="clid_tf.trainers.dividemix.cli",
    # Not --vri_kl: VRI's KL is logged but trains nothing (it is inert in
    # ruofanhu/CLID-MU@5cd0608, sota/Train_cifar_vri.py: meta_step()); not --meta_every: a
    # meta step on every step.
    reads=(*META_NET_FLAGS, "train_subset", "resample_subset_each_epoch", "lambda_u",
           *OWN_FLAGS),
    define_flags=define_flags,
    # Selection scores the meta sets as the meta batches see them: weak crop + flip
    # whenever training augments (the authors' meta loader: ruofanhu/CLID-MU@5cd0608,
    # sota/Train_cifar_vri.py:371-392), as they are otherwise.
    defaults={"meta_net": "vri", "virtual_step": "optimizer", "lambda_u": 150.0,
              "select_augment": _weak_when_training_augments},
    refusals=(
        Refusal(lambda f: f.method not in METHODS,
                lambda f: f"--method={f.method}: --trainer=dividemix trains with ce (plain "
                          "DivideMix), clid or entropy (a label-free meta objective of the "
                          "VRI rectifier)"),
        Refusal(lambda f: f.mixed_precision == "mixed_float16",
                "--mixed_precision=mixed_float16: --trainer=dividemix has no loss scaling; "
                "use mixed_bfloat16 or none"),
        Refusal(lambda f: f.jit_compile,
                "--jit_compile: --trainer=dividemix draws its mixup weight from a Beta "
                "distribution, whose sampler (StatelessRandomGamma) XLA cannot compile"),
        Refusal(lambda f: f.epochs <= f.warmup_epochs,
                lambda f: f"--epochs={f.epochs} ends within DivideMix's warm-up "
                          f"(--warmup_epochs={f.warmup_epochs}): its label-free selection "
                          "ranks the epochs after the warm-up, so train for more"),
    ),
    audits=("in_sample",))

TRAINERS = (DIVIDEMIX,)
