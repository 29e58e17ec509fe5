"""tf.data pipelines over built TFDS datasets, read by example index.

The order of training examples is a pure function of (seed, global position):
global position p = step * global_batch + j lies in epoch p // N at offset
p % N of that epoch's seeded permutation. Each host reads its own contiguous
slice of every global batch. Hence:
  * resuming at step s reads exactly what an uninterrupted run would have;
  * the global batch is the same whatever the host and device count;
  * augmentation draws stateless random numbers seeded by (seed, p).
"""
import dataclasses
import functools
from typing import Dict, Iterator, Optional, Sequence

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from big_transfer_med import errors
import input_pipeline.datasets  # noqa: F401  (registers our builders)
from input_pipeline import labels as labels_lib
from input_pipeline import preprocessing

_READ_CHUNK = 256  # Records fetched per random-access call.


class DatasetNotFoundError(errors.DataError, FileNotFoundError):
  """A dataset has not been built (or lives elsewhere)."""


def load_builder(name: str, data_dir: Optional[str]) -> tfds.core.DatasetBuilder:
  """Returns the prepared builder `name`, or fails saying how to build it."""
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DatasetNotFoundError(
        f"config.data.name={name!r} is not a known TFDS dataset ({e}).") from e
  if not builder.is_prepared():
    instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None) or ""
    raise DatasetNotFoundError(
        f"Dataset {name!r} is not built in {builder.data_dir_root} "
        f"(config.data.data_dir={data_dir!r}). Build it first:\n"
        f"  tfds build --imports=input_pipeline.datasets {name} "
        f"--data_dir={builder.data_dir_root} --manual_dir=DIR\n"
        f"where DIR holds the downloaded files:{instructions}")
  return builder


def _open_split(builder: tfds.core.DatasetBuilder, split: str):
  """Random-access source of `split`, images left encoded."""
  try:
    return builder.as_data_source(
        split, decoders={"image": tfds.decode.SkipDecoding()})
  except (KeyError, ValueError) as e:
    raise errors.ConfigError(
        f"Split {split!r} does not fit dataset {builder.name} (splits "
        f"{list(builder.info.splits)}; slices like 'train[:10%]' work); check "
        f"config.data.*_split. ({e})") from e


def _read_field(data, field: str) -> np.ndarray:
  """One field of every record, read in chunks (images are not decoded)."""
  values = []
  for start in range(0, len(data), _READ_CHUNK * 16):
    stop = min(start + _READ_CHUNK * 16, len(data))
    values.extend(r[field] for r in data.__getitems__(list(range(start, stop))))
  return np.array(values)


class Source:
  """One split of a built dataset, read by index: yields (image bytes, label
  vector). `indices` selects (and orders) the records used."""

  def __init__(self, builder, split: str):
    self.builder, self.split = builder, split
    self._data = _open_split(builder, split)
    self.indices = np.arange(len(self._data))
    self.image_feature = builder.info.features["image"]

  def __len__(self) -> int:
    return len(self.indices)

  def label_vector(self, record) -> np.ndarray:
    raise NotImplementedError

  def read(self, positions: np.ndarray):
    """Yields (image bytes, float32 label vector) at `positions` (in order)."""
    for record in self._data.__getitems__(self.indices[positions].tolist()):
      yield record["image"], self.label_vector(record)


class ClassificationSource(Source):
  """Single-label data (feature 'label'); one-hot labels. With `classes`, only
  those classes are kept, relabelled 0..len(classes)-1 in the given order."""

  def __init__(self, builder, split: str, classes: Sequence[int] = ()):
    super().__init__(builder, split)
    label_feature = builder.info.features["label"]
    self.label_names = list(label_feature.names)
    self._label_map = np.arange(label_feature.num_classes)
    if classes:
      bad = [c for c in classes if not 0 <= c < label_feature.num_classes]
      if bad:
        raise errors.ConfigError(
            f"config.data.classes has {bad}, outside 0.."
            f"{label_feature.num_classes - 1} of {builder.name}.")
      labels = _read_field(self._data, "label")
      self.indices = np.flatnonzero(np.isin(labels, classes))
      self._label_map = np.full(label_feature.num_classes, -1)
      self._label_map[list(classes)] = np.arange(len(classes))
      self.label_names = [self.label_names[c] for c in classes]
    self._one_hot = np.eye(len(self.label_names), dtype=np.float32)

  def label_vector(self, record) -> np.ndarray:
    return self._one_hot[self._label_map[record["label"]]]


