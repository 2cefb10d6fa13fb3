"""The training flags: those every trainer reads (in HELP_GROUPS) and those several trainers
share, defined here; a trainer's own flags are defined by its declaration
(`clid_tf.trainers.Trainer.define_flags`) and named with the shared ones in its `reads`.

`define_flags()` is called by the entry points (`python -m clid_tf.train`,
`python -m clid_tf.audit`) and by tools and tests that need the flags, never at import time;
it defines the flags of every registered trainer too.
Checks of one flag's value sit beside its definition; combinations of flags that cannot
run together are refused in `checks`; `parsing` reads the command line.
"""

from __future__ import annotations

import os

from absl import flags

from clid_tf import metanets
from clid_tf import names
from clid_tf import trainers
from clid_tf.core import meta_scope
from clid_tf.data import noise
from clid_tf.data import sources

FLAGS = flags.FLAGS

METHODS = ("ce", "clid", "entropy", "ce_clean", "ce_noisy", "mae", "ce_sloss", "mae_sloss")
BACKBONES = names.BACKBONES
AUGMENTS = names.AUGMENTS
EXPORTS = names.EXPORTS
# The benchmark sets whose paper settings live in flags/ (printed when run without one).
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAPER_SETTINGS = {"cifar10": "flags/cifar10_*.cfg", "cifar100": "flags/cifar100_*.cfg",
                  "cifar10_n": "flags/cifar10_n_*.cfg"}


_DEFINED: dict[str, None] = {}  # the training flags, in the order they were defined
_BY_DEFINER: dict = {}  # a trainer's define_flags -> the names it defined


def define_flags() -> None:
    """Defines every flag of a training run: those of this module, then each registered
    trainer's own (`Trainer.define_flags`). Idempotent; a trainer registered since the
    last call gets its flags defined now. ValueError when a trainer reads a flag that no
    one defines (a maintainer's typo)."""
    if "workdir" not in FLAGS:
        _defined_by(_define_shared_flags)
    _registry_helps()
    for trainer in trainers.registered():
        definer = trainer.define_flags
        if definer is not None and not (  # (absl's flagsaver removes flags defined inside it)
                definer in _BY_DEFINER and all(n in FLAGS for n in _BY_DEFINER[definer])):
            _BY_DEFINER[definer] = _defined_by(definer)
        unknown = [name for name in trainer.reads if name not in training_flag_names()]
        if unknown:
            raise ValueError(f"trainer {trainer.name!r} reads --{unknown[0]}, which is not a "
                             "training flag (define it in its define_flags)")


def _registry_helps() -> None:
    """The help of the flags that name a registered thing, from the registries (so that
    what --extensions registers shows in --help)."""
    FLAGS["dataset"].help = (f"Dataset: {sources.described()}. A benchmark's labels are "
                             "clean (see --noise); your own are used as given.")
    FLAGS["trainer"].help = "Training scheme: " + "; ".join(
        f"{t.name}: {t.summary}" for t in trainers.registered()) + "."
    FLAGS["meta_net"].help = (f"Meta-net: {metanets.described()}. Default: the trainer's "
                              "(see 'defaults each trainer sets').")


def _defined_by(definer) -> list[str]:
    """Calls `definer`; the names of the flags it defined (also added to _DEFINED)."""
    before = set(FLAGS)
    definer()
    names = [name for name in FLAGS if name not in before]
    _DEFINED.update(dict.fromkeys(names))
    return names


