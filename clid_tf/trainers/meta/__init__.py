"""The single-network meta trainers: `meta` (WNet or VRI through a virtual step, or plain
cross-entropy) and `vri_single` (the VRI rectifier through the real optimizer's step: the
authors' Clothing1M and Animal-10N scheme: ruofanhu/CLID-MU@5cd0608, sota/Train_clothing1M_vri.py
and sota/Train_animal_vri.py). Its Keras model is `model.MetaReweightModel`;
`small_loss` holds the small-loss meta sets of the ce_sloss / mae_sloss baselines; `cli`
builds and runs them from the flags."""

from clid_tf.trainers import META_NET_FLAGS, SEMI_SUPERVISED_FLAGS, Refusal, Trainer

# The meta trainer on the labeled part of --num_labels takes label-free meta objectives
# (its meta set may be unlabeled images) or none.
LABELED_PART_METHODS = ("ce", "clid", "entropy")
# What the one-network trainers read beyond the meta-net's flags: the meta step's period,
# VRI's KL weight, where the meta set comes from and how it is augmented, the classifier
# optimizer, the training subset (Clothing1M, Animal-10N).
ONE_NETWORK_FLAGS = ("meta_every", "vri_kl", "meta_source", "redraw_meta_each_epoch",
                     "meta_augment", "optimizer", "reset_optimizer_each_epoch",
                     "train_subset", "resample_subset_each_epoch")


META = Trainer(
    name="meta",
    summary="one network, a meta-net trained through the virtual step (or plain ce)",
    adapter="clid_tf.trainers.meta.cli",
    reads=(*META_NET_FLAGS, *ONE_NETWORK_FLAGS, *SEMI_SUPERVISED_FLAGS),
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
    reads=(*META_NET_FLAGS, *ONE_NETWORK_FLAGS),
    defaults={"meta_net": "vri", "virtual_step": "optimizer", "select_augment": "none"},
    refusals=(
        Refusal(lambda f: f.meta_net != "vri",
                lambda f: f"--trainer=vri_single trains the VRI rectifier; drop "
                          f"--meta_net={f.meta_net} (or use --trainer=meta)"),
        Refusal(lambda f: f.method == "ce",
                "--trainer=vri_single needs a meta objective; plain cross-entropy is "
                "--trainer=meta --method=ce"),
    ),
    audits=("in_sample", "out_of_sample"))

TRAINERS = (META, VRI_SINGLE)
