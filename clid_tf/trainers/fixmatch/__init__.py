"""FixMatch and FlexMatch on a few noisy labels plus unlabeled images, with a loss-net
that weights the supervised term, trained by CLID through a differentiable copy of the
real SGD-Nesterov step. `model.FixMatchModel` is the Keras model (its pure loss parts
included), `streams` the labeled/unlabeled/meta streams, `cli` its adapter."""

from clid_tf.trainers import Refusal, Trainer


def _semi_supervised(name: str) -> Trainer:
    return Trainer(
        name=name,
        summary=("few noisy labels plus unlabeled data, a loss-net trained by CLID"
                 + (" (FlexMatch's class-wise thresholds)" if name == "flexmatch" else "")),
        adapter="clid_tf.trainers.fixmatch.cli",
        defaults={"meta_net": "wnet", "virtual_step": "optimizer", "lambda_u": 1.0,
                  "select_augment": "weak"},
        refusals=(
            Refusal(lambda f: not f.num_labels,
                    f"--trainer={name} needs --num_labels (the number of labeled samples, "
                    "a multiple of the number of classes)"),
            Refusal(lambda f: f.method not in ("clid", "ce"),
                    lambda f: f"--trainer={name} trains its loss-net with --method=clid, or "
                              f"is plain {name} with --method=ce; --method={f.method} is "
                              "not available"),
            Refusal(lambda f: f.meta_net != "wnet",
                    lambda f: f"--trainer={name}'s loss-net is wnet (1-100-1 on the "
                              f"per-sample CE); --meta_net={f.meta_net} is not available"),
            Refusal(lambda f: f.augment != "none",
                    f"--augment does not apply to --trainer={name}: labeled and meta images "
                    "take the weak view, unlabeled images the weak and the strong one"),
            Refusal(lambda f: bool(f.steps_per_epoch),
                    f"--steps_per_epoch does not apply to --trainer={name}; an epoch is "
                    "--eval_every iterations"),
            Refusal(lambda f: f.audit,
                    f"--audit audits the meta trainer's labels; --trainer={name} has no "
                    "audit"),
            Refusal(lambda f: f.meta_every != 1,
                    f"--meta_every is not available with --trainer={name} (a meta step "
                    "every iteration)"),
            Refusal(lambda f: f.mixed_precision == "mixed_float16",
                    f"--mixed_precision=mixed_float16 is not available with --trainer={name} "
                    "(no loss scaling in its step); use mixed_bfloat16 or none"),
            Refusal(lambda f: f.imbalance_gamma != 1.0,
                    f"--imbalance_gamma is not available with --trainer={name} (its labeled "
                    "part is class-balanced)"),
        ),
        trains_on_unlabeled=True,
        length=lambda f: f"{f.epochs} evaluations every {f.eval_every} iterations")


TRAINERS = (_semi_supervised("fixmatch"), _semi_supervised("flexmatch"))
