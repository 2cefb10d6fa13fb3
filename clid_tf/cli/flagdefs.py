"""Every absl flag of the project, in one place, and the parser that reports bad ones.

`define_flags()` is called by the entry points (`python -m clid_tf.train`,
`python -m clid_tf.audit`) and by tools and tests that need the flags, never at import time.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import shutil
import sys
import textwrap
from typing import NamedTuple

from absl import flags

from clid_tf.data import datasets

FLAGS = flags.FLAGS

TRAINERS = ("meta", "vri_single", "dividemix", "fixmatch", "flexmatch")
METHODS = ("ce", "clid", "entropy", "ce_clean", "ce_noisy", "mae", "ce_sloss", "mae_sloss")
# Names of clid_tf.models.backbones.BACKBONES, listed here so flags parse without TensorFlow.
BACKBONES = ("small_cnn", "mlp", "resnet32", "preact_resnet18", "resnet34", "wrn28_10",
             "wrn28_2", "wrn28_2_fork", "vgg19_bn", "resnet50")
AUGMENTS = ("none", "flip", "weak", "strong")
HUMAN_NOISE = tuple(datasets.HUMAN_LABELS)  # CIFAR-N label sets by their CLI names
# The human label sets of each CIFAR-N dataset (tfds_cifar's specs; cli_test checks they agree).
HUMAN_NOISE_OF = {"cifar10_n": ("aggre", "worst", "rand1", "rand2", "rand3"),
                  "cifar100_n": ("noisy100",)}
EXPORTS = ("selected", "ensemble", "last", "none")
# The benchmark sets whose paper settings live in flags/ (printed when run without one).
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAPER_SETTINGS = {"cifar10": "flags/cifar10_*.cfg", "cifar100": "flags/cifar100_*.cfg",
                  "cifar10_n": "flags/cifar10_n_*.cfg"}


def define_flags() -> None:
    """Defines every flag of a training run (idempotent)."""
    if "method" in FLAGS:
        return
    from clid_tf.core import meta_scope  # pylint: disable=import-outside-toplevel
    from clid_tf.data import noise
    # ---- run and output
    flags.DEFINE_string("workdir", None, "Output folder for TensorBoard events, checkpoints, "
                        "the SavedModel and results.json; new or empty (unless --resume). "
                        "Default: runs/<dataset>-<method>-<YYYYmmdd-HHMMSS> under the "
                        "current folder, with ':' and '/' of --dataset as '_' (e.g. "
                        "runs/digits-clid-20250101-093000).")
    flags.DEFINE_integer("seed", 0, "Seed for noise, meta set, shuffling and initialisation.")
    flags.DEFINE_integer("verbose", 1, "Keras progress output: 0 silent, 1 bars, 2 one line "
                         "per epoch.", lower_bound=0, upper_bound=2)
    flags.DEFINE_enum("export", "selected", EXPORTS, "SavedModel for serving at the end: "
                      "selected (the lowest meta-set-CLID epoch, chosen without labels), "
                      "ensemble (the --select_keep lowest-CLID epochs, logits averaged), "
                      "last (the final weights) or none.")
    flags.DEFINE_bool("resume", False, "Continue the run in --workdir from its last "
                      "checkpoint (start it if the folder is new or empty). Rerun the same "
                      "command after a crash or kill.")
    flags.DEFINE_bool("audit", False, "After training, rank the training labels by "
                      "suspicion (clid_tf.audit): audit.csv, results.json['audit'] and "
                      "tensorboard/audit.")
    flags.DEFINE_integer("audit_folds", 5, "Label audit: K-fold cross-fitting, each fold "
                         "trained with this run's settings and scored out of sample; 0 "
                         "scores in sample with the run's own last checkpoints.",
                         lower_bound=0)
    flags.register_validator("audit_folds", lambda k: k != 1, message="--audit_folds=1 "
                             "cannot cross-fit (each fold is scored by a model trained on the "
                             "others): use 0 (in sample) or 2 or more")
    flags.DEFINE_bool("deterministic", False, "TensorFlow op determinism: the same command "
                      "gives identical weights and results (slower on GPU).")
    # ---- data and noise
    flags.DEFINE_string("dataset", "digits", "Dataset: 'digits' (offline scikit-learn 8x8 "
                        "digits), 'cifar10', 'cifar100', 'cifar10_n', 'cifar100_n' (TFDS), "
                        "or your own: 'npz:PATH' (arrays), 'folder:PATH' (class subfolders, "
                        "with PATH/train, PATH/val, PATH/test where present), 'list:FILE' "
                        "('relative/path label' lines, see --data_root), 'tfds:NAME' (any "
                        "TFDS image classification set).")
    flags.register_validator("dataset", _not_a_bare_path)
    flags.DEFINE_string("data_dir", None, "TFDS data directory (default: TFDS_DATA_DIR).")
    flags.DEFINE_string("data_root", None, "Folder the paths of a list: file are relative "
                        "to (default: the list file's folder).")
    flags.DEFINE_string("val_list", None, "list: data: a list file of a validation split "
                        "(same format, same --data_root), e.g. Clothing1M's clean_val.")
    flags.DEFINE_string("test_list", None, "list: data: a list file of a test split, e.g. "
                        "Clothing1M's clean_test.")
    flags.DEFINE_string("class_names_file", None, "list: data: one class name per line "
                        "(line i names label i).")
    flags.DEFINE_integer("image_size", None, "Resize folder:, list: and tfds: images to "
                         "SIZE x SIZE (needed when their sizes differ).", lower_bound=8)
    flags.DEFINE_enum("noise", None, (*noise.KINDS, *HUMAN_NOISE),
                      "Label noise injected into the training labels: none, a synthetic "
                      "model (sym = reference convention, flip rate rate*(K-1)/K) or a "
                      "human label set of CIFAR-N (worst, aggre, rand1..3 for cifar10_n; "
                      "noisy100 for cifar100_n). Default: sym on digits, cifar10 and "
                      "cifar100 (benchmarks with clean labels); none on your own data, "
                      "whose labels are used as given.")
    flags.register_multi_flags_validator(["dataset", "noise"], _human_noise_fits_dataset)
    flags.DEFINE_float("noise_rate", 0.4, "Rate of the synthetic noise model.",
                       lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_float("val_split", 0.0, "Hold out this fraction of the (noisy) training "
                       "data; its accuracy against the noisy labels is reported every "
                       "epoch beside the label-free CLID.", lower_bound=0.0, upper_bound=0.9)
    flags.DEFINE_enum("augment", "none", AUGMENTS,
                      "Augmentation of training and meta images: flip (horizontal flips "
                      "only), weak (flip + 4-pixel reflect-padded crop) or strong (weak + "
                      "RandAugment n=2 m=10 + Cutout, the reference pipeline for CIFAR).")
    flags.DEFINE_bool("augment_flip", True, "Random horizontal flips in weak/strong "
                      "augmentation (turn off for digits and text-like images).")
    flags.DEFINE_float("imbalance_gamma", 1.0, "Class imbalance of the training set: class c "
                       "keeps n_max * gamma^(-c/(K-1)) samples (by true label); 1 = off.",
                       lower_bound=1.0)
    # ---- model
    flags.DEFINE_enum("backbone", "small_cnn", BACKBONES,
                      "Classifier network; it returns logits and penultimate features. "
                      "mlp for feature vectors, the others for images.")
    # ---- method and meta-learning
    flags.DEFINE_enum("trainer", "meta", TRAINERS,
                      "Training scheme: meta (one network, a meta-net trained through the "
                      "virtual step, or plain ce), vri_single (one network with the VRI "
                      "rectifier and the real optimizer's virtual step: the Clothing1M and "
                      "Animal-10N scripts), dividemix (two networks, GMM co-divide, MixMatch, "
                      "optionally the VRI rectifier trained by CLID), fixmatch / flexmatch "
                      "(few noisy labels plus unlabeled data, a loss-net trained by CLID).")
    flags.DEFINE_enum("method", "clid", METHODS,
                      "ce: plain cross-entropy, no meta-net. Otherwise the meta objective: "
                      "clid (label-free, meta set = random training samples, labels never "
                      "read), entropy (label-free control), ce_clean (oracle Meta-Weight-Net "
                      "with a clean class-balanced meta set removed from training), ce_noisy "
                      "and mae (same split, noisy labels), ce_sloss / mae_sloss (after the "
                      "warm-up, every epoch the meta set is the meta_size/K lowest-loss "
                      "samples per noisy class by a 2-component GMM; noisy labels).")
    flags.DEFINE_enum("meta_net", None, ("wnet", "vri"), "Meta-net: wnet (Meta-Weight-Net "
                      "1-100-1 on the per-sample loss, weights normalised over the batch) or "
                      "vri (Variational Rectification Inference: per-sample per-class "
                      "weights on the logits from features and the noisy label). Default: "
                      "the trainer's, wnet for meta, fixmatch and flexmatch (their loss-net), vri "
                      "for vri_single and dividemix (which train no other).")
    flags.DEFINE_float("vri_kl", 0.01, "VRI: weight of KL(posterior || prior) in the "
                       "meta-net's objective.", lower_bound=0.0)
    flags.DEFINE_integer("meta_size", 200, "Number of training samples in the meta set "
                         "(--trainer=dividemix: in each network's own meta set).",
                         lower_bound=1)
    flags.DEFINE_integer("meta_batch_size", 100, "Meta batch size (CLID is batch dependent).",
                         lower_bound=2)
    flags.DEFINE_enum("meta_grad", "recompute", ("recompute", "tape", "jvp"),
                      "How the exact hypergradient is computed: recompute (reverse-over-"
                      "reverse in two passes, recomputing the virtual backward after the "
                      "meta backward: 1-3% slower than tape here and about 20% less peak "
                      "memory, see tools/bench_speed.py), tape (reverse-over-reverse through "
                      "the recorded backward pass in one go: the readable reference) or jvp "
                      "(one forward-mode pass over the training batch). All give the same "
                      "gradient.")
    flags.DEFINE_string("meta_scope", "full", "Parameters of the virtual step: full (all, "
                        "exact), last_layer (classifier head only, features reused; cheap) "
                        "or top:N (head and the last N residual blocks, exact for that step; "
                        "residual backbones only).")

    def check_meta_scope(text):
        try:
            return bool(meta_scope.parse(text))
        except ValueError as error:
            raise flags.ValidationError(str(error)) from None

    flags.register_validator("meta_scope", check_meta_scope)
    flags.DEFINE_enum("virtual_step", None, ("sgd", "optimizer"), "The virtual step: sgd "
                      "(theta - lr g at the current lr, the paper's) or optimizer (a "
                      "differentiable copy of the classifier optimizer's own next update "
                      "from its state: momentum, coupled weight decay, nesterov, Adam's "
                      "moments and step). Default: the trainer's, sgd for meta, optimizer "
                      "for the others.")
    flags.DEFINE_integer("meta_every", 1, "Meta update (virtual and meta step) on every k-th "
                         "training step only; the steps between use the meta-net as it is.",
                         lower_bound=1)
    flags.DEFINE_float("tau", 0.5, "CLID temperature on feature similarities.",
                       lower_bound=1e-6)
    flags.DEFINE_integer("warmup_epochs", 5, "Epochs of plain cross-entropy before meta "
                         "updates begin.", lower_bound=0)
    flags.DEFINE_enum("meta_optimizer", "adam", ("adam", "sgd"), "Meta-net optimiser "
                      "(reference: SGD without momentum for WNet, Adam for VRI; for fixmatch "
                      "and flexmatch sgd has Nesterov momentum 0.9, as the SSL reference).")
    flags.DEFINE_float("meta_lr", 1e-3, "Meta-net learning rate.", lower_bound=0.0)
    flags.DEFINE_float("meta_weight_decay", 5e-4, "Meta-net L2 weight decay (PyTorch "
                       "style, added to the gradient).", lower_bound=0.0)
    flags.DEFINE_integer("select_keep", 5, "Label-free checkpoint selection: keep the "
                         "weights (and test logits) of this many lowest meta-set-CLID epochs "
                         "for the selected model and the ensembles.", lower_bound=1)
    flags.DEFINE_enum("select_augment", None, ("none", "weak", "strong"),
                      "Label-free selection: score the meta set as it is (none) or through "
                      "weak or strong augmentation (the reference scores it with its "
                      "training augmentation, strong on CIFAR). Default: none for the meta "
                      "trainer, weak for fixmatch and flexmatch (SOTA_SSL.md B.10).")
    # ---- semi-supervised trainers (dividemix, fixmatch, flexmatch)
    flags.DEFINE_float("lambda_u", None, "Weight of the unlabeled loss term: DivideMix's "
                       "lambda_u (default 150, ramped up linearly over 16 epochs after the "
                       "warm-up) or FixMatch/FlexMatch's (default 1).", lower_bound=0.0)
    # ---- DivideMix (--trainer=dividemix; SOTA_SSL.md A.4-A.5, A.12)
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
    # FixMatch / FlexMatch (SOTA_SSL.md B.2-B.7)
    flags.DEFINE_integer("num_labels", 0, "Semi-supervised split: a class-balanced labeled "
                         "subset of this many training samples (num_labels / K per class, by "
                         "true label where known), --noise injected into it only; the rest "
                         "is unlabeled. Needed by fixmatch and flexmatch; with --trainer=meta "
                         "the meta trainer trains on that labeled part only (the "
                         "supervised-only baseline). 0: no split.", lower_bound=0)
    flags.DEFINE_bool("include_lb_to_ulb", False, "FixMatch/FlexMatch: the unlabeled set "
                      "is the whole training split, labeled samples included (USB's default; "
                      "the reference's is off).")
    flags.DEFINE_enum("ssl_meta_source", "unlabeled", ("unlabeled", "labeled"),
                      "Meta set of CLID with --num_labels: unlabeled (--meta_size random "
                      "unlabeled images, weak and strong views together in each meta batch: "
                      "2 x --meta_batch_size CLID rows; the reported runs) or labeled "
                      "(--meta_size / K labeled images per noisy class, weak view; the "
                      "committed configs).")
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
    # ---- optimisation
    flags.DEFINE_integer("epochs", 30, "Training epochs.", lower_bound=1)
    flags.DEFINE_integer("batch_size", 100, "Training batch size (--trainer=dividemix: the "
                         "rows of each part, labeled and unlabeled, and the warm-up batch).",
                         lower_bound=1)
    flags.DEFINE_integer("steps_per_epoch", 0, "Training steps per epoch; 0 = one pass over "
                         "the training set (floor(N / batch_size)).", lower_bound=0)
    flags.DEFINE_float("lr", 0.05, "Classifier learning rate.", lower_bound=0.0)
    flags.DEFINE_float("momentum", 0.9, "Classifier SGD momentum.", lower_bound=0.0,
                       upper_bound=1.0)
    flags.DEFINE_float("weight_decay", 5e-4, "Classifier L2 weight decay (PyTorch style).",
                       lower_bound=0.0)
    flags.DEFINE_enum("lr_schedule", "cosine", ("cosine", "cosine_periodic", "multistep",
                      "constant"), "Per-epoch classifier learning-rate schedule.")
    flags.DEFINE_integer("lr_tmax", 0, "Cosine T_max in epochs (0: the number of epochs).",
                         lower_bound=0)
    flags.DEFINE_float("lr_eta_min", 1e-3, "Cosine minimum learning rate.", lower_bound=0.0)
    flags.DEFINE_list("lr_milestones", [], "Multistep: epochs at which lr is multiplied by "
                      "--lr_gamma.")
    flags.register_validator("lr_milestones", lambda v: all(m.strip().isdigit() for m in v),
                             message="--lr_milestones must be epoch numbers, e.g. 80,120")
    flags.register_multi_flags_validator(
        ["lr_schedule", "lr_milestones"],
        lambda f: f["lr_schedule"] != "multistep" or bool(f["lr_milestones"]),
        message="--lr_schedule=multistep needs --lr_milestones (epochs, e.g. 80,120)")
    flags.DEFINE_float("lr_gamma", 0.1, "Multistep decay factor.", lower_bound=0.0)
    _define_real_world_flags()
    flags.DEFINE_integer("eval_batch_size", 500, "Batch size for evaluation passes.",
                         lower_bound=1)
    # ---- distribution and speed
    flags.DEFINE_enum("strategy", "default", ("default", "mirrored", "multi_worker", "tpu"),
                      "tf.distribute strategy: default (one device), mirrored (all local "
                      "GPUs), multi_worker (MultiWorkerMirroredStrategy from TF_CONFIG), tpu. "
                      "Batch sizes are global; results equal the single-device ones.")
    flags.register_multi_flags_validator(
        ["strategy", "meta_grad"], lambda f: f["strategy"] == "default" or f["meta_grad"] != "jvp",
        message="--meta_grad=jvp runs on one replica only (TensorFlow's forward mode does "
                "not pass through the cross-replica BatchNorm); use --meta_grad=recompute")
    flags.DEFINE_bool("jit_compile", False, "Compile the whole train step with XLA (every "
                      "method and meta-net). Faster on GPU/TPU; on CPU oneDNN convolutions "
                      "are faster than XLA's (tools/bench_speed.py --jit_compile).")
    flags.register_multi_flags_validator(
        ["strategy", "jit_compile"], lambda f: f["strategy"] == "default" or not f["jit_compile"],
        message="--jit_compile of the whole step fails under tf.distribute strategies (XLA "
                "cannot reach variables mirrored on other devices); the CLID kernel is "
                "XLA-compiled anyway")
    flags.DEFINE_enum("mixed_precision", "none", ("none", "mixed_float16", "mixed_bfloat16"),
                      "Backbone compute precision, float32 variables; logits, features, "
                      "losses, CLID and the meta-net stay float32. mixed_float16: float16 "
                      "activations with dynamic loss scaling of every backward pass, the "
                      "second-order one included (each optimizer skips steps that "
                      "overflow); for GPUs with float16 tensor cores. mixed_bfloat16: no "
                      "loss scaling needed (float32's exponent range); TPUs, recent GPUs "
                      "and CPUs with AVX512-BF16.")
    # ---- combinations the semi-supervised split and trainers refuse (all flags defined)
    flags.register_multi_flags_validator(list(_SSL_CHECKED), _semi_supervised_flags_fit)


SSL_TRAINERS = ("fixmatch", "flexmatch")
# The meta trainer on the labeled part of --num_labels: label-free meta objectives (the
# meta set may be unlabeled images) or none.
LABELED_PART_METHODS = ("ce", "clid", "entropy")
_SSL_CHECKED = ("trainer", "num_labels", "method", "meta_net", "augment", "steps_per_epoch",
                "audit", "meta_every", "mixed_precision", "imbalance_gamma")


def _semi_supervised_flags_fit(values: dict) -> bool:
    """--num_labels and --trainer=fixmatch|flexmatch with what they cannot work with."""
    trainer, num_labels = values["trainer"], values["num_labels"]
    if trainer not in ("meta", *SSL_TRAINERS):
        problems = [(num_labels, f"--num_labels splits the data for fixmatch, flexmatch and "
                                 f"the meta trainer; --trainer={trainer} trains on all labels")]
    elif trainer == "meta":
        problems = [
            (num_labels and values["method"] not in LABELED_PART_METHODS,
             f"--num_labels with --trainer=meta takes --method="
             f"{'|'.join(LABELED_PART_METHODS)} (the meta set may be unlabeled images); "
             f"--method={values['method']} needs labeled meta samples"),
            (num_labels and values["audit"], "--audit audits every training label; with "
                                             "--num_labels most samples have none")]
    else:
        problems = [
            (not num_labels, f"--trainer={trainer} needs --num_labels (the number of labeled "
                             "samples, a multiple of the number of classes)"),
            (values["method"] not in ("clid", "ce"),
             f"--trainer={trainer} trains its loss-net with --method=clid, or is plain "
             f"{trainer} with --method=ce; --method={values['method']} is not available"),
            (values["meta_net"] not in (None, "wnet"),
             f"--trainer={trainer}'s loss-net is wnet (1-100-1 on the per-sample CE); "
             f"--meta_net={values['meta_net']} is not available"),
            (values["augment"] != "none",
             f"--augment does not apply to --trainer={trainer}: labeled and meta images take "
             "the weak view, unlabeled images the weak and the strong one"),
            (values["steps_per_epoch"], f"--steps_per_epoch does not apply to "
                                        f"--trainer={trainer}; an epoch is --eval_every "
                                        "iterations"),
            (values["audit"], f"--audit audits the meta trainer's labels; --trainer={trainer} "
                              "has no audit"),
            (values["meta_every"] != 1, f"--meta_every is not available with "
                                        f"--trainer={trainer} (a meta step every iteration)"),
            (values["mixed_precision"] == "mixed_float16",
             f"--mixed_precision=mixed_float16 is not available with --trainer={trainer} "
             "(no loss scaling in its step); use mixed_bfloat16 or none"),
            (values["imbalance_gamma"] != 1.0,
             f"--imbalance_gamma is not available with --trainer={trainer} (its labeled "
             "part is class-balanced)")]
    for bad, message in problems:
        if bad:
            raise flags.ValidationError(message)
    return True


def _define_real_world_flags() -> None:
    """The flags of file image data (Clothing1M, Animal-10N), their backbones, the
    classifier optimizer and the meta set's source: the vri_single trainer's, usable by
    --trainer=meta too (SOTA_SSL.md A.7, A.8, A.12)."""
    flags.DEFINE_integer("resize_shorter", None, "folder: and list: images: resize each so "
                         "that its shorter side is R (aspect ratio kept), then crop the "
                         "centre --image_size x --image_size (torchvision's Resize(R) + "
                         "CenterCrop(S): Clothing1M's 256 and 224).", lower_bound=8)
    flags.register_multi_flags_validator(
        ["resize_shorter", "image_size"], lambda f: f["resize_shorter"] is None or (
            f["image_size"] is not None and f["resize_shorter"] >= f["image_size"]),
        message="--resize_shorter=R needs --image_size=S with S <= R (the centre crop it "
                "resizes for)")
    flags.DEFINE_enum("standardize", None, ("data", "imagenet"), "Per-channel mean/std the "
                      "backbone standardises its input with: data (estimated from the "
                      "training images) or imagenet (torchvision's (0.485, 0.456, 0.406) / "
                      "(0.229, 0.224, 0.225), the Animal-10N reference's). Default: data; "
                      "with --pretrained, the convention the weights were trained with.")
    flags.DEFINE_string("pretrained", "none", "Initial backbone weights (--backbone=resnet50 "
                        "only): none, imagenet (keras.applications' ResNet-50 ImageNet "
                        "weights, from the Keras cache ~/.keras/models or downloaded when "
                        "online) or PATH of that weights file "
                        "(resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5).")
    flags.register_multi_flags_validator(
        ["pretrained", "backbone", "standardize"], _pretrained_fits_backbone)
    flags.DEFINE_integer("train_subset", 0, "Train on a class-balanced subset of the "
                         "training samples: at most N/K per (noisy) class, drawn once, "
                         "seeded (the Clothing1M reference trains on 192000 of its 1M); "
                         "0 = all.", lower_bound=0)
    flags.DEFINE_bool("resample_subset_each_epoch", False, "Draw the --train_subset anew "
                      "every epoch (the original DivideMix Clothing1M loader) instead of "
                      "once (the CLID-MU reference).")
    flags.register_multi_flags_validator(
        ["resample_subset_each_epoch", "train_subset"],
        lambda f: not f["resample_subset_each_epoch"] or f["train_subset"] > 0,
        message="--resample_subset_each_epoch needs --train_subset=N (the subset to draw)")
    flags.DEFINE_enum("meta_source", "train", ("train", "val"), "Where the label-free meta "
                      "set comes from: train (--meta_size training samples, which stay in "
                      "training) or val (--meta_size random images of the validation split, "
                      "e.g. Clothing1M's clean_val list; their labels are never read). "
                      "Label-free selection scores the same images.")
    flags.DEFINE_bool("redraw_meta_each_epoch", False, "Draw a new random meta set every "
                      "epoch (the Animal-10N reference); label-free selection keeps "
                      "scoring the first one, so that its CLID values compare across epochs.")
    flags.DEFINE_enum("meta_augment", None, AUGMENTS, "Augmentation of the meta images "
                      "(as --augment); default: --augment's. Clothing1M's reference does "
                      "not flip them.")
    flags.DEFINE_enum("optimizer", "sgd", ("sgd", "adam"), "Classifier optimizer: sgd "
                      "(momentum --momentum) or adam (beta 0.9/0.999, epsilon 1e-8, "
                      "PyTorch's defaults: the Clothing1M reference's).")
    flags.DEFINE_bool("reset_optimizer_each_epoch", False, "Zero the classifier optimizer's "
                      "state (iteration counter, momentum, Adam's moments) at the start of "
                      "every epoch, as the Clothing1M reference re-creates its Adam "
                      "(SOTA_SSL.md A.11 #11, parity only); its lr schedule would restart "
                      "every epoch, so it needs --lr_schedule=constant.")
    flags.register_multi_flags_validator(
        ["reset_optimizer_each_epoch", "lr_schedule"],
        lambda f: not f["reset_optimizer_each_epoch"] or f["lr_schedule"] == "constant",
        message="--reset_optimizer_each_epoch restarts the optimizer's iteration counter, "
                "and with it any lr schedule, every epoch (the reference loses its decay "
                "the same way): use --lr_schedule=constant")
    flags.DEFINE_integer("lr_schedule_start", 0, "Hold --lr for this many epochs, then run "
                         "--lr_schedule from its first epoch (the Animal-10N reference "
                         "starts its cosine after its 10 warm-up epochs).", lower_bound=0)
    flags.register_multi_flags_validator(["trainer", "meta_net", "method"], _vri_single_fits)


def _pretrained_fits_backbone(values: dict) -> bool:
    """--pretrained only for the backbones with pretrained weights, which bring their own
    input convention (so no --standardize beside them)."""
    if values["pretrained"] in ("none", ""):
        return True
    if values["backbone"] != "resnet50":
        raise flags.ValidationError(f"--pretrained={values['pretrained']}: pretrained "
                                    f"weights exist for --backbone=resnet50 only, not "
                                    f"{values['backbone']} (use --pretrained=none)")
    if values["standardize"] is not None:
        raise flags.ValidationError(f"--standardize={values['standardize']} with "
                                    "--pretrained: the weights fix the input standardisation "
                                    "(keras.applications' caffe convention); drop "
                                    "--standardize")
    return True


def _vri_single_fits(values: dict) -> bool:
    """--trainer=vri_single trains the VRI rectifier through a meta objective."""
    if values["trainer"] != "vri_single":
        return True
    if values["meta_net"] == "wnet":
        raise flags.ValidationError("--trainer=vri_single trains the VRI rectifier; drop "
                                    "--meta_net=wnet (or use --trainer=meta)")
    if values["method"] == "ce":
        raise flags.ValidationError("--trainer=vri_single needs a meta objective; plain "
                                    "cross-entropy is --trainer=meta --method=ce")
    return True


def _not_a_bare_path(dataset: str) -> bool:
    """--dataset given a path without its npz:/folder:/list: prefix gets the fix."""
    if dataset in datasets.BENCHMARKS or any(dataset.startswith(p) for p in datasets.PREFIXES):
        return True
    path = os.path.expanduser(dataset)
    if os.path.isdir(path):
        kinds = ("folder:",)
    elif path.endswith(".npz"):
        kinds = ("npz:",)
    elif path.endswith((".txt", ".lst", ".list", ".csv")):
        kinds = ("list:",)
    elif os.path.exists(path) or os.sep in path:
        kinds = ("npz:", "folder:", "list:")
    else:
        return True  # not a path: the loaders report the unknown name
    fixes = " or ".join(f"--dataset={kind}{dataset}" for kind in kinds)
    raise flags.ValidationError(f"--dataset={dataset} looks like a path; name its kind: {fixes}")


def _human_noise_fits_dataset(values: dict) -> bool:
    """CIFAR-N trains on one of its human label sets, and only CIFAR-N has them."""
    dataset, noise = values["dataset"], values["noise"]
    sets = HUMAN_NOISE_OF.get(dataset)
    if sets and noise not in sets:
        what = "needs" if noise is None else f"has no human label set {noise!r}; it needs"
        raise flags.ValidationError(f"--dataset={dataset} {what} --noise={'|'.join(sets)} "
                                    "(the human label set to train on)")
    if not sets and noise in HUMAN_NOISE:
        owner = next(name for name, names in HUMAN_NOISE_OF.items() if noise in names)
        raise flags.ValidationError(f"--noise={noise} is a human label set of {owner} (use "
                                    f"--dataset={owner}); for synthetic noise on {dataset} "
                                    "use e.g. --noise=sym")
    return True


# ------------------------------------------------------------------------------ help
# Every training flag in exactly one group, in the order --help lists them
# (cli_test fails when a flag defined above is in none).
HELP_GROUPS = (
    ("run and output", ("workdir", "seed", "verbose", "export", "resume", "audit",
                        "audit_folds", "deterministic")),
    ("data and noise", ("dataset", "data_dir", "data_root", "val_list", "test_list",
                        "class_names_file", "image_size", "resize_shorter", "standardize",
                        "noise", "noise_rate", "val_split", "augment", "augment_flip",
                        "imbalance_gamma", "train_subset", "resample_subset_each_epoch")),
    ("method, meta-net and backbone", (
        "trainer", "method", "meta_net", "backbone", "pretrained", "meta_size",
        "meta_batch_size", "meta_source", "redraw_meta_each_epoch", "meta_augment",
        "warmup_epochs", "tau", "vri_kl", "meta_optimizer", "meta_lr", "meta_weight_decay",
        "meta_grad", "meta_scope", "virtual_step", "meta_every", "select_keep",
        "select_augment")),
    ("semi-supervised trainers", ("lambda_u", "p_threshold", "mixup_alpha",
                                  "sharpen_temperature", "rampup_epochs", "clip_norm",
                                  "guess_bn_mode", "num_labels", "include_lb_to_ulb",
                                  "ssl_meta_source", "uratio", "p_cutoff", "thresh_warmup",
                                  "ema_decay", "eval_every")),
    ("optimisation", ("epochs", "batch_size", "steps_per_epoch", "optimizer",
                      "reset_optimizer_each_epoch", "lr", "momentum", "weight_decay",
                      "lr_schedule", "lr_schedule_start", "lr_tmax", "lr_eta_min",
                      "lr_milestones", "lr_gamma")),
    ("distribution and speed", ("strategy", "jit_compile", "mixed_precision",
                                "eval_batch_size")),
)
AUDIT_OWN = ("workdir", "audit_folds")
# `python -m clid_tf.audit --help`: its own flags, then the run's that matter to it (they
# override RUN/flags.cfg; --resume, --audit and --export are accepted and ignored).
AUDIT_GROUPS = (("audit", AUDIT_OWN), *(
    (f"{title} (override RUN/flags.cfg)",
     tuple(n for n in names if n not in (*AUDIT_OWN, "resume", "audit", "export")))
    for title, names in HELP_GROUPS))
AUDIT_HELP = {"workdir": "The folder of a finished training run (required): its flags.cfg, "
                         "split.npz and checkpoints are read; audit.csv, results.json['audit'] "
                         "and tensorboard/audit are written."}
_HELP_FLAGS = {"help": "short", "helpshort": "short", "?": "short", "helpfull": "full",
               "helpxml": "xml"}
_MAX_WIDTH = 100


def help_text(groups, *, usage: str, full: bool = False,
              overrides: dict[str, str] | None = None, width: int | None = None) -> str:
    """`usage`, then each (title, flag names) group: every flag with its default, its range
    or choices, and its help; with `full`, absl's own flags after."""
    width = width or max(60, min(_MAX_WIDTH, shutil.get_terminal_size((_MAX_WIDTH, 24)).columns))
    parts = [usage.strip("\n")]
    for title, names in groups:
        parts.append(f"\n{title}:")
        parts.extend(_flag_entry(FLAGS[name], (overrides or {}).get(name), width)
                     for name in names)
    if full:  # then absl's (and any library's) flags, as absl lists them
        for module in sorted(set(FLAGS.flags_by_module_dict()) - {__name__, sys.argv[0]}):
            parts.append("\n" + FLAGS.module_help(module))
    else:
        parts.append("\n--helpfull also lists absl's own flags.")
    return "\n".join(parts) + "\n"


