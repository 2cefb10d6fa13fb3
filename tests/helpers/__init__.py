"""What several test files share; each module holds one kind of helper:

  small_models  tiny Keras classifiers, meta-nets, batches and streams
  gradients     numpy CLID and finite-difference checks of hypergradients
  cli           the command line run as a user runs it, and its one-line errors
  checks        one-line error messages of the library
  images        image files written the way users have them
  replicas      a strategy over logical CPUs and scripts run in a subprocess
  flagfiles     the flagfiles of flags/ and mock CIFAR data for them
  keras_users   a Keras user's data and plain functional, Sequential, subclassed models
"""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A subprocess's environment: TensorFlow's C++ logs off, no GPU probing.
QUIET_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
