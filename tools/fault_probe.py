"""Faults a careful operator meets, injected for real into command-line runs, with what
each one leaves: two writers on one run folder, an audit of a killed run, inputs changed
under a resume, damaged checkpoints, a full disk, a corrupt image found mid-training,
inputs that cannot be right, and an empty serving batch.

Every case runs `python -m clid_tf.train` / `clid_tf.audit` subprocesses on small data
written into a scratch folder (digits as an npz file, or as PNG class folders) and
prints one table row: the case, the exit code, the seconds, the last line of the output
(the `error:` line, a `note:`, or the result line), and what is left in the run folder.

  python tools/fault_probe.py                # every case, about 4 minutes on 2 cores
  python tools/fault_probe.py --cases=two_writers,full_disk

The full-disk case fills a small tmpfs that it mounts (root), else it points the next
state file's temporary name at /dev/full (the kernel's always-full device): either way the
write fails with ENOSPC through the real I/O path.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, NamedTuple

import numpy as np
from absl import app, flags

import toolbox

FLAGS = flags.FLAGS
# A short deterministic digits run: 3 epochs of 10 steps, one of warm-up.
RUN = ("--epochs=3", "--warmup_epochs=1", "--steps_per_epoch=10", "--meta_size=100",
       "--verbose=0", "--deterministic")


class Outcome(NamedTuple):
    exit_code: int
    seconds: float
    message: str
    left: str


def define_flags() -> None:
    flags.DEFINE_list("cases", [], "Cases to run (default: all).")
    flags.DEFINE_string("scratch", None, "Scratch folder (default: a new temporary one).")


# ---------------------------------------------------------------- running
def train(workdir: str, *args: str, data: str | None = None, cwd: str = toolbox.ROOT,
          background: bool = False):
    """`python -m clid_tf.train` on the scratch data (or digits) into `workdir`."""
    command = toolbox.cli_command("clid_tf.train", [f"--workdir={workdir}", *RUN,
                                                   *([f"--dataset={data}"] if data else []),
                                                   *args])
    if background:
        return subprocess.Popen(command, cwd=cwd, env=toolbox.quiet_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=cwd, env=toolbox.quiet_env(), capture_output=True,
                          text=True, timeout=600)


def audit(workdir: str, *args: str):
    return toolbox.run_cli("clid_tf.audit", [f"--workdir={workdir}", *args], check=False,
                           timeout=600)


def wait_for(path: str, proc, seconds: float = 300) -> None:
    """Until `path` exists (the run reached that point); RuntimeError if it ended first."""
    deadline = time.time() + seconds
    while not os.path.exists(path):
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"the run ended before {path} appeared")
        time.sleep(0.02)


def kill_after_epoch(workdir: str, epoch: int, *args: str, data: str | None = None) -> None:
    """Starts a run and kills it (-9) once epoch `epoch` is saved (its state file)."""
    proc = train(workdir, *args, data=data, background=True)
    wait_for(os.path.join(workdir, "checkpoints", f"state-{epoch}.npz"), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def message(proc) -> str:
    """The last line of a process's output that is the program's (errors first)."""
    for text in (proc.stderr, proc.stdout):
        lines = [line for line in (text or "").splitlines()
                 if line.strip() and not toolbox.last_line(line).startswith(
                     ("I0000", "W0000", "E0000", "WARNING: All log"))]
        errors = [line for line in lines if line.startswith(("error:", "Traceback"))]
        if errors:
            return errors[-1] if errors[-1].startswith("error:") else "Traceback ..."
    lines = [line for line in (proc.stdout or "").splitlines() if line.strip()]
    notes = [line for line in lines if line.startswith(("note:", "warning:"))]
    return (notes or lines or [""])[-1]


def left(workdir: str) -> str:
    """What the run folder holds: its files, the newest intact epoch, temporary files."""
    if not os.path.isdir(workdir):
        return "no folder"
    names = sorted(n for n in os.listdir(workdir) if n != "tensorboard")
    states = glob.glob(os.path.join(workdir, "checkpoints", "state-*.npz"))
    epochs = sorted(int(p.rsplit("-", 1)[1][:-4]) for p in states)
    temporary = [p for p in glob.glob(os.path.join(workdir, "**", "*"), recursive=True)
                 if p.endswith(".tmp") or p.endswith("_temp")]
    parts = [", ".join(names) or "empty"]
    if epochs:
        parts.append(f"epochs {epochs[0]}-{epochs[-1]} saved")
    parts.append(f"{len(temporary)} temporary files")
    return "; ".join(parts)


def timed(fn: Callable[[], tuple]) -> Outcome:
    started = time.time()
    proc, workdir = fn()
    return Outcome(proc.returncode, round(time.time() - started, 1), message(proc),
                   left(workdir))


# ---------------------------------------------------------------- data
def digits_npz(path: str, *, pixels: str = "uint8", short_test: bool = False) -> str:
    """Digits as an npz file (uint8 images; `pixels='mixed'`: x_train in [0, 1], x_test in
    [0, 255]); returns `npz:PATH`."""
    from sklearn import datasets  # pylint: disable=import-outside-toplevel
    loaded = datasets.load_digits()
    images = (loaded.images * (255.0 / 16.0)).round().astype(np.uint8)[..., None]
    x_train, x_test = images[:1400], images[1400:1400 + (100 if short_test else 397)]
    y_train, y_test = loaded.target[:1400], loaded.target[1400:1400 + len(x_test)]
    if pixels == "mixed":
        x_train = x_train.astype(np.float32) / 255.0
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return f"npz:{path}"


def png_folders(root: str, *, corrupt: bool = False) -> tuple[str, str]:
    """PNG class folders of 8x8 digits images (train/ and test/); with `corrupt`, one
    training image's pixel data flipped (its header intact). Returns (folder:ROOT, the
    corrupt file's path or '')."""
    from PIL import Image  # pylint: disable=import-outside-toplevel
    from sklearn import datasets  # pylint: disable=import-outside-toplevel
    loaded = datasets.load_digits()
    images = (loaded.images * (255.0 / 16.0)).round().astype(np.uint8)
    for split, rows in (("train", range(0, 400)), ("test", range(400, 500))):
        for i in rows:
            folder = os.path.join(root, split, str(loaded.target[i]))
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(images[i]).save(os.path.join(folder, f"{i:04d}.png"))
    victim = ""
    if corrupt:
        victim = sorted(glob.glob(os.path.join(root, "train", "3", "*.png")))[2]
        raw = bytearray(open(victim, "rb").read())
        start = raw.find(b"IDAT") + 8
        raw[start:start + 10] = bytes(b ^ 0xFF for b in raw[start:start + 10])
        with open(victim, "wb") as f:
            f.write(bytes(raw))
    return f"folder:{root}", victim


