"""Hostile and mistaken inputs, tried for real on command-line runs: what the project does
with each, the one line it prints, and whether anything outside the run folder changed.

Every case writes its files into a scratch folder, runs `python -m clid_tf.train` /
`clid_tf.audit` (or a few lines of Python for the serving and Python-API cases) as
`tools/fault_probe.py` does, and prints one table row: the case, the exit code, the last
line of the output, and what became of the files outside the run folder that the input
pointed at (each is compared byte for byte with what it held before).

  python tools/hostile_probe.py              # every case, about 4 minutes on 2 cores
  python tools/hostile_probe.py --cases=resume_typo,tfds_code
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from typing import Callable, NamedTuple

import numpy as np
from absl import app, flags

import fault_probe
import toolbox

FLAGS = flags.FLAGS


class Row(NamedTuple):
    case: str
    exit_code: int
    message: str
    outside: str


def define_flags() -> None:
    flags.DEFINE_list("cases", [], "Cases to run (default: all).")
    flags.DEFINE_string("scratch", None, "Scratch folder (default: a new temporary one).")


# ---------------------------------------------------------------- helpers
class Victims:
    """Files outside the run folder that an input points at, and their bytes before."""

    def __init__(self, scratch: str):
        self.folder = os.path.join(scratch, "outside")
        os.makedirs(self.folder, exist_ok=True)
        self.files: dict[str, bytes] = {}

    def make(self, name: str, text: str = "a user's own file\n") -> str:
        path = os.path.join(self.folder, name)
        with open(path, "w") as f:
            f.write(text)
        self.files[path] = text.encode()
        return path

    def expect_absent(self, path: str) -> str:
        self.files[path] = None
        return path

    def report(self) -> str:
        changed = [os.path.basename(p) for p, data in self.files.items()
                   if (open(p, "rb").read() if os.path.exists(p) else None) != data]
        if changed:
            return f"CHANGED: {', '.join(changed)}"
        if not self.files:
            return "none named"
        return f"{len(self.files)} of {len(self.files)} intact"


def run(command: Callable[[], subprocess.CompletedProcess], victims: Victims, case: str) -> Row:
    proc = command()
    return Row(case, proc.returncode, fault_probe.message(proc), victims.report())


def python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], env=toolbox.quiet_env(),
                          capture_output=True, text=True, timeout=600, cwd=toolbox.ROOT)


def killed(scratch: str, name: str) -> str:
    return fault_probe.killed_run(scratch, name, None)


def png_declaring(height: int, width: int) -> bytes:
    """A PNG header declaring height x width pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))


# ---------------------------------------------------------------- the five paths
def case_resume_typo(scratch: str) -> list[Row]:
    victims = Victims(scratch)
    thesis = os.path.join(scratch, "thesis")
    os.makedirs(os.path.join(thesis, "chapter"))
    for name in ("notes.txt", "draft.tmp", os.path.join("chapter", "fig_temp"), "flags.cfg"):
        path = os.path.join(thesis, name)
        with open(path, "w") as f:
            f.write(name)
        victims.files[path] = name.encode()
    return [run(lambda: fault_probe.train(thesis, "--resume"), victims,
                "--resume --workdir=a folder of one's own files (*.tmp, *_temp, flags.cfg)")]


def case_checkpoint_index(scratch: str) -> list[Row]:
    victims = Victims(scratch)
    workdir = killed(scratch, "index")
    checkpoints = os.path.join(workdir, "checkpoints")
    shutil.rmtree(checkpoints)  # as if killed before its first checkpoint
    os.makedirs(checkpoints)
    listed = [victims.make(f"model{k}.index")[:-len(".index")] for k in range(3)]
    with open(os.path.join(checkpoints, "checkpoint"), "w") as f:  # TensorFlow's format
        f.write(f'model_checkpoint_path: "{listed[-1]}"\n')
        f.writelines(f'all_model_checkpoint_paths: "{p}"\n' for p in listed)
        f.writelines(f"all_model_checkpoint_timestamps: {1.7e9 + k}\n" for k in range(3))
        f.write("last_preserved_timestamp: 1.6e9\n")
    return [run(lambda: fault_probe.train(workdir, "--resume"), victims,
                "--resume of a run killed before its first checkpoint, whose "
                "checkpoints/checkpoint lists 3 files outside")]