def _flag_entry(flag, help_override: str | None, width: int) -> str:
    """'  --name  default: D; RANGE' then the help text, indented, wrapped to `width`."""
    text = help_override or flag.help
    facts = []
    if flag.default is not None:
        shown = ",".join(flag.default) if isinstance(flag.default, list) else flag.default_as_str
        facts.append(f"default: {shown.strip(chr(39)) or 'empty'}")
    elif not re.search("default|required", text, re.IGNORECASE):
        facts.append("default: none")
    values = getattr(flag.parser, "enum_values", None)
    if values:
        text = text.removeprefix(f"<{'|'.join(values)}>: ")
        facts.append(f"one of {', '.join(values)}")
    elif flag.parser.syntactic_help:
        facts.append(flag.parser.syntactic_help)
    head = f"  --{'[no]' if flag.boolean else ''}{flag.name}  {'; '.join(facts)}"
    wrap = functools.partial(textwrap.wrap, width=width, break_long_words=False,
                             break_on_hyphens=False)
    return "\n".join([*wrap(head, subsequent_indent=" " * 8),
                      *wrap(text, initial_indent=" " * 6, subsequent_indent=" " * 6)])


def _help_asked(args: list[str]) -> str | None:
    """'short', 'full' or 'xml' when the command line asks for help (before any '--')."""
    for arg in args:
        if arg == "--":
            break
        name, _, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name in _HELP_FLAGS and value.lower() in (
                "", "true", "t", "1", "yes", "y"):
            return _HELP_FLAGS[name]
    return None


