"""What a Keras user passes to `fit`, checked and turned into the trainers' streams.

`fit(x, y)` takes what keras.Model.fit takes: arrays with labels, or a tf.data.Dataset of
batches `(inputs, labels)`, `(inputs, labels, sample_weights)` or dicts
`{'image', 'label'[, 'sample_weight']}`; `sample_weight` / `class_weight`;
`validation_split` / `validation_data`. Labels are int [N] or [N, 1], or one-hot [N, K];
anything else is a ValueError with one line that says what to give instead, raised before
the first step (values inside a Dataset are checked on its first batch here, and on every
batch by an assertion in the pipeline).

Sample weights s_i (with class weights, s_i = class_weight[y_i] * sample_weight_i) scale
each sample's term of the training loss together with its meta weight: the loss is
sum_i s_i w~_i CE_i for WNet (w~ the batch-normalised meta weights), mean_i s_i CE(omega_i
z_i) for VRI and mean_i s_i CE_i without a meta-net; with uniform meta weights this is
Keras' own mean of s_i CE_i. CLID, the meta objective, reads neither labels nor weights.
"""

from __future__ import annotations

import collections.abc
import inspect
import math
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from clid_tf.data import pipelines
from clid_tf.data.inputs import (UNIT_SCALE_TOP, as_inputs, dtype_name,
                                 each_input, float_pixel_scale, input_array, num_samples,
                                 take, to_model)
from clid_tf.data.pipelines import Part

KEYS = ("image", "label", "sample_weight")  # the keys of a dict Dataset's elements


class InputProfile(NamedTuple):
    """What the training inputs looked like: what export and augmentation need.

    shape: one sample's shape (H, W, C), (D,), (T,) or () (one text); for a model with
      several inputs a dict (or list) of them.
    dtype: what the inputs arrived as: 'uint8', 'float32', 'int32', 'int64', 'string'; a
      dict (or list) of them for several inputs.
    max_value: the largest value of numeric inputs (1.0 for images scaled to [0, 1], 255
      for pixel values); 0 otherwise.
    """
    shape: Any
    dtype: Any
    max_value: float

    @property
    def several(self) -> bool:
        """Whether the model takes several inputs (a dict or tuple of them)."""
        return not isinstance(self.dtype, str)

    @property
    def pixel_scale(self) -> float:
        """The factor that brings these inputs to 0..255 pixel values: 255 for images in
        [0, 1] (round-off above 1 included, `inputs.float_pixel_scale`), else 1."""
        return 255.0 if self.dtype == "float32" and self.max_value <= UNIT_SCALE_TOP else 1.0

    @property
    def is_image(self) -> bool:
        return (not self.several and len(self.shape) == 3
                and self.dtype in ("uint8", "float32"))

    def specs(self):
        """tf.TensorSpec [None, *shape] of the inputs, in their structure."""
        return each_input(lambda shape, dtype: tf.TensorSpec([None, *shape], dtype),
                          self.shape, self.dtype)

    def to_config(self) -> dict[str, Any]:
        """JSON-ready: shapes as lists, several inputs as a dict or list of them."""
        shape = each_input(list, self.shape)
        dtype = list(self.dtype) if isinstance(self.dtype, tuple) else self.dtype
        return {"shape": list(shape) if isinstance(shape, tuple) else shape, "dtype": dtype,
                "max_value": self.max_value}

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> "InputProfile | None":
        if config is None:
            return None
        shape, dtype = config["shape"], config["dtype"]
        if isinstance(dtype, dict):
            shape = {key: tuple(int(d) for d in value) for key, value in shape.items()}
        elif isinstance(dtype, list):  # several inputs in order
            shape, dtype = tuple(tuple(int(d) for d in value) for value in shape), tuple(dtype)
        else:
            shape = tuple(int(d) for d in shape)
        return cls(shape, dtype, float(config["max_value"]))


