"""Train CLID-MU (or a baseline) from absl flags: `python -m clid_tf.train --helpfull`."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=wrong-import-position

from clid_tf import cli  # pylint: disable=wrong-import-position


def run_main() -> None:
    cli.define_flags()
    app.run(cli.main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
    run_main()
