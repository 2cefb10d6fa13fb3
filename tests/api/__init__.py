"""The Python API as a Keras user meets it."""