# ------------------------------------------------------------------------------ parsing
class _Arg(NamedTuple):
    """One command-line argument after flagfile expansion, and where it was written."""
    text: str
    where: str | None  # 'FILE line N' (with the files that included it); None: the command line


def parse_flags(argv: list[str], *, groups=None, help_overrides=None) -> list[str]:
    """The absl flags parser of the entry points (app.run's flags_parser).

    --help/-?/--helpshort print `groups` (default: the training flags, or a tool's own flags
    when they are not defined) after __main__'s docstring, --helpfull adds absl's flags,
    --helpxml is absl's XML; each exits 0. A bad flag, value, flagfile or flagfile line is
    one `error:` line naming it (with the flagfile's path and line) and exit code 2.

    Returns:
      argv[0] and the positional arguments from the command line.
    """
    if groups is None:
        groups = (HELP_GROUPS if training_flag_names() else
                  (("flags", [f.name for f in FLAGS.get_flags_for_module(sys.argv[0])]),))
    asked = _help_asked(argv[1:])
    if asked == "xml":
        FLAGS.write_help_in_xml_format(sys.stdout)
    elif asked:
        usage = sys.modules["__main__"].__doc__ or f"USAGE: {argv[0]} [flags]\n"
        sys.stdout.write(help_text(groups, usage=usage, full=asked == "full",
                                   overrides=help_overrides))
    if asked:
        sys.exit(0)
    args = None
    try:
        args = _expanded(argv[1:])
        _check_values_given(args)
        rest = FLAGS(argv)
    except (flags.Error, ValueError) as error:
        fail(_located(error, argv[0], args))
    _check_flagfile_positionals(args, rest[1:])
    return rest


