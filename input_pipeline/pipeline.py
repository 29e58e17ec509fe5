"""tf.data pipelines over built TFDS datasets, read by example index.

The order of training examples is a pure function of (seed, global position):
global position p = step * global_batch + j lies in epoch p // N at offset
p % N of that epoch's seeded permutation. Each host reads its own contiguous
slice of every global batch. Hence:
  * resuming at step s reads exactly what an uninterrupted run would have;
  * the global batch is the same whatever the host and device count;
  * augmentation draws stateless random numbers seeded by (seed, p).
"""
import collections
import copy
import functools
import os
import re
from typing import Callable, Dict, Iterator, Optional, Sequence

import ml_collections
from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline import errors
from input_pipeline import choices
from input_pipeline import labels as labels_lib
from input_pipeline import preprocessing
from input_pipeline import split_index
import input_pipeline.datasets  # noqa: F401  (registers our builders)
from input_pipeline.datasets import cxr_folder

# Features that name an example, in order of preference.
ID_FEATURES = ("source_path", "id", "image/filename", "file_name", "image_id")


# Batches of record indices remembered for naming an undecodable image: more
# than tf.data reads ahead of the batch being consumed.
_RECENT_READS = 32


def tf_error_text(error: tf.errors.OpError) -> str:
  """A TF op error's message without its node and function decorations."""
  return re.sub(r"\{\{[^}]*\}\}\s*", "", error.message).splitlines()[0].strip()


class DatasetNotFoundError(errors.DataError, FileNotFoundError):
  """A dataset has not been built (or lives elsewhere)."""


def load_builder(name: str, data_dir: Optional[str]) -> tfds.core.DatasetBuilder:
  """Returns the prepared builder `name`, or fails saying how to build it."""
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DatasetNotFoundError(
        f"config.data.name={name!r} is not a known TFDS dataset ({e}).") from e
  except ValueError as e:
    if "BuilderConfig" in str(e) and "not found" in str(e):
      base, _, config = name.partition("/")
      offered = [b.name for b in tfds.builder_cls(base).BUILDER_CONFIGS]
      raise DatasetNotFoundError(
          f"{base} has no builder config {config!r} (config.data."
          f"builder_config; it offers {offered}, and custom ones once built "
          f"with tfds build --config=...).") from e
    # Our builders default to ArrayRecord; TFDS refuses that default when the
    # prepared copy on disk was written in another format.
    if "File format is already set" not in str(e):
      raise
    raise _needs_array_record(name, data_dir, str(e)) from e
  if not builder.is_prepared():
    instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None) or ""
    raise DatasetNotFoundError(
        f"Dataset {name!r} is not built in {builder.data_dir_root} "
        f"(config.data.data_dir={data_dir!r}). Build it first:\n"
        f"  tfds build --imports=input_pipeline.datasets {name} "
        f"--data_dir={builder.data_dir_root} --manual_dir=DIR\n"
        f"where DIR holds the downloaded files:{instructions}")
  return builder


def _needs_array_record(name: str, data_dir: Optional[str],
                        found: str) -> DatasetNotFoundError:
  root = data_dir or "~/tensorflow_datasets"
  return DatasetNotFoundError(
      f"Dataset {name!r} is not stored as ArrayRecord ({found}); the trainer "
      "reads examples by index and needs it. TFDS cannot convert in place: "
      f"move {root}/{name} away, then rebuild it:\n  tfds build "
      f"--imports=input_pipeline.datasets {name} --file_format=array_record "
      f"--data_dir={root} [--manual_dir=DIR]")


def _open_split(builder: tfds.core.DatasetBuilder, split: str):
  """Random-access source of `split`, images left encoded."""
  file_format = builder.info.file_format
  if file_format != tfds.core.FileFormat.ARRAY_RECORD:
    raise _needs_array_record(
        builder.name, builder.data_dir_root,
        f"stored as {getattr(file_format, 'value', file_format)} in "
        f"{builder.data_dir}")
  try:
    return builder.as_data_source(
        split, decoders={"image": tfds.decode.SkipDecoding()})
  except (KeyError, ValueError) as e:
    raise errors.ConfigError(
        f"Split {split!r} does not fit dataset {builder.name} (splits "
        f"{list(builder.info.splits)}; slices like 'train[:10%]' work); check "
        f"config.data.*_split. ({e})") from e