def case_links(scratch: str) -> list[Row]:
    victims = Victims(scratch)
    workdir = killed(scratch, "lock_link")
    os.remove(os.path.join(workdir, ".lock"))  # the killed run's own lock file
    os.symlink(victims.make("lock_target.txt"), os.path.join(workdir, ".lock"))
    rows = [run(lambda: fault_probe.train(workdir, "--resume"), victims,
                "--resume with RUN/.lock a link to a file outside")]
    victims = Victims(scratch)
    workdir = killed(scratch, "tmp_link")
    for name in ("audit.json", "audit.csv", "results.json"):
        os.symlink(victims.make(f"{name}_target.txt"), os.path.join(workdir, f"{name}.tmp"))
    rows.append(run(lambda: fault_probe.audit(workdir, "--audit_folds=0", "--audit_show=0"),
                    victims, "audit with audit.json.tmp, audit.csv.tmp, results.json.tmp "
                             "links to files outside"))
    return rows


def case_flags_cfg(scratch: str) -> list[Row]:
    victims = Victims(scratch)
    workdir = killed(scratch, "profile")
    profile = victims.expect_absent(os.path.join(victims.folder, "profile.out"))
    with open(os.path.join(workdir, "flags.cfg"), "a") as f:
        f.write(f"--profile_file={profile}\n--run_with_profiling\n--run_with_pdb\n"
                "--only_check_args\n")
    rows = [run(lambda: fault_probe.audit(workdir, "--audit_folds=0", "--audit_show=0"),
                victims, "audit of a run whose flags.cfg adds --profile_file=PATH "
                         "--run_with_profiling --run_with_pdb --only_check_args")]
    victims = Victims(scratch)
    workdir = killed(scratch, "nested")
    with open(os.path.join(workdir, "flags.cfg"), "a") as f:
        f.write(f"--flagfile={victims.make('other.cfg', '--epochs=99')}\n")
    rows.append(run(lambda: fault_probe.audit(workdir, "--audit_folds=0"), victims,
                    "audit of a run whose flags.cfg names another --flagfile"))
    return rows


def case_tfds_code(scratch: str) -> list[Row]:
    victims = Victims(scratch)
    marker = victims.expect_absent(os.path.join(victims.folder, "code_ran.txt"))
    code = os.path.join(scratch, "code")
    os.makedirs(code)
    with open(os.path.join(code, "planted_feature.py"), "w") as f:
        f.write(f"open({marker!r}, 'w').write('ran')\n")
    data = os.path.join(scratch, "tfds_data", "planted", "1.0.0")
    os.makedirs(data)
    with open(os.path.join(data, "features.json"), "w") as f:
        json.dump({"type": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
                   "content": {"image": {"type": "planted_feature.Evil", "content": {}}}}, f)
    with open(os.path.join(data, "dataset_info.json"), "w") as f:
        json.dump({"name": "planted"}, f)
    env = toolbox.quiet_env(PYTHONPATH=os.pathsep.join([code, os.environ.get("PYTHONPATH",
                                                                             "")]))
    workdir = os.path.join(scratch, "tfds_run")
    return [run(lambda: subprocess.run(
        toolbox.cli_command("clid_tf.train", [f"--workdir={workdir}", *fault_probe.RUN,
                                              "--dataset=tfds:planted",
                                              f"--data_dir={os.path.dirname(os.path.dirname(data))}"]),
        env=env, capture_output=True, text=True, timeout=600, cwd=toolbox.ROOT), victims,
        "--dataset=tfds:NAME whose features.json names a module of its own")]


