"""The --trainer=dividemix flagfiles: each setting of DivideMix's grid and CIFAR-N has a
DivideMix + VRI + CLID file and a plain DivideMix file, and each file holds the values of
its source (the authors' script in ruofanhu/CLID-MU@5cd0608, sota/, or DivideMix's), written out
again here so that a typo fails. Parsing, wiring on mock data and (with -m slow) one
training step: tests/flagfiles_test.py."""

import os
import re

import pytest
from absl import flags
from absl.testing import flagsaver

from clid_tf import cli
from clid_tf.data import sources
from tests.helpers import ROOT

FLAGS = flags.FLAGS
FILES = sorted(f"flags/{n}" for n in os.listdir(os.path.join(ROOT, "flags"))
               if re.fullmatch(r"cifar.*_dividemix_.*\.cfg", n) and "common" not in n)
NAME = re.compile(r"flags/(?P<dataset>cifar10_n|cifar100_n|cifar100|cifar10)_"
                  r"(?:(?P<kind>sym|asym)(?P<rate>\d\d)|(?P<human>[a-z]+\d*))_dividemix_"
                  r"(?P<method>vri_clid|ce)\.cfg")
SETTINGS = {("cifar10", "sym20"), ("cifar10", "sym50"), ("cifar10", "sym80"),
            ("cifar10", "asym40"), ("cifar100", "sym20"), ("cifar100", "sym50"),
            ("cifar100", "sym80"), ("cifar100", "asym40"), ("cifar10_n", "worst"),
            ("cifar10_n", "aggre"), ("cifar10_n", "rand1"), ("cifar100_n", "noisy100")}
# Shared by every file: DivideMix's MixMatch and co-divide, 300 epochs, SGD 0.9 / 5e-4, the
# label-free selection on 1000-image meta sets (the authors' script defaults:
# ruofanhu/CLID-MU@5cd0608, sota/Train_cifar_vri.py and sota/Train_cifar_vri_mix.py).
SHARED = dict(trainer="dividemix", epochs=300, momentum=0.9, weight_decay=5e-4,
              lr_schedule="multistep", lr_gamma=0.1, p_threshold=0.5, mixup_alpha=4.0,
              sharpen_temperature=0.5, rampup_epochs=16, guess_bn_mode="train",
              meta_size=1000, tau=0.5, select_keep=5, steps_per_epoch=0)
# The authors' DivideMix + VRI + CLID (ruofanhu/CLID-MU@5cd0608, sota/Train_cifar_vri.py and
# sota/submit_cifar.sh); CIFAR-10N: sota/Train_cifar_vri_mix.py and sota/submit_cifar_mix.sh.
TCV = dict(method="clid", meta_net="vri", batch_size=256, lr=0.02, lr_milestones=["80", "120"],
           lambda_u=150.0, clip_norm=0.8, meta_batch_size=256, meta_optimizer="adam",
           meta_lr=0.01, meta_weight_decay=5e-4, virtual_step="optimizer",
           meta_grad="recompute", meta_scope="full", backbone="preact_resnet18")
TCM = dict(TCV, backbone="resnet34", lr=0.05, lr_milestones=["120", "200"], clip_norm=0.0,
           meta_batch_size=100)
# DivideMix's own script and its lambda_u per setting (DivideMix paper; CIFAR-N by analogy).
DIVIDEMIX = dict(method="ce", batch_size=64, lr=0.02, lr_milestones=["150"], clip_norm=0.0,
                 augment="weak", backbone="preact_resnet18")
PLAIN_LAMBDA_U = {("cifar10", "sym20"): 0, ("cifar10", "sym50"): 25, ("cifar10", "sym80"): 25,
                  ("cifar10", "asym40"): 0, ("cifar100", "sym20"): 25,
                  ("cifar100", "sym50"): 150, ("cifar100", "sym80"): 150,
                  ("cifar100", "asym40"): 150, ("cifar10_n", "worst"): 25,
                  ("cifar10_n", "aggre"): 0, ("cifar10_n", "rand1"): 0,
                  ("cifar100_n", "noisy100"): 150}


@pytest.fixture(autouse=True)
def _flags(monkeypatch):
    monkeypatch.chdir(ROOT)
    cli.define_flags()
    with flagsaver.flagsaver():
        yield


def test_every_setting_has_both_files():
    found = {(m["dataset"], m["human"] or f"{m['kind']}{m['rate']}", m["method"])
             for m in map(NAME.fullmatch, FILES)}
    assert found == {(d, s, m) for d, s in SETTINGS for m in ("vri_clid", "ce")}


@pytest.mark.parametrize("path", FILES)
def test_file_holds_its_settings_values(path):
    name = NAME.fullmatch(path)
    assert name, path
    FLAGS.unparse_flags()
    FLAGS(["x", f"--flagfile={path}"])
    dataset, ten = name["dataset"], name["dataset"] in ("cifar10", "cifar10_n")
    setting = (dataset, name["human"] or f"{name['kind']}{name['rate']}")
    if name["method"] == "ce":
        want = dict(DIVIDEMIX, lambda_u=float(PLAIN_LAMBDA_U[setting]))
    else:
        want = dict(TCM if dataset == "cifar10_n" else TCV,
                    augment="strong" if ten else "weak")
    want.update(SHARED, dataset=dataset, warmup_epochs=10 if ten else 30)
    if name["human"]:
        want["noise"] = name["human"]
        assert sources.is_human_label(name["human"])
    else:
        want["noise"] = ("sym" if name["kind"] == "sym" else
                         "asym_cifar10" if dataset == "cifar10" else "asym_cifar100")
        want["noise_rate"] = int(name["rate"]) / 100
    assert {key: FLAGS[key].value for key in want} == want, path
