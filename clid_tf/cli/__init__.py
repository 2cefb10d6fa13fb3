"""The command line (the only reader of absl FLAGS).

  flagdefs   every flag of the project and the parser that reports bad ones
  training   the parts of a training run built from the flags (data, model, streams)
  auditing   `python -m clid_tf.audit`: the label audit of a finished run
  commands   `python -m clid_tf.train`: one run start to finish (the composition root)
"""

from clid_tf.cli.commands import main, run
from clid_tf.cli.flagdefs import (BACKBONES, EXPORTS, FLAGS, HUMAN_NOISE, METHODS,
                                  define_flags, fail, parse_flags, training_flag_names)
from clid_tf.errors import RunError

__all__ = ["BACKBONES", "EXPORTS", "FLAGS", "HUMAN_NOISE", "METHODS", "RunError",
           "define_flags", "fail", "main", "parse_flags", "run", "training_flag_names"]
