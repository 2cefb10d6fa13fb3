"""The single-network meta trainers: `meta` (WNet or VRI through a virtual step, or plain
cross-entropy) and `vri_single` (the VRI rectifier through the real optimizer's step: the
authors' Clothing1M and Animal-10N scheme: ruofanhu/CLID-MU@5cd0608, sota/Train_clothing1M_vri.py
and sota/Train_animal_vri.py). Its Keras model is `model.MetaReweightModel`;
`small_loss` holds the small-loss meta sets of the ce_sloss / mae_sloss baselines; `cli`
builds and runs them from the flags."""

from clid_tf.trainers import Refusal, Trainer, trains_on_all_labels

# The meta trainer on the labeled part of --num_labels takes label-free meta objectives
# (its meta set may be unlabeled images) or none.
LABELED_PART_METHODS = ("ce", "clid", "entropy")


META = Trainer(
    name="meta",
    summary="one network, a meta-net trained through the virtual step (or plain ce)",
    adapter="clid_tf.trainers.meta.cli",
    defaults={"meta_net": "wnet", "virtual_step": "sgd", "select_augment": "none"},
    refusals=(
        Refusal(lambda f: bool(f.num_labels) and f.method not in LABELED_PART_METHODS,
                lambda f: f"--num_labels with --trainer=meta takes --method="
                          f"{'|'.join(LABELED_PART_METHODS)} (the meta set may be unlabeled "
                          f"images); --method={f.method} needs labeled meta samples"),
        Refusal(lambda f: bool(f.num_labels) and f.audit,
                "--audit audits every training label; with --num_labels most samples "
                "have none"),
    ),
    audits=("in_sample", "out_of_sample"))

VRI_SINGLE = Trainer(
    name="vri_single",
    summary="one network with the VRI rectifier and the real optimizer's virtual step "
            "(the Clothing1M and Animal-10N scripts)",
    adapter="clid_tf.trainers.meta.cli",
    defaults={"meta_net": "vri", "virtual_step": "optimizer", "select_augment": "none"},
    refusals=(
        Refusal(lambda f: f.meta_net != "vri",
                lambda f: f"--trainer=vri_single trains the VRI rectifier; drop "
                          f"--meta_net={f.meta_net} (or use --trainer=meta)"),
        Refusal(lambda f: f.method == "ce",
                "--trainer=vri_single needs a meta objective; plain cross-entropy is "
                "--trainer=meta --method=ce"),
        trains_on_all_labels("vri_single"),
    ),
    audits=("in_sample", "out_of_sample"))

TRAINERS = (META, VRI_SINGLE)
