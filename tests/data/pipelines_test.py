"""The tf.data pipelines as training sees them: what a meta batch carries, end to end
through the CLI, and the streams' determinism by epoch."""

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from clid_tf import cli
from clid_tf.data import pipelines as data
from clid_tf.trainers.meta import model as meta_model
from clid_tf.data.inputs import ArrayInputs

FLAGS = flags.FLAGS


def _run_recording_meta_batches(tmp_path, monkeypatch, *args):
    """Runs the CLI in-process for one epoch of meta steps; returns every meta batch the
    train step received (as numpy dicts)."""
    cli.define_flags()
    seen = []
    original = meta_model.MetaReweightModel.train_step

    def recording(self, batch):
        if "meta" in batch:
            seen.append(batch["meta"])
        return original(self, batch)

    monkeypatch.setattr(meta_model.MetaReweightModel, "train_step", recording)
    with flagsaver.flagsaver():
        FLAGS(["clid", f"--workdir={tmp_path / 'run'}", "--epochs=1", "--warmup_epochs=0",
               "--steps_per_epoch=2", "--verbose=0", "--export=none", *args])
        cli.run()
    return seen


def test_a_clid_runs_meta_batches_carry_no_label(tmp_path, monkeypatch):
    seen = _run_recording_meta_batches(tmp_path, monkeypatch, "--method=clid")
    assert seen and all(set(batch) == {"image"} for batch in seen)  # traced: no label key


def test_an_oracle_runs_meta_batches_carry_the_clean_labels(tmp_path, monkeypatch):
    seen = _run_recording_meta_batches(tmp_path, monkeypatch, "--method=ce_clean")
    assert seen and all(set(batch) == {"image", "label"} for batch in seen)