class CxrSource(Source):
  """A chest X-ray split (multi-label, dataset label order), filtered by view."""

  def __init__(self, builder, split: str, views: Sequence[str]):
    super().__init__(builder, split)
    self.label_names = list(builder.info.metadata["label_names"])
    view_names = builder.info.features["view"].names
    unknown = [v for v in views if v not in view_names]
    if unknown:
      raise errors.ConfigError(f"config.data.views has {unknown}; expected "
                               f"some of {view_names}.")
    if set(views) != set(view_names):
      keep = [view_names.index(v) for v in views]
      self.indices = np.flatnonzero(
          np.isin(_read_field(self._data, "view"), keep))

  def label_vector(self, record) -> np.ndarray:
    return np.asarray(record["labels"], np.float32)


class MixedSource:
  """Several sources as one index space (concatenated in order)."""

  def __init__(self, sources: Sequence[Source]):
    self.sources = list(sources)
    self.sizes = np.array([len(s) for s in self.sources])
    self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
    empty = [f"{s.builder.name}[{s.split}]" for s in self.sources if not len(s)]
    if empty:
      raise errors.ConfigError(f"No examples left in {empty} (check "
                               "config.data.views / classes).")

  def __len__(self) -> int:
    return int(self.offsets[-1])

  def read(self, indices: np.ndarray):
    """Returns [(source id, image bytes, label vector)] for global `indices`,
    reading each source's share in one batched call."""
    which = np.searchsorted(self.offsets, indices, side="right") - 1
    out = [None] * len(indices)
    for source_id in np.unique(which):
      where = np.flatnonzero(which == source_id)
      local = indices[where] - self.offsets[source_id]
      for i, (image, labels) in zip(where,
                                    self.sources[source_id].read(local)):
        out[i] = (int(source_id), image, labels)
    return out


def weighted_indices(positions: np.ndarray, sizes: np.ndarray,
                     weights: Sequence[float], seed: int) -> np.ndarray:
  """Global indices for mixing by weights: position p draws its source with
  probability weights[j] and an example of it uniformly (with replacement),
  from a generator seeded by (seed, p): deterministic and resumable."""
  probabilities = np.asarray(weights, np.float64) / np.sum(weights)
  offsets = np.concatenate([[0], np.cumsum(sizes)])
  out = np.empty(len(positions), np.int64)
  for i, position in enumerate(positions):
    rng = np.random.default_rng([seed, 1, int(position)])
    j = rng.choice(len(sizes), p=probabilities)
    out[i] = offsets[j] + rng.integers(sizes[j])
  return out


def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n)


