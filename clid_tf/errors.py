"""Exceptions that end a run with one line for the user (no TensorFlow import here)."""


class NonFiniteError(RuntimeError):
    """Training produced a NaN/Inf; the message names the step and the quantity."""


class DataError(ValueError):
    """Bad or missing data (files, arrays, labels); the message is one line for the user."""


class RunError(Exception):
    """A problem with the user's flags, files or data that is not a DataError: one line."""