# (dataset dir, split) -> index columns: a process that runs many jobs on one
# dataset (a study) reads each index once.
_INDEXES: Dict[tuple, split_index.Columns] = {}


def _index(builder, split: str, data) -> split_index.Columns:
  """Every field but the image of the records of `split`, in read order:
  from the index written at build time, else parsed out of every record
  (a pass over all image bytes; datasets built before the index)."""
  key = (os.fspath(builder.data_dir), split)
  if key not in _INDEXES:
    columns = split_index.load(builder, split)
    if columns is None:
      if not any(k[0] == key[0] for k in _INDEXES):  # Once per dataset.
        logging.warning(
            "%s was built without an index of its splits: start-up reads all "
            "its records, image bytes included. Write the index once, for a "
            "start-up independent of image bytes:\n  %s", builder.data_dir,
            split_index.rebuild_command(builder))
      columns = split_index.columns_of(data.data_source,
                                       builder.info.features)
    _INDEXES[key] = columns
  return _INDEXES[key]


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

  def column(self, field: str) -> np.ndarray:
    """`field` of every record of the split (not only the selected ones)."""
    return _index(self.builder, self.split, self._data)[field]

  def stored_labels(self, records: np.ndarray) -> np.ndarray:
    """Label vectors [len(records), classes] of records (numbers in the
    split), as the pipeline harmonises them: from the index."""
    raise NotImplementedError

  def label_matrix(self) -> tuple[np.ndarray, np.ndarray]:
    """(labels, label mask), [len(self), classes], of the selected records."""
    raise NotImplementedError

  def example_ids(self, positions: np.ndarray) -> list[str]:
    """A stable id per example: its id/path feature, else its record index."""
    key = next((k for k in ID_FEATURES
                if k in split_index.indexed_fields(self.builder.info.features)),
               None)
    records = self.indices[positions]
    if key is None:
      return [f"{self.split}[{i}]" for i in records.tolist()]
    ids = self.column(key)[records]
    return [i.decode() if isinstance(i, bytes) else str(i) for i in ids.tolist()]

  def subset(self, positions: np.ndarray) -> "Source":
    """A copy that reads only the examples at `positions` (in that order)."""
    out = copy.copy(self)
    out.indices = self.indices[positions]
    return out

  def read(self, positions: np.ndarray) -> tuple[list, np.ndarray]:
    """(serialized records, float32 label vectors) at `positions`, in order.

    The records come as stored (the image is parsed out of them inside the
    tf.data graph, in parallel): one ArrayRecord read, no Python decoding.
    """
    records = self.indices[positions]
    return (self._data.data_source.__getitems__(records.tolist()),
            self.stored_labels(records))

  def encoded_images(self, positions: np.ndarray) -> list[bytes]:
    """The stored (encoded) image bytes at `positions`."""
    serialized, _ = self.read(positions)
    return list(parse_images(tf.constant(serialized)).numpy())


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
      self.indices = np.flatnonzero(np.isin(self.column("label"), classes))
      self._label_map = np.full(label_feature.num_classes, -1)
      self._label_map[list(classes)] = np.arange(len(classes))
      self.label_names = [self.label_names[c] for c in classes]
    self._one_hot = np.eye(len(self.label_names), dtype=np.float32)

  def stored_labels(self, records: np.ndarray) -> np.ndarray:
    return self._one_hot[self._label_map[self.column("label")[records]]]

  def label_matrix(self):
    labels = self.stored_labels(self.indices)
    return labels, np.ones_like(labels)


class CxrSource(Source):
  """A chest X-ray split (multi-label, dataset label order), filtered by view.

  With `exclusive`, only images with exactly one positive finding of the
  harmonizer's label set are kept (PadChest-Cl and the like).
  """

  def __init__(self, builder, split: str, views: Sequence[str],
               harmonizer: labels_lib.Harmonizer, exclusive: bool = False):
    super().__init__(builder, split)
    self.harmonizer = harmonizer
    self.label_names = list(builder.info.metadata["label_names"])
    view_names = builder.info.features["view"].names
    unknown = [v for v in views if v not in view_names]
    if unknown:
      raise errors.ConfigError(f"config.data.views has {unknown}; expected "
                               f"some of {view_names}.")
    if set(views) != set(view_names):
      keep = [view_names.index(v) for v in views]
      self.indices = np.flatnonzero(
          np.isin(self.column("view"), keep))
    if exclusive:
      labels, mask = self.label_matrix()
      self.indices = self.indices[
          np.sum((labels > 0.5) & (mask > 0), axis=1) == 1]

  def stored_labels(self, records: np.ndarray) -> np.ndarray:
    return self.column("labels")[records].astype(np.float32)

  def label_matrix(self):
    raw = self.stored_labels(self.indices)
    labels, mask = self.harmonizer(raw.reshape(len(raw), -1))
    return labels.numpy(), mask.numpy()