def _expanded(args: list[str]) -> list[_Arg]:
    """`args` with every --flagfile replaced by its lines, as absl's
    FlagValues.read_flags_from_files does it, each line remembering its file and number.
    A flagfile that cannot be read raises flags.Error naming it and where it was named."""
    out, rest = [], list(args)
    while rest:
        arg = rest.pop(0)
        if FLAGS._is_flag_file_directive(arg):  # pylint: disable=protected-access
            if arg in ("--flagfile", "-flagfile"):
                if not rest:
                    raise flags.IllegalFlagValueError("--flagfile with no argument")
                path = os.path.expanduser(rest.pop(0))
            else:
                path = FLAGS._extract_filename(arg)  # pylint: disable=protected-access
            out.extend(_flagfile_lines(path, None, []))
            continue
        out.append(_Arg(arg, None))
        if arg == "--":
            break
        if not arg.startswith("-"):
            if not FLAGS.is_gnu_getopt():
                break
        elif "=" not in arg and rest and not rest[0].startswith("-"):
            name = arg.lstrip("-")  # '--name value': the value is not a flagfile directive
            if name in FLAGS and not FLAGS[name].boolean:
                out.append(_Arg(rest.pop(0), None))
    return out + [_Arg(arg, None) for arg in rest]


def _flagfile_lines(path: str, named_at: str | None, stack: list[str]) -> list[_Arg]:
    """The argument lines of one flagfile, nested flagfiles expanded in place (absl's
    FlagValues._get_flag_file_lines: blank lines and lines starting with # or // skipped;
    a flagfile already being read is skipped, absl warns)."""
    if not path or path in stack:
        return []
    try:
        with open(path) as f:
            lines = f.readlines()
    except OSError as error:
        raise flags.Error(_unreadable_flagfile(path, named_at, error)) from error
    out = []
    for number, line in enumerate(lines, 1):
        where = f"{path} line {number}" + (f" (included from {named_at})" if named_at else "")
        if line.isspace() or line.startswith(("#", "//")):
            continue
        if FLAGS._is_flag_file_directive(line):  # pylint: disable=protected-access
            nested = FLAGS._extract_filename(line)  # pylint: disable=protected-access
            out.extend(_flagfile_lines(nested, where, [*stack, path]))
        else:
            out.append(_Arg(line.strip(), where))
    return out


