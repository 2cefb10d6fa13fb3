"""Runs a few MetaReweightModel train steps under a strategy and saves the resulting state.

Not a test itself: `distribute_test.py` runs it in subprocesses (a process fixes its
logical devices before TensorFlow starts) and compares the single-device, mirrored and
multi-worker results; `--strategy=compare` runs one device and then two mirrored replicas
in one process.

  python tests/core/distributed_steps.py OUT.npz --strategy=mirrored --replicas=2 --meta_grad=tape
  python tests/core/distributed_steps.py OUT.npz --strategy=mirrored --replicas=2 --meta_net=vri
  python tests/core/distributed_steps.py OUT.npz --strategy=mirrored --replicas=2 --meta_net=vri \
      --virtual_step=optimizer --optimizer=adam --dropout   (vri_single's configuration)
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["CUDA_VISIBLE_DEVICES"] = ""

from tests.helpers import replicas as replica_steps  # pylint: disable=wrong-import-position

GLOBAL_BATCH, META_BATCH = 8, 6
STEPS = 3


def main():
    parser = replica_steps.script_arguments(__doc__.splitlines()[0])
    parser.add_argument("--meta_grad", default="recompute")
    parser.add_argument("--meta_scope", default="full")
    parser.add_argument("--meta_net", default="wnet", choices=("wnet", "vri"))
    parser.add_argument("--virtual_step", default="sgd")
    parser.add_argument("--meta_every", type=int, default=1)
    parser.add_argument("--jit_compile", action="store_true")
    parser.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    parser.add_argument("--dropout", action="store_true",
                        help="a replica-consistent dropout layer after the features")
    args = parser.parse_args()
    replica_steps.save_states(args, steps)


def steps(strategy, args) -> dict:
    """The steps under `strategy` (the script's arguments `args`): the state to compare."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    import keras  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel

    # pylint: disable-next=import-outside-toplevel
    from clid_tf.models import backbones
    from clid_tf.trainers.meta import model as meta_model
    from clid_tf.core import objectives
    from clid_tf.metanets import vri
    from tests.helpers import small_models as helpers  # pylint: disable=import-outside-toplevel

    with strategy.scope():
        backbone = helpers.tiny_classifier(hidden=5)
        backbone.head = backbone.get_layer("dense2")
        if args.dropout:  # features -> dropout -> head, as VGG-19-BN's MLP has it
            keras.utils.set_random_seed(0)
            inputs = keras.Input((3,))
            # no bias before BN: its gradient is 0 but for rounding, which Adam would
            # amplify differently on 1 and 2 devices
            h = keras.layers.Dense(5, use_bias=False)(inputs)
            features = keras.layers.ReLU()(keras.layers.BatchNormalization()(h))
            logits = keras.layers.Dense(3)(backbones.GlobalBatchDropout(0.3, seed=1)(
                features))
            backbone = keras.Model(inputs, (logits, features))
            backbone.feature_dim, backbone.head = 5, None
        replica_steps.synchronize_batch_norm(backbone)
        meta_net = (helpers.weight_net() if args.meta_net == "wnet" else
                    vri.VRINet(3, backbone.feature_dim, embed_dim=4, hidden=(16, 8), seed=0))
        model = meta_model.MetaReweightModel(
            backbone, meta_net,
            meta_objective=objectives.meta_objective("clid", tau=0.5),
            meta_grad=args.meta_grad, meta_scope=args.meta_scope,
            virtual_step=args.virtual_step, meta_every=args.meta_every)
        optimizer = (keras.optimizers.Adam(0.01, epsilon=1e-8) if args.optimizer == "adam"
                     else keras.optimizers.SGD(0.2, momentum=0.9))
        model.compile(optimizer, keras.optimizers.Adam(0.01))

    step = tf.function(model.train_step, jit_compile=args.jit_compile)
    meta_losses = []
    for k in range(STEPS):
        batch, meta = helpers.batches(batch=GLOBAL_BATCH, meta=META_BATCH, seed=k)
        data = {"train": batch, "meta": meta}

        def shard(context, data=data):
            i, n = context.replica_id_in_sync_group, context.num_replicas_in_sync
            return tf.nest.map_structure(
                lambda a: a[i * len(a) // n:(i + 1) * len(a) // n], data)

        logs = strategy.run(step, args=(
            strategy.experimental_distribute_values_from_function(shard),))
        meta_losses.append(float(strategy.experimental_local_results(logs["meta_clid"])[0]))
    state = {f"theta{i}": v.numpy() for i, v in enumerate(backbone.trainable_variables)}
    state.update({f"bn{i}": v.numpy() for i, v in enumerate(backbone.non_trainable_variables)})
    state.update({f"phi{i}": v.numpy()
                  for i, v in enumerate(model.meta_net.trainable_variables)})
    return {"meta_losses": np.array(meta_losses), **state}


if __name__ == "__main__":
    main()
