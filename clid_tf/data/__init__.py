"""Data: formats on disk, inputs read by index, tf.data pipelines, noise, splits."""
