"""The command line (the only user of absl).

  flags      the flags every trainer reads and those several share (a trainer's own are
             defined by its declaration), and --help's groups
  checks     every refusal of a flag combination and every default that depends on other
             flags (the trainers' own come from their `Trainer` declarations)
  parsing    the command line read with one clear line for every mistake, and --help
  commands   `python -m clid_tf.train`: one run start to finish (the composition root)
  auditing   `python -m clid_tf.audit`: the label audit of a finished run

The trainers' adapters (`clid_tf.trainers.<name>.cli`) turn the parsed flags into their
parts; nothing else reads a flag.
"""

from clid_tf.cli.commands import main, run
from clid_tf.cli.flags import (BACKBONES, EXPORTS, FLAGS, METHODS, define_flags,
                               training_flag_names)
from clid_tf.cli.parsing import fail, parse_flags
from clid_tf.errors import RunError

__all__ = ["BACKBONES", "EXPORTS", "FLAGS", "METHODS", "RunError", "define_flags", "fail",
           "main", "parse_flags", "run", "training_flag_names"]