def _unreadable_flagfile(path: str, named_at: str | None, error: OSError) -> str:
    """'flagfile P (named on F line N) not found relative to CWD ...; run from / did you
    mean ...': the path, where it was named, and where it exists when it does."""
    text = f"flagfile {path}" + (f" (named on {named_at})" if named_at else "")
    if not isinstance(error, FileNotFoundError):
        return f"{text} cannot be read: {error.strerror}"
    if os.path.isabs(path):
        return f"{text} not found"
    text += (f" not found relative to {os.getcwd()} (flagfile paths are relative to the "
             "folder you run in)")
    if os.path.isfile(os.path.join(_REPO, path)):
        return f"{text}; run from {_REPO}"
    guess = os.path.join(_REPO, "flags", os.path.basename(path))
    if os.path.isfile(guess):
        shown = os.path.relpath(guess)
        return f"{text}; did you mean {guess if shown.startswith('..') else shown}?"
    return text


def _check_values_given(args: list[_Arg]) -> None:
    """'--name' of a training flag followed by another flag: absl would take that flag as
    the value (no training flag has values that start with '--')."""
    training = set(training_flag_names())
    for arg, after in zip(args, args[1:]):
        name = arg.text.lstrip("-")
        if (arg.text.startswith("-") and "=" not in arg.text and name in training
                and not FLAGS[name].boolean and after.text.startswith("--")):
            raise _LocatedError(arg, f"--{name} has no value (the next argument, "
                                     f"{after.text}, would be taken as it); write "
                                     f"--{name}=VALUE")