def _define_shared_flags() -> None:
    """The flags of this module: those every trainer reads (HELP_GROUPS) and those
    several trainers read (named in their `reads`)."""
    # ---- run and output
    flags.DEFINE_string("workdir", None, "Output folder for TensorBoard events, checkpoints, "
                        "the SavedModel and results.json; new or empty (unless --resume). "
                        "Default: runs/<dataset>-<method or trainer>-<YYYYmmdd-HHMMSS> "
                        "under the current folder, with ':' and '/' of --dataset as '_' (e.g. "
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
                      "suspicion (clid_tf.audit): audit.csv, audit.png, results.json['audit'] "
                      "and tensorboard/audit.")
    flags.DEFINE_integer("audit_folds", 5, "Label audit: K-fold cross-fitting, each fold "
                         "trained with this run's settings and scored out of sample; 0 "
                         "scores in sample with the run's own last checkpoints.",
                         lower_bound=0)
    flags.register_validator("audit_folds", lambda k: k != 1, message="--audit_folds=1 "
                             "cannot cross-fit (each fold is scored by a model trained on the "
                             "others): use 0 (in sample) or 2 or more")
    flags.DEFINE_integer("audit_show", 64, "Label audit: the most suspicious samples shown on "
                         "audit.png (and the other pictures); 0 draws none.", lower_bound=0)
    flags.DEFINE_enum("audit_filter", "confident_learning",
                      ("confident_learning", "predicted_neq_given"),
                      "Label audit: which samples are flagged: confident_learning "
                      "(cleanlab's: a class whose probability passes its class threshold, "
                      "not the given one) or predicted_neq_given (argmax != given label).")
    flags.DEFINE_list("extensions", [], "Python modules to import before the flags are "
                      "checked, each registering meta-nets, dataset sources or trainers of "
                      "its own (docs/extending.md): module names on the Python path, e.g. "
                      "my_metanet (a my_metanet.py in the current folder). flags.cfg "
                      "records them; --resume and the audit import them only when named on "
                      "their own command line.")
    flags.DEFINE_bool("deterministic", False, "TensorFlow op determinism: the same command "
                      "gives identical weights and results (slower on GPU).")
    # ---- data and noise
    flags.DEFINE_string("dataset", "digits", "")  # help: _registry_helps()
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
    # sym's convention: `unif` of ruofanhu/CLID-MU@5cd0608, dataloader.py: uniform_mix_C().
    flags.DEFINE_enum("noise", None, (*noise.KINDS, *sources.human_labels()),
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
    # strong: the training pipeline of ruofanhu/CLID-MU@5cd0608, main_vri.py: build_dataset()
    # (RandAugmentMC of rand_aug.py).
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
    flags.DEFINE_string("trainer", "meta", "")  # help: _registry_helps()
    flags.register_validator("trainer", _registered("trainer", trainers.names))
    flags.DEFINE_enum("method", "clid", METHODS,
                      "ce: plain cross-entropy, no meta-net. Otherwise the meta objective: "
                      "clid (label-free, meta set = random training samples, labels never "
                      "read), entropy (label-free control), ce_clean (oracle Meta-Weight-Net "
                      "with a clean class-balanced meta set removed from training), ce_noisy "
                      "and mae (same split, noisy labels), ce_sloss / mae_sloss (after the "
                      "warm-up, every epoch the meta set is the meta_size/K lowest-loss "
                      "samples per noisy class by a 2-component GMM; noisy labels).")
    flags.DEFINE_string("meta_net", None, "")  # help: _registry_helps()
    flags.register_validator("meta_net", _registered("meta_net", metanets.names,
                                                     allow_none=True))
    flags.DEFINE_float("vri_kl", 0.01, "VRI: weight of KL(posterior || prior) in the "
                       "meta-net's objective.", lower_bound=0.0)
    flags.DEFINE_integer("meta_size", 200, "Number of training samples in the meta set, "
                         "the set a meta-net learns from and the label-free selection scores "
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
                        "or top:N (head and the last N blocks, residual or conv, exact for that "
                        "step; not mlp or vgg19_bn).")

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
    # ruofanhu/CLID-MU@5cd0608: WNet's SGD in main_wnet.py: build_training(), VRI's Adam in
    # main_vri.py: build_training(), the SSL loss-net's Nesterov SGD in
    # semi/semilearn/core/algorithmbase.py:98.
    flags.DEFINE_enum("meta_optimizer", "adam", ("adam", "sgd"), "Meta-net optimiser "
                      "(reference: SGD without momentum for WNet, Adam for VRI; for fixmatch "
                      "and flexmatch sgd has Nesterov momentum 0.9, as the SSL reference).")
    flags.DEFINE_float("meta_lr", 1e-3, "Meta-net learning rate.", lower_bound=0.0)
    flags.DEFINE_float("meta_weight_decay", 5e-4, "Meta-net L2 weight decay (PyTorch "
                       "style, added to the gradient).", lower_bound=0.0)
    flags.DEFINE_integer("select_keep", 5, "Label-free checkpoint selection: keep the "
                         "weights (and test logits) of this many lowest meta-set-CLID epochs "
                         "for the selected model and the ensembles.", lower_bound=1)
    flags.DEFINE_enum("select_epochs", "lowest_lr", ("lowest_lr", "all"),
                      "Label-free selection: which epochs compete. lowest_lr: only those "
                      "trained at the lowest learning rate so far (the last epoch under a "
                      "single anneal, the last step of a step schedule, the troughs of a "
                      "periodic cosine), since CLID does not see what a larger learning "
                      "rate's weight noise costs; all: every epoch (after DivideMix's warm-up), "
                      "as the reference ranks them.")
    # ruofanhu/CLID-MU@5cd0608: the meta images carry the training augmentation in dataloader.py:
    # CIFAR10.__getitem__(); the SSL fork scores its meta set of weak-view labeled images
    # (semi/semilearn/core/utils/build.py: get_dataset(), 'eval').
    flags.DEFINE_enum("select_augment", None, ("none", "weak", "strong"),
                      "Label-free selection: score the meta set as it is (none) or through "
                      "weak or strong augmentation (the reference scores it with its "
                      "training augmentation, strong on CIFAR). Default: none for the meta "
                      "trainer, weak for fixmatch and flexmatch (the semi-supervised reference).")
    # ---- semi-supervised trainers (dividemix, fixmatch, flexmatch)
    flags.DEFINE_float("lambda_u", None, "Weight of the unlabeled loss term: DivideMix's "
                       "lambda_u (default 150, ramped up linearly over 16 epochs after the "
                       "warm-up) or FixMatch/FlexMatch's (default 1).", lower_bound=0.0)
    flags.DEFINE_integer("num_labels", 0, "Semi-supervised split: a class-balanced labeled "
                         "subset of this many training samples (num_labels / K per class, by "
                         "true label where known), --noise injected into it only; the rest "
                         "is unlabeled. Needed by fixmatch and flexmatch; with --trainer=meta "
                         "the meta trainer trains on that labeled part only (the "
                         "supervised-only baseline). 0: no split.", lower_bound=0)
    # USB's default True: microsoft/Semi-supervised-learning@1ef4cbe, train.py; the fork's False:
    # ruofanhu/CLID-MU@5cd0608, semi/semilearn/core/utils/build.py: get_dataset().
    flags.DEFINE_bool("include_lb_to_ulb", False, "FixMatch/FlexMatch: the unlabeled set "
                      "is the whole training split, labeled samples included (USB's default; "
                      "the reference's is off).")
    flags.DEFINE_enum("ssl_meta_source", "unlabeled", ("unlabeled", "labeled"),
                      "Meta set of CLID with --num_labels: unlabeled (--meta_size random "
                      "unlabeled images, weak and strong views together in each meta batch: "
                      "2 x --meta_batch_size CLID rows; the reported runs) or labeled "
                      "(--meta_size / K labeled images per noisy class, weak view; the "
                      "committed configs).")
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
    flags.DEFINE_float("lr_gamma", 0.1, "Multistep decay factor.", lower_bound=0.0)
    _define_real_world_flags()
    flags.DEFINE_integer("eval_batch_size", 500, "Batch size for evaluation passes.",
                         lower_bound=1)
    # ---- distribution and speed
    flags.DEFINE_enum("strategy", "default", ("default", "mirrored", "multi_worker", "tpu"),
                      "tf.distribute strategy: default (one device), mirrored (all local "
                      "GPUs), multi_worker (MultiWorkerMirroredStrategy from TF_CONFIG), tpu. "
                      "Batch sizes are global; results equal the single-device ones.")
    flags.DEFINE_bool("jit_compile", False, "Compile the whole train step with XLA (every "
                      "method and meta-net). Faster on GPU/TPU; on CPU oneDNN convolutions "
                      "are faster than XLA's (tools/bench_speed.py --jit_compile).")
    flags.DEFINE_enum("mixed_precision", "none", ("none", "mixed_float16", "mixed_bfloat16"),
                      "Backbone compute precision, float32 variables; logits, features, "
                      "losses, CLID and the meta-net stay float32. mixed_float16: float16 "
                      "activations with dynamic loss scaling of every backward pass, the "
                      "second-order one included (each optimizer skips steps that "
                      "overflow); for GPUs with float16 tensor cores. mixed_bfloat16: no "
                      "loss scaling needed (float32's exponent range); TPUs, recent GPUs "
                      "and CPUs with AVX512-BF16.")



def _define_real_world_flags() -> None:
    """The flags of file image data (Clothing1M, Animal-10N), their backbones, the
    classifier optimizer and the meta set's source: the vri_single trainer's, usable by
    --trainer=meta too."""
    flags.DEFINE_integer("resize_shorter", None, "folder: and list: images: resize each so "
                         "that its shorter side is R (aspect ratio kept), then crop the "
                         "centre --image_size x --image_size (torchvision's Resize(R) + "
                         "CenterCrop(S): Clothing1M's 256 and 224).", lower_bound=8)
    # imagenet: ruofanhu/CLID-MU@5cd0608, sota/dataloader_animal.py: animal_dataloader.
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
    # ruofanhu/CLID-MU@5cd0608, sota/dataloader_clothing1M.py: clothing_dataset (64 * 3000 samples).
    flags.DEFINE_integer("train_subset", 0, "Train on a class-balanced subset of the "
                         "training samples: at most N/K per (noisy) class, drawn once, "
                         "seeded (the Clothing1M reference trains on 192000 of its 1M); "
                         "0 = all.", lower_bound=0)
    # Drawn once: ruofanhu/CLID-MU@5cd0608, sota/Train_clothing1M_vri.py:345.
    flags.DEFINE_bool("resample_subset_each_epoch", False, "Draw the --train_subset anew "
                      "every epoch (the original DivideMix Clothing1M loader) instead of "
                      "once (the CLID-MU reference).")
    flags.DEFINE_enum("meta_source", "train", ("train", "val"), "Where the label-free meta "
                      "set comes from: train (--meta_size training samples, which stay in "
                      "training) or val (--meta_size random images of the validation split, "
                      "e.g. Clothing1M's clean_val list; their labels are never read). "
                      "Label-free selection scores the same images.")
    # ruofanhu/CLID-MU@5cd0608, sota/Train_animal_vri.py:489.
    flags.DEFINE_bool("redraw_meta_each_epoch", False, "Draw a new random meta set every "
                      "epoch (the Animal-10N reference); label-free selection keeps "
                      "scoring the first one, so that its CLID values compare across epochs.")
    # No flip for Clothing1M's meta images: ruofanhu/CLID-MU@5cd0608,
    # sota/Train_clothing1M_vri.py:353-359.
    flags.DEFINE_enum("meta_augment", None, AUGMENTS, "Augmentation of the meta images "
                      "(as --augment); default: --augment's. Clothing1M's reference does "
                      "not flip them.")
    # adam: ruofanhu/CLID-MU@5cd0608, sota/Train_clothing1M_vri.py:325 (torch.optim.Adam defaults).
    flags.DEFINE_enum("optimizer", "sgd", ("sgd", "adam"), "Classifier optimizer: sgd "
                      "(momentum --momentum) or adam (beta 0.9/0.999, epsilon 1e-8, "
                      "PyTorch's defaults: the Clothing1M reference's).")
    # ruofanhu/CLID-MU@5cd0608, sota/Train_clothing1M_vri.py:370.
    flags.DEFINE_bool("reset_optimizer_each_epoch", False, "Zero the classifier optimizer's "
                      "state (iteration counter, momentum, Adam's moments) at the start of "
                      "every epoch, as the Clothing1M reference re-creates its Adam "
                      "(parity only); its lr schedule would restart "
                      "every epoch, so it needs --lr_schedule=constant.")
    # ruofanhu/CLID-MU@5cd0608, sota/Train_animal_vri.py:479-514, with --warmup 10 in
    # sota/submit_animal.sh.
    flags.DEFINE_integer("lr_schedule_start", 0, "Hold --lr for this many epochs, then run "
                         "--lr_schedule from its first epoch (the Animal-10N reference "
                         "starts its cosine after its 10 warm-up epochs).", lower_bound=0)



def _not_a_bare_path(dataset: str) -> bool:
    """--dataset given a path without its npz:/folder:/list: prefix gets the fix."""
    try:
        sources.find(dataset)
        return True
    except sources.DataError:
        pass
    claimed = sources.claiming(dataset)
    if claimed:
        kinds = [f"{s.name}:" for s in claimed]
    elif os.path.exists(os.path.expanduser(dataset)) or os.sep in dataset:
        kinds = [f"{s.name}:" for s in sources.registered() if s.prefixed]
    else:
        return True  # not a path: the loaders report the unknown name
    fixes = " or ".join(f"--dataset={kind}{dataset}" for kind in kinds)
    raise flags.ValidationError(f"--dataset={dataset} looks like a path; name its kind: {fixes}")



def _registered(flag: str, known, *, allow_none: bool = False):
    """A validator: the value is one of `known()`, the registry's names at parse time (a
    trainer or meta-net registered after the flags were defined counts too)."""
    def check(value):
        if (value is None and allow_none) or value in known():
            return True
        raise flags.ValidationError(f"--{flag}={value}: expected one of "
                                    f"{'|'.join(known())}")
    return check


# ------------------------------------------------------------------------------ help groups
# The flags every trainer reads, each in exactly one group, in the order --help lists them
# (train_test fails when a flag is in none and no trainer's `reads` names it). The flags
# only some trainers read follow, grouped by the trainers that read them (`help_groups`).
HELP_GROUPS = (
    ("run and output", ("workdir", "seed", "verbose", "export", "resume", "audit",
                        "audit_folds", "audit_show", "audit_filter", "extensions",
                        "deterministic")),
    ("data and noise", ("dataset", "data_dir", "data_root", "val_list", "test_list",
                        "class_names_file", "image_size", "resize_shorter", "standardize",
                        "noise", "noise_rate", "val_split", "augment", "augment_flip",
                        "imbalance_gamma")),
    ("trainer, backbone and label-free selection", (
        "trainer", "backbone", "pretrained", "meta_size", "meta_batch_size", "tau",
        "select_keep", "select_epochs", "select_augment")),
    ("optimisation", ("epochs", "batch_size", "steps_per_epoch", "lr", "momentum",
                      "weight_decay", "lr_schedule", "lr_schedule_start", "lr_tmax",
                      "lr_eta_min", "lr_milestones", "lr_gamma")),
    ("distribution and speed", ("strategy", "jit_compile", "mixed_precision",
                                "eval_batch_size")),
)
EVERY_TRAINER = frozenset(name for _, group in HELP_GROUPS for name in group)


def readers() -> dict[str, tuple[str, ...]]:
    """flag name -> the trainers that read it, for the flags not every trainer reads."""
    found: dict[str, list[str]] = {}
    for trainer in trainers.registered():
        for name in trainer.reads:
            found.setdefault(name, []).append(trainer.name)
    return {name: tuple(names) for name, names in found.items()}


def reads(trainer: trainers.Trainer) -> list[str]:
    """The training flags `trainer` reads, in definition order."""
    own = set(trainer.reads)
    return [name for name in training_flag_names() if name in EVERY_TRAINER or name in own]


def help_groups(trainer: str | None = None) -> list[tuple[str, tuple[str, ...]]]:
    """HELP_GROUPS, then the flags only some trainers read, grouped by those trainers
    ('read by --trainer=meta|vri_single'); with `trainer`, only the groups it reads."""
    groups: dict[tuple[str, ...], list[str]] = {}
    by_flag = readers()
    for name in training_flag_names():
        if name in by_flag and (trainer is None or trainer in by_flag[name]):
            groups.setdefault(by_flag[name], []).append(name)
    return [*HELP_GROUPS, *((f"read by --trainer={'|'.join(names)}", tuple(flags))
                            for names, flags in groups.items())]


AUDIT_OWN = ("workdir", "audit_folds", "audit_show", "audit_filter")
# The audit's own flags; the run's others override RUN/flags.cfg (--resume, --audit and
# --export are accepted and ignored).


def audit_groups() -> list[tuple[str, tuple[str, ...]]]:
    """`python -m clid_tf.audit --help`: its own flags, then the training flags."""
    return [("audit", AUDIT_OWN), *(
        (f"{title} (override RUN/flags.cfg)",
         tuple(n for n in group if n not in (*AUDIT_OWN, "resume", "audit", "export")))
        for title, group in help_groups())]


AUDIT_HELP = {"workdir": "The folder of a training run (required): its flags.cfg, split.npz "
                         "and checkpoints are read; audit.csv, audit.npz, audit.json, "
                         "audit.png (and results.json['audit'] of a finished run) and "
                         "tensorboard/audit are written."}


def training_flag_names() -> list[str]:
    """Names of the training flags (those `define_flags` defines), in definition order."""
    return [name for name in _DEFINED if name in FLAGS]
