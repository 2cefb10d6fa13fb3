"""DivideMix: two networks, each network's GMM divides the training data into a labeled
and an unlabeled part for the other, MixMatch with co-guessing and co-refinement;
optionally each network's VRI rectifier trained by CLID through a differentiable copy of
its real optimizer step. `mixmatch` holds the pure math, `streams` the per-epoch input
streams, `model.DivideMixModel` the Keras model, `cli` its adapter."""

from clid_tf.trainers import Refusal, Trainer, trains_on_all_labels

METHODS = ("ce", "clid", "entropy")

DIVIDEMIX = Trainer(
    name="dividemix",
    summary="two networks, GMM co-divide, MixMatch, optionally the VRI rectifier trained "
            "by CLID",
    adapter="clid_tf.trainers.dividemix.cli",
    # Selection scores the meta sets as the meta batches see them: weak crop + flip
    # whenever training augments (the authors' meta loader: ruofanhu/CLID-MU@5cd0608,
    # sota/Train_cifar_vri.py:371-392), as they are otherwise.
    defaults={"meta_net": "vri", "virtual_step": "optimizer", "lambda_u": 150.0,
              "select_augment": lambda f: "none" if f.augment == "none" else "weak"},
    refusals=(
        Refusal(lambda f: f.method not in METHODS,
                lambda f: f"--method={f.method}: --trainer=dividemix trains with ce (plain "
                          "DivideMix), clid or entropy (a label-free meta objective of the "
                          "VRI rectifier)"),
        Refusal(lambda f: f.method != "ce" and f.meta_net != "vri",
                lambda f: f"--meta_net={f.meta_net}: --trainer=dividemix rectifies the "
                          "logits with --meta_net=vri (its soft mixed targets give WNet no "
                          "per-sample loss to weight)"),
        Refusal(lambda f: f.meta_every != 1,
                "--meta_every: --trainer=dividemix makes a meta step on every step"),
        # VRI's KL is inert in ruofanhu/CLID-MU@5cd0608, sota/Train_cifar_vri.py: meta_step().
        Refusal(lambda f: f.given("vri_kl"),
                "--vri_kl: --trainer=dividemix logs VRI's KL but trains nothing with it (it "
                "is inert in the authors' DivideMix scripts)"),
        Refusal(lambda f: f.mixed_precision == "mixed_float16",
                "--mixed_precision=mixed_float16: --trainer=dividemix has no loss scaling; "
                "use mixed_bfloat16 or none"),
        Refusal(lambda f: f.jit_compile,
                "--jit_compile: --trainer=dividemix draws its mixup weight from a Beta "
                "distribution, whose sampler (StatelessRandomGamma) XLA cannot compile"),
        Refusal(lambda f: f.epochs <= f.warmup_epochs,
                lambda f: f"--epochs={f.epochs} ends within DivideMix's warm-up "
                          f"(--warmup_epochs={f.warmup_epochs}): its label-free selection "
                          "ranks the epochs after the warm-up, so train for more"),
        Refusal(lambda f: f.audit and f.audit_folds > 0,
                "--audit with --trainer=dividemix scores in sample only: add "
                "--audit_folds=0"),
        trains_on_all_labels("dividemix"),
    ),
    audits=("in_sample",))

TRAINERS = (DIVIDEMIX,)
