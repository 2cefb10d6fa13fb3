"""SavedModel export for serving: raw images in, class probabilities and ids out.

The exported SavedModel (tag set `serve`) has this stable interface; docs/serving.md shows
how to inspect it with `saved_model_cli` and serve it with TensorFlow Serving.

`serving_default` (the signature TensorFlow Serving uses when a request names none; an
empty batch gets empty outputs on both signatures)
    in:  `images`         `input_dtype` [batch, *input_shape]: raw inputs, uint8 0..255
                          images [batch, H, W, C], float32 feature vectors [batch, D],
                          int token ids [batch, T] or text (string [batch]); a model of
                          several inputs takes one tensor per input, named by its dict
                          key (or `input_0`, `input_1`, ... for a list of inputs)
    out: `probabilities`  float32 [batch, K]: softmax over the K classes
         `class_ids`      int64 [batch]: argmax of `probabilities`
         `class_names`    string [batch]: the name of each predicted class

`serving_bytes` (images with 1, 3 or 4 channels, of a trained model or a uint8 backbone;
a model of text or several inputs has none, and its export warns so in one line)
    in:  `image_bytes`    string [batch]: encoded PNG (or JPEG, BMP, WebP, first GIF
                          frame) images, each decoded to [H, W, C] uint8 (and resized as
                          the training images were, for a model trained with
                          --image_size), then brought to the training inputs' range
                          (divided by 255 for a model trained on images in [0, 1])
    out: the same three outputs as `serving_default`, and
         `valid`          bool [batch]: whether the image could be decoded; an image that
                          cannot (corrupt, not an image, of another size, or declaring
                          more than MAX_IMAGE_PIXELS pixels in its header, checked before
                          any pixel is decoded) gets probabilities 0, class id -1 and an
                          empty class name, and the other images of the request are
                          answered as usual

A trained `MetaReweightModel`, `DivideMixModel` or `FixMatchModel` can be passed as it is:
its predicting networks are exported, with the input shape, dtype and range of the data
its `fit` saw (a model trained on float images in [0, 1] takes float32 images in [0, 1],
and its `serving_bytes` divides decoded pixels by 255).

Standardisation lives inside the backbone, so clients send raw pixels and do no
preprocessing. Several networks (a top-k CLID checkpoint ensemble, DivideMix's two networks)
export as one model: their logits are averaged before the softmax, so `class_ids` is the
argmax of the summed raw logits, the ensemble rule of the label-free selection.

Wrong inputs. The signature's TensorSpec is recorded in the SavedModel, but TensorFlow does
not enforce its shape when a tf.Tensor is fed (neither `loaded.signatures[...]` nor
TensorFlow Serving; a wrong rank can even abort the process inside a oneDNN kernel). So
the graph checks the shape itself with `tf.ensure_shape`, which fails with
`InvalidArgumentError: ... Shape of tensor images [2,8,8] is not compatible with expected
shape [?,8,8,1]`. A tensor of the wrong dtype fails before the graph runs with
`InvalidArgumentError: ... was expected to be a uint8 tensor but is a float tensor`
(TensorFlow's own check). NumPy arrays and Python lists passed to `loaded.signatures[...]`
are converted to the signature's dtype first (so float pixels are truncated to uint8
silently) and a wrong shape then raises TypeError `Can not cast TensorSpec(shape=(2, 8, 8),
...) to TensorSpec(shape=(None, 8, 8, 1), dtype=tf.uint8, ...)`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from typing import Callable, Sequence

import keras
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from clid_tf.data import inputs as inputs_lib
from clid_tf.models import backbones
from clid_tf.models import user_models

SIGNATURE_KEY = "serving_default"
BYTES_SIGNATURE_KEY = "serving_bytes"
INPUT_NAME = "images"
BYTES_INPUT_NAME = "image_bytes"
PROBABILITIES = "probabilities"
CLASS_IDS = "class_ids"
CLASS_NAMES = "class_names"
VALID = "valid"
SERVE_TAG = "serve"
_DECODE_BATCH = 64  # decoded images gathered per step of the bytes endpoint


def export_saved_model(networks, path: str | os.PathLike, *,
                       input_shape: Sequence[int] | None = None,
                       input_dtype: tf.DType | str | None = None,
                       class_names: Sequence[str] | None = None,
                       decode: Callable[[tf.Tensor], tf.Tensor] | None = None,
                       overwrite: bool = False) -> None:
    """Writes a SavedModel with the signatures described in the module docstring.

    `networks` is a trained trainer model (its predicting networks, input shape, dtype and
    range from what its `fit` saw), one backbone, or several whose logits are averaged;
    each backbone maps raw inputs [batch, *input_shape] (as float32) to (logits,
    features). `input_dtype` (a tf.DType or its name, e.g. "uint8" or "float32") is the
    dtype clients send: for backbones it must be given unless they were built by
    `models.backbones.build` (uint8 pixels for images; float32 feature vectors).
    `class_names` (K strings, default '0'..'K-1') feed the `class_names` output. `decode`
    (one encoded image -> uint8 [*input_shape]) is how `serving_bytes` turns a client's file
    into an input, e.g. `FileInputs.decode` (which resizes as training did); by default it
    decodes and checks the shape.

    The model is written to `path + '.tmp'` and renamed to `path` only when complete, so
    `path` never holds a half-written model (a stale `.tmp` folder from an interrupted
    export is replaced). Raises ValueError when `path` exists and is a file or a non-empty
    folder, unless `overwrite`: then a complete earlier model at `path` is replaced by the
    new one (moved to `path + '.old'` and deleted after the rename; `path` may be missing
    for that instant, but never holds a partial model). Local paths only (uses `os`).
    """
    path = os.path.normpath(os.fspath(path))
    if not overwrite:
        _check_target(path)
    networks, specs, pixel_scale = _what_to_export(networks, input_shape, input_dtype)
    flat_specs = tf.nest.flatten(specs)
    one_image = (len(flat_specs) == 1 and flat_specs[0].shape.rank == 4
                 and flat_specs[0].dtype in (tf.uint8, tf.float32))
    num_classes = user_models.num_classes_of(networks[0])
    names = [str(c) for c in (class_names or range(num_classes))]
    if len(names) != num_classes:
        raise ValueError(f"the model has {num_classes} classes but {len(names)} class names")
    names = tf.constant(names)

    def outputs_of(x):
        def mean_logits():
            return tf.add_n([tf.cast(net(x, training=False)[0], tf.float32)
                             for net in networks]) / len(networks)

        # An empty batch gets empty outputs (the networks' layers may not take zero rows).
        logits = tf.cond(tf.shape(tf.nest.flatten(x)[0])[0] > 0, mean_logits,
                         lambda: tf.zeros([0, num_classes], tf.float32))
        probabilities = tf.nn.softmax(logits, axis=-1)
        class_ids = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        return {PROBABILITIES: probabilities, CLASS_IDS: class_ids,
                CLASS_NAMES: tf.gather(names, class_ids)}

    def serve(*tensors):
        # The signature does not enforce the shape of a fed tensor; this does.
        checked = [tf.ensure_shape(t, spec.shape, name=f"check_{spec.name}_shape")
                   for t, spec in zip(tensors, named)]
        return outputs_of(inputs_lib.to_model(tf.nest.pack_sequence_as(specs, checked)))

    named = _named_specs(specs)
    archive = keras.export.ExportArchive()
    for net in networks:
        archive.track(net)
    archive.add_endpoint(SIGNATURE_KEY, serve, input_signature=named)
    input_shape = tuple(flat_specs[0].shape[1:]) if one_image else None
    if not one_image and _described(specs) != "feature vectors":
        warnings.warn(f"{path}: no {BYTES_SIGNATURE_KEY} endpoint, as the model takes "
                      f"{_described(specs)}, not one image", stacklevel=2)
    elif pixel_scale is not None and input_shape[-1] in (1, 3, 4):

        def serve_bytes(image_bytes):
            def decode_one(encoded):
                if decode is not None:
                    return decode(encoded)
                image = inputs_lib.decode_checked(encoded, input_shape[-1])
                return tf.ensure_shape(image, input_shape, name="check_decoded_shape")

            # Each image on its own: one that cannot be decoded (corrupt, too large, of
            # another size) is left out of the batch and answered as not valid.
            n = tf.shape(image_bytes)[0]
            decoded = tf.data.Dataset.from_tensor_slices((tf.range(n), image_bytes)).map(
                lambda i, encoded: (i, decode_one(encoded))).ignore_errors()
            ids, images = decoded.batch(_DECODE_BATCH).reduce(
                (tf.zeros([0], tf.int32), tf.zeros([0, *input_shape], tf.uint8)),
                lambda kept, more: (tf.concat([kept[0], more[0]], 0),
                                    tf.concat([kept[1], more[1]], 0)))
            found = outputs_of(tf.cast(images, tf.float32) / pixel_scale)
            rows = ids[:, None]
            valid = tf.scatter_nd(rows, tf.ones_like(ids, tf.bool), [n])
            return {PROBABILITIES: tf.scatter_nd(rows, found[PROBABILITIES], [n, num_classes]),
                    CLASS_IDS: tf.tensor_scatter_nd_update(
                        tf.fill([n], tf.constant(-1, tf.int64)), rows, found[CLASS_IDS]),
                    CLASS_NAMES: tf.scatter_nd(rows, found[CLASS_NAMES], [n]),
                    VALID: valid}

        archive.add_endpoint(
            BYTES_SIGNATURE_KEY, serve_bytes,
            input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT_NAME)])

    tmp, old = path + ".tmp", path + ".old"
    for stale in (tmp, old):
        if os.path.lexists(stale):
            _remove(stale)
    try:
        archive.write_out(tmp, verbose=False)
        if overwrite and os.path.lexists(path):
            os.replace(path, old)
        else:
            _check_target(path)  # created meanwhile?
        os.replace(tmp, path)  # atomic; replaces only a missing path or an empty folder
    except BaseException:
        with contextlib.suppress(OSError):
            _remove(tmp)
            if os.path.lexists(old) and not os.path.lexists(path):
                os.replace(old, path)  # put the earlier model back
        raise
    if os.path.lexists(old):
        _remove(old)


def _what_to_export(networks, input_shape, input_dtype):
    """(backbones, tf.TensorSpec [None, ...] of the inputs clients send (one, or a dict /
    tuple of them), pixel scale of decoded images or None) of what `export_saved_model`
    was given (its docstring)."""
    if hasattr(networks, "predicting") and hasattr(networks, "input_specs"):
        model = networks
        profile = model.input_profile
        specs = model.input_specs()
        if input_shape is not None or input_dtype is not None:
            spec = tf.nest.flatten(specs)[0]
            specs = tf.TensorSpec([None, *(spec.shape[1:] if input_shape is None
                                           else input_shape)],
                                  spec.dtype if input_dtype is None else input_dtype)
        scale = 1.0 if profile is None else profile.pixel_scale
        return list(model.predicting()), specs, scale
    networks = list(networks) if isinstance(networks, (list, tuple)) else [networks]
    if input_shape is None:
        inputs = getattr(networks[0], "inputs", None)
        if not inputs:
            raise ValueError("give input_shape: the network has no Input to read it from")
        input_shape = inputs[0].shape[1:]
    input_shape = tuple(int(d) for d in input_shape)
    if input_dtype is None:
        if not _built_here(networks[0]):
            raise ValueError("give input_dtype, the dtype clients will send ('uint8' for "
                             "0..255 pixels, 'float32' for floats), or pass the trained "
                             "model itself, which knows what it was trained on")
        input_dtype = tf.uint8 if len(input_shape) == 3 else tf.float32
    input_dtype = tf.as_dtype(input_dtype)
    # Decoded PNG/JPEG pixels are 0..255: a bare backbone served float32 inputs may expect
    # another range, which only a trained model knows, so it gets no bytes endpoint.
    return (networks, tf.TensorSpec([None, *input_shape], input_dtype),
            1.0 if input_dtype == tf.uint8 else None)


def _named_specs(specs) -> list[tf.TensorSpec]:
    """The flat signature inputs: `images` for one input, else each input by its dict key
    (or `input_<i>` for a tuple of inputs), in tf.nest's order."""
    if isinstance(specs, tf.TensorSpec):
        return [tf.TensorSpec(specs.shape, specs.dtype, name=INPUT_NAME)]
    names = (sorted(specs) if isinstance(specs, dict)
             else [f"input_{i}" for i in range(len(specs))])
    return [tf.TensorSpec(spec.shape, spec.dtype, name=name)
            for name, spec in zip(names, tf.nest.flatten(specs))]


