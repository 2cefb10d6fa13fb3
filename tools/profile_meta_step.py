"""Where the time and memory of one CLID-MU meta step go, by cumulative prefixes of the step.

Each stage is a tf.function that runs the meta step up to and including that stage, so the
difference between consecutive stages is the cost of one stage. All stages are measured in
one process, interleaved round by round, and reported beside the plain CE step. With
--memory (default) the process runs on TensorFlow's BFC allocator (on CPU:
TF_CPU_ALLOCATOR_USE_BFC=true) and each prefix's peak bytes are reported too.

  python tools/profile_meta_step.py --backbone=resnet32 --batch_size=100
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

import step_bench

FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 5, "Timing rounds.")
flags.DEFINE_integer("steps", 3, "Calls per stage per round.")
flags.DEFINE_bool("memory", True, "Also report each prefix's peak allocator memory.")

STAGES = (
    ("1 training forward, recorded", "forward"),
    ("2 + logit gradient and virtual backward (theta')", "virtual"),
    ("3 + meta forward at theta' and CLID", "meta_loss"),
    ("4 + hypergradient (backward through 3 and 2)", "hypergradient"),
    ("5 + meta-net update and actual step = full train_step", "train_step"),
)


def main(argv):
    del argv
    if FLAGS.memory:
        os.environ.update(step_bench.BFC_ALLOCATOR)  # read when TensorFlow starts
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from clid_tf.core import lookahead
    from clid_tf.core import virtual

    batch, meta = step_bench.synthetic_batches()
    plain, model = step_bench.build_model("ce"), step_bench.build_model("clid_tape")
    step = lookahead.Sgd(tf.constant(0.05))
    objective = model.meta_objective

    def prefix(stage):
        def run():
            fwd = virtual.train_forward(model.backbone, batch["image"])
            if stage == "forward":
                return tf.reduce_sum(fwd.logits)
            phi = model.meta_net.trainable_variables
            with tf.GradientTape() as outer:
                dz, _ = virtual.logit_gradient(
                    virtual.for_meta_net(model.meta_net, batch["label"]), fwd.logits,
                    fwd.features)
                theta_prime = step(None, fwd.theta, virtual.virtual_gradient(fwd, dz)).params
                if stage == "virtual":
                    return tf.add_n([tf.reduce_sum(t) for t in theta_prime])
                logits, features, _ = virtual.forward(model.backbone, theta_prime, fwd.frozen,
                                                      meta["image"])
                meta_loss = objective(features, logits, None)
            if stage == "meta_loss":
                return meta_loss
            grads = outer.gradient(meta_loss, phi)
            return tf.add_n([tf.reduce_sum(g) for g in grads])
        return tf.function(run)

    steps = {name: prefix(stage) for name, stage in STAGES[:4]}
    steps[STAGES[4][0]] = tf.function(lambda: model.train_step({"train": batch, "meta": meta})
                                      ["loss"])
    steps["plain ce train_step"] = tf.function(lambda: plain.train_step({"train": batch})
                                               ["loss"])
    calls = {name: (lambda fn=fn: fn().numpy()) for name, fn in steps.items()}
    median = step_bench.median_seconds(calls, FLAGS.rounds, FLAGS.steps)
    peak = ({name: step_bench.peak_bytes(call) / 2**20 for name, call in calls.items()}
            if FLAGS.memory else {})
    base = median["plain ce train_step"]
    print(f"\n{FLAGS.backbone}, batch {FLAGS.batch_size}, meta batch {FLAGS.meta_batch_size}, "
          f"{step_bench.device_name()}, meta_grad=tape; median of {FLAGS.rounds} rounds\n")
    def mem(name):
        if not peak:
            return ""
        return f" {peak[name]:.0f} | {peak[name] / peak['plain ce train_step']:.2f}x |"

    extra = (" peak MiB | peak vs plain step |", "---:|---:|") if peak else ("", "")
    print("| stage (cumulative) | ms | this stage, ms | this stage vs plain step |" + extra[0])
    print("|---|---:|---:|---:|" + extra[1])
    previous = 0.0
    for name, _ in STAGES:
        t = median[name]
        print(f"| {name} | {t * 1e3:.0f} | {(t - previous) * 1e3:.0f} | "
              f"{(t - previous) / base:.2f}x |" + mem(name))
        previous = t
    print(f"| plain ce train_step (forward + backward + update) | {base * 1e3:.0f} | | 1.00x |"
          + mem("plain ce train_step"))


if __name__ == "__main__":
    app.run(main)