# ---------------------------------------------------------------- the cases
def case_two_writers(scratch: str) -> list[tuple[str, Outcome]]:
    """A second run and a writing audit on the folder of a run that is training."""
    workdir = os.path.join(scratch, "two_writers")
    first = train(workdir, "--seed=0", background=True)
    wait_for(os.path.join(workdir, "split.npz"), first)
    rows = [("a second run on the folder of a run that is training",
             timed(lambda: (train(workdir, "--seed=1"), workdir))),
            ("an audit of a run that is training",
             timed(lambda: (audit(workdir, "--audit_folds=0"), workdir)))]
    first.wait()
    seed = [line for line in open(os.path.join(workdir, "flags.cfg"))
            if line.startswith("--seed")]
    done = subprocess.CompletedProcess([], first.returncode, first.stdout.read(),
                                       f"flags.cfg holds {seed[0].strip()}")
    rows.append(("the first run, afterwards", Outcome(done.returncode, 0.0,
                                                      message(done), left(workdir))))
    return rows


def killed_run(scratch: str, name: str, data: str) -> str:
    workdir = os.path.join(scratch, name)
    kill_after_epoch(workdir, 2, data=data)
    return workdir


def case_audit_then_resume(scratch: str) -> list[tuple[str, Outcome]]:
    data = digits_npz(os.path.join(scratch, "audit.npz"))
    workdir = killed_run(scratch, "audit_then_resume", data)
    return [("in-sample audit of a killed run",
             timed(lambda: (audit(workdir, "--audit_folds=0"), workdir))),
            ("--resume after that audit",
             timed(lambda: (train(workdir, "--resume", data=data), workdir)))]