class UserData(NamedTuple):
    """A user's training data, checked."""
    stream: tf.data.Dataset           # {'train': {'image', 'label'[, 'sample_weight']},
                                      #  'meta': {'image'[, 'label']}} (no 'meta' if none)
    steps: int | None                 # steps per epoch (None: the Dataset's own length)
    meta_set: Part | None             # the meta set drawn (or given)
    validation_data: Any              # what keras.Model.fit gets as validation_data
    profile: InputProfile             # the training inputs' shape, dtype and range


# ---------------------------------------------------------------- labels and weights
def check_labels(y, num_classes: int, *, name: str = "y") -> np.ndarray:
    """int32 [N] class ids from int labels [N] or [N, 1] (integral floats accepted) or
    one-hot rows [N, K]. ValueError (one line) for anything else."""
    labels = np.asarray(y)
    if labels.dtype == object or not (np.issubdtype(labels.dtype, np.integer)
                                      or np.issubdtype(labels.dtype, np.floating)
                                      or labels.dtype == bool):
        raise ValueError(f"{name} must be integer class ids, got dtype {labels.dtype}")
    if labels.ndim == 2 and labels.shape[1] == num_classes and num_classes > 1:
        if not (np.all((labels == 0) | (labels == 1)) and np.all(labels.sum(axis=1) == 1)):
            raise ValueError(f"{name} has shape {labels.shape} but its rows are not one-hot; "
                             "give int class ids [N] (soft labels are not supported)")
        return labels.argmax(axis=1).astype(np.int32)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(f"{name} must be int class ids [N] or [N, 1] (or one-hot [N, "
                         f"{num_classes}]), got shape {labels.shape}")
    if np.issubdtype(labels.dtype, np.floating):
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise ValueError(f"{name} holds fractional or non-finite values; give integer "
                             "class ids (soft labels are not supported)")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise ValueError(f"{name} holds the label {bad:g}, outside the model's classes "
                         f"0..{num_classes - 1}")
    return labels.astype(np.int32)


def check_sample_weights(sample_weight, class_weight, labels: np.ndarray
                         ) -> np.ndarray | None:
    """float32 [N] weights s_i = class_weight[y_i] * sample_weight_i, or None for none.
    ValueError for a wrong length, negative or non-finite weights, or a class_weight
    with a key that is no class id."""
    weights = None
    if sample_weight is not None:
        weights = np.asarray(sample_weight, np.float64)
        if weights.ndim == 2 and weights.shape[1] == 1:
            weights = weights[:, 0]
        if weights.shape != labels.shape:
            raise ValueError(f"sample_weight must be one weight per sample [{len(labels)}], "
                             f"got shape {weights.shape}")
    if class_weight is not None:
        table = class_weight_table(class_weight, int(labels.max(initial=0)) + 1)
        by_class = table[labels]
        weights = by_class if weights is None else weights * by_class
    if weights is not None and (not np.all(np.isfinite(weights)) or np.any(weights < 0)):
        raise ValueError("sample weights must be finite and >= 0")
    return None if weights is None else weights.astype(np.float32)


def class_weight_table(class_weight: dict, num_classes: int) -> np.ndarray:
    """float64 [K] weight per class from Keras' {class id: weight} dict; a class it does
    not name weighs 1, as in Keras. ValueError for a key that is no class id."""
    if not isinstance(class_weight, dict):
        raise ValueError("class_weight must be a dict {class id: weight}")
    wrong = [k for k in class_weight
             if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0]
    if wrong:
        raise ValueError(f"class_weight keys must be class ids 0..K-1, got {wrong[0]!r}")
    return np.array([float(class_weight.get(c, 1.0)) for c in range(num_classes)])


