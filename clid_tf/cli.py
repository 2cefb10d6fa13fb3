"""The command line: every absl flag of a training run, and `main`, the composition root.

Only this module reads FLAGS; it passes plain arguments to the library. `define_flags()`
is called by the entry point (`python -m clid_tf.train`) and by tools/tests that need the
training flags, never at import time.
"""

from __future__ import annotations

import datetime
import os
import sys
import time

from absl import flags
from absl import logging

from clid_tf import atomic_io
from clid_tf import datasets
from clid_tf import errors

FLAGS = flags.FLAGS

METHODS = ("ce", "clid", "entropy", "ce_clean", "ce_noisy", "mae", "ce_sloss", "mae_sloss")
# Names of clid_tf.backbones.BACKBONES, listed here so flags parse without TensorFlow.
BACKBONES = ("small_cnn", "mlp", "resnet32", "preact_resnet18", "resnet34", "wrn28_10",
             "wrn28_2")
HUMAN_NOISE = tuple(datasets.HUMAN_LABELS)  # CIFAR-N label sets by their CLI names


class RunError(Exception):
    """A problem with the user's flags, files or data: reported as one line, exit code 2."""


def define_flags() -> None:
    """Defines every flag of a training run (idempotent)."""
    if "method" in FLAGS:
        return
    from clid_tf import meta_scope, noise  # pylint: disable=import-outside-toplevel
    # ---- run and output
    flags.DEFINE_string("workdir", None, "Output folder for TensorBoard events, checkpoints, "
                        "the SavedModel and results.json. Must be new or empty. "
                        "Default: a fresh ./runs/<method>-<time> folder.")
    flags.DEFINE_integer("seed", 0, "Seed for noise, meta set, shuffling and initialisation.")
    flags.DEFINE_integer("verbose", 1, "Keras progress output: 0 silent, 1 bars, 2 one line "
                         "per epoch.", lower_bound=0, upper_bound=2)
    flags.DEFINE_bool("export", True, "Export a SavedModel for serving at the end.")
    flags.DEFINE_bool("resume", False, "Continue the run in --workdir from its last "
                      "checkpoint (start it if the folder is new or empty). Rerun the same "
                      "command after a crash or kill.")
    flags.DEFINE_bool("audit", False, "After training, audit the training labels with the "
                      "last checkpoints (clid_tf.audit): audit.csv, results.json['audit'] "
                      "and tensorboard/audit.")
    flags.DEFINE_bool("deterministic", False, "TensorFlow op determinism: the same command "
                      "gives identical weights and results (slower on GPU).")
    # ---- data and noise
    flags.DEFINE_string("dataset", "digits", "Dataset: 'digits' (offline scikit-learn 8x8 "
                        "digits), 'cifar10', 'cifar100', 'cifar10_n', 'cifar100_n' (TFDS), "
                        "or 'npz:PATH' for your own arrays.")
    flags.DEFINE_string("data_dir", None, "TFDS data directory (default: TFDS_DATA_DIR).")
    flags.DEFINE_enum("noise", "sym", (*noise.KINDS, *HUMAN_NOISE),
                      "Label noise injected into the training labels: a synthetic model "
                      "(sym = reference convention, flip rate rate*(K-1)/K) or a human "
                      "label set of CIFAR-N (worst, aggre, rand1..3 for cifar10_n; "
                      "noisy100 for cifar100_n).")
    flags.DEFINE_float("noise_rate", 0.4, "Rate of the synthetic noise model.",
                       lower_bound=0.0, upper_bound=1.0)
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
                      "Classifier network; it returns logits and penultimate features.")
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
                      "memory, see tools/bench_speed.py), tape (reverse-over-reverse through the "
                      "recorded backward pass in one go: the readable reference) or jvp "
                      "(one forward-mode pass over the training batch). All give the same "
                      "gradient.")
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
    flags.DEFINE_enum("virtual_step", "sgd", ("sgd", "optimizer"), "The virtual step: sgd "
                      "(theta - lr g at the current lr, the paper's) or optimizer (the "
                      "classifier optimizer's own next update: momentum and weight decay).")
    flags.DEFINE_integer("meta_every", 1, "Meta update (virtual and meta step) on every k-th "
                         "training step only; the steps between use the meta-net as it is.",
                         lower_bound=1)
    flags.DEFINE_float("tau", 0.5, "CLID temperature on feature similarities.",
                       lower_bound=1e-6)
    flags.DEFINE_integer("warmup_epochs", 5, "Epochs of plain cross-entropy before meta "
                         "updates begin.", lower_bound=0)
    flags.DEFINE_enum("meta_optimizer", "adam", ("adam", "sgd"), "Meta-net optimiser "
                      "(reference: SGD without momentum for WNet, Adam for VRI).")
    flags.DEFINE_float("meta_lr", 1e-3, "Meta-net learning rate.", lower_bound=0.0)
    flags.DEFINE_float("meta_weight_decay", 5e-4, "Meta-net L2 weight decay (PyTorch "
                       "style, added to the gradient).", lower_bound=0.0)
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
    flags.DEFINE_integer("eval_batch_size", 500, "Batch size for test evaluation.",
                         lower_bound=1)
    flags.DEFINE_integer("select_keep", 5, "Label-free checkpoint selection: keep the test "
                         "logits of this many lowest meta-set-CLID epochs for the ensembles.",
                         lower_bound=1)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flags parser that reports a bad flag or flagfile as one line and exits 2."""
    try:
        return FLAGS(argv)
    except flags.Error as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str]) -> None:
    """Entry point for `absl.app.run`: any RunError/DataError becomes one line and exit 2."""
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:  # TensorFlow logs every save at INFO: hide that
        logging.set_verbosity(logging.WARNING)
    try:
        run()
    except (RunError, datasets.DataError) as error:
        _fail(str(error))
    except errors.NonFiniteError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(3)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def run() -> dict:
    """Builds everything from FLAGS, trains, evaluates, exports; returns the results dict."""
    from clid_tf import splits  # pylint: disable=import-outside-toplevel
    workdir = FLAGS.workdir or _default_workdir()
    resuming = FLAGS.resume and _has_checkpoint(workdir)
    if resuming:
        check_resumable(workdir)
        created = False
    else:
        created = check_workdir(workdir, allow_partial=FLAGS.resume)
    try:  # numpy only: bad data is reported before TensorFlow starts
        setup = splits.prepare(
            dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, noise=FLAGS.noise,
            noise_rate=FLAGS.noise_rate, human_noise=FLAGS.noise in HUMAN_NOISE,
            method=FLAGS.method, meta_size=FLAGS.meta_size, batch_size=FLAGS.batch_size,
            meta_batch_size=FLAGS.meta_batch_size, seed=FLAGS.seed,
            imbalance_gamma=FLAGS.imbalance_gamma)
        if FLAGS.augment != "none" and setup.dataset.x_train.ndim != 4:
            raise ValueError(f"--augment={FLAGS.augment} needs images; dataset "
                             f"{FLAGS.dataset} has feature vectors")
    except (ValueError, datasets.DataError) as error:
        if created:
            os.rmdir(workdir)
        raise RunError(str(error)) from error
    split_path = os.path.join(workdir, "split.npz")
    if resuming:
        check_same_split(split_path, setup)
    else:
        atomic_io.write_text(os.path.join(workdir, "flags.cfg"), FLAGS.flags_into_string())
        save_split(split_path, setup)
    print(f"workdir: {workdir}")
    from clid_tf import experiment, tb_views  # pylint: disable=import-outside-toplevel
    if not resuming:  # a resumed run's TensorBoard folder has them already
        logdir = os.path.join(workdir, "tensorboard")
        tb_views.write_hparams(logdir, {name: FLAGS[name].value
                                        for name in sorted(_training_flag_names())
                                        if name not in ("workdir", "resume", "verbose")})
        tb_views.write_layout(logdir)
    if FLAGS.deterministic:
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        tf.config.experimental.enable_op_determinism()
    started = time.time()
    results = experiment.train(
        setup, workdir=workdir, backbone=FLAGS.backbone, method=FLAGS.method,
        meta_net=FLAGS.meta_net, vri_kl=FLAGS.vri_kl, tau=FLAGS.tau,
        meta_grad=FLAGS.meta_grad, meta_scope=FLAGS.meta_scope, strategy=FLAGS.strategy,
        virtual_step=FLAGS.virtual_step, meta_every=FLAGS.meta_every,
        jit_compile=FLAGS.jit_compile, mixed_precision=FLAGS.mixed_precision,
        augment=FLAGS.augment,
        augment_flip=FLAGS.augment_flip, epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size, meta_batch_size=FLAGS.meta_batch_size,
        steps_per_epoch=FLAGS.steps_per_epoch, lr=FLAGS.lr, momentum=FLAGS.momentum,
        weight_decay=FLAGS.weight_decay,
        lr_schedule=FLAGS.lr_schedule, lr_tmax=FLAGS.lr_tmax, lr_eta_min=FLAGS.lr_eta_min,
        lr_milestones=[int(m) for m in FLAGS.lr_milestones], lr_gamma=FLAGS.lr_gamma,
        meta_optimizer=FLAGS.meta_optimizer, meta_lr=FLAGS.meta_lr,
        meta_weight_decay=FLAGS.meta_weight_decay, warmup_epochs=FLAGS.warmup_epochs,
        eval_batch_size=FLAGS.eval_batch_size, select_keep=FLAGS.select_keep,
        seed=FLAGS.seed, verbose=FLAGS.verbose, export=FLAGS.export, resume=resuming)
    results["train_seconds"] = round(time.time() - started, 1)
    results["flags"] = {name: FLAGS[name].value for name in sorted(_training_flag_names())}
    atomic_io.write_json(os.path.join(workdir, "results.json"), results)
    print(f"test accuracy: final {results['final_test_accuracy']:.4f}, best (oracle) "
          f"{results['best_test_accuracy']:.4f}, lowest-CLID epoch "
          f"{results['selected_accuracy']:.4f}, top-5 CLID ensemble "
          f"{results['ensemble5_accuracy']:.4f}; results in {workdir}")
    if FLAGS.audit:
        from clid_tf import audit  # pylint: disable=import-outside-toplevel
        try:
            results["audit"] = audit.audit(workdir, setup=setup)
        except audit.AuditError as error:
            raise RunError(f"audit: {error}") from error
        print(audit.summary(results["audit"]))
    return results


def _training_flag_names() -> list[str]:
    return [f.name for f in FLAGS.get_flags_for_module(sys.modules[__name__])]


def _default_workdir() -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{FLAGS.dataset.replace(':', '_').replace('/', '_')}"
                        f"-{FLAGS.method}-{stamp}")


def _has_checkpoint(workdir: str) -> bool:
    return os.path.exists(os.path.join(workdir, "checkpoints", "checkpoint"))


def check_resumable(workdir: str) -> None:
    """A run can resume when it is unfinished and was started with the same flags."""
    if os.path.exists(os.path.join(workdir, "results.json")):
        raise RunError(f"the run in {workdir} is complete (results.json exists); "
                       "nothing to resume")
    try:
        with open(os.path.join(workdir, "flags.cfg")) as f:
            saved = f.read()
    except OSError as error:
        raise RunError(f"cannot resume {workdir}: flags.cfg unreadable "
                       f"({error.strerror})") from error
    ignored = ("--resume", "--noresume", "--verbose", "--verbosity", "--workdir", "--export",
               "--noexport", "--audit", "--noaudit")
    def significant(text):
        return {line for line in text.splitlines() if not line.startswith(ignored)}
    changed = sorted(significant(FLAGS.flags_into_string()) ^ significant(saved))
    if changed:
        names = sorted({line.split("=")[0] for line in changed})
        raise RunError(f"cannot resume {workdir}: flags differ from the checkpointed run "
                       f"({', '.join(names)})")


def save_split(path: str, setup) -> None:
    """The noisy labels and sample indices of the run, checked again on resume."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    with atomic_io.open_atomic(path, "wb") as f:
        np.savez(f, **_split_arrays(setup))