class SegmentationSource(Source):
  """A split of a segmentation dataset (features 'image' and 'mask', both
  [H, W, ...], and 'mask_pixels', the foreground pixels per class). The
  batches' labels are the masks; an image's labels as few-shot selection
  sees them are whether each class is present (mask_pixels > 0)."""

  def __init__(self, builder, split: str):
    super().__init__(builder, split)
    self.label_names = list(builder.info.metadata["class_names"])
    self.mask_feature = builder.info.features["mask"]

  def stored_labels(self, records: np.ndarray) -> np.ndarray:
    return (self.column("mask_pixels")[records] > 0).astype(np.float32)

  def label_matrix(self):
    labels = self.stored_labels(self.indices)
    return labels, np.ones_like(labels)


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

  def read(self, indices: np.ndarray, width: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source ids, serialized records, label vectors [n, width], NaN
    beyond a source's own labels) at global `indices`, reading each source's
    share in one batched call."""
    which = np.searchsorted(self.offsets, indices, side="right") - 1
    serialized = np.empty(len(indices), object)
    labels = np.full((len(indices), width), np.nan, np.float32)
    for source_id in np.unique(which):
      where = np.flatnonzero(which == source_id)
      records, rows = self.sources[source_id].read(
          indices[where] - self.offsets[source_id])
      serialized[where] = records
      labels[where, :rows.shape[1]] = rows
    return which.astype(np.int32), serialized, labels


def parse_images(serialized: tf.Tensor, feature: str = "image") -> tf.Tensor:
  """The stored bytes of image `feature` ('image', 'mask') of serialized
  records (a tensor of any shape)."""
  images = tf.io.parse_example(tf.reshape(serialized, [-1]), {
      feature: tf.io.FixedLenFeature([], tf.string)})[feature]
  return tf.reshape(images, tf.shape(serialized))


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


def class_balanced_indices(positions: np.ndarray, classes: np.ndarray,
                           seed: int) -> np.ndarray:
  """Indices for class-balanced sampling (the seed's WeightedRandomSampler
  with weights 1 / class count): position p draws a class uniformly among
  those present, then one of its examples uniformly (with replacement), from
  a generator seeded by (seed, p): deterministic and resumable."""
  present = np.unique(classes)
  members = [np.flatnonzero(classes == c) for c in present]
  out = np.empty(len(positions), np.int64)
  for i, position in enumerate(positions):
    rng = np.random.default_rng([seed, 2, int(position)])
    group = members[rng.integers(len(members))]
    out[i] = group[rng.integers(len(group))]
  return out


def select_fewshot(labels: np.ndarray, label_mask: np.ndarray, k: int,
                   seed: int) -> np.ndarray:
  """Positions of a class-balanced few-shot subset, in increasing order.

  Rule (single- and multi-label alike): visit the examples in the order of a
  permutation seeded by `seed`; keep an example if one of its positive labels
  (label > 0.5, not masked) still has fewer than k kept positives, or if it
  has no positive label and fewer than k such 'all negative' examples are
  kept. Single-label data thus get exactly k per class (fewer only where a
  class has fewer); in multi-label data every label gets at least k
  positives where possible (co-occurring labels can get more), plus k
  examples without findings.
  """
  positive = (labels > 0.5) & (label_mask > 0)
  counts = np.zeros(labels.shape[1] + 1, np.int64)  # Last: all negative.
  chosen = []
  for position in np.random.default_rng(seed).permutation(len(labels)):
    classes = np.flatnonzero(positive[position])
    if not len(classes):
      classes = np.array([labels.shape[1]])
    if np.any(counts[classes] < k):
      counts[classes] += 1
      chosen.append(position)
      if np.all(counts >= k):
        break
  return np.sort(np.array(chosen, np.int64))


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




def _open_named(c: ml_collections.ConfigDict):
  """config.data.name: single-label TFDS data (+ config.data.classes), or
  segmentation data (a dataset with a 'mask' feature)."""
  builder = load_builder(c.name, c.data_dir)
  if "mask" in builder.info.features:
    if c.classes:
      raise errors.ConfigError(
          f"config.data.classes={tuple(c.classes)}: {c.name} is segmentation "
          "data (every class is a mask channel); set it to ().")
    return (lambda split: MixedSource(
        [SegmentationSource(builder, split)])), None
  return (lambda split: MixedSource(
      [ClassificationSource(builder, split, tuple(c.classes))])), None


def _cxr_builder(source: str, c: ml_collections.ConfigDict):
  """The built dataset of a config.data.sources entry."""
  folder = choices.folder_name(source)
  if folder:
    return cxr_folder.load(folder, c.data_dir)
  if source not in choices.CXR_SOURCES:
    raise errors.ConfigError(
        f"config.data.sources has {source!r}; expected some of "
        f"{sorted(choices.CXR_SOURCES)} or {choices.FOLDER_PREFIX}NAME.")
  return load_builder(f"{choices.CXR_SOURCES[source]}/{c.builder_config}",
                      c.data_dir)


def _label_set(c: ml_collections.ConfigDict, builders: dict):
  """config.data.label_set: a name of labels.LABEL_SETS, or folder:NAME for
  that folder dataset's own findings."""
  folder = choices.folder_name(c.label_set)
  if not folder:
    return c.label_set
  builder = builders.get(c.label_set) or cxr_folder.load(folder, c.data_dir)
  return tuple(builder.info.metadata["label_names"])


def _open_cxr(c: ml_collections.ConfigDict):
  """config.data.sources: chest X-ray builders harmonised onto label_set; a
  single-label folder dataset alone is read as classification data."""
  builders = {s: _cxr_builder(s, c) for s in c.sources}
  single = [s for s, b in builders.items()
            if b.info.metadata.get("single_label")]
  if single:
    if len(builders) > 1:
      raise errors.ConfigError(
          f"config.data.sources={tuple(c.sources)}: {single[0]} is "
          "single-label (a 'label' column) and cannot be mixed with "
          "multi-label sources; train on it alone.")
    builder = builders[single[0]]
    return (lambda split: MixedSource(
        [ClassificationSource(builder, split, tuple(c.classes))])), None
  label_set = _label_set(c, builders)
  harmonizers = [labels_lib.Harmonizer(b.info.metadata["label_names"],
                                       label_set, c.uncertain, c.missing,
                                       c.no_finding)
                 for b in builders.values()]
  return (lambda split: MixedSource([
      CxrSource(b, split, tuple(c.views), h, c.exclusive)
      for b, h in zip(builders.values(), harmonizers)])), harmonizers


# Kinds of data, by name: each opens (split -> MixedSource, harmonizers or
# None) from config.data. A new kind of data adds an entry here.
DATA_KINDS = {"named": _open_named, "cxr": _open_cxr}


def data_kind(data_config: ml_collections.ConfigDict) -> str:
  return "cxr" if data_config.sources else "named"


class Batches:
  """An iterable over the numpy batches of a tf.data pipeline that is built
  once and read anew by every `for`; an image that fails to decode is named
  (dataset, split, record, id) instead of surfacing as a bare TF error."""

  def __init__(self, dataset: tf.data.Dataset, undecodable):
    self.dataset, self._undecodable = dataset, undecodable

  def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
    iterator = self.dataset.as_numpy_iterator()
    while True:
      try:
        batch = next(iterator)
      except StopIteration:
        return
      except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
        raise self._undecodable(e) from e
      yield batch


class Pipeline:
  """The train and eval splits of config.data, and their batches.

  Opening reads only config.data's choice of data (`data_kind`); batches are
  built from the run's final config (after BiT-HyperRule) when asked for.
  Chest X-ray batches carry a per-label `label_mask`.
  """

  def __init__(self, data_config: ml_collections.ConfigDict, host_id: int = 0,
               num_hosts: int = 1, num_local_devices: int = 1):
    c = data_config
    self.host_id, self.num_hosts = host_id, num_hosts
    self.num_local_devices = num_local_devices
    make, self.harmonizers = DATA_KINDS[data_kind(c)](c)
    self.train, self.eval = make(c.train_split), make(c.eval_split)
    # Batches of segmentation data hold masks [H, W, classes] as labels.
    self.task = ("segmentation" if isinstance(self.train.sources[0],
                                              SegmentationSource)
                 else "classification")
    self.label_names = (list(self.harmonizers[0].names) if self.harmonizers
                        else self.train.sources[0].label_names)
    # Exclusive data are single-label: a softmax over the label set.
    self.multi_label = self.harmonizers is not None and not c.exclusive
    self.num_classes = len(self.label_names)
    self.image_size = tuple(self.train.sources[0].image_feature.shape[:2])
    self.fewshot_positions = None
    if c.examples_per_class:
      self._select_fewshot(c.examples_per_class, c.fewshot_seed)

  def _select_fewshot(self, k: int, seed: int) -> None:
    if len(self.train.sources) != 1:
      raise errors.ConfigError(
          "config.data.examples_per_class needs a single training source "
          f"(got {len(self.train.sources)}).")
    source = self.train.sources[0]
    labels, mask = source.label_matrix()
    self.fewshot_positions = select_fewshot(labels, mask, k, seed)
    positives = ((labels > 0.5) & (mask > 0))[self.fewshot_positions]
    self.fewshot_counts = dict(zip(self.label_names,
                                   np.sum(positives, 0).tolist()))
    short = [n for n, count in self.fewshot_counts.items() if count < k]
    if short:
      logging.warning("Few-shot: fewer than %d examples of %s in %s[%s].", k,
                      short, source.builder.name, source.split)
    self.fewshot_ids = source.example_ids(self.fewshot_positions)
    self.fewshot_records = source.indices[self.fewshot_positions].tolist()
    source.indices = source.indices[self.fewshot_positions]
    self.train = MixedSource([source])

  def _dataset(self, config: ml_collections.ConfigDict, source: MixedSource,
               batches: Callable[[], Iterator], train: bool, per_host: int
               ) -> tf.data.Dataset:
    """The tf.data pipeline over the (positions, indices) of `batches()`,
    which every pass over the dataset calls anew."""
    cfg, seed = config.data, config.seed
    width = max(len(s.label_names) for s in source.sources)

    def generator():
      # One yield per batch, not per example, and no per-example Python:
      # the generator's share of the work (and of the GIL) stays small
      # beside the parallel parsing and decoding below.
      for positions, indices in batches():
        yield (np.asarray(positions, np.int64), *source.read(indices, width))

    ds = tf.data.Dataset.from_generator(generator, output_signature=(
        tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.int32),
        tf.TensorSpec([None], tf.string),
        tf.TensorSpec([None, width], tf.float32))).unbatch()

    def branch(source_id, image, labels, label_rng, image_rng):
      # Per source: the stored dtype (uint8, uint16) differs between sources
      # and preprocessing works on it, so every branch ends in float32.
      feature = source.sources[source_id].image_feature
      image = preprocessing.preprocess(feature.decode_example(image), cfg,
                                       train=train, rng=image_rng)
      if self.harmonizers is None:
        return image, labels[:self.num_classes], tf.ones([self.num_classes])
      harmonizer = self.harmonizers[source_id]
      size = len(source.sources[source_id].label_names)
      return (image,) + harmonizer(labels[:size], label_rng)

    def segmentation(serialized, image_rng):
      # Image and mask take the same crops, flips and affine (same rng).
      only = source.sources[0]
      image = preprocessing.preprocess(
          only.image_feature.decode_example(parse_images(serialized)), cfg,
          train=train, rng=image_rng, whole_image=True)
      mask = preprocessing.preprocess_mask(
          only.mask_feature.decode_example(parse_images(serialized, "mask")),
          cfg, train=train, rng=image_rng)
      return image, mask

    def process(position, source_id, serialized, labels):
      rng = tf.stack([tf.cast(seed, tf.int64), position])
      label_rng, image_rng = tf.unstack(
          tf.random.experimental.stateless_split(rng, 2))
      # Padding examples of the last evaluation batch are masked out.
      valid = tf.cast(train or position < len(source), tf.float32)
      if self.task == "segmentation":
        image, mask = segmentation(serialized, image_rng)
        return {"image": image, "labels": mask, "mask": valid}
      image = parse_images(serialized)
      branches = [functools.partial(branch, j, image, labels, label_rng,
                                    image_rng)
                  for j in range(len(source.sources))]
      image, labels, label_mask = (
          branches[0]() if len(branches) == 1 else
          tf.switch_case(source_id, branches))
      example = {
          "image": image,
          "labels": labels,
          "mask": valid,
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

  def _batches(self, config: ml_collections.ConfigDict, source: MixedSource,
               positions: Callable[[], Iterator], train: bool,
               global_batch: int) -> Batches:
    recent = collections.deque(maxlen=_RECENT_READS)

    def recorded():
      for batch_positions, indices in positions():
        recent.append(indices)
        yield batch_positions, indices

    dataset = self._dataset(config, source, recorded, train,
                            self._per_host(global_batch))
    return Batches(dataset, lambda e: self._undecodable(source, recent, e))

  @staticmethod
  def _undecodable(source: "MixedSource", recent, error) -> errors.DataError:
    """Finds, among the records read last, those whose image fails to decode."""
    bad = []
    for indices in recent.copy():  # Atomic; tf.data's thread still appends.
      for index in indices.tolist():
        source_id = int(np.searchsorted(source.offsets, index, side="right") - 1)
        src = source.sources[source_id]
        position = index - source.offsets[source_id]
        (image,) = src.encoded_images(np.array([position]))
        try:
          src.image_feature.decode_example(tf.constant(image))
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError):
          bad.append((src, position))
    where = "; ".join(
        f"{src.builder.name}[{src.split}] record {int(src.indices[p])} "
        f"(id {src.example_ids(np.array([p]))[0]})" for src, p in bad[:5])
    builder = (bad[0][0] if bad else source.sources[0]).builder
    return errors.DataError(
        f"An image of the built dataset {builder.data_dir} cannot be decoded: "
        f"{where or 'record not located'} ({tf_error_text(error)}). Its "
        f"files are damaged: move {builder.data_dir} away and rebuild it:\n"
        "  tfds build "
        f"--imports=input_pipeline.datasets {builder.name} "
        f"--data_dir={builder.data_dir_root} --manual_dir=DIR")

  def train_batches(self, config: ml_collections.ConfigDict,
                    start_step: int) -> Iterator[Dict[str, np.ndarray]]:
    """Infinite iterator of training batches [devices, per_device, ...] from
    `start_step`, with the augmentation of `config` (the run's final one)."""
    batch = config.batch_size
    positions = lambda: train_positions(  # noqa: E731
        len(self.train), config.seed, batch, start_step, self.host_id,
        self.num_hosts)
    if config.data.weights:
      unweighted = positions
      positions = lambda: (  # noqa: E731
          (p, weighted_indices(p, self.train.sizes, config.data.weights,
                               config.seed)) for p, _ in unweighted())
    if config.data.class_balanced:
      classes = self._train_classes()
      unbalanced = positions
      positions = lambda: (  # noqa: E731
          (p, class_balanced_indices(p, classes, config.seed))
          for p, _ in unbalanced())
    return iter(self._batches(config, self.train, positions, True, batch))

  def _train_classes(self) -> np.ndarray:
    """The class of every training example (single-label data)."""
    if self.multi_label:
      raise errors.ConfigError(
          "config.data.class_balanced=True needs single-label data (one "
          "class per example); these data are multi-label.")
    return np.concatenate([np.argmax(s.label_matrix()[0], axis=1)
                           for s in self.train.sources])

  def ordered_batches(self, config: ml_collections.ConfigDict,
                      source: Optional[MixedSource] = None) -> Batches:
    """Passes over `source` (default: the eval split) in order, without
    augmentation, in batches of config.data.eval_batch_size (default
    batch_size): every `for` over the result is one pass; the last batch is
    padded and its padding has mask 0."""
    source = self.eval if source is None else source
    batch = config.data.eval_batch_size or config.batch_size
    positions = lambda: eval_positions(  # noqa: E731
        len(source), batch, self.host_id, self.num_hosts)
    return self._batches(config, source, positions, False, batch)