def labels_in_graph(labels: tf.Tensor, num_classes: int) -> tf.Tensor:
    """A batch's labels [b], [b, 1] or one-hot [b, K] as int32 [b], asserted to be in
    0..K-1 (the Dataset path's check of every batch)."""
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == 2 and labels.shape[-1] == num_classes and num_classes > 1:
        labels = tf.argmax(labels, axis=-1)
    elif labels.shape.rank == 2 and labels.shape[-1] == 1:
        labels = labels[:, 0]
    ids = tf.cast(labels, tf.int32)
    check = tf.debugging.Assert(
        tf.reduce_all((ids >= 0) & (ids < num_classes)
                      & tf.equal(tf.cast(ids, labels.dtype), labels)),
        [f"labels must be integer class ids in 0..{num_classes - 1}; got", labels],
        summarize=8)
    with tf.control_dependencies([check]):
        return tf.identity(ids)


# ---------------------------------------------------------------- Datasets
def is_batches(x) -> bool:
    """Whether x is a source of batches rather than arrays: a tf.data.Dataset, a
    keras.utils.PyDataset, or a Python generator / iterator."""
    return (isinstance(x, (tf.data.Dataset, keras.utils.PyDataset))
            or inspect.isgenerator(x) or (isinstance(x, collections.abc.Iterator)
                                           and not isinstance(x, np.ndarray)))


def as_dataset(x) -> tf.data.Dataset:
    """A user's batches as a tf.data.Dataset: a Dataset as it is; a keras.utils.PyDataset
    read batch by batch in its order, one pass per iteration; a generator (or iterator)
    of batches (inputs, labels[, sample_weights]) read as it yields them, once (as Keras
    reads one, its epochs continue where the last one stopped)."""
    if isinstance(x, tf.data.Dataset):
        return x
    if isinstance(x, keras.utils.PyDataset):
        count = x.num_batches
        if count is None:
            raise ValueError("this PyDataset has no length (num_batches is None): give it "
                             "__len__, or pass a generator with steps_per_epoch")
        first = _batch_tuple(x[0])
        return tf.data.Dataset.from_generator(  # its length known: Keras' epochs
            lambda: (_batch_tuple(x[i]) for i in range(count)),
            output_signature=_signature(first)).apply(
                tf.data.experimental.assert_cardinality(count))
    iterator = iter(x)
    try:
        first = [_batch_tuple(next(iterator))]  # read for its signature, yielded once
    except StopIteration:
        raise ValueError("the generator yields no batches") from None
    signature = _signature(first[0])

    def batches():
        if first:
            yield first.pop()
        for batch in iterator:
            yield _batch_tuple(batch)

    return tf.data.Dataset.from_generator(batches, output_signature=signature)


def _batch_tuple(batch):
    """A batch a PyDataset or generator yields, as a tuple (inputs, labels[, weights])."""
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise ValueError("a PyDataset or generator for fit must yield (inputs, labels) or "
                         "(inputs, labels, sample_weights) batches")
    return (pipelines.as_input_array(batch[0]), *(np.asarray(b) for b in batch[1:]))


def _signature(batch):
    """tf.TensorSpec of every array of a batch tuple, the batch dimension unknown."""
    return tf.nest.map_structure(
        lambda a: tf.TensorSpec([None, *a.shape[1:]], tf.as_dtype(
            tf.string if a.dtype.kind in "USO" else a.dtype)), batch)


