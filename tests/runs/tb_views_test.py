"""TensorBoard views: the matplotlib weighting-function figure, and a tiny two-phase fit
whose events hold the meta-weight histograms, WNet's weighting-function image (decoded from
the event file), step time, HParams and layout."""

from __future__ import annotations

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from clid_tf.models import backbones
from clid_tf import metanets
from clid_tf.trainers.meta import model as meta_model
from clid_tf.core import objectives
from clid_tf.runs import tb_views
from tests.helpers import small_models as helpers

K, D, N = 3, 4, 200
WARMUP, EPOCHS, STEPS = 1, 3, 4


# ---------------------------------------------------------------- the figure
def _blue_rows(image: np.ndarray) -> np.ndarray:
    """Rows of the pixels close to the curve colour (matplotlib's tab:blue)."""
    blue = np.array([31, 119, 180])
    return np.nonzero(np.abs(image.astype(int) - blue).sum(axis=-1) < 40)[0]


def _figure(curve_value: float = 0.5):
    grid = np.linspace(0.0, 6.0, 64)
    rng = np.random.default_rng(0)
    groups = [("clean", rng.gamma(1.0, 0.5, 300), tb_views.CLEAN_COLOUR),
              ("noisy", np.append(rng.normal(3.5, 1.0, 100), np.inf), tb_views.NOISY_COLOUR)]
    curve = np.full_like(grid, curve_value)
    return grid, curve, groups, tb_views.weighting_function_figure(grid, curve, groups,
                                                                   title="t")


def test_figure_has_axes_labels_legend_and_the_curve():
    grid, curve, groups, figure = _figure()
    weight_axis, count_axis = figure.axes
    assert weight_axis.get_xlabel() == "per-sample CE loss"
    assert weight_axis.get_ylabel() == "meta weight"
    assert count_axis.get_ylabel() == "samples per bin"
    assert weight_axis.get_title() == "t"
    assert weight_axis.get_xlim() == (0.0, 6.0) and weight_axis.get_ylim() == (0.0, 1.02)
    labels = [t.get_text() for t in weight_axis.get_legend().get_texts()]
    assert labels == ["WNet(loss)", "clean samples (n=300)", "noisy samples (n=101)"]
    [line] = weight_axis.get_lines()
    np.testing.assert_array_equal(line.get_xdata(), grid)
    np.testing.assert_array_equal(line.get_ydata(), curve)
    # 40 bars per group on the count axis: the group's losses inside [0, 6], inf left out
    heights = np.array([bar.get_height() for bar in count_axis.patches]).reshape(2, 40)
    for (_, losses, _), counts in zip(groups, heights):
        np.testing.assert_array_equal(counts, np.histogram(losses, 40, range=(0.0, 6.0))[0])
    assert weight_axis.get_zorder() > count_axis.get_zorder()  # curve in front


def test_figure_renders_to_an_rgb_image_of_the_requested_size():
    figure = _figure()[-1]
    image = tb_views.figure_to_image(figure)
    assert image.shape == (400, 640, 3) and image.dtype == np.uint8
    small = tb_views.weighting_function_figure(np.linspace(0, 5, 8), np.ones(8), size=(320, 200))
    assert tb_views.figure_to_image(small).shape == (200, 320, 3)
    white = np.all(image == 255, axis=-1).mean()
    assert 0.3 < white < 0.97  # mostly background, but drawn on
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50  # antialiased text, bars, line
    assert len(_blue_rows(image)) > 500  # the curve


# ---------------------------------------------------------------- the fit
def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D)).astype(np.float32)
    clean = np.argmax(x[:, :K], axis=1).astype(np.int32)
    flip = rng.random(N) < 0.4
    noisy = np.where(flip, (clean + rng.integers(1, K, N)) % K, clean).astype(np.int32)
    return x, noisy, noisy != clean