def _described(specs) -> str:
    """What the inputs are, for one line: 'text', 'integer inputs', 'feature vectors',
    'several inputs' or their shape."""
    if not isinstance(specs, tf.TensorSpec):
        return "several inputs"
    if specs.dtype == tf.string:
        return "text"
    if specs.dtype.is_integer and specs.dtype != tf.uint8:
        return "integer inputs"
    return "feature vectors" if specs.shape.rank == 2 else "inputs of shape " + str(
        tuple(specs.shape[1:]))


def _built_here(network: keras.Model) -> bool:
    """Whether `network` comes from `models.backbones.build` (it standardises raw 0..255
    pixels itself)."""
    return any(isinstance(layer, backbones.Standardize)
               for layer in network._flatten_layers())  # pylint: disable=protected-access


def describe_signature(path: str | os.PathLike) -> str:
    """A short description of the SavedModel's serving signatures, one line each, e.g.

        serving_default: images uint8 [batch, 8, 8, 1] -> class_ids int64 [batch],
            probabilities float32 [batch, 10]

    Reads `saved_model.pb` only (no variables are loaded, no graph runs).
    """

    model = saved_model_pb2.SavedModel()
    with open(os.path.join(os.fspath(path), "saved_model.pb"), "rb") as f:
        model.ParseFromString(f.read())
    graphs = [g for g in model.meta_graphs if SERVE_TAG in g.meta_info_def.tags]
    if not graphs:
        raise ValueError(f"{path} has no MetaGraph tagged {SERVE_TAG!r}")
    lines = []
    for key in sorted(graphs[0].signature_def):
        if key.startswith("__"):  # __saved_model_init_op
            continue
        sig = graphs[0].signature_def[key]
        inputs = ", ".join(_describe_tensor(n, sig.inputs[n]) for n in sorted(sig.inputs))
        outputs = ", ".join(_describe_tensor(n, sig.outputs[n]) for n in sorted(sig.outputs))
        lines.append(f"{key}: {inputs} -> {outputs}")
    return "\n".join(lines)


def _describe_tensor(name: str, info) -> str:
    dtype = tf.as_dtype(info.dtype).name
    if info.tensor_shape.unknown_rank:
        return f"{name} {dtype} [unknown rank]"
    dims = ["batch" if i == 0 and d.size == -1 else "?" if d.size == -1 else str(d.size)
            for i, d in enumerate(info.tensor_shape.dim)]
    return f"{name} {dtype} [{', '.join(dims)}]"


def _check_target(path: str) -> None:
    if os.path.isdir(path):
        if os.listdir(path):
            raise ValueError(f"SavedModel target {path} is a non-empty folder; refusing to "
                             "overwrite it (remove it or choose another path)")
    elif os.path.lexists(path):
        raise ValueError(f"SavedModel target {path} exists and is not a folder")


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)
