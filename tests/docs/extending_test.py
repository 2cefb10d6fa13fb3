"""docs/extending.md stays true: its example files (a meta-net, a dataset source, a
co-teaching trainer, Python scripts) are copied out of the page into a folder outside
clid_tf, and the page's own commands run there: training with --extensions, a resume, the
audits, the Python API."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from sklearn import datasets as sk_datasets

from tests.helpers import ROOT
from tests.helpers.cli import assert_one_line_error

PAGE = os.path.join(ROOT, "docs", "extending.md")
# Small sizes appended to the page's commands (the page shows the defaults).
SMALL = ["--epochs=3", "--warmup_epochs=1", "--meta_size=100", "--batch_size=50",
         "--verbose=0", "--export=none"]


def page_files() -> dict[str, str]:
    """'path.py' -> the code of each python block of the page that starts '# path.py'."""
    text = open(PAGE).read()
    return dict(re.findall(r"```python\n# ([\w/]+\.py)\n(.*?)```", text, re.DOTALL))


def page_commands() -> list[list[str]]:
    """The page's `python -m clid_tf...` command lines, split."""
    text = open(PAGE).read()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.DOTALL)
    return [line.split() for block in blocks for line in block.splitlines()
            if line.startswith("python -m clid_tf.")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The page's files and a noisy-label CSV table (digits features, label names) in a
    fresh folder: train.csv and test.csv."""
    where = tmp_path_factory.mktemp("extending")
    for name, code in page_files().items():
        (where / name).parent.mkdir(exist_ok=True)
        (where / name).write_text(code)
    x, y = sk_datasets.load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                      "nine"])
    for split, rows in (("train", order[:1400]), ("test", order[1400:])):
        header = ",".join(["label", *(f"f{i}" for i in range(64))])
        lines = [",".join([names[y[i]], *(str(int(v)) for v in x[i])]) for i in rows]
        (where / f"{split}.csv").write_text("\n".join([header, *lines]) + "\n")
    return where


def run(args, cwd):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(cwd)}
    return subprocess.run([sys.executable, *args[1:]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


TRAINER_FILES = ("coteaching/__init__.py", "coteaching/model.py", "coteaching/cli.py")


def test_the_page_has_the_examples_it_promises():
    assert set(page_files()) == {"margin_metanet.py", "table_source.py", "use_them.py",
                                 *TRAINER_FILES, "use_coteaching.py"}
    assert [c[2] for c in page_commands()] == ["clid_tf.train", "clid_tf.train", "clid_tf.audit",
                                               "clid_tf.train", "clid_tf.train", "clid_tf.audit",
                                               "clid_tf.audit"]
    text, files = open(PAGE).read(), page_files()
    sizes = re.search(r"the meta-net 1 file of (\d+) lines, the source 1 file of (\d+) lines",
                      text)
    assert sizes and [int(n) for n in sizes.groups()] == [
        len(files["margin_metanet.py"].splitlines()), len(files["table_source.py"].splitlines())]
    sizes = re.search(r"3 files of (\d+), (\d+) and (\d+) lines \((\d+) in all\)", text)
    counts = [len(files[name].splitlines()) for name in TRAINER_FILES]
    assert sizes and [int(n) for n in sizes.groups()] == [*counts, sum(counts)]
    assert sum(counts) <= 120


def test_the_pages_commands_train_resume_and_audit_with_its_extensions(folder):
    train, resume, audit = page_commands()[:3]
    proc = run([*train, *SMALL], folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "meta-net margin" in proc.stdout
    assert "--extensions=margin_metanet,table_source" in proc.stdout.splitlines()[-1]
    run_dir = folder / "runs" / "table"
    first = json.load(open(run_dir / "results.json"))
    assert first["meta_net"] == "margin" and first["flags"]["dataset"] == "table:train.csv"
    assert first["class_names"][:2] == ["eight", "five"]  # the label names, sorted
    assert first["final_test_accuracy"] > 0.5
    # a run killed after its last checkpoint, before results.json: --resume finishes it
    os.remove(run_dir / "results.json")
    proc = run([*resume, *SMALL], folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming after epoch 3 of 3" in proc.stdout
    assert json.load(open(run_dir / "results.json"))["final_test_accuracy"] == pytest.approx(
        first["final_test_accuracy"])
    # the audit imports code only when its own command line names it
    bare = run([a for a in audit if not a.startswith("--extensions")], folder)
    assert_one_line_error(bare, "names --extensions=margin_metanet,table_source")
    proc = run([*audit, "--audit_folds=0"], folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.load(open(run_dir / "results.json"))["audit"]["num_train"] == 1400


def test_the_pages_python_example_runs(folder):
    proc = run(["python", "use_them.py"], folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"margin net: -?\d", proc.stdout)


def test_help_lists_what_the_extensions_register(folder):
    proc = run(["python", "-m", "clid_tf.train", "--extensions=margin_metanet,table_source",
                "--help"], folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = " ".join(proc.stdout.split())
    assert "margin (a sigmoid of the logit margin, two parameters)" in text
    assert "'table:/data/train.csv' (a CSV table with a header and a 'label' column)" in text


def test_an_extension_that_cannot_be_imported_is_one_line(folder):
    proc = run(["python", "-m", "clid_tf.train", "--extensions=no_such_module"], folder)
    assert_one_line_error(proc, "--extensions=no_such_module: cannot import it "
                                "(ModuleNotFoundError")
    proc = run(["python", "-m", "clid_tf.train", "--extensions=./margin_metanet.py"], folder)
    assert_one_line_error(proc, "--extensions takes module names")
    # a flagfile (a run's flags.cfg given back, say) never imports code by itself
    (folder / "ext.cfg").write_text("--extensions=margin_metanet\n--meta_net=margin\n")
    proc = run(["python", "-m", "clid_tf.train", "--flagfile=ext.cfg"], folder)
    assert_one_line_error(proc, "ext.cfg names --extensions=margin_metanet: code is imported "
                                "only when the command line names it")


def test_the_pages_trainer_trains_resumes_and_audits_through_the_runner(folder):
    """The co-teaching package from outside clid_tf: a run with both networks' selections
    and the summed-logits evaluation, a resume of a run killed before results.json, the
    in-sample audit of its checkpoints."""
    train, resume, in_sample, _ = page_commands()[3:]
    small = [*SMALL[:1], "--forget_epochs=2", *SMALL[3:5], "--export=selected"]
    proc = run([*train, *small], folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trainer coteaching" in proc.stdout
    run_dir = folder / "runs" / "coteaching"
    first = json.load(open(run_dir / "results.json"))
    assert first["trainer"] == "coteaching" and first["flags"]["forget_rate"] == 0.3
    assert set(first["selected"]) == {"net1", "net2"} and first["final_test_accuracy"] > 0.8
    assert first["history"]["forget_rate"] == pytest.approx([0.0, 0.15, 0.3])
    assert (run_dir / "saved_model" / "saved_model.pb").exists()
    os.remove(run_dir / "results.json")
    proc = run([*resume, *small], folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming after epoch 3 of 3" in proc.stdout
    again = json.load(open(run_dir / "results.json"))
    assert again["final_test_accuracy"] == pytest.approx(first["final_test_accuracy"])
    assert again["selected"] == first["selected"]
    proc = run(in_sample, folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    audit = json.load(open(run_dir / "results.json"))["audit"]
    assert audit["folds"] == 0 and audit["roc_auc"] > 0.9


# covered by cli/audit_test.py: the meta trainer's out-of-sample audits run the same
# runner.out_of_sample_scores
@pytest.mark.slow
def test_the_pages_trainer_audits_out_of_sample(folder):
    train, _, _, out_of_sample = page_commands()[3:]
    workdir = "--workdir=runs/coteaching_folds"
    proc = run([*[a for a in train if not a.startswith("--workdir")], workdir, "--epochs=2",
                "--forget_epochs=2", *SMALL[3:6]], folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    audit = [a for a in out_of_sample if not a.startswith("--workdir")]
    proc = run([*audit, workdir, "--audit_folds=2"], folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "audit: training fold 2 of 2 (2 epochs)" in proc.stdout
    assert json.load(open(folder / "runs" / "coteaching_folds" / "audit.json"))["folds"] == 2


def test_the_pages_trainer_from_python(folder):
    proc = run(["python", "use_coteaching.py"], folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    accuracy = float(re.search(r"co-teaching test accuracy: ([\d.]+)", proc.stdout).group(1))
    assert accuracy > 0.7
