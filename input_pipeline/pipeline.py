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
import os
from typing import Dict, Iterator, Optional, Sequence

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from big_transfer_med import errors
import input_pipeline.datasets  # noqa: F401  (registers our builders)
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


@dataclasses.dataclass
class Source:
  """One split of a built dataset, readable by example index.

  With `classes`, only examples of those classes are kept and relabelled
  0..len(classes)-1 in the given order.
  """
  builder: tfds.core.DatasetBuilder
  split: str
  classes: Sequence[int] = ()

  def __post_init__(self):
    try:
      self._data = self.builder.as_data_source(
          self.split, decoders={"image": tfds.decode.SkipDecoding()})
    except (KeyError, ValueError) as e:
      raise errors.ConfigError(
          f"Split {self.split!r} does not fit dataset {self.builder.name} "
          f"(splits {list(self.builder.info.splits)}; slices like "
          f"'train[:10%]' work); check config.data.*_split. ({e})") from e
    label_feature = self.builder.info.features["label"]
    self.class_names = list(label_feature.names)
    self.indices = np.arange(len(self._data))
    self._label_map = None
    if self.classes:
      bad = [c for c in self.classes if not 0 <= c < label_feature.num_classes]
      if bad:
        raise errors.ConfigError(
            f"config.data.classes has {bad}, outside 0.."
            f"{label_feature.num_classes - 1} of {self.builder.name}.")
      labels = np.array([r["label"] for r in self._read_all()])
      self.indices = np.flatnonzero(np.isin(labels, self.classes))
      self._label_map = {c: i for i, c in enumerate(self.classes)}
      self.class_names = [self.class_names[c] for c in self.classes]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def __len__(self) -> int:
    return len(self.indices)

  def _read_all(self):
    for start in range(0, len(self._data), _READ_CHUNK * 16):
      stop = min(start + _READ_CHUNK * 16, len(self._data))
      yield from self._data.__getitems__(list(range(start, stop)))

  def read(self, positions: np.ndarray):
    """Yields (image bytes, label) of the examples at `positions` (in order)."""
    records = self._data.__getitems__(self.indices[positions].tolist())
    for record in records:
      label = record["label"]
      if self._label_map is not None:
        label = self._label_map[label]
      yield record["image"], label


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


@dataclasses.dataclass
class Pipeline:
  """Dataset handles and batch iterators for one run."""
  config: ml_collections.ConfigDict
  host_id: int = 0
  num_hosts: int = 1
  num_local_devices: int = 1

  def __post_init__(self):
    c = self.config.data
    self.builder = load_builder(c.name, c.data_dir)
    self.train = Source(self.builder, c.train_split, tuple(c.classes))
    self.eval = Source(self.builder, c.eval_split, tuple(c.classes))
    self.num_classes = self.train.num_classes

  def _dataset(self, source: Source, batches, train: bool, per_host: int
               ) -> tf.data.Dataset:
    cfg = self.config.data
    seed = self.config.seed
    num_classes = self.num_classes
    image_feature = self.builder.info.features["image"]

    def generator():
      for positions, indices in batches:
        for position, (image, label) in zip(positions, source.read(indices)):
          yield position, image, label

    ds = tf.data.Dataset.from_generator(generator, output_signature=(
        tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.string),
        tf.TensorSpec([], tf.int64)))

    def process(position, image, label):
      image = image_feature.decode_example(image)
      rng = tf.stack([tf.cast(seed, tf.int64), position])
      image = preprocessing.preprocess(image, cfg, train=train, rng=rng)
      return {
          "image": image,
          "labels": tf.one_hot(label, num_classes, dtype=tf.float32),
          # Padding examples of the last evaluation batch are masked out.
          "mask": tf.cast(train or position < len(source), tf.float32),
      }

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