# ---------------------------------------------------------------- the next ring
def case_arrays(scratch: str) -> list[Row]:
    victims = Victims(scratch)
    from sklearn import datasets  # pylint: disable=import-outside-toplevel
    digits = datasets.load_digits()
    unit = (digits.images[..., None] / 16.0).astype(np.float32)
    rows = []
    for name, x, labels in (("round-off", unit.copy(), digits.target),
                            ("ambiguous", unit.copy(), digits.target),
                            ("label", unit, digits.target.copy())):
        if name == "round-off":
            x[0, 0, 0, 0] = 1.0000001
        elif name == "ambiguous":
            x[0, 0, 0, 0] = 1.5
        else:
            labels[5] = 10**12
        path = os.path.join(scratch, f"{name}.npz")
        np.savez(path, x_train=x[:1400], y_train=labels[:1400], x_test=x[1400:],
                 y_test=digits.target[1400:])
        workdir = os.path.join(scratch, f"{name}_run")
        rows.append(run(lambda p=path, w=workdir: fault_probe.train(
            w, "--epochs=1", data=f"npz:{p}"), victims,
            {"round-off": "npz float images in [0, 1] with one pixel at 1.0000001",
             "ambiguous": "npz float images whose maximum is 1.5",
             "label": "npz with one training label of 10**12"}[name]))
    bomb = os.path.join(scratch, "header.npz")
    np.savez(bomb, x_train=unit[:10], y_train=digits.target[:10])
    rewrite = ("import io, sys, zipfile, numpy as np\n"
               "p = sys.argv[1]\n"
               "members = {n: zipfile.ZipFile(p).read(n) for n in zipfile.ZipFile(p).namelist()}\n"
               "h = io.BytesIO(); np.lib.format.write_array_header_1_0(h, {'descr': '<f4', "
               "'fortran_order': False, 'shape': (10**9, 8, 8, 1)})\n"
               "members['x_train.npy'] = h.getvalue() + members['x_train.npy'][128:]\n"
               "z = zipfile.ZipFile(p, 'w'); [z.writestr(n, d) for n, d in members.items()]; "
               "z.close()\n")
    python(rewrite, bomb)
    rows.append(run(lambda: fault_probe.train(os.path.join(scratch, "header_run"),
                                              data=f"npz:{bomb}"), victims,
                    "npz whose x_train header declares 10**9 images (a 1 KB file)"))
    code = ("import numpy as np, keras, clid_tf\n"
            "x = np.random.default_rng(0).random((64, 8, 8, 1)).astype('float32')\n"
            "x[3, 0, 0, 0] = np.nan\n"
            "net = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), "
            "keras.layers.Dense(4)])\n"
            "m = clid_tf.MetaReweightModel(net, clid_tf.WeightNet()); m.compile('sgd', 'adam')\n"
            "try:\n    m.fit(x, np.arange(64) % 4, meta_size=16, batch_size=16, verbose=0)\n"
            "except ValueError as e:\n    print(f'ValueError: {e}')\n")
    rows.append(run(lambda: python(code), victims, "Python API: fit(x, y) with one NaN pixel"))
    return rows


def case_files(scratch: str) -> list[Row]:
    victims = Victims(scratch)
    data, _ = fault_probe.png_folders(os.path.join(scratch, "images"))
    root = data.split(":", 1)[1]
    outside = os.path.join(victims.folder, "class_elsewhere")
    os.makedirs(outside)
    os.symlink(outside, os.path.join(root, "train", "linked"))
    rows = [run(lambda: fault_probe.train(os.path.join(scratch, "linked_run"), data=data),
                victims, "image folder with a class folder that is a link")]
    os.unlink(os.path.join(root, "train", "linked"))
    target = victims.make("elsewhere.png", "not read")
    os.symlink(target, os.path.join(root, "train", "3", "linked.png"))
    os.mkfifo(os.path.join(root, "train", "4", "fifo.png"))
    from PIL import Image  # pylint: disable=import-outside-toplevel
    Image.new("L", (9500, 9500)).save(os.path.join(root, "train", "5", "bomb.png"),
                                      optimize=True)  # 87 KB, 90 million pixels
    rows.append(run(lambda: fault_probe.train(os.path.join(scratch, "files_run"), "--epochs=1",
                                              data=data),
                    victims, "image folder with a linked file, a FIFO x.png and a PNG "
                             "declaring 9500x9500 pixels"))
    os.remove(os.path.join(root, "train", "5", "bomb.png"))
    outside = victims.make("outside.png", "")
    shutil.copy(os.path.join(root, "train", "1", "0001.png"), outside)
    victims.files[outside] = open(outside, "rb").read()
    listing = os.path.join(scratch, "list.txt")
    with open(listing, "w") as f:
        for path in sorted(glob.glob(os.path.join(root, "train", "*", "*.png"))):
            if os.path.isfile(path) and not os.path.islink(path):
                f.write(f"{os.path.relpath(path, root)} {os.path.basename(os.path.dirname(path))}\n")
        f.write(f"{outside} 1\n")
    rows.append(run(lambda: fault_probe.train(os.path.join(scratch, "list_run"), "--epochs=1",
                                              f"--data_root={root}", data=f"list:{listing}"),
                    victims, "list file naming a file outside its data root"))
    with open(listing, "a") as f:
        f.write("train/3/0003.png 100000000000000000000000000000\n")
    rows.append(run(lambda: fault_probe.train(os.path.join(scratch, "list_run2"),
                                              f"--data_root={root}", data=f"list:{listing}"),
                    victims, "list file with a label of 10**29"))
    return rows


