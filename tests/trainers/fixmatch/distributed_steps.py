"""Runs a few FixMatchModel train steps (loss-net + CLID) under a strategy and saves the
state. Not a test itself: fixmatch_distribute_test.py runs it in subprocesses (a process
fixes its logical devices before TensorFlow starts) and compares one device with mirrored.

  python tests/trainers/fixmatch/distributed_steps.py OUT.npz --strategy=mirrored --replicas=2
  python tests/trainers/fixmatch/distributed_steps.py OUT.npz --strategy=compare --replicas=2
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["CUDA_VISIBLE_DEVICES"] = ""

from tests.helpers import replicas as replica_steps  # pylint: disable=wrong-import-position

LABELED, UNLABELED, META, STEPS = 8, 8, 6, 3


def main():
    parser = replica_steps.script_arguments(__doc__.splitlines()[0])
    parser.add_argument("--algorithm", default="fixmatch")
    args = parser.parse_args()
    replica_steps.save_states(args, steps)


def steps(strategy, args) -> dict:
    """The steps under `strategy` (the script's arguments `args`): the state to compare."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    import keras  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel

    from clid_tf.trainers.fixmatch import model as fixmatch  # pylint: disable=import-outside-toplevel
    from clid_tf.core import lookahead
    from clid_tf.metanets import wnet
    from tests.helpers import small_models as helpers  # pylint: disable=import-outside-toplevel

    with strategy.scope():
        backbone = helpers.tiny_classifier(hidden=5)
        backbone.head = backbone.get_layer("dense2")
        replica_steps.synchronize_batch_norm(backbone)
        loss_net = wnet.WeightNet(hidden=8, seed=0, normalize=False)
        loss_net(np.zeros([1]))
        model = fixmatch.FixMatchModel(
            backbone, loss_net, algorithm=args.algorithm, num_unlabeled=20, p_cutoff=0.4,
            ema_decay=0.9, tau=0.5, no_decay=lookahead.bn_and_bias(backbone))
        model.compile(keras.optimizers.SGD(0.2, momentum=0.9, nesterov=True),
                      keras.optimizers.SGD(0.5, momentum=0.9, nesterov=True))

    step = tf.function(model.train_step)
    meta_losses = []
    for k in range(STEPS):
        rng = np.random.default_rng(k)
        weak = rng.normal(size=(UNLABELED, 3)) * 2
        data = {"labeled": {"image": rng.normal(size=(LABELED, 3)),
                            "label": rng.integers(0, 3, LABELED).astype(np.int32)},
                "unlabeled": {"weak": weak, "strong": weak + rng.normal(size=weak.shape),
                              "position": rng.permutation(20)[:UNLABELED].astype(np.int32)},
                "meta": {"weak": rng.normal(size=(META, 3)),
                         "strong": rng.normal(size=(META, 3))}}

        def shard(context, data=data):
            i, n = context.replica_id_in_sync_group, context.num_replicas_in_sync
            return tf.nest.map_structure(
                lambda a: a[i * len(a) // n:(i + 1) * len(a) // n], data)

        logs = strategy.run(step, args=(
            strategy.experimental_distribute_values_from_function(shard),))
        meta_losses.append(float(strategy.experimental_local_results(logs["meta_clid"])[0]))
    state = {f"w{i}": v.numpy() for i, v in enumerate(model.backbone.weights)}
    state.update({f"ema{i}": v.numpy() for i, v in enumerate(model.ema_backbone.weights)})
    state.update({f"phi{i}": v.numpy() for i, v in enumerate(loss_net.trainable_variables)})
    if model.selected_label is not None:
        state["selected_label"] = model.selected_label.numpy()
    return {"meta_losses": np.array(meta_losses), **state}


if __name__ == "__main__":
    main()