def train_positions(num_examples: int, seed: int, global_batch: int,
                    start_step: int, host_id: int, num_hosts: int
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields per step, from `start_step`, this host's (positions, example indices)."""
  if global_batch % num_hosts:
    raise errors.ConfigError(f"config.batch_size={global_batch} is not "
                             f"divisible by the {num_hosts} hosts.")
  per_host = global_batch // num_hosts
  permutations = {}  # The (at most two) epochs the current batch spans.
  step = start_step
  while True:
    first = step * global_batch + host_id * per_host
    positions = np.arange(first, first + per_host, dtype=np.int64)
    epochs, offsets = np.divmod(positions, num_examples)
    permutations = {e: permutations[e] if e in permutations else
                    _epoch_permutation(seed, e, num_examples)
                    for e in np.unique(epochs).tolist()}
    indices = np.array([permutations[e][o]
                        for e, o in zip(epochs.tolist(), offsets.tolist())])
    yield positions, indices
    step += 1


def eval_positions(num_examples: int, global_batch: int, host_id: int,
                   num_hosts: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields (positions, indices) covering every example once, last batch padded.

  Padding positions (>= num_examples) read example 0 and are masked out.
  """
  per_host = global_batch // num_hosts
  num_steps = -(-num_examples // global_batch)
  for step in range(num_steps):
    first = step * global_batch + host_id * per_host
    positions = np.arange(first, first + per_host, dtype=np.int64)
    yield positions, np.where(positions < num_examples, positions, 0)


CXR_SOURCES = {"chexpert": "cxr_chexpert", "mimic": "cxr_mimic",
               "nih14": "cxr_nih14", "padchest": "cxr_padchest"}


@dataclasses.dataclass
class Pipeline:
  """Dataset handles and batch iterators for one run.

  Single-label data: config.data.name (+ classes). Chest X-rays:
  config.data.sources (any of CXR_SOURCES), harmonised onto
  config.data.label_set; batches then carry a per-label `label_mask`.
  """
  config: ml_collections.ConfigDict
  host_id: int = 0
  num_hosts: int = 1
  num_local_devices: int = 1

  def __post_init__(self):
    c = self.config.data
    if c.sources:
      unknown = [s for s in c.sources if s not in CXR_SOURCES]
      if unknown:
        raise errors.ConfigError(f"config.data.sources has {unknown}; "
                                 f"expected some of {sorted(CXR_SOURCES)}.")
      builders = [load_builder(f"{CXR_SOURCES[s]}/{c.builder_config}",
                               c.data_dir) for s in c.sources]
      make = lambda split: MixedSource(  # noqa: E731
          [CxrSource(b, split, tuple(c.views)) for b in builders])
      self.harmonizers = [
          labels_lib.Harmonizer(b.info.metadata["label_names"], c.label_set,
                                c.uncertain, c.missing) for b in builders]
    else:
      builder = load_builder(c.name, c.data_dir)
      make = lambda split: MixedSource(  # noqa: E731
          [ClassificationSource(builder, split, tuple(c.classes))])
      self.harmonizers = None
    self.train, self.eval = make(c.train_split), make(c.eval_split)
    self.label_names = (list(self.harmonizers[0].names) if self.harmonizers
                        else self.train.sources[0].label_names)
    self.multi_label = self.harmonizers is not None
    self.num_classes = len(self.label_names)
    if c.weights and len(c.weights) != len(self.train.sources):
      raise errors.ConfigError(
          f"config.data.weights has {len(c.weights)} entries for "
          f"{len(self.train.sources)} sources.")

  def _dataset(self, source: MixedSource, batches, train: bool, per_host: int
               ) -> tf.data.Dataset:
    cfg = self.config.data
    seed = self.config.seed
    width = max(len(s.label_names) for s in source.sources)

    def generator():
      for positions, indices in batches:
        for position, (source_id, image, labels) in zip(
            positions, source.read(indices)):
          padded = np.full(width, np.nan, np.float32)
          padded[:len(labels)] = labels
          yield position, source_id, image, padded

    ds = tf.data.Dataset.from_generator(generator, output_signature=(
        tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int32),
        tf.TensorSpec([], tf.string), tf.TensorSpec([width], tf.float32)))

    def branch(source_id, image, labels, rng):
      feature = source.sources[source_id].image_feature
      decoded = preprocessing.to_unit_range(feature.decode_example(image))
      if self.harmonizers is None:
        return decoded, labels[:self.num_classes], tf.ones([self.num_classes])
      harmonizer = self.harmonizers[source_id]
      size = len(source.sources[source_id].label_names)
      return (decoded,) + harmonizer(labels[:size], rng)

    def process(position, source_id, image, labels):
      rng = tf.stack([tf.cast(seed, tf.int64), position])
      label_rng, image_rng = tf.unstack(
          tf.random.experimental.stateless_split(rng, 2))
      branches = [functools.partial(branch, j, image, labels, label_rng)
                  for j in range(len(source.sources))]
      image, labels, label_mask = (
          branches[0]() if len(branches) == 1 else
          tf.switch_case(source_id, branches))
      example = {
          "image": preprocessing.preprocess(image, cfg, train=train,
                                            rng=image_rng),
          "labels": labels,
          # Padding examples of the last evaluation batch are masked out.
          "mask": tf.cast(train or position < len(source), tf.float32),
      }
      if self.multi_label:
        example["label_mask"] = label_mask
      return example

    ds = ds.map(process, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    ds = ds.batch(per_host, drop_remainder=True)
    d = self.num_local_devices
    ds = ds.map(lambda b: {k: tf.reshape(v, [d, per_host // d] + v.shape[1:])
                           for k, v in b.items()})
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = cfg.num_threads or 0
    return ds.with_options(options).prefetch(cfg.prefetch)

  def _per_host(self, global_batch: int) -> int:
    per_host = global_batch // self.num_hosts
    if global_batch % (self.num_hosts * self.num_local_devices):
      raise errors.ConfigError(
          f"Batch size {global_batch} must be divisible by the "
          f"{self.num_hosts * self.num_local_devices} devices.")
    return per_host

  def train_iterator(self, start_step: int) -> Iterator[Dict[str, np.ndarray]]:
    """Infinite iterator of training batches [devices, per_device, ...] from `start_step`."""
    batch = self.config.batch_size
    positions = train_positions(len(self.train), self.config.seed, batch,
                                start_step, self.host_id, self.num_hosts)
    if self.config.data.weights:
      positions = ((p, weighted_indices(p, self.train.sizes,
                                        self.config.data.weights,
                                        self.config.seed))
                   for p, _ in positions)
    ds = self._dataset(self.train, positions, True, self._per_host(batch))
    return ds.as_numpy_iterator()

  def eval_batch_size(self) -> int:
    return self.config.data.eval_batch_size or self.config.batch_size

  def eval_iterator(self) -> Iterator[Dict[str, np.ndarray]]:
    """One pass over the eval split; padded examples have mask 0."""
    batch = self.eval_batch_size()
    positions = eval_positions(len(self.eval), batch, self.host_id,
                               self.num_hosts)
    ds = self._dataset(self.eval, positions, False, self._per_host(batch))
    return ds.as_numpy_iterator()