def _model(kind: str = "wnet") -> meta_model.MetaReweightModel:
    backbone = backbones.build("mlp", num_classes=K, input_shape=(D,), mean=(0,) * D,
                               std=(1,) * D, seed=0)
    meta_net = metanets.build(kind, num_classes=K,
                                         feature_dim=backbone.feature_dim, vri_kl=0.01, seed=0)
    model = meta_model.MetaReweightModel(
        backbone, meta_net, meta_objective=objectives.meta_objective("clid", tau=0.5))
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), keras.optimizers.Adam(1e-3))
    return model


def _events(folder: str):
    """Every summary value of every event file in a folder: [(step, value)]."""
    found = []
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            found += [(event.step, value) for value in event.summary.value]
    return found


def _steps(events, tag: str) -> list[int]:
    return sorted(step for step, value in events if value.tag == tag)


def _image(events, tag: str, step: int) -> np.ndarray:
    [value] = [v for s, v in events if v.tag == tag and s == step]
    return tf.io.decode_png(value.tensor.string_val[2]).numpy()


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp("tb"))
    x, noisy, is_noisy = _data()
    model = _model()
    stream = helpers.array_stream(x, noisy, batch_size=20, seed=0, is_noisy=is_noisy,
                                  meta_x=x[:40], meta_batch_size=10)
    views = tb_views.MetaViews(logdir, x, noisy, is_noisy, sample_size=150, seed=0,
                               eval_batch_size=64)
    tb_views.write_hparams(logdir, {"method": "clid", "lr": 0.05, "epochs": np.int64(3),
                                    "augment_flip": True, "milestones": [80, 120],
                                    "data_dir": None},
                           ["epoch_test_accuracy", "epoch_meta_set_clid"])
    tb_views.write_layout(logdir)
    callbacks = [tb_views.StepTimer(), views, keras.callbacks.TensorBoard(logdir)]
    history = {}
    for first, last, active in [(0, WARMUP, False), (WARMUP, EPOCHS, True)]:
        model.set_meta_active(active)
        fit = model.fit(stream, initial_epoch=first, epochs=last, steps_per_epoch=STEPS,
                        verbose=0, shuffle=False, callbacks=callbacks)
        for key, values in fit.history.items():
            history.setdefault(key, []).extend(values)
    return logdir, model, views, history


def test_weight_histograms_per_meta_epoch_only(fitted):
    logdir, _, _, _ = fitted
    events = _events(os.path.join(logdir, "meta_views"))
    meta_epochs = list(range(WARMUP, EPOCHS))  # nothing in the warm-up epoch
    assert _steps(events, "weights/clean") == meta_epochs
    assert _steps(events, "weights/noisy") == meta_epochs
    assert not _steps(events, "weights/all")
    [(_, value)] = [e for e in events if e[1].tag == "weights/noisy" and e[0] == WARMUP]
    histogram = tf.make_ndarray(value.tensor)  # [bins, 3]: left edge, right edge, count
    assert histogram.shape[1] == 3 and histogram[:, 2].sum() > 0
    assert histogram[:, 0].min() >= 0.0 and histogram[:, 1].max() <= 1.0  # sigmoid weights


def test_weighting_function_image_follows_the_net(fitted):
    logdir, model, views, _ = fitted
    folder = os.path.join(logdir, "meta_views")
    assert _steps(_events(folder), "wnet/weighting_function") == list(range(WARMUP, EPOCHS))
    out = model.meta_net.out
    kernel, bias = out.kernel.numpy(), out.bias.numpy()
    try:  # two settings of the net: weight ~1 everywhere, then ~0 everywhere
        out.kernel.assign(np.zeros_like(kernel))
        out.bias.assign(np.full_like(bias, 8.0))
        views.on_epoch_end(10)
        out.bias.assign(np.full_like(bias, -8.0))
        views.on_epoch_end(11)
        views.on_train_end()
    finally:
        out.kernel.assign(kernel)
        out.bias.assign(bias)
    events = _events(folder)
    trained, high, low = (_image(events, "wnet/weighting_function", s) for s in (WARMUP, 10, 11))
    for image in (trained, high, low):  # decoded PNGs of the figure, drawn on
        assert image.shape == (400, 640, 3) and image.dtype == np.uint8
        assert 0.3 < np.all(image == 255, axis=-1).mean() < 0.97
    assert np.any(high != low)
    # The curve (blue) runs along the top of the plot for weight ~1, the bottom for ~0.
    assert np.median(_blue_rows(high)) < 0.25 * 400 < 0.75 * 400 < np.median(_blue_rows(low))


