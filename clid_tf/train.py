"""Train a classifier on noisy labels with CLID-MU (or a baseline), no clean labels needed.

  python -m clid_tf.train                                    # digits, 40% sym noise, WNet + CLID
  python -m clid_tf.train --flagfile=flags/digits_sym60.cfg  # a named setting (flags/*.cfg)
  python -m clid_tf.train --dataset=npz:mine.npz --backbone=mlp --workdir=runs/mine

Flags are --name=value. --flagfile=FILE reads one flag per line (# starts a comment); later
flags win, so flags after a --flagfile override it. A run writes results.json, flags.cfg,
tensorboard/, checkpoints/ and saved_model/ into --workdir.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if not __package__:  # run as a file (python clid_tf/train.py): import the package instead
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from absl import app  # pylint: disable=wrong-import-position

from clid_tf import cli  # pylint: disable=wrong-import-position


def run_main() -> None:
    cli.define_flags()
    app.run(cli.main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
    run_main()