def case_changed_inputs(scratch: str) -> list[tuple[str, Outcome]]:
    path = os.path.join(scratch, "changed.npz")
    data = digits_npz(path)
    workdir = killed_run(scratch, "changed_inputs", data)
    rows = []
    with np.load(path) as saved:
        arrays = dict(saved)
    np.savez(path, **{**arrays, "x_train": np.zeros_like(arrays["x_train"])})
    rows.append(("--resume with x_train replaced by zeros",
                 timed(lambda: (train(workdir, "--resume", data=data), workdir))))
    np.savez(path, **{**arrays, "x_test": arrays["x_test"][:100],
                      "y_test": arrays["y_test"][:100]})
    rows.append(("--resume with the test split shortened",
                 timed(lambda: (train(workdir, "--resume", data=data), workdir))))
    np.savez(path, **arrays)
    rows.append(("--resume with --alsologtostderr (a logging flag)",
                 timed(lambda: (train(workdir, "--resume", "--alsologtostderr", data=data),
                                workdir))))
    return rows


def case_damaged_checkpoints(scratch: str) -> list[tuple[str, Outcome]]:
    rows = []
    for damage in ("bit flip in ckpt-2.data", "truncated state-2.npz", "every state file"):
        workdir = killed_run(scratch, "damaged_" + damage.split()[0], None)
        checkpoints = os.path.join(workdir, "checkpoints")
        if damage.startswith("bit"):
            data = glob.glob(os.path.join(checkpoints, "ckpt-2.data-*"))[0]
            raw = bytearray(open(data, "rb").read())
            raw[len(raw) // 2] ^= 0xFF
            with open(data, "wb") as f:
                f.write(bytes(raw))
        elif damage.startswith("truncated"):
            os.truncate(os.path.join(checkpoints, "state-2.npz"), 100)
        else:
            for path in glob.glob(os.path.join(checkpoints, "state-*.npz")):
                os.truncate(path, 100)
        rows.append((f"--resume with a damaged checkpoint ({damage})",
                     timed(lambda: (train(workdir, "--resume"), workdir))))
    workdir = killed_run(scratch, "index_gone", None)
    os.remove(os.path.join(workdir, "checkpoints", "checkpoint"))
    rows.append(("--resume with other flags after a kill before the index was written",
                 timed(lambda: (train(workdir, "--resume", "--lr=0.5"), workdir))))
    return rows


@contextlib.contextmanager
def small_disk(path: str):
    """A 64 MB tmpfs at `path` when this process may mount one (yields True), else a
    plain folder (yields False)."""
    os.makedirs(path, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", path],
                             capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", path], capture_output=True)


def case_full_disk(scratch: str) -> list[tuple[str, Outcome]]:
    """The disk fills after epoch 1 is saved; then space comes back and the run resumes."""
    with small_disk(os.path.join(scratch, "disk")) as mounted:
        workdir = os.path.join(scratch, "disk", "run")
        filler = os.path.join(scratch, "disk", "filler")
        proc = train(workdir, background=True)
        state = os.path.join(workdir, "checkpoints", "state-1.npz")
        if mounted:
            wait_for(state, proc)
            with open(filler, "wb") as f, contextlib.suppress(OSError):
                while True:  # every byte the tmpfs has left
                    f.write(b"\0" * (1 << 20))
                    f.flush()
        else:
            wait_for(os.path.join(workdir, "checkpoints", "ckpt-1.index"), proc)
            os.symlink("/dev/full", os.path.join(workdir, "checkpoints", "state-2.npz.tmp"))
        started = time.time()
        out, err = proc.communicate(timeout=600)
        failed = subprocess.CompletedProcess([], proc.returncode, out, err)
        how = "tmpfs filled" if mounted else "writes to /dev/full"
        rows = [(f"disk full after epoch 1 ({how})",
                 Outcome(failed.returncode, round(time.time() - started, 1), message(failed),
                         left(workdir)))]
        if mounted:
            os.remove(filler)
        rows.append(("--resume once there is space",
                     timed(lambda: (train(workdir, "--resume"), workdir))))
        return rows


def case_corrupt_image(scratch: str) -> list[tuple[str, Outcome]]:
    root = os.path.join(scratch, "images")
    data, victim = png_folders(root, corrupt=True)
    good = os.path.join(scratch, "good.png")
    from PIL import Image  # pylint: disable=import-outside-toplevel
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(good)
    workdir = os.path.join(scratch, "corrupt_image")
    rows = [("a PNG corrupt inside, found by training",
             timed(lambda: (train(workdir, "--epochs=2", data=data), workdir)))]
    shutil.copy(good, victim)
    rows.append(("the same command after replacing it",
                 timed(lambda: (train(workdir, "--epochs=2", data=data), workdir))))
    return rows


def case_impossible_inputs(scratch: str) -> list[tuple[str, Outcome]]:
    mixed = digits_npz(os.path.join(scratch, "mixed.npz"), pixels="mixed")
    root = os.path.join(scratch, "listed")
    png_folders(root)
    first = sorted(glob.glob(os.path.join(root, "train", "1", "*.png")))[0]
    listing = os.path.join(root, "train.txt")
    with open(listing, "w") as f:
        f.write(f"{os.path.relpath(first, root)} 1\n{os.path.relpath(first, root)} 7\n")
        for path in sorted(glob.glob(os.path.join(root, "train", "*", "*.png")))[1:50]:
            f.write(f"{os.path.relpath(path, root)} {os.path.basename(os.path.dirname(path))}\n")
    other = os.path.join(scratch, "not_a_run")
    os.makedirs(other)
    with open(os.path.join(other, "notes.txt"), "w") as f:
        f.write("mine")
    return [
        ("npz with x_train in [0, 1] and x_test in [0, 255]",
         timed(lambda: (train(os.path.join(scratch, "mixed_run"), data=mixed),
                        os.path.join(scratch, "mixed_run")))),
        ("a list file naming one image with two labels",
         timed(lambda: (train(os.path.join(scratch, "list_run"), data=f"list:{listing}"),
                        os.path.join(scratch, "list_run")))),
        ("--resume into a folder that holds no run",
         timed(lambda: (train(other, "--resume"), other))),
    ]


def case_empty_serving_batch(scratch: str) -> list[tuple[str, Outcome]]:
    workdir = os.path.join(scratch, "served")
    started = time.time()
    proc = train(workdir, "--epochs=1")
    code = ("import sys, tensorflow as tf\n"
            "m = tf.saved_model.load(sys.argv[1])\n"
            "a = m.signatures['serving_default'](images=tf.zeros([0, 8, 8, 1], tf.uint8))\n"
            "b = m.signatures['serving_bytes'](image_bytes=tf.zeros([0], tf.string))\n"
            "print('empty batch -> probabilities', a['probabilities'].shape, "
            "'and', b['probabilities'].shape)\n")
    served = subprocess.run([sys.executable, "-c", code, os.path.join(workdir, "saved_model")],
                            env=toolbox.quiet_env(), capture_output=True, text=True,
                            timeout=300) if proc.returncode == 0 else proc
    return [("an empty batch on both serving signatures",
             Outcome(served.returncode, round(time.time() - started, 1), message(served),
                     left(workdir)))]


CASES = {"two_writers": case_two_writers, "audit_then_resume": case_audit_then_resume,
         "changed_inputs": case_changed_inputs,
         "damaged_checkpoints": case_damaged_checkpoints, "full_disk": case_full_disk,
         "corrupt_image": case_corrupt_image, "impossible_inputs": case_impossible_inputs,
         "empty_serving_batch": case_empty_serving_batch}


def table(rows: list[tuple[str, Outcome]], scratch: str) -> str:
    """The rows as a markdown table, the scratch folder's path written as SCRATCH."""
    lines = ["| case | exit | s | last line | left in the run folder |",
             "|---|---:|---:|---|---|"]
    for name, outcome in rows:
        text = toolbox.table_cell(outcome.message, scratch)
        lines.append(f"| {name} | {outcome.exit_code} | {outcome.seconds} | {text} | "
                     f"{outcome.left} |")
    return "\n".join(lines)


def main(argv):
    del argv
    chosen = toolbox.chosen_cases(FLAGS.cases, list(CASES))
    scratch = FLAGS.scratch or tempfile.mkdtemp(prefix="clid_faults_")
    rows = []
    for name in chosen:
        os.makedirs(os.path.join(scratch, name), exist_ok=True)
        found = CASES[name](os.path.join(scratch, name))
        for row in found:
            print(f"{row[0]}: exit {row[1].exit_code}: {row[1].message}", flush=True)
        rows.extend(found)
    print(table(rows, scratch))
    with open(os.path.join(scratch, "faults.json"), "w") as f:
        json.dump([[name, *outcome] for name, outcome in rows], f, indent=1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