def _check_flagfile_positionals(args: list[_Arg], positionals: list[str]) -> None:
    """A flagfile line that is not a flag is refused with its file and line (absl passes it
    on as a positional argument); positional arguments from the command line are left to
    the program."""
    values, candidates = set(), []
    for i, arg in enumerate(args):
        name = arg.text.lstrip("-")
        if arg.text.startswith("-") and "=" not in arg.text and name in FLAGS and not (
                FLAGS[name].boolean):
            values.add(i + 1)  # '--name value': the next argument is a value
        elif not arg.text.startswith("-") and i not in values:
            candidates.append(arg)
    if [a.text for a in candidates] != positionals:
        return  # cannot tell which line is which: leave them to the program
    for arg in candidates:
        if arg.where:
            fail(f"{arg.where}: {arg.text!r} is not a flag (a flagfile holds --name=value "
                 "lines; # starts a comment)")


class _LocatedError(flags.Error):
    """A bad argument found before absl parses: the argument and the message."""

    def __init__(self, arg: _Arg, message: str):
        super().__init__(message)
        self.arg = arg


def _located(error: Exception, program: str, args: list[_Arg] | None) -> str:
    """The one-line message of a parse error, prefixed by the flagfile line it came from:
    the first argument whose prefix of the command line fails with the same error."""
    message = _message(error)
    if isinstance(error, _LocatedError):
        arg = error.arg
    elif args is None:
        return message
    else:
        arg, wanted = None, str(error)
        for k in range(1, len(args) + 1):
            FLAGS.unparse_flags()
            try:
                FLAGS([program, *(a.text for a in args[:k])])
            except (flags.Error, ValueError) as again:
                if str(again) == wanted:
                    arg = args[k - 1]
                    break
        FLAGS.unparse_flags()
    return message if arg is None or arg.where is None else f"{arg.where}: {message}"