def dataset_elements(dataset: tf.data.Dataset, num_classes: int,
                     class_weight: dict | None = None, *, cast: bool = True
                     ) -> tf.data.Dataset:
    """A user's batched Dataset as {'image', 'label' int32 [b][, 'sample_weight']}, the
    inputs as the model takes them (`inputs.to_model`; as given with cast=False): one
    tensor, or a dict / list of them for a model with several inputs.

    Elements may be (inputs, labels), (inputs, labels, sample_weights) or dicts with the
    keys of KEYS. ValueError (one line) for other structures and unbatched datasets; the
    first batch's labels and weights are checked here, every batch's labels in the graph.
    """
    dataset = as_dataset(dataset)
    spec = dataset.element_spec
    if isinstance(spec, dict):
        missing = [k for k in ("image", "label") if k not in spec]
        extra = sorted(set(spec) - set(KEYS))
        if missing or extra:
            raise ValueError(f"a Dataset of dicts needs the keys 'image' and 'label' (and "
                             f"optionally 'sample_weight'); its elements have "
                             f"{sorted(spec)}: map it to those keys or to (inputs, labels) "
                             "tuples")
        to_tuple = lambda e: tuple(e[k] for k in KEYS if k in e)  # noqa: E731
        dataset = dataset.map(to_tuple)
        spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise ValueError("fit needs a Dataset of (inputs, labels) or (inputs, labels, "
                         "sample_weights) batches, or of dicts with 'image' and 'label'; got "
                         f"elements {spec}")
    if (any(not isinstance(s, tf.TensorSpec) for s in spec[1:])
            or any(not isinstance(s, tf.TensorSpec) for s in tf.nest.flatten(spec[0]))):
        raise ValueError("the Dataset's labels and weights must each be one tensor, its "
                         f"inputs one tensor or a dict / tuple of them; got {spec}")
    if spec[1].shape.rank == 0:
        raise ValueError("the Dataset yields single samples: batch it first, e.g. "
                         "dataset.batch(32)")
    first = next(iter(dataset.take(1)), None)
    if first is None:
        raise ValueError("the Dataset is empty")
    check_labels(first[1].numpy(), num_classes, name="the Dataset's labels")
    if len(first) == 3:
        check_sample_weights(first[2].numpy(), None,
                             np.zeros(len(first[1].numpy()), np.int32))
    table = (None if class_weight is None else tf.constant(
        class_weight_table(class_weight, num_classes), tf.float32))

    def element(inputs, labels, weights=None):
        batch = {"image": to_model(inputs) if cast else inputs,
                 "label": labels_in_graph(labels, num_classes)}
        if weights is not None:
            weights = tf.cast(weights, tf.float32)
            batch["sample_weight"] = tf.reshape(weights, [-1])
        if table is not None:
            by_class = tf.gather(table, batch["label"])
            batch["sample_weight"] = (by_class if weights is None
                                      else batch["sample_weight"] * by_class)
        return batch

    return dataset.map(element)


