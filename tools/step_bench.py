"""What tools/bench_speed.py, bench_frontier.py and profile_meta_step.py share: the
problem-size flags, a fixed synthetic batch, the models they time, and how they time and
weigh a step.

Imported by those scripts (their folder is on sys.path when they run); TensorFlow is
imported inside the functions so that a script can set allocator variables first.
"""

from __future__ import annotations

import statistics
import time

from absl import flags

# Read when TensorFlow starts: gives the CPU allocator the GPU allocator's statistics.
BFC_ALLOCATOR = {"TF_CPU_ALLOCATOR_USE_BFC": "true"}

FLAGS = flags.FLAGS
flags.DEFINE_string("backbone", "resnet32", "Backbone name (clid_tf.models.backbones.BACKBONES).")
flags.DEFINE_integer("batch_size", 100, "Training batch size.")
flags.DEFINE_integer("meta_batch_size", 100, "Meta batch size.")
flags.DEFINE_integer("image_size", 32, "Square image side.")
flags.DEFINE_integer("channels", 3, "Image channels.")
flags.DEFINE_integer("num_classes", 10, "Classes.")
flags.DEFINE_integer("uratio", 7, "FixMatch/FlexMatch modes: unlabeled batch = uratio x "
                     "batch_size (weak and strong views); the meta batch is meta_batch_size "
                     "images in both views.")

SSL_MODES = ("fixmatch", "fixmatch_clid", "flexmatch", "flexmatch_clid")


def synthetic_batches():
    """A fixed training batch {'image' [B, H, W, C], 'label' [B]} and meta batch {'image'}."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    shape = (FLAGS.image_size, FLAGS.image_size, FLAGS.channels)
    rng = np.random.default_rng(0)
    batch = {"image": tf.constant(rng.integers(0, 256, (FLAGS.batch_size, *shape)),
                                  tf.float32),
             "label": tf.constant(rng.integers(0, FLAGS.num_classes, FLAGS.batch_size),
                                  tf.int32)}
    meta = {"image": tf.constant(rng.integers(0, 256, (FLAGS.meta_batch_size, *shape)),
                                 tf.float32)}
    return batch, meta


def build_model(mode: str, **options):
    """A compiled MetaReweightModel: 'ce' (no meta-net) or '<clid|vri>_<route>' with route
    recompute, tape, jvp (full scope) or last_layer; WNet for 'clid', VRI for 'vri'.
    `options` go to MetaReweightModel (e.g. meta_scope='top:2', meta_every=2)."""
    import keras  # pylint: disable=import-outside-toplevel

    from clid_tf.models import backbones
    from clid_tf.trainers.meta import model as meta_model
    from clid_tf import metanets
    from clid_tf.core import objectives

    keras.utils.set_random_seed(0)
    net = backbones.build(FLAGS.backbone, num_classes=FLAGS.num_classes,
                          input_shape=(FLAGS.image_size, FLAGS.image_size, FLAGS.channels),
                          mean=(0.5,) * FLAGS.channels, std=(0.25,) * FLAGS.channels)
    if mode == "ce":
        model = meta_model.MetaReweightModel(net)
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9))
        return model
    kind, route = mode.split("_", 1)
    meta_net = metanets.build("wnet" if kind == "clid" else "vri",
                                         num_classes=FLAGS.num_classes,
                                         feature_dim=net.feature_dim, vri_kl=0.01, seed=0)
    options = {"meta_grad": "tape" if route == "last_layer" else route,
               "meta_scope": "last_layer" if route == "last_layer" else "full", **options}
    model = meta_model.MetaReweightModel(
        net, meta_net, meta_objective=objectives.meta_objective("clid", tau=0.5), **options)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), keras.optimizers.Adam(1e-3))
    return model


def ssl_step_data() -> dict:
    """A fixed FixMatch step element: labeled batch, unlabeled weak/strong views (with
    FlexMatch positions) and a weak/strong meta batch, as clid_tf.trainers.fixmatch.streams makes them."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    batch, _ = synthetic_batches()
    shape = (FLAGS.image_size, FLAGS.image_size, FLAGS.channels)
    rng = np.random.default_rng(1)
    images = lambda n: tf.constant(rng.integers(0, 256, (n, *shape)), tf.float32)  # noqa: E731
    unlabeled = FLAGS.uratio * FLAGS.batch_size
    return {"labeled": batch,
            "unlabeled": {"weak": images(unlabeled), "strong": images(unlabeled),
                          "position": tf.range(unlabeled, dtype=tf.int32)},
            "meta": {"weak": images(FLAGS.meta_batch_size),
                     "strong": images(FLAGS.meta_batch_size)}}