def test_epoch_batches_depend_on_the_epoch_only():
    x = np.arange(50, dtype=np.float32)[:, None]
    source = ArrayInputs(x)
    labels = (np.arange(50) % 5).astype(np.int32)

    def first_batches(first_epoch, count):
        stream = data.epoch_batches(source, np.arange(10, 50), batch_size=8, seed=3,
                                    steps_per_epoch=5, first_epoch=first_epoch,
                                    fields={"label": labels})
        return [b for b in stream.take(count).as_numpy_iterator()]

    straight = first_batches(0, 10)
    resumed = first_batches(1, 5)  # epoch 1 on its own equals epoch 1 of the long stream
    for a, b in zip(straight[5:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
    for batch in straight:
        ids = batch["image"][:, 0].astype(int)
        assert ids.min() >= 10  # only the given indices
        np.testing.assert_array_equal(batch["label"], labels[ids])
    epoch0 = np.concatenate([b["image"][:, 0] for b in straight[:5]])
    assert len(np.unique(epoch0)) == 40  # one pass: every index once


def test_ordered_batches_keep_order_and_end_with_a_smaller_batch():
    source = ArrayInputs(np.arange(23, dtype=np.uint8)[:, None])
    order = np.random.default_rng(0).permutation(23)
    batches = list(data.ordered_batches(source, order, batch_size=10).as_numpy_iterator())
    assert [len(ids) for ids, _ in batches] == [10, 10, 3]
    np.testing.assert_array_equal(np.concatenate([ids for ids, _ in batches]), order)
    images = np.concatenate([x for _, x in batches])
    assert images.dtype == np.float32
    np.testing.assert_array_equal(images[:, 0], order)


def test_epoch_batches_of_a_set_redrawn_every_epoch():
    """indices_of_epoch(e) is epoch e's set: its batches draw from it alone, one pass
    covers it, and a stream started at epoch e (a resumed run) gives the same batches."""
    source = ArrayInputs(np.arange(60, dtype=np.float32)[:, None])
    sets = {e: np.sort(np.random.default_rng(e).choice(60, 16, replace=False))
            for e in range(4)}

    def batches(first_epoch, count):
        stream = data.epoch_batches(source, sets[0], batch_size=4, seed=1, steps_per_epoch=4,
                                    first_epoch=first_epoch, indices_of_epoch=sets.__getitem__)
        return [b["image"][:, 0].astype(int) for b in stream.take(count).as_numpy_iterator()]

    straight = batches(0, 12)
    for epoch in range(3):
        drawn = np.concatenate(straight[4 * epoch:4 * epoch + 4])
        np.testing.assert_array_equal(np.sort(drawn), sets[epoch])  # one pass over the set
    for a, b in zip(straight[8:], batches(2, 4)):
        np.testing.assert_array_equal(a, b)
    fixed = data.epoch_batches(source, sets[0], batch_size=4, seed=1, steps_per_epoch=4)
    later = [b["image"][:, 0] for b in fixed.skip(8).take(4).as_numpy_iterator()]
    np.testing.assert_array_equal(np.sort(np.concatenate(later)), sets[0])


def test_a_val_meta_sets_batches_are_validation_images_without_labels(tmp_path, monkeypatch):
    """--meta_source=val: the meta batches hold validation images (each file is one grey
    level, so an image names its file) and no label field, in the traced train step and in
    the stream; training images never appear there."""
    import types  # pylint: disable=import-outside-toplevel
    from PIL import Image  # pylint: disable=import-outside-toplevel
    from clid_tf.cli import checks  # pylint: disable=import-outside-toplevel
    from clid_tf.trainers.meta import cli as meta_cli  # pylint: disable=import-outside-toplevel
    lists = {}
    for split, count, base in (("train", 12, 0), ("val", 8, 100)):
        lines = []
        for i in range(count):
            path = tmp_path / split / f"{i}.png"
            path.parent.mkdir(exist_ok=True)
            Image.fromarray(np.full((8, 8), base + i, np.uint8)).save(path)
            lines.append(f"{split}/{i}.png {i % 2}")
        lists[split] = tmp_path / f"{split}.txt"
        lists[split].write_text("\n".join(lines) + "\n")
    args = [f"--dataset=list:{lists['train']}", f"--val_list={lists['val']}",
            "--meta_source=val", "--meta_size=6", "--meta_batch_size=3", "--batch_size=4",
            "--trainer=vri_single"]
    seen = _run_recording_meta_batches(tmp_path, monkeypatch, *args)
    assert seen and all(set(batch) == {"image"} for batch in seen)
    with flagsaver.flagsaver():
        FLAGS(["clid", "--steps_per_epoch=2", *args])
        flags = checks.resolved()
        setup = meta_cli.prepare_setup(flags)
        stream = meta_cli.training_stream(flags, setup,
                                          types.SimpleNamespace(meta_net=object()),
                                          steps=2, start=0)
        elements = list(stream.take(4).as_numpy_iterator())
    assert all(set(e["meta"]) == {"image"} for e in elements)
    meta_levels = {int(v) for e in elements for v in np.unique(e["meta"]["image"])}
    assert meta_levels <= {100 + int(i) for i in setup.meta_indices}, meta_levels
    assert all(e["train"]["image"].max() < 12 for e in elements)


@pytest.mark.parametrize("n, batch, steps", [(10, 4, 25), (7, 3, 40), (5, 5, 9), (13, 6, 11)])
def test_no_batch_holds_a_sample_twice_and_each_pass_covers_every_sample(n, batch, steps):
    """Batches that span two passes over the samples carry the first pass's rest into the
    next one without repeating it (concatenated permutations would put the same sample
    twice into about a tenth of such batches)."""
    inputs = ArrayInputs(np.arange(n, dtype=np.float32)[:, None])
    stream = data.epoch_batches(inputs, np.arange(n), batch_size=batch, seed=4,
                                steps_per_epoch=steps)
    ids = np.stack([b["image"][:, 0].numpy().astype(int) for b in stream.take(2 * steps)])
    assert all(len(set(row)) == batch for row in ids)
    epoch = ids[:steps].ravel()  # every sample equally often within an epoch (+-1)
    counts = np.bincount(epoch, minlength=n)
    assert counts.max() - counts.min() <= 1, counts
    assert not np.array_equal(ids[:steps], ids[steps:])  # the next epoch draws anew


def test_whole_passes_are_the_plain_permutations():
    """With n a multiple of the batch nothing is carried: the order is the seeded
    permutations themselves, as before the carry existed (resumed runs see the same)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    n, batch, steps, seed = 12, 4, 9, 3
    inputs = ArrayInputs(np.arange(n, dtype=np.float32)[:, None])
    stream = data.epoch_batches(inputs, np.arange(n), batch_size=batch, seed=seed,
                                steps_per_epoch=steps)
    got = np.concatenate([b["image"][:, 0].numpy() for b in stream.take(steps)])
    permutations = [tf.random.experimental.stateless_shuffle(
        tf.range(n, dtype=tf.int64), seed=tf.constant([seed * 1_000_003, p], tf.int64)).numpy()
        for p in range(3)]
    np.testing.assert_array_equal(got, np.concatenate(permutations))
