"""Rank a finished run's training labels by suspicion: which labels does the model doubt?

  python -m clid_tf.audit --workdir=runs/digits-clid-20250101-093000
  python -m clid_tf.audit --workdir=RUN --audit_folds=0   # in sample: the run's checkpoints

Reads RUN/flags.cfg (any training flag given here overrides it) and RUN/split.npz, and writes
RUN/audit.csv (most suspicious first), RUN/audit.npz (the probabilities and given labels),
results.json['audit'] and tensorboard/audit. The
scoring is clid_tf.evaluation.label_issues; the command is clid_tf.cli.auditing.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if not __package__:  # run as a file (python clid_tf/audit.py): import the package instead
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from absl import app  # pylint: disable=wrong-import-position

from clid_tf import cli  # pylint: disable=wrong-import-position
from clid_tf.cli import auditing  # pylint: disable=wrong-import-position


def run_main() -> None:
    cli.define_flags()
    app.run(auditing.main, flags_parser=auditing.flags_parser)


if __name__ == "__main__":
    run_main()
