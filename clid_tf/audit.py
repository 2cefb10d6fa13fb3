"""`python -m clid_tf.audit --workdir=RUN`: rank a finished run's training labels by
suspicion (clid_tf.cli.auditing; the scoring itself is clid_tf.label_issues)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=wrong-import-position

from clid_tf import cli  # pylint: disable=wrong-import-position
from clid_tf.cli import auditing  # pylint: disable=wrong-import-position


def run_main() -> None:
    cli.define_flags()
    app.run(auditing.main, flags_parser=auditing.flags_parser)


if __name__ == "__main__":
    run_main()
