"""SavedModel export for serving: raw images in, class probabilities and ids out."""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf


def export_saved_model(backbone: keras.Model, path: str, *, input_shape: Sequence[int],
                       input_dtype: tf.DType = tf.uint8) -> None:
    """Writes a SavedModel whose `serving_default` signature is

        images: `input_dtype` [batch, *input_shape] raw inputs (uint8 0..255 images)
        -> {'probabilities': float32 [batch, K], 'class_ids': int64 [batch]}

    Standardisation lives inside `backbone`, so serving needs no preprocessing. Load with
    `tf.saved_model.load(path).signatures['serving_default']` or TensorFlow Serving.
    """
    spec = tf.TensorSpec([None, *input_shape], input_dtype, name="images")

    def serve(images):
        logits, _ = backbone(tf.cast(images, tf.float32), training=False)
        probabilities = tf.nn.softmax(logits, axis=-1)
        return {"probabilities": probabilities,
                "class_ids": tf.argmax(probabilities, axis=-1)}

    archive = keras.export.ExportArchive()
    archive.track(backbone)
    archive.add_endpoint("serving_default", serve, input_signature=[spec])
    archive.write_out(path, verbose=False)