def case_flagfiles(scratch: str) -> list[Row]:
    victims = Victims(scratch)
    for k in range(30, -1, -1):
        with open(os.path.join(scratch, f"f{k}.cfg"), "w") as f:
            f.write("--epochs=2\n" if k == 30 else
                    f"--flagfile={os.path.join(scratch, f'f{k + 1}.cfg')}\n" * 2)
    started = time.time()
    row = run(lambda: fault_probe.train(os.path.join(scratch, "nested_run"),
                                        f"--flagfile={os.path.join(scratch, 'f0.cfg')}"),
              victims, "flagfiles that each include the next twice, 30 deep (2**30 lines)")
    return [row._replace(case=f"{row.case}, answered in {time.time() - started:.1f} s")]


def case_serving(scratch: str) -> list[Row]:
    victims = Victims(scratch)
    workdir = os.path.join(scratch, "served")
    fault_probe.train(workdir, "--epochs=1")
    code = ("import sys, numpy as np, tensorflow as tf\n"
            "m = tf.saved_model.load(sys.argv[1])\n"
            "good = tf.io.encode_png(np.zeros((8, 8, 1), np.uint8)).numpy()\n"
            f"bomb = {png_declaring(20000, 20000)!r}\n"
            "out = m.signatures['serving_bytes'](image_bytes=tf.constant([good, b'junk', bomb, good]))\n"
            "print('valid', out['valid'].numpy().tolist(), 'class ids', "
            "out['class_ids'].numpy().tolist())\n")
    return [run(lambda: python(code, os.path.join(workdir, "saved_model")), victims,
                "serving_bytes request: a good PNG, junk, a 20000x20000 PNG header, a good PNG")]


CASES = {"resume_typo": case_resume_typo, "checkpoint_index": case_checkpoint_index,
         "links": case_links, "flags_cfg": case_flags_cfg, "tfds_code": case_tfds_code,
         "arrays": case_arrays, "files": case_files, "flagfiles": case_flagfiles,
         "serving": case_serving}


def table(rows: list[Row], scratch: str) -> str:
    lines = ["| case | exit | the line it prints | files outside the run folder |",
             "|---|---:|---|---|"]
    for row in rows:
        text = toolbox.table_cell(row.message, scratch)
        lines.append(f"| {row.case} | {row.exit_code} | {text} | {row.outside} |")
    return "\n".join(lines)


def main(argv):
    del argv
    chosen = toolbox.chosen_cases(FLAGS.cases, list(CASES))
    scratch = FLAGS.scratch or tempfile.mkdtemp(prefix="clid_hostile_")
    rows = []
    for name in chosen:
        folder = os.path.join(scratch, name)
        os.makedirs(folder, exist_ok=True)
        for row in CASES[name](folder):
            print(f"{row.case}: exit {row.exit_code}: {row.message} [{row.outside}]", flush=True)
            rows.append(row)
    print(table(rows, scratch))


if __name__ == "__main__":
    define_flags()
    app.run(main)
