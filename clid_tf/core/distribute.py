"""tf.distribute strategies and the cross-replica rules that keep global-batch semantics.

Under MirroredStrategy / MultiWorkerMirroredStrategy each replica sees 1/R of every global
batch. The single rule of this codebase: every loss a replica differentiates is its SHARE
of the global loss, so that summing replica gradients (what Keras optimizers do on `apply`,
and what `global_sum` does in the virtual step) gives the single-device gradient:

  - WNet weights are normalised by their sum over the global batch (`global_sum`);
  - mean losses divide by the global batch size (`global_mean`);
  - CLID (and every meta objective) is computed on the meta batch gathered from all
    replicas (`gather`, which carries gradients) and divided by R, because each of the R
    replicas differentiates its own copy of the same global value;
  - per-sample random draws (VRI's eps) are drawn for the whole global batch from the
    generator state every replica shares and each replica keeps its own rows
    (`replica_rows`), so a sample gets the same draw as on one device.

Replica i holds rows [i*n, (i+1)*n) of each global batch of R*n rows (tf.distribute splits
a batch into R equal consecutive blocks; the input pipelines drop a smaller last batch).

With the default strategy (one device) all of these are identities.
"""

from __future__ import annotations

import tensorflow as tf

from clid_tf import names

STRATEGIES = names.STRATEGIES


def make_strategy(kind: str) -> tf.distribute.Strategy:
    """'default' (one device), 'mirrored' (all local GPUs, or CPU), 'multi_worker'
    (MultiWorkerMirroredStrategy configured by the TF_CONFIG environment variable), or
    'tpu' (TPUStrategy via TPUClusterResolver)."""
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"unknown strategy {kind!r}; choose from {STRATEGIES}")


def _replica_context() -> tf.distribute.ReplicaContext | None:
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def num_replicas() -> int:
    """R, the number of replicas in sync (1 outside a multi-replica step)."""
    context = _replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def global_sum(values):
    """Sum over replicas of a tensor or nested structure (differentiable)."""
    context = _replica_context()
    return values if context is None else context.all_reduce(
        tf.distribute.ReduceOp.SUM, values)


def global_mean(per_sample: tf.Tensor) -> tf.Tensor:
    """This replica's share of the global-batch mean: sum(local) / global batch size."""
    local_size = tf.cast(tf.shape(per_sample)[0], per_sample.dtype)
    return tf.reduce_sum(per_sample) / global_sum(local_size)


def replica_rows(global_rows: tf.Tensor) -> tf.Tensor:
    """This replica's rows of a tensor every replica holds whole for the global batch.

    Args:
      global_rows: [R*n, ...], the same on every replica (e.g. noise drawn from a shared
        generator state for the global batch).

    Returns:
      [n, ...], rows [i*n, (i+1)*n) on replica i: those of the samples it holds.
    """
    context = _replica_context()
    if context is None:
        return global_rows
    n = tf.shape(global_rows)[0] // context.num_replicas_in_sync
    start = tf.cast(context.replica_id_in_sync_group, n.dtype) * n
    return global_rows[start:start + n]


def gather(values):
    """Concatenates a tensor (or nested structure) over replicas along axis 0, with gradients."""
    context = _replica_context()
    if context is None:
        return values
    return tf.nest.map_structure(
        lambda v: None if v is None else context.all_gather(v, axis=0), values)


def spread_non_finite(grads):
    """Gradients, made non-finite on every replica when any replica's are.

    Under dynamic loss scaling every replica must skip the same steps; with one replica
    the gradients are returned as they are.
    """
    if _replica_context() is None:
        return grads
    poison = global_sum(tf.add_n([tf.reduce_sum(g * 0) for g in grads if g is not None]))
    return [None if g is None else g + tf.cast(poison, g.dtype) for g in grads]


def cross_replica_cond(pred, true_fn, false_fn, args=()):
    """tf.cond(pred, true_fn(*args), false_fn(*args)) -> this replica's scalar, taken in
    the cross-replica context: each branch runs on every replica with that replica's args.

    For strategies that synchronise through merge_call (Mirrored, MultiWorkerMirrored),
    which refuse a synchronisation inside a replica-context tf.cond; Keras'
    LossScaleOptimizer takes its cond the same way. `pred` must agree across replicas.
    """
    context = tf.distribute.get_replica_context()

    def cross_replica(strategy, pred, *args):
        def on_every_replica(fn):
            return lambda: tf.stack(strategy.experimental_local_results(
                strategy.extended.call_for_each_replica(fn, args=args)))
        return tf.cond(strategy.experimental_local_results(pred)[0],
                       on_every_replica(true_fn), on_every_replica(false_fn))

    stacked = context.merge_call(cross_replica, args=(pred, *args))  # this worker's replicas
    local_replicas = len(context.strategy.extended.worker_devices)  # ids are worker-major
    return stacked[context.replica_id_in_sync_group % local_replicas]