def build_ssl_model(mode: str):
    """A compiled FixMatchModel: mode 'fixmatch' or 'flexmatch', plain, or '..._clid' with
    the loss-net trained by CLID through the Nesterov virtual step (the authors' USB-fork
    optimizers: SGD-Nesterov 0.03 wd 1e-4 without BN/bias decay; loss-net SGD-Nesterov;
    ruofanhu/CLID-MU@5cd0608, semi/semilearn/core/algorithmbase.py:98 and 187, lr and wd
    in the semi/config/classic_cv_meta/ files)."""
    import keras  # pylint: disable=import-outside-toplevel

    from clid_tf.models import backbones
    from clid_tf.trainers.fixmatch import model as fixmatch
    from clid_tf.core import lookahead
    from clid_tf import metanets

    keras.utils.set_random_seed(0)
    net = backbones.build(FLAGS.backbone, num_classes=FLAGS.num_classes,
                          input_shape=(FLAGS.image_size, FLAGS.image_size, FLAGS.channels),
                          mean=(0.5,) * FLAGS.channels, std=(0.25,) * FLAGS.channels)
    algorithm, _, clid = mode.partition("_")
    loss_net = (metanets.build("wnet", num_classes=FLAGS.num_classes,
                                feature_dim=net.feature_dim, seed=0, normalize=False)
                if clid else None)
    model = fixmatch.FixMatchModel(net, loss_net, algorithm=algorithm,
                                   num_unlabeled=FLAGS.uratio * FLAGS.batch_size,
                                   no_decay=lookahead.bn_and_bias(net))
    model.compile(keras.optimizers.SGD(0.03, momentum=0.9, nesterov=True),
                  keras.optimizers.SGD(1e-4, momentum=0.9, nesterov=True) if clid else None)
    return model


def median_seconds(calls: dict, rounds: int, steps: int) -> dict:
    """Median seconds per call of each no-argument callable, after two warm-up calls each;
    the callables are interleaved round by round (this machine is noisy)."""
    for call in calls.values():  # trace, compile, warm caches
        call()
        call()
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(steps):
                call()
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def device_name() -> str:
    """'GPU' or 'CPU (N cores)', for table captions."""
    import os  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return "GPU" if tf.config.list_logical_devices("GPU") else f"CPU ({os.cpu_count()} cores)"


def peak_bytes(call) -> int:
    """Peak bytes held by TensorFlow's allocator during one call (weights included).

    On CPU this needs BFC_ALLOCATOR in the environment before TensorFlow starts.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    device = "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"
    tf.config.experimental.reset_memory_stats(device)
    call()
    return tf.config.experimental.get_memory_info(device)["peak"]


# ---------------------------------------------------------------- DivideMix
# Cumulative prefixes of one DivideMix + VRI + CLID step of net 1, and the two full steps.
DIVIDEMIX_MODES = {
    "dividemix": "plain DivideMix step (no meta-net)",
    "dividemix_vri": "DivideMix + VRI + CLID step",
    "dm_targets": "1 co-guess, co-refine (6 forwards) and mixup",
    "dm_forward": "2 + recorded forward of the mixed batch",
    "dm_meta": "3 + virtual step and meta step (hypergradient, CLID, Adam)",
}


def dividemix_batches():
    """Fixed DivideMix batches: labeled and unlabeled parts of --batch_size rows (two
    views each) and a meta batch of --meta_batch_size."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    shape = (FLAGS.image_size, FLAGS.image_size, FLAGS.channels)
    rng = np.random.default_rng(0)

    def images(n):
        return tf.constant(rng.integers(0, 256, (n, *shape)), tf.float32)

    b = FLAGS.batch_size
    return {"labeled": {"image": images(b), "image2": images(b),
                        "label": tf.constant(rng.integers(0, FLAGS.num_classes, b), tf.int32),
                        "prob": tf.constant(rng.random(b), tf.float32)},
            "unlabeled": {"image": images(b), "image2": images(b)},
            "meta": {"image": images(FLAGS.meta_batch_size)}}


def dividemix_step(mode: str):
    """A no-argument callable running `mode` (DIVIDEMIX_MODES) once on the fixed batches:
    DivideMixModel with two --backbone nets (and two VRINets), SGD(0.02, momentum 0.9)
    with its real-optimizer virtual step, Adam(1e-3), net 1's DivideMix phase."""
    import keras  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from clid_tf.models import backbones
    from clid_tf.trainers.dividemix import streams as dividemix_data
    from clid_tf.trainers.dividemix import model as dividemix_model
    from clid_tf.core import virtual
    from clid_tf.metanets import vri

    keras.utils.set_random_seed(0)
    nets = [backbones.build(FLAGS.backbone, num_classes=FLAGS.num_classes,
                            input_shape=(FLAGS.image_size, FLAGS.image_size, FLAGS.channels),
                            mean=(0.5,) * FLAGS.channels, std=(0.25,) * FLAGS.channels,
                            seed=s) for s in (0, 1)]
    metas = (None if mode == "dividemix" else
             [vri.VRINet(FLAGS.num_classes, net.feature_dim, seed=s) for s, net in enumerate(nets)])
    model = dividemix_model.DivideMixModel(nets, metas, warmup_epochs=0)
    model.compile([keras.optimizers.SGD(0.02, momentum=0.9) for _ in nets],
                  None if metas is None else [keras.optimizers.Adam(1e-3) for _ in nets])
    model.select_phase(dividemix_data.Phase("dividemix", 0, 100), epoch=1)
    data = dividemix_batches()
    x, u = data["labeled"], data["unlabeled"]

    def prefix():
        mixed = model._mixed_batch(0, x, u, model._targets(0, x, u))  # pylint: disable=protected-access
        if mode == "dm_targets":
            return tf.reduce_sum(mixed.images)
        fwd = virtual.train_forward(nets[0], mixed.images)
        if mode == "dm_forward":
            return tf.reduce_sum(fwd.logits)
        return model._meta_step(0, mixed, data["meta"], fwd, model._lambda_u(0))  # pylint: disable=protected-access

    if mode in ("dividemix", "dividemix_vri"):
        step = tf.function(model.train_step)
        return lambda: step(data)["loss"].numpy()
    step = tf.function(prefix)
    return lambda: step().numpy()