def arrays_of(dataset: tf.data.Dataset, num_classes: int, *, with_weights: bool = False):
    """(inputs [N, ...], int32 labels [N]) of a user's whole Dataset, read once into memory
    (the trainers that divide or index the training set every epoch need random access);
    `with_weights`: (inputs, labels, float32 sample weights [N] or None), else a Dataset
    of (inputs, labels, weights) is refused."""
    batches = list(dataset_elements(dataset, num_classes, cast=False).as_numpy_iterator())
    weighted = any("sample_weight" in b for b in batches[:1])
    if weighted and not with_weights:
        raise ValueError("this trainer takes no sample weights: give (inputs, labels) batches")
    inputs = tf.nest.map_structure(lambda *parts: np.concatenate(parts),
                                   *[b["image"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches]).astype(np.int32)
    if not with_weights:
        return inputs, labels
    weights = (np.concatenate([b["sample_weight"] for b in batches]).astype(np.float32)
               if weighted else None)
    return inputs, labels, weights


def profile_of_array(x, what: str = "x") -> InputProfile:
    """The profile of inputs [N, ...] (one array, or a dict / list of them); float images
    must be on one clear pixel scale (`inputs.float_pixel_scale`, ValueError otherwise)."""
    if isinstance(x, (dict, list, tuple)):
        x = tuple(x) if isinstance(x, list) else x
        return InputProfile(each_input(lambda a: tuple(int(d) for d in a.shape[1:]), x),
                            each_input(dtype_name, x), 0.0)
    x = input_array(x, what)
    numeric = x.dtype.kind in "uifb"
    profile = InputProfile(tuple(int(d) for d in x.shape[1:]), dtype_name(x),
                           float(np.max(x)) if numeric and x.size else 0.0)
    if profile.is_image and profile.dtype == "float32" and x.size:
        float_pixel_scale(float(np.min(x)), profile.max_value, what)
    return profile


def check_finite(x, what: str = "x") -> None:
    """ValueError (one line) when float inputs (of any input of a structure) hold NaN or
    Inf: one such value makes every weight NaN after its first step."""
    for array in tf.nest.flatten(x):
        if array.dtype.kind == "f":
            bad = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
            if bad.any():
                raise ValueError(f"{what} holds NaN or Inf in {int(bad.sum())} of "
                                 f"{len(array)} samples (the first is sample "
                                 f"{int(np.argmax(bad))}); fix or drop them")


def profile_of_dataset(dataset: tf.data.Dataset) -> InputProfile:
    """The profile of the first batch of a user's Dataset, as it gives its inputs
    (`dataset_elements(..., cast=False)`)."""
    first = next(iter(dataset.take(1)))["image"]
    return profile_of_array(tf.nest.map_structure(lambda t: t.numpy(), first),
                            "the Dataset's inputs")


# ---------------------------------------------------------------- validation
def split_validation(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None,
                     fraction: float):
    """Keras' validation_split: the last `fraction` of the samples (before any shuffle)
    is held out. Returns ((x, y, w) to train on, (x, y[, w]) to validate on)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation_split must be in (0, 1), got {fraction}")
    n = num_samples(x)
    keep = int(math.floor(n * (1.0 - fraction)))  # Keras' train_validation_split
    if keep == 0 or keep == n:
        raise ValueError(f"validation_split={fraction} of {n} samples leaves an empty part")
    head, tail = slice(None, keep), slice(keep, None)
    validation = ((take(x, tail), y[tail]) if weights is None
                  else (take(x, tail), y[tail], weights[tail]))
    return (take(x, head), y[head], None if weights is None else weights[head]), validation


def checked_validation_data(validation_data, num_classes: int):
    """validation_data as Keras' fit takes it, with labels checked: (x, y), (x, y,
    sample_weight) arrays, or a Dataset (normalised like the training Dataset)."""
    if validation_data is None:
        return None
    if isinstance(validation_data, tf.data.Dataset):
        return dataset_elements(validation_data, num_classes).map(
            lambda b: tuple(b[k] for k in KEYS if k in b))
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
        raise ValueError("validation_data must be (x, y), (x, y, sample_weight) or a "
                         "tf.data.Dataset")
    x, y = pipelines.as_input_array(validation_data[0]), validation_data[1]
    labels = check_labels(y, num_classes, name="validation_data's labels")
    if len(labels) != num_samples(x):
        raise ValueError(f"validation_data has {num_samples(x)} inputs but {len(labels)} "
                         "labels")
    if len(validation_data) == 2:
        return x, labels
    return x, labels, check_sample_weights(validation_data[2], None, labels)


# ---------------------------------------------------------------- the training stream
def in_memory(x, y, *, num_classes: int, validation, sample_weight=None, class_weight=None,
              validation_split: float = 0.0, with_weights: bool = True):
    """A user's training data read into memory and checked, for the trainers that index
    it: (inputs [N, ...], int32 labels [N], float32 weights [N] or None, validation data).

    x: inputs with labels y (and `sample_weight`), or a batched Dataset of (inputs,
    labels[, weights]) or dicts (y and sample_weight None). `validation`: the checked
    validation_data, replaced by the held-out part when `validation_split` is given.
    `with_weights=False`: weights are refused (the result's weights are None).
    """
    if is_batches(x):
        x = as_dataset(x)
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise ValueError("give the labels inside the Dataset; y must be None")
        if sample_weight is not None:
            raise ValueError("give sample weights inside the Dataset, as (inputs, labels, "
                             "sample_weights) batches")
        if with_weights:
            inputs, labels, given = arrays_of(x, num_classes, with_weights=True)
        else:
            (inputs, labels), given = arrays_of(x, num_classes), None
    else:
        if y is None:
            raise ValueError("fit(x, y) needs labels y for array inputs")
        inputs = pipelines.as_input_array(x)
        check_finite(inputs)
        labels = check_labels(y, num_classes)
        if len(labels) != num_samples(inputs):
            raise ValueError(f"x has {num_samples(inputs)} samples but y has {len(labels)} "
                             "labels")
        given = sample_weight
    weights = check_sample_weights(given, class_weight, labels)
    if validation_split:
        if validation is not None:
            raise ValueError("give validation_split or validation_data, not both")
        (inputs, labels, weights), validation = split_validation(inputs, labels, weights,
                                                                 validation_split)
    return inputs, labels, weights, validation


def prepare(x, y=None, *, num_classes: int, batch_size: int, meta_size: int,
            meta_batch_size: int, seed: int, with_meta: bool = True,
            meta_labels: str = "none", meta_data=None, first_epoch: int = 0,
            sample_weight=None, class_weight=None, validation_split: float = 0.0,
            validation_data=None, steps_per_epoch: int | None = None) -> UserData:
    """A user's fit arguments as the `MetaReweightModel` stream.

    Args:
      x: inputs as an array [N, ...] (with labels `y`), or a batched tf.data.Dataset
        (then `y` is None; module docstring for its elements).
      num_classes: K, for the label checks.
      batch_size: training batch size for array inputs.
      meta_size: size of the meta set drawn from the training samples when `meta_data` is
        None: a seeded random subset for arrays; for a Dataset, `meta_size` samples of a
        seeded shuffle (buffer 10 x meta_size) of one pass over it, held in memory.
      meta_batch_size: meta batch size (at most the meta-set size).
      seed: seed of the shuffles and of the meta-set draw.
      with_meta: False for a model without a meta-net (no meta batches).
      meta_labels: what the meta objective reads (objectives.META_OBJECTIVE_LABELS): 'none'
        (label-free: the meta batches carry no labels), 'noisy' (the training labels of the
        meta samples), 'clean' (only with `meta_data=(inputs, clean labels)`).
      meta_data: inputs [M, ...] of a meta set to use instead, or (inputs, labels).
      first_epoch: the epoch the array stream starts at (fit's initial_epoch): epoch e's
        batches are a function of (seed, e), so a resumed fit continues exactly.
      sample_weight, class_weight, validation_split, validation_data: as keras.Model.fit.
      steps_per_epoch: fit's, when given: epochs of that many whole batches; by default
        an epoch is one pass of the array as Keras makes it, ceil(N / batch_size) steps,
        the last batch smaller (`pipelines.one_pass_batches`).
    """
    given = meta_data is not None
    meta_x, meta_y = (meta_data if isinstance(meta_data, tuple) else (meta_data, None))
    if meta_labels == "clean" and meta_y is None:
        raise ValueError("a meta objective on clean labels needs them: pass "
                         "meta_data=(inputs, clean labels)")
    if meta_y is not None:
        meta_y = check_labels(meta_y, num_classes, name="meta_data's labels")
    validation = checked_validation_data(validation_data, num_classes)
    if is_batches(x):
        x = as_dataset(x)
    if isinstance(x, tf.data.Dataset):
        return _from_dataset(x, y, num_classes=num_classes, meta_size=meta_size,
                             meta_batch_size=meta_batch_size, seed=seed, with_meta=with_meta,
                             meta_labels=meta_labels, meta_x=meta_x if given else None,
                             meta_y=meta_y, sample_weight=sample_weight,
                             class_weight=class_weight, validation_split=validation_split,
                             validation=validation)
    inputs, labels, weights, validation = in_memory(
        x, y, num_classes=num_classes, validation=validation, sample_weight=sample_weight,
        class_weight=class_weight, validation_split=validation_split)
    source = as_inputs(inputs)
    fields = {"label": labels}
    if weights is not None:
        fields["sample_weight"] = weights
    if steps_per_epoch:  # Keras' steps: whole batches, epochs of that many
        if len(source) < batch_size:
            raise ValueError(f"batch_size={batch_size} is larger than the {len(source)} "
                             "training samples, so there is no whole batch for "
                             "steps_per_epoch: give a smaller batch_size")
        steps = steps_per_epoch
        train = pipelines.epoch_batches(source, np.arange(len(source)), batch_size=batch_size,
                                        seed=seed, steps_per_epoch=steps,
                                        first_epoch=first_epoch, fields=fields)
    else:  # Keras' epochs: one pass, the last batch smaller (one batch when b > N)
        steps = -(-len(source) // batch_size)
        train = pipelines.one_pass_batches(source, np.arange(len(source)),
                                           batch_size=batch_size, seed=seed,
                                           first_epoch=first_epoch, fields=fields)
    profile = profile_of_array(inputs)
    if not with_meta:
        return UserData(pipelines.training_stream(train), steps, None, validation, profile)
    if not given:
        rng = np.random.default_rng(seed)
        ids = np.sort(rng.choice(len(source), min(meta_size, len(source)), replace=False))
        meta = Part(source, ids, labels[ids] if meta_labels == "noisy" else None)
    else:
        meta = Part(as_inputs(pipelines.as_input_array(meta_x)), None, meta_y)
    meta_fields = {}
    if meta_labels != "none":
        if meta.labels is None:
            raise ValueError(f"the meta objective reads {meta_labels} labels: pass "
                             "meta_data=(inputs, labels)")
        table = np.zeros(len(meta.inputs), np.int32)
        table[meta.ids()] = meta.labels
        meta_fields["label"] = table
    meta_stream = pipelines.epoch_batches(
        meta.inputs, meta.ids(), batch_size=min(meta_batch_size, len(meta)), seed=seed + 1,
        steps_per_epoch=steps, first_epoch=first_epoch, fields=meta_fields)
    return UserData(pipelines.training_stream(train, meta_stream), steps, meta, validation,
                    profile)


def _from_dataset(x: tf.data.Dataset, y, *, num_classes, meta_size, meta_batch_size, seed,
                  with_meta, meta_labels, meta_x, meta_y, sample_weight, class_weight,
                  validation_split, validation) -> UserData:
    if y is not None:
        raise ValueError("give the labels inside the Dataset, as (inputs, labels) batches; "
                         "y must be None")
    if sample_weight is not None:
        raise ValueError("give sample weights inside the Dataset, as (inputs, labels, "
                         "sample_weights) batches")
    if validation_split:
        raise ValueError("validation_split needs array inputs; for a Dataset, pass "
                         "validation_data")
    raw = dataset_elements(x, num_classes, class_weight, cast=False)
    train = raw.map(lambda b: {**b, "image": to_model(b["image"])})
    profile = profile_of_dataset(raw)
    if not with_meta:
        return UserData(pipelines.training_stream(train), None, None, validation, profile)
    if meta_x is None:
        drawn = list(raw.unbatch().shuffle(10 * meta_size, seed=seed).take(meta_size)
                     .batch(1024).as_numpy_iterator())
        meta_x = tf.nest.map_structure(lambda *parts: np.concatenate(parts),
                                       *[b["image"] for b in drawn])
        meta_y = np.concatenate([b["label"] for b in drawn]) if meta_labels == "noisy" else None
    meta = Part(as_inputs(pipelines.as_input_array(meta_x)), None, meta_y)
    size = min(meta_batch_size, len(meta))
    slices = {"image": meta.inputs.array}
    if meta_labels != "none":
        if meta.labels is None:
            raise ValueError(f"the meta objective reads {meta_labels} labels: pass "
                             "meta_data=(inputs, labels)")
        slices["label"] = meta.labels.astype(np.int32)
    meta_stream = (tf.data.Dataset.from_tensor_slices(slices)
                   .shuffle(len(meta), seed=seed, reshuffle_each_iteration=True).repeat()
                   .batch(size, drop_remainder=True)
                   .map(lambda m: {**m, "image": to_model(m["image"])}))
    return UserData(pipelines.training_stream(train, meta_stream), None, meta, validation,
                    profile)
