"""Training schemes, each a package: its Keras model, math and streams."""