def check_same_split(path: str, setup) -> None:
    import numpy as np  # pylint: disable=import-outside-toplevel
    with np.load(path) as saved:
        for key, value in _split_arrays(setup).items():
            if not np.array_equal(saved[key], value):
                raise RunError(f"cannot resume: the {key.replace('_', ' ')} differ from the "
                               "checkpointed run (data or code changed)")


def _split_arrays(setup) -> dict:
    import numpy as np  # pylint: disable=import-outside-toplevel
    none = np.zeros([0], np.int64)
    return {"noisy_labels": setup.noisy_labels, "train_indices": setup.train_indices,
            "meta_indices": none if setup.meta_indices is None else setup.meta_indices}


def check_workdir(path: str, *, allow_partial: bool = False) -> bool:
    """Refuses a workdir that holds files (an earlier run) or cannot be created/written.

    With allow_partial (--resume), a run that died before its first checkpoint may be
    started again in place. Creates the folder (empty) to prove it can be written;
    returns whether it was created.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunError(f"workdir {path} exists and is not a folder")
    if os.path.isdir(path) and os.listdir(path) and not allow_partial:
        raise RunError(f"workdir {path} is not empty (it holds an earlier run); "
                       "choose a new --workdir, or pass --resume to continue it")
    created = not os.path.exists(path)
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as error:
        raise RunError(f"workdir {path} cannot be written: {error.strerror}") from error
    return created