def _message(error: Exception) -> str:
    """absl's message of a parse error, made one line and worded for the user."""
    if isinstance(error, flags.UnrecognizedFlagError):
        name = error.flagname
        close = difflib.get_close_matches(name, [n for n in FLAGS if len(n) > 1], n=1)
        return f"unknown flag --{name}" + (f"; did you mean --{close[0]}" if close else
                                            "; --help lists the flags")
    text = str(error).split("\n")[0]  # several failed validators: the first
    if text.startswith("Missing value for flag "):
        name = text.split()[-1]
        return f"{name} has no value; write {name}=VALUE"
    match = re.match(r"flags? .*?: (--.*)$", text)
    if match:  # a validator's own message, which names the flags
        return match.group(1)
    match = re.match(r"flag --(\w+)=(.*?): (.*)$", text)
    if match and match.group(1) in FLAGS:
        name, value, detail = match.groups()
        if re.fullmatch(r"Flag --\w+ must have a value other than None\.", detail):
            return f"--{name} is required"
        if re.search(r"invalid literal|could not convert|Non-boolean", detail):
            flag = FLAGS[name]
            detail = "expected " + ("true or false" if flag.boolean else
                                    flag.parser.syntactic_help or "another value")
        elif detail.startswith("value should be one of"):
            values = detail.split("<", 1)[-1].rstrip(">").split("|")
            detail = "expected one of " + "|".join(values) + "".join(
                f"; did you mean --{name}={v}" for v in values if v.lower() == value.lower())
        return f"--{name}={value}: {detail}"
    return text


def fail(message: str) -> None:
    """One error line for the user, exit code 2."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(2)


def training_flag_names() -> list[str]:
    """Names of the training flags (those `define_flags` defines)."""
    return [f.name for f in FLAGS.get_flags_for_module(sys.modules[__name__])]