def test_weighting_function_figure_of_the_views_names_clean_and_noisy(fitted):
    _, model, views, _ = fitted
    losses, _ = views.meta_weights()
    groups = views.groups(losses)
    assert [name for name, _, _ in groups] == ["clean", "noisy"]
    grid = np.linspace(0.0, 5.0, 16)
    figure = tb_views.weighting_function_figure(grid, model.meta_net(grid).numpy(), groups)
    labels = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert labels == ["WNet(loss)", f"clean samples (n={np.sum(~views.is_noisy)})",
                      f"noisy samples (n={np.sum(views.is_noisy)})"]


def test_step_time_is_logged(fitted):
    logdir, _, _, history = fitted
    assert len(history["step_time"]) == EPOCHS
    assert all(t > 0 for t in history["step_time"])
    logged = _steps(_events(os.path.join(logdir, "train")), "epoch_step_time")
    assert logged == list(range(EPOCHS))


def test_hparams_and_layout_are_written(fitted):
    logdir, _, _, _ = fitted
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.hparams import metadata as hp_metadata
    events = _events(logdir)
    plugins = {v.metadata.plugin_data.plugin_name for _, v in events}
    assert {"hparams", "custom_scalars"} <= plugins
    by_tag = {v.tag: v for _, v in events}
    experiment_data = hp_metadata.parse_experiment_plugin_data(
        by_tag[hp_metadata.EXPERIMENT_TAG].metadata.plugin_data.content)
    assert {m.name.tag for m in experiment_data.metric_infos} == {
        "epoch_test_accuracy", "epoch_meta_set_clid"}
    assert {m.name.group for m in experiment_data.metric_infos} == {"train"}
    session = hp_metadata.parse_session_start_info_plugin_data(
        by_tag[hp_metadata.SESSION_START_INFO_TAG].metadata.plugin_data.content)
    assert session.hparams["method"].string_value == "clid"
    assert session.hparams["epochs"].number_value == 3
    assert session.hparams["augment_flip"].bool_value is True
    assert session.hparams["milestones"].string_value == "[80, 120]"
    assert session.hparams["data_dir"].string_value == "None"
    layout = layout_pb2.Layout.FromString(tf.make_ndarray(by_tag["custom_scalars__config__"]
                                                          .tensor).item())
    charts = [list(c.multiline.tag) for c in layout.category[0].chart]
    assert charts == [["^epoch_meta_set_clid$", "^epoch_test_accuracy$"],
                      ["^epoch_lr$", "^epoch_meta_lr$"],
                      ["^epoch_weight_clean$", "^epoch_weight_noisy$"]]
    assert charts == [list(c.multiline.tag) for c in tb_views.layout().category[0].chart]


# ---------------------------------------------------------------- VRI, no noise flags
def test_vri_views_average_over_classes_and_keep_the_noise_state(tmp_path):
    x, noisy, _ = _data(seed=1)
    model = _model("vri")
    views = tb_views.MetaViews(str(tmp_path), x, noisy, None, sample_size=50)
    views.set_model(model)
    state = model.meta_net.noise.state.numpy()
    losses, weights = views.meta_weights()
    assert losses.shape == weights.shape == (50,)
    assert np.all((weights > 0) & (weights < 1))
    np.testing.assert_array_equal(model.meta_net.noise.state.numpy(), state)
    views.on_epoch_end(0)
    views.on_train_end()
    events = _events(os.path.join(str(tmp_path), "meta_views"))
    assert {v.tag for _, v in events} == {"weights/all"}  # no weighting function for VRI
    model.set_meta_active(False)
    views.on_epoch_end(1)
    views.on_train_end()
    assert len(_events(os.path.join(str(tmp_path), "meta_views"))) == 1
