"""The serving SavedModel: signature, saved_model_cli show/run, wrong inputs, atomic export."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from clid_tf.models import backbones
from clid_tf.runs import export

SHAPE = (8, 8, 1)
NAMES = tuple(f"class{c}" for c in range(10))


def _images(n, seed=0, shape=SHAPE):
    return np.random.RandomState(seed).randint(0, 256, (n, *shape)).astype(np.uint8)


def _softmax(backbone, x):
    logits, _ = backbone(np.asarray(x, np.float32), training=False)
    return tf.nn.softmax(logits).numpy()


def _saved_model_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", *args],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    backbone = backbones.build("small_cnn", num_classes=10, input_shape=SHAPE, mean=(0.3,),
                               std=(0.37,), seed=0)
    path = str(tmp_path_factory.mktemp("export") / "saved_model")
    export.export_saved_model(backbone, path, input_shape=SHAPE, input_dtype=tf.uint8,
                              class_names=NAMES)
    return backbone, path


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported[1])


def test_export_writes_no_leftovers(exported):
    _, path = exported
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    assert not os.path.exists(path + ".tmp")


def test_describe_signature(exported):
    assert export.describe_signature(exported[1]).splitlines() == [
        "serving_bytes: image_bytes string [batch] -> class_ids int64 [batch], "
        "class_names string [batch], probabilities float32 [batch, 10], valid bool [batch]",
        "serving_default: images uint8 [batch, 8, 8, 1] -> class_ids int64 [batch], "
        "class_names string [batch], probabilities float32 [batch, 10]"]


def test_saved_model_cli_show_lists_serving_default(exported):
    proc = _saved_model_cli("show", "--dir", exported[1], "--all")
    assert proc.returncode == 0, proc.stderr[-2000:]
    block = proc.stdout.split("signature_def['serving_default']:")[1].split("signature_def[")[0]
    inputs, outputs = block.split("contains the following output(s):")
    assert "inputs['images'] tensor_info:\n        dtype: DT_UINT8\n" \
           "        shape: (-1, 8, 8, 1)" in inputs, inputs
    assert inputs.count("inputs['") == 1
    assert "outputs['probabilities'] tensor_info:\n        dtype: DT_FLOAT\n" \
           "        shape: (-1, 10)" in outputs, outputs
    assert "outputs['class_ids'] tensor_info:\n        dtype: DT_INT64\n" \
           "        shape: (-1)" in outputs, outputs
    assert "Method name is: tensorflow/serving/predict" in outputs


def test_saved_model_cli_run_matches_keras_softmax(exported, tmp_path):
    backbone, path = exported
    images = _images(4, seed=1)
    np.save(tmp_path / "images.npy", images)
    proc = _saved_model_cli("run", "--dir", path, "--tag_set", "serve",
                            "--signature_def", "serving_default",
                            "--inputs", f"images={tmp_path / 'images.npy'}",
                            "--outdir", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Result for output key probabilities" in proc.stdout
    assert "Result for output key class_ids" in proc.stdout
    want = _softmax(backbone, images)
    probabilities = np.load(tmp_path / "out" / "probabilities.npy")
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, want, rtol=1e-5, atol=1e-6)
    class_ids = np.load(tmp_path / "out" / "class_ids.npy")
    assert class_ids.dtype == np.int64
    np.testing.assert_array_equal(class_ids, want.argmax(axis=1))


def test_saved_model_cli_run_rejects_wrong_shape(exported, tmp_path):
    # (--input_exprs only takes Python literals in TF 2.21; np.zeros(...) is refused.)
    proc = _saved_model_cli("run", "--dir", exported[1], "--tag_set", "serve",
                            "--signature_def", "serving_default",
                            "--input_exprs", f"images={np.zeros((2, 8, 8), int).tolist()}",
                            "--outdir", str(tmp_path / "out"))
    assert proc.returncode != 0
    assert "Cannot feed value of shape (2, 8, 8)" in proc.stderr, proc.stderr[-2000:]
    assert "(None, 8, 8, 1)" in proc.stderr
    assert not os.path.exists(tmp_path / "out")


def test_signature_matches_keras_softmax(exported, loaded):
    backbone, _ = exported
    images = _images(5, seed=2)
    out = loaded.signatures["serving_default"](images=tf.constant(images))
    assert sorted(out) == ["class_ids", "class_names", "probabilities"]
    assert out["probabilities"].dtype == tf.float32 and out["probabilities"].shape == (5, 10)
    assert out["class_ids"].dtype == tf.int64 and out["class_ids"].shape == (5,)
    want = _softmax(backbone, images)
    np.testing.assert_allclose(out["probabilities"].numpy(), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["class_ids"].numpy(), want.argmax(axis=1))
    assert [n.decode() for n in out["class_names"].numpy()] == [
        NAMES[c] for c in want.argmax(axis=1)]


def test_ensemble_serves_the_argmax_of_summed_logits(tmp_path):
    members = [backbones.build("small_cnn", num_classes=10, input_shape=SHAPE, mean=(0.3,),
                               std=(0.37,), seed=seed) for seed in (1, 2, 3)]
    path = str(tmp_path / "ensemble")
    export.export_saved_model(members, path, input_shape=SHAPE)
    images = _images(16, seed=4)
    out = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant(images))
    logits = [m(images.astype(np.float32), training=False)[0].numpy() for m in members]
    np.testing.assert_allclose(out["probabilities"].numpy(),
                               tf.nn.softmax(np.mean(logits, axis=0)).numpy(), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(out["class_ids"].numpy(), np.sum(logits, 0).argmax(1))
    single = [m(images.astype(np.float32), training=False)[0].numpy().argmax(1)
              for m in members]
    assert any((s != out["class_ids"].numpy()).any() for s in single)  # a real ensemble


def test_class_names_must_match_the_classes(tmp_path):
    net = backbones.build("mlp", num_classes=3, input_shape=(4,), mean=(0,) * 4,
                          std=(1,) * 4, seed=0)
    with pytest.raises(ValueError, match="3 classes but 2 class names"):
        export.export_saved_model(net, str(tmp_path / "m"), input_shape=(4,),
                                  input_dtype="float32", class_names=("a", "b"))


def _graph_ops(signature):
    graph_def = signature.graph.as_graph_def()
    ops = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        ops.update(node.op for node in function.node_def)
    return ops


@pytest.mark.parametrize("shape", [(2, 8, 8), (2, 9, 9, 1), (2, 8, 8, 3), (2, 8, 8, 1, 1)])
def test_signature_rejects_wrong_shape_tensor(loaded, shape):
    signature = loaded.signatures["serving_default"]
    # Without the in-graph check a rank-3 tensor aborts the process in a oneDNN kernel.
    assert "EnsureShape" in _graph_ops(signature)
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        signature(images=tf.zeros(shape, tf.uint8))
    assert f"[{','.join(map(str, shape))}] is not compatible with expected shape [?,8,8,1]" \
        in str(error.value)


def test_signature_rejects_wrong_dtype_tensor(loaded):
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="expected to be a uint8 tensor but is a float tensor"):
        loaded.signatures["serving_default"](images=tf.zeros((2, *SHAPE), tf.float32))


def test_signature_rejects_wrong_shape_numpy(loaded):
    # NumPy inputs are checked in Python against the TensorSpec (and cast to its dtype).
    with pytest.raises(TypeError, match=r"shape=\(None, 8, 8, 1\), dtype=tf.uint8"):
        loaded.signatures["serving_default"](images=np.zeros((2, 9, 9, 1), np.uint8))


def test_restored_function_rejects_wrong_inputs(loaded):
    for bad in (tf.zeros((2, 8, 8), tf.uint8), tf.zeros((2, *SHAPE), tf.float32)):
        with pytest.raises(TypeError, match=r"shape=\(None, 8, 8, 1\), dtype=tf.uint8"):
            loaded.serving_default(bad)


def test_bytes_signature_matches_images_signature(loaded):
    images = _images(3, seed=3)
    encoded = tf.constant([tf.io.encode_png(image).numpy() for image in images])
    got = loaded.signatures["serving_bytes"](image_bytes=encoded)
    want = loaded.signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_array_equal(got["probabilities"].numpy(), want["probabilities"].numpy())
    np.testing.assert_array_equal(got["class_ids"].numpy(), want["class_ids"].numpy())
    assert got["valid"].numpy().tolist() == [True] * 3


def _png_declaring(height: int, width: int) -> bytes:
    """A tiny valid PNG header whose IHDR declares height x width (a decompression bomb's
    header: the pixels it declares are never sent)."""
    import struct  # pylint: disable=import-outside-toplevel
    import zlib  # pylint: disable=import-outside-toplevel
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)))


def test_bytes_signature_answers_each_image_and_never_decodes_a_bomb(loaded):
    """A request with a corrupt file, an image of another size and a header declaring
    20000 x 20000 pixels answers those three as not valid (probabilities 0, class -1, no
    name) and the good ones exactly as the images signature does; the bomb's pixels are
    never decoded (the call returns at once, without the GiB they would take)."""
    images = _images(2, seed=4)
    good = [tf.io.encode_png(image).numpy() for image in images]
    wrong_size = tf.io.encode_png(np.zeros((9, 9, 1), np.uint8)).numpy()
    request = tf.constant([good[0], b"not an image", wrong_size, _png_declaring(20000, 20000),
                           good[1]])
    got = loaded.signatures["serving_bytes"](image_bytes=request)
    want = loaded.signatures["serving_default"](images=tf.constant(images))
    assert got["valid"].numpy().tolist() == [True, False, False, False, True]
    np.testing.assert_array_equal(got["probabilities"].numpy()[[0, 4]],
                                  want["probabilities"].numpy())
    np.testing.assert_array_equal(got["probabilities"].numpy()[1:4], 0.0)
    assert got["class_ids"].numpy()[1:4].tolist() == [-1, -1, -1]
    assert got["class_names"].numpy()[1:4].tolist() == [b"", b"", b""]
    none = loaded.signatures["serving_bytes"](image_bytes=tf.constant([b"x"]))
    assert none["valid"].numpy().tolist() == [False] and none["probabilities"].shape == (1, 10)


def test_export_refuses_existing_non_empty_target(exported, tmp_path):
    backbone, _ = exported
    target = tmp_path / "model"
    target.mkdir()
    (target / "keep.txt").write_text("earlier model")
    with pytest.raises(ValueError, match="non-empty"):
        export.export_saved_model(backbone, str(target), input_shape=SHAPE)
    assert os.listdir(target) == ["keep.txt"]
    assert not os.path.exists(f"{target}.tmp")
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        export.export_saved_model(backbone, str(afile), input_shape=SHAPE)


def test_export_into_empty_folder_and_over_stale_tmp(exported, tmp_path):
    backbone, _ = exported
    target = tmp_path / "model"
    target.mkdir()
    stale = tmp_path / "model.tmp"
    stale.mkdir()
    (stale / "saved_model.pb").write_text("half-written")
    export.export_saved_model(backbone, str(target) + "/", input_shape=SHAPE)
    assert "serving_default: images uint8" in export.describe_signature(target)
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_export_overwrite_replaces_earlier_model(tmp_path):
    target = str(tmp_path / "model")
    first = backbones.build("mlp", num_classes=3, input_shape=(5,), mean=(0,) * 5,
                            std=(1,) * 5, seed=0)
    export.export_saved_model(first, target, input_shape=(5,), input_dtype="float32")
    second = backbones.build("mlp", num_classes=4, input_shape=(5,), mean=(0,) * 5,
                             std=(1,) * 5, seed=1)
    with pytest.raises(ValueError, match="non-empty"):
        export.export_saved_model(second, target, input_shape=(5,), input_dtype="float32")
    export.export_saved_model(second, target, input_shape=(5,), input_dtype="float32",
                              overwrite=True)
    assert "probabilities float32 [batch, 4]" in export.describe_signature(target)
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_failed_export_leaves_nothing(exported, tmp_path, monkeypatch):
    backbone, _ = exported

    def write_out_then_fail(self, filepath, **kwargs):
        os.makedirs(os.path.join(filepath, "variables"))
        raise RuntimeError("disk full")

    archive_class = type(export.keras.export.ExportArchive())  # a backend subclass
    monkeypatch.setattr(archive_class, "write_out", write_out_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        export.export_saved_model(backbone, str(tmp_path / "model"), input_shape=SHAPE)
    assert os.listdir(tmp_path) == []


def test_flat_feature_model(tmp_path):
    backbone = backbones.build("mlp", num_classes=3, input_shape=(5,), mean=(0,) * 5,
                               std=(1,) * 5, seed=0)
    path = str(tmp_path / "mlp")
    export.export_saved_model(backbone, path, input_shape=(5,), input_dtype="float32")
    assert export.describe_signature(path) == (
        "serving_default: images float32 [batch, 5] -> class_ids int64 [batch], "
        "class_names string [batch], probabilities float32 [batch, 3]")
    signatures = tf.saved_model.load(path).signatures
    assert list(signatures) == ["serving_default"]
    x = np.random.RandomState(4).normal(size=(6, 5)).astype(np.float32)
    out = signatures["serving_default"](images=tf.constant(x))
    want = _softmax(backbone, x)
    np.testing.assert_allclose(out["probabilities"].numpy(), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["class_ids"].numpy(), want.argmax(axis=1))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"expected shape \[\?,5\]"):
        signatures["serving_default"](images=tf.zeros((2, 4)))


def test_an_empty_batch_gets_empty_outputs_on_both_signatures(loaded):
    """Zero rows in, zero rows out with the outputs' dtypes and widths (the small CNN's
    BatchNorm would fail on zero rows)."""
    for key, inputs in (("serving_default", {"images": tf.zeros([0, *SHAPE], tf.uint8)}),
                        ("serving_bytes", {"image_bytes": tf.zeros([0], tf.string)})):
        out = loaded.signatures[key](**inputs)
        assert out["probabilities"].shape == (0, 10) and out["probabilities"].dtype == tf.float32
        assert out["class_ids"].shape == (0,) and out["class_ids"].dtype == tf.int64
        assert out["class_names"].shape == (0,) and out["class_names"].dtype == tf.string


def test_a_float_image_backbone_gets_no_bytes_endpoint(tmp_path):
    """Decoded image bytes are 0..255; a bare backbone served float32 inputs may expect
    another range, so only serving_default is exported (a trained model knows its range)."""
    net = backbones.build("small_cnn", num_classes=3, input_shape=(8, 8, 1), mean=(0.0,),
                          std=(1.0,), seed=0)
    path = str(tmp_path / "float")
    export.export_saved_model(net, path, input_shape=(8, 8, 1), input_dtype="float32")
    assert set(tf.saved_model.load(path).signatures) == {"serving_default"}
