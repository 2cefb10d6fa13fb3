"""The command line (the only reader of absl FLAGS).

  flagdefs   every flag of the project and the parser that reports bad ones
  training   `python -m clid_tf.train`: the training run's composition root
  auditing   `python -m clid_tf.audit`: the label audit of a finished run
"""

from clid_tf.cli.flagdefs import (BACKBONES, EXPORTS, FLAGS, HUMAN_NOISE, METHODS,
                                  define_flags, parse_flags,
                                  training_flag_names)
from clid_tf.cli.training import RunError, fail, main, run
