"""Runs a few DivideMixModel steps (warm-up, then DivideMix + VRI + CLID of net 1) under a
strategy and saves the state. Not a test itself: `distribute_test.py` beside it runs it
in subprocesses (a process fixes its logical devices before TensorFlow starts).

  python tests/trainers/dividemix/distributed_steps.py OUT.npz --strategy=mirrored --replicas=2
  python tests/trainers/dividemix/distributed_steps.py OUT.npz --strategy=compare --replicas=2
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["CUDA_VISIBLE_DEVICES"] = ""

from tests.helpers import replicas as replica_steps  # pylint: disable=wrong-import-position

B, BU, META, K = 8, 6, 6, 3
STEPS = 3


def main():
    parser = replica_steps.script_arguments(__doc__.splitlines()[0])
    parser.add_argument("--meta_grad", default="recompute")
    args = parser.parse_args()
    replica_steps.save_states(args, steps)


def steps(strategy, args) -> dict:
    """The steps under `strategy` (the script's arguments `args`): the state to compare."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    import keras  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel

    from clid_tf.trainers.dividemix import streams as dividemix_data  # pylint: disable=import-outside-toplevel
    from clid_tf.trainers.dividemix import model as dividemix_model
    from clid_tf.metanets import vri
    from tests.helpers import small_models as helpers  # pylint: disable=import-outside-toplevel

    with strategy.scope():
        nets = [helpers.tiny_classifier(hidden=5, num_classes=K, seed=s) for s in (0, 1)]
        for net in nets:
            replica_steps.synchronize_batch_norm(net)
        metas = [vri.VRINet(K, 5, embed_dim=4, hidden=(16, 8), seed=s) for s in (0, 1)]
        model = dividemix_model.DivideMixModel(
            nets, metas, warmup_epochs=1, lambda_u=5.0, rampup_epochs=2, clip_norm=0.5,
            meta_grad=args.meta_grad, seed=1)
        model.compile([keras.optimizers.SGD(0.2, momentum=0.9) for _ in nets],
                      [keras.optimizers.Adam(0.01) for _ in nets])

    def run(phase, make_data):
        model.select_phase(phase, epoch=1)
        step = tf.function(model.train_step)
        losses = []
        for k in range(STEPS):
            data = make_data(k)

            def shard(context, data=data):
                i, n = context.replica_id_in_sync_group, context.num_replicas_in_sync
                return tf.nest.map_structure(
                    lambda a: a[i * len(a) // n:(i + 1) * len(a) // n], data)

            logs = strategy.run(step, args=(
                strategy.experimental_distribute_values_from_function(shard),))
            losses.append([float(strategy.experimental_local_results(logs[name])[0])
                           for name in sorted(logs)])
        return losses

    def dividemix_batch(k):
        rng = np.random.default_rng(k)
        return {"labeled": {"image": rng.normal(size=(B, 3)),
                            "image2": rng.normal(size=(B, 3)),
                            "label": rng.integers(0, K, B).astype(np.int32),
                            "prob": rng.random(B)},
                "unlabeled": {"image": rng.normal(size=(BU, 3)),
                              "image2": rng.normal(size=(BU, 3))},
                "meta": {"image": rng.normal(size=(META, 3))}}

    def warmup_batch(k):
        rng = np.random.default_rng(10 + k)
        return {"train": {"image": rng.normal(size=(B, 3)),
                          "label": rng.integers(0, K, B).astype(np.int32)}}

    state = {"warmup_logs": np.array(run(dividemix_data.Phase("warmup", 1, STEPS),
                                         warmup_batch)),
             "dividemix_logs": np.array(run(dividemix_data.Phase("dividemix", 0, STEPS),
                                            dividemix_batch))}
    for n, net in enumerate(nets):
        state.update({f"net{n}_v{i}": v.numpy() for i, v in enumerate(net.variables)})
    for n, meta in enumerate(metas):
        state.update({f"meta{n}_v{i}": v.numpy() for i, v in enumerate(meta.variables)})
    return state


if __name__ == "__main__":
    main()
