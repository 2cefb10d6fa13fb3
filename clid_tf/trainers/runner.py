"""The runner: one owner of a run's services, for every trainer.

A trainer's adapter builds its parts from the flags and hands them over as a `Plan`: the
compiled model, the stream it trains on, the networks it predicts with, the meta sets their
label-free selections score, and its own callbacks. The runner does the rest, the same way
for every trainer: the run folder's checkpoints and resume (`RunState`), one `ClidSelection`
per predicting network (with the summed-logits evaluation when there are several),
TensorBoard (hyper-parameters, layout, scalars, meta-weight views, step times), the
non-finite guard, the SavedModel export and results.json; and, for `python -m clid_tf.audit`,
the in-sample scores of the run's last checkpoints.

An adapter (`clid_tf.trainers.Adapter`) must define `build(flags, setup) -> Plan`; the
rest has defaults here: `prepare_setup` (the noisy training split of `parts.noisy_setup`),
`split_arrays` (its labels and indices), `in_sample_scores` and `out_of_sample_scores`.
Only numpy is imported at module level, so the command line checks flags and data before
TensorFlow starts.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from clid_tf.data.inputs import read_numpy
from clid_tf.evaluation import label_issues
from clid_tf.runs import folder as run_folder
from clid_tf.trainers import parts

# `Plan.selection_augment` left to --select_augment (None is "no augmentation").
FROM_FLAGS = "from flags"


@dataclasses.dataclass
class Plan:
    """What a trainer hands the runner.

    Attributes:
      model: the compiled Keras model: `checkpoint_parts()` (what a checkpoint holds) and
        `predicting()` (the networks whose summed logits are its prediction), as
        `trainers.base_model.TrainerModel` defines them.
      stream: first epoch (0-based) -> fit's input from that epoch on. Epoch e's batches
        are a function of the seed and e, so a resumed run sees what an uninterrupted one
        would.
      steps_per_epoch: fit's steps per epoch; None when the stream ends each epoch itself.
      networks: the networks scored, selected and exported, one `ClidSelection` each
        (their logits summed when several); default `model.predicting()`.
      meta_sets: per network, the `data.Part` its selection scores; default the setup's
        selection set (`setup.meta_inputs()`, `setup.selection_indices`) for each.
      callbacks: the trainer's own (a warm-up switch, a per-epoch learning rate), run
        before the services' callbacks.
      state: more trackables the checkpoints hold (a stream's loss history), by name.
      eligible_from: the first (1-based) epoch a selection may keep.
      selection_augment: the augmentation selections score through (default
        --select_augment's, `parts.selection_augmentation`).
      views: training-split indices whose meta weights TensorBoard shows every epoch, or
        None (no meta-net, or none to show).
      charts: the TensorBoard custom-scalars layout ((title, tag, ...), ...), None for the
        default.
      unit: what one fit epoch is ('epoch', 'evaluation'), for the resume line.
      results: results.json so far -> the trainer's own entries (added to it).
    """
    model: Any
    stream: Callable[[int], Any]
    steps_per_epoch: int | None = None
    networks: Sequence[Any] | None = None
    meta_sets: Sequence[Any] | None = None
    callbacks: Sequence[Any] = ()
    state: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    eligible_from: int = 1
    selection_augment: Any = FROM_FLAGS
    views: np.ndarray | None = None
    charts: Sequence[Sequence[str]] | None = None
    unit: str = "epoch"
    results: Callable[[dict], dict] | None = None

    def predicting(self) -> list:
        """The networks the run scores, selects and exports."""
        return list(self.model.predicting() if self.networks is None else self.networks)


# ---------------------------------------------------------------- data (numpy only)
def prepare_setup(adapter, flags):
    """The adapter's `prepare_setup(flags)`, or the noisy training split of the flags."""
    own = getattr(adapter, "prepare_setup", None)
    return parts.noisy_setup(flags) if own is None else own(flags)


def split_arrays(adapter, flags, setup) -> dict:
    """The adapter's `split_arrays(flags, setup)`, or the setup's labels and indices."""
    own = getattr(adapter, "split_arrays", None)
    if own is not None:
        return own(flags, setup)
    return run_folder.split_arrays(setup.noisy_labels, setup.train_indices,
                                   setup.meta_indices, setup.val_indices)


# ---------------------------------------------------------------- the run
def train(flags, setup, folder, plan: Plan, *, resuming: bool) -> dict:
    """Fits `plan` from the run folder's newest checkpoint (epoch 0 unless `resuming`) to
    --epochs with every service, exports what --export names and returns results.json."""
    # deferred: keeps TensorFlow out of the command line's checks
    # pylint: disable=import-outside-toplevel
    from clid_tf.evaluation import results as results_lib
    from clid_tf.evaluation import two_nets
    from clid_tf.runs import callbacks as run_callbacks
    from clid_tf.runs import tb_views
    if not resuming:  # a resumed run's TensorBoard folder has them already
        parts.tensorboard_header(flags, folder, plan.charts)
    ds = setup.dataset
    selections = selections_of(flags, setup, folder, plan)
    several = len(selections) > 1
    evaluation = (two_nets.TwoNetEvaluation(selections, None if ds.test is None
                                            else ds.test.labels) if several else None)
    checkpointed = {**plan.model.checkpoint_parts(), **plan.state}
    run_state = run_callbacks.RunState(
        folder.checkpoints, types.SimpleNamespace(checkpoint_parts=lambda: checkpointed),
        selections)
    start = run_state.restore() if resuming else 0
    if start:
        print(f"resuming after {plan.unit} {start} of {flags.epochs}")
    services = [*selections, *([evaluation] if several else []),  # add logs: before
                tb_views.StepTimer(), *meta_views(flags, setup, folder, plan),  # the callbacks
                tb_views.TensorBoard(folder.tensorboard)]                  # that record them
    fit(flags, plan, start=start, services=services, checkpoint=run_state,
        validation=parts.validation_batches(flags, setup))
    if several:
        networks = results_lib.exported_members(selections, flags.export,
                                                keep=flags.select_keep,
                                                last=plan.predicting())
        parts.export(flags, networks, (), ds, folder, overwrite=resuming)
        results = results_lib.several_networks(
            setup, selections, evaluation, run_state.history, export=flags.export,
            num_meta=[len(s.meta) for s in selections])
    else:
        networks, epochs = results_lib.exported_networks(
            selections[0], flags.export, keep=flags.select_keep, last=plan.predicting()[0],
            last_epoch=flags.epochs)
        exported = parts.export(flags, networks, epochs, ds, folder, overwrite=resuming)
        results = results_lib.single_network(setup, selections[0], run_state.history,
                                             export=flags.export, exported=exported)
    results["trainer"] = flags.trainer
    if plan.results is not None:
        results.update(plan.results(results))
    return results


def fit(flags, plan: Plan, *, start: int = 0, services: Sequence = (), checkpoint=None,
        validation=None):
    """`plan.model.fit` from epoch `start` to --epochs: the trainer's callbacks, then
    `services`, the non-finite guard and last `checkpoint` (the guard raises before a bad
    epoch is checkpointed). Without services it is a bare fit (an audit's fold)."""
    # deferred: keeps TensorFlow out of the command line's checks
    from clid_tf.runs import callbacks as run_callbacks  # pylint: disable=import-outside-toplevel
    # an endless stream shuffles itself, seeded by epoch (DivideMix's fit takes neither)
    length = ({} if plan.steps_per_epoch is None
              else {"steps_per_epoch": plan.steps_per_epoch, "shuffle": False})
    return plan.model.fit(
        plan.stream(start), initial_epoch=start, epochs=flags.epochs, verbose=flags.verbose,
        validation_data=validation, **length,
        callbacks=[*plan.callbacks, *services, run_callbacks.NonFiniteGuard(plan.steps_per_epoch),
                   *([] if checkpoint is None else [checkpoint])])


def selections_of(flags, setup, folder, plan: Plan) -> list:
    """One label-free `ClidSelection` per network the plan predicts with: meta-set CLID
    every epoch, the --select_keep lowest-CLID epochs kept (their weights as files in the
    run folder), test accuracies reported (prefixed net1_, net2_, ... when several)."""
    # deferred: keeps TensorFlow out of the command line's checks
    # pylint: disable=import-outside-toplevel
    from clid_tf.data import pipelines
    from clid_tf.evaluation import selection
    ds = setup.dataset
    networks = plan.predicting()
    meta_sets = plan.meta_sets or [pipelines.Part(setup.meta_inputs(),
                                                  setup.selection_indices)] * len(networks)
    augment = (parts.selection_augmentation(flags, ds)
               if plan.selection_augment is FROM_FLAGS else plan.selection_augment)
    test = None if ds.test is None else pipelines.Part(ds.test.inputs, None, ds.test.labels)
    optimizers = list(getattr(plan.model, "net_optimizers", None) or [])
    rates = ([lambda o=o: o.learning_rate for o in optimizers]  # each network's own
             if len(optimizers) == len(networks) else [None] * len(networks))
    return [selection.ClidSelection(
        meta, test=test, batch_size=min(flags.meta_batch_size, len(meta)), tau=flags.tau,
        keep=flags.select_keep, seed=flags.seed, eval_batch_size=flags.eval_batch_size,
        augment=augment, directory=folder.selected_weights, backbone=net,
        prefix=f"net{k + 1}_" if len(networks) > 1 else "", eligible_from=plan.eligible_from,
        match_lr=flags.select_epochs == "lowest_lr", learning_rate=rate)
        for k, (net, meta, rate) in enumerate(zip(networks, meta_sets, rates))]


def meta_views(flags, setup, folder, plan: Plan) -> list:
    """[the TensorBoard meta-weight views of `plan.views`], or [] for none."""
    if plan.views is None:
        return []
    # deferred: keeps TensorFlow out of the command line's checks
    from clid_tf.runs import tb_views  # pylint: disable=import-outside-toplevel
    is_noisy = parts.noise_flags(setup)
    return [tb_views.MetaViews(
        folder.tensorboard, read_numpy(setup.dataset.train.inputs, plan.views),
        setup.noisy_labels[plan.views], None if is_noisy is None else is_noisy[plan.views],
        sample_size=len(plan.views), seed=flags.seed, eval_batch_size=flags.eval_batch_size)]


# ---------------------------------------------------------------- the label audit
def in_sample_scores(adapter, flags, folder, setup):
    """The adapter's `in_sample_scores`, or the default: the training samples scored by
    the plan's networks (mean logits; a one-network model's meta-net weights its labels)
    under each of the run's last checkpoints, averaged."""
    own = getattr(adapter, "in_sample_scores", None)
    if own is not None:
        return own(flags, folder, setup)
    # deferred: keeps TensorFlow out of the command line's checks
    # pylint: disable=import-outside-toplevel
    from clid_tf.data import pipelines
    from clid_tf.runs import callbacks as run_callbacks
    plan = adapter.build(flags, setup)
    networks = plan.predicting()
    idx = setup.train_indices
    return label_issues.checkpoint_scores(
        folder.checkpoint_paths()[-label_issues.IN_SAMPLE_CHECKPOINTS:],
        run_callbacks.restorer({**plan.model.checkpoint_parts(), **plan.state}),
        networks[0] if len(networks) == 1 else networks,
        pipelines.Part(setup.dataset.train.inputs, idx, setup.noisy_labels[idx]),
        meta_net=getattr(plan.model, "meta_net", None) if len(networks) == 1 else None,
        batch_size=flags.eval_batch_size)


def out_of_sample_scores(adapter, flags, setup, *, folds: int):
    """The adapter's `out_of_sample_scores`, or the default: K-fold cross-fitting over the
    training samples, each fold's plan built from the setup restricted to the fold's
    training samples (the adapter's `fold_of(flags, setup, train_indices)`, default the
    setup with those `train_indices`) and fitted without the run's services."""
    own = getattr(adapter, "out_of_sample_scores", None)
    if own is not None:
        return own(flags, setup, folds=folds)
    # deferred: keeps TensorFlow out of the command line's checks
    from clid_tf.data import pipelines  # pylint: disable=import-outside-toplevel
    fold_of = getattr(adapter, "fold_of", lambda _, whole, train_indices: whole._replace(
        train_indices=train_indices))
    idx, inputs = setup.train_indices, setup.dataset.train.inputs

    def train_fold(positions):
        plan = adapter.build(flags, fold_of(flags, setup, idx[positions]))
        fit(flags, plan)
        return lambda held: label_issues.score_part(
            plan.model, pipelines.Part(inputs, idx[held], setup.noisy_labels[idx[held]]),
            batch_size=flags.eval_batch_size)

    return label_issues.cross_fit(
        setup.noisy_labels[idx], train_fold, folds=folds, seed=flags.seed,
        on_fold=lambda k, n: print(f"audit: training fold {k} of {n} "
                                   f"({flags.trainer_spec.describe_length(flags)})"))
