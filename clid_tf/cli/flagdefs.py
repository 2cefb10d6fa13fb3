"""Every absl flag of the project, in one place, and the parser that reports bad ones.

`define_flags()` is called by the entry points (`python -m clid_tf.train`,
`python -m clid_tf.audit`) and by tools and tests that need the flags, never at import time.
"""

from __future__ import annotations

import sys

from absl import flags

from clid_tf import datasets

FLAGS = flags.FLAGS

METHODS = ("ce", "clid", "entropy", "ce_clean", "ce_noisy", "mae", "ce_sloss", "mae_sloss")
# Names of clid_tf.backbones.BACKBONES, listed here so flags parse without TensorFlow.
BACKBONES = ("small_cnn", "mlp", "resnet32", "preact_resnet18", "resnet34", "wrn28_10",
             "wrn28_2")
HUMAN_NOISE = tuple(datasets.HUMAN_LABELS)  # CIFAR-N label sets by their CLI names
EXPORTS = ("selected", "ensemble", "last", "none")
# The benchmark sets whose paper settings live in flags/ (printed when run without one).
PAPER_SETTINGS = {"cifar10": "flags/cifar10_*.cfg", "cifar100": "flags/cifar100_*.cfg",
                  "cifar10_n": "flags/cifar10_n_*.cfg"}


def define_flags() -> None:
    """Defines every flag of a training run (idempotent)."""
    if "method" in FLAGS:
        return
    from clid_tf import noise  # pylint: disable=import-outside-toplevel
    # ---- run and output
    flags.DEFINE_string("workdir", None, "Output folder for TensorBoard events, checkpoints, "
                        "the SavedModel and results.json. Must be new or empty. "
                        "Default: a fresh ./runs/<dataset>-<method>-<time> folder.")
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
    flags.DEFINE_bool("deterministic", False, "TensorFlow op determinism: the same command "
                      "gives identical weights and results (slower on GPU).")
    # ---- data and noise
    flags.DEFINE_string("dataset", "digits", "Dataset: 'digits' (offline scikit-learn 8x8 "
                        "digits), 'cifar10', 'cifar100', 'cifar10_n', 'cifar100_n' (TFDS), "
                        "or your own: 'npz:PATH' (arrays), 'folder:PATH' (class subfolders, "
                        "with PATH/train, PATH/val, PATH/test where present), 'list:FILE' "
                        "('relative/path label' lines, see --data_root), 'tfds:NAME' (any "
                        "TFDS image classification set).")
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
    flags.DEFINE_float("noise_rate", 0.4, "Rate of the synthetic noise model.",
                       lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_float("val_split", 0.0, "Hold out this fraction of the (noisy) training "
                       "data; its accuracy against the noisy labels is reported every "
                       "epoch beside the label-free CLID.", lower_bound=0.0, upper_bound=0.9)
    flags.DEFINE_enum("augment", "none", ("none", "weak", "strong"),
                      "Augmentation of training and meta images: weak (flip + 4-pixel "
                      "reflect-padded crop) or strong (weak + RandAugment n=2 m=10 + Cutout, "
                      "the reference pipeline for CIFAR).")
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
    flags.DEFINE_enum("method", "clid", METHODS,
                      "ce: plain cross-entropy, no meta-net. Otherwise the meta objective: "
                      "clid (label-free, meta set = random training samples, labels never "
                      "read), entropy (label-free control), ce_clean (oracle Meta-Weight-Net "
                      "with a clean class-balanced meta set removed from training), ce_noisy "
                      "and mae (same split, noisy labels), ce_sloss / mae_sloss (after the "
                      "warm-up, every epoch the meta set is the meta_size/K lowest-loss "
                      "samples per noisy class by a 2-component GMM; noisy labels).")
    flags.DEFINE_enum("meta_net", "wnet", ("wnet", "vri"), "Meta-net: wnet (Meta-Weight-Net "
                      "1-100-1 on the per-sample loss, weights normalised over the batch) or "
                      "vri (Variational Rectification Inference: per-sample per-class "
                      "weights on the logits from features and the noisy label).")
    flags.DEFINE_float("vri_kl", 0.01, "VRI: weight of KL(posterior || prior) in the "
                       "meta-net's objective.", lower_bound=0.0)
    flags.DEFINE_integer("meta_size", 200, "Number of training samples in the meta set.",
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
    flags.DEFINE_enum("meta_scope", "full", ("full", "last_layer"), "Parameters of the "
                      "virtual step: full (all, exact) or last_layer (classifier head only, "
                      "features reused; cheap, for large backbones).")
    flags.DEFINE_float("tau", 0.5, "CLID temperature on feature similarities.",
                       lower_bound=1e-6)
    flags.DEFINE_integer("warmup_epochs", 5, "Epochs of plain cross-entropy before meta "
                         "updates begin.", lower_bound=0)
    flags.DEFINE_enum("meta_optimizer", "adam", ("adam", "sgd"), "Meta-net optimiser "
                      "(reference: SGD without momentum for WNet, Adam for VRI).")
    flags.DEFINE_float("meta_lr", 1e-3, "Meta-net learning rate.", lower_bound=0.0)
    flags.DEFINE_float("meta_weight_decay", 5e-4, "Meta-net L2 weight decay (PyTorch "
                       "style, added to the gradient).", lower_bound=0.0)
    flags.DEFINE_integer("select_keep", 5, "Label-free checkpoint selection: keep the "
                         "weights (and test logits) of this many lowest meta-set-CLID epochs "
                         "for the selected model and the ensembles.", lower_bound=1)
    flags.DEFINE_enum("select_augment", "none", ("none", "weak", "strong"),
                      "Label-free selection: score the meta set as it is (none) or through "
                      "weak or strong augmentation (the reference scores it with its "
                      "training augmentation, strong on CIFAR).")
    # ---- optimisation
    flags.DEFINE_integer("epochs", 30, "Training epochs.", lower_bound=1)
    flags.DEFINE_integer("batch_size", 100, "Training batch size.", lower_bound=1)
    flags.DEFINE_integer("steps_per_epoch", 0, "Training steps per epoch; 0 = one pass over "
                         "the training set (floor(N / batch_size)).", lower_bound=0)
    flags.DEFINE_float("lr", 0.05, "Classifier learning rate (SGD with momentum).",
                       lower_bound=0.0)
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
    flags.DEFINE_float("lr_gamma", 0.1, "Multistep decay factor.", lower_bound=0.0)
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


def parse_flags(argv: list[str]) -> list[str]:
    """absl flags parser that reports a bad flag or flagfile as one line and exits 2."""
    try:
        return FLAGS(argv)
    except flags.Error as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)




def fail(message: str) -> None:
    """One error line for the user, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def training_flag_names() -> list[str]:
    """Names of the training flags (those `define_flags` defines)."""
    return [f.name for f in FLAGS.get_flags_for_module(sys.modules[__name__])]
