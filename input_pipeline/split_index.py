r"""A built split's index: every field but the image, one row per record.

Selecting examples (views, `exclusive`, few-shot, class balance, example ids)
needs a few small fields of every record. Parsed out of the image records
they cost a pass over all image bytes at every start, on every host; so our
builders write them, in record order, to one small file per split beside the
ArrayRecord files (`NAME-SPLIT.index.npz`), read in one go at start.

A dataset built before the index existed gets one without a rebuild:
  python -m input_pipeline.record_index cxr_nih14/default --data_dir=DIR
"""
import io
import os
import zipfile
from typing import Dict, Iterable, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from input_pipeline import errors

SUFFIX = ".index.npz"
_CHUNK = 4096  # Records parsed per call.

Columns = Dict[str, np.ndarray]


def path(data_dir, name: str, split: str) -> epath.Path:
  """Where the index of `split` of dataset `name` lives."""
  return epath.Path(data_dir) / f"{name}-{split}{SUFFIX}"


def indexed_fields(features: tfds.features.FeaturesDict
                   ) -> Dict[str, tfds.features.TensorInfo]:
  """The top-level fields an index holds: fixed-shape ones, images excluded."""
  fields = {}
  for name, feature in features.items():
    if isinstance(feature, (tfds.features.Image, tfds.features.Video,
                            tfds.features.Sequence)):
      continue
    info = feature.get_serialized_info()
    if isinstance(info, tfds.features.TensorInfo) and None not in info.shape:
      fields[name] = info
  return fields


def parse_columns(chunks: Iterable[Sequence[bytes]],
                  fields: Dict[str, tfds.features.TensorInfo]) -> Columns:
  """Parses only `fields` out of chunks of serialized records, in bulk.

  Strings become fixed-width bytes arrays (savable without pickle).
  """
  spec = {k: tf.io.FixedLenFeature(v.shape, v.tf_dtype) for k, v in fields.items()}
  parts = {k: [] for k in fields}
  for chunk in chunks:
    parsed = tf.io.parse_example(list(chunk), spec)
    for k in fields:
      parts[k].append(parsed[k].numpy())
  columns = {}
  for k, info in fields.items():
    dtype = np.bytes_ if info.tf_dtype == tf.string else info.np_dtype
    columns[k] = (np.concatenate(parts[k]).astype(dtype) if parts[k] else
                  np.zeros((0, *info.shape), dtype))
  return columns


def read_records(source, chunk: int = _CHUNK) -> Iterable[Sequence[bytes]]:
  """Chunks of the serialized records of a random-access `source`."""
  for start in range(0, len(source), chunk):
    yield source.__getitems__(list(range(start, min(start + chunk, len(source)))))


def columns_of(source, features: tfds.features.FeaturesDict) -> Columns:
  """The indexed fields of every record of a random-access `source` (a pass
  over all its bytes, images included)."""
  return parse_columns(read_records(source), indexed_fields(features))


def write(data_dir, name: str, split_info: tfds.core.SplitInfo,
          features: tfds.features.FeaturesDict) -> epath.Path:
  """Reads the ArrayRecord files of one built split and writes its index
  (atomically: a half-written index is never read)."""
  from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
  files = [os.fspath(p) for p in split_info.filepaths]
  with array_record_data_source.ArrayRecordDataSource(files) as source:
    columns = columns_of(source, features)
  buffer = io.BytesIO()
  np.savez(buffer, **columns)
  target = path(data_dir, name, split_info.name)
  partial = target.with_name(target.name + ".partial")
  partial.write_bytes(buffer.getvalue())
  partial.replace(target)
  return target


def write_all(builder: tfds.core.DatasetBuilder,
              split_infos: Iterable[tfds.core.SplitInfo]) -> None:
  """Writes the index of each of `split_infos` into the builder's data_dir."""
  for split_info in split_infos:
    write(builder.data_dir, builder.name, split_info, builder.info.features)


def rebuild_command(builder: tfds.core.DatasetBuilder) -> str:
  name = builder.name
  if builder.builder_config is not None:
    name += "/" + builder.builder_config.name
  return (f"python -m input_pipeline.record_index {name} "
          f"--data_dir={builder.data_dir_root}")


def load(builder: tfds.core.DatasetBuilder, split: str) -> Optional[Columns]:
  """The index rows of `split` (slices and sums like 'train[:10%]+test'
  included), in the order the split's data source reads its records; None
  when the dataset was built without an index."""
  splits = builder.info.splits
  # Where each ArrayRecord file starts within its split.
  shard_start = {}
  for split_info in splits.values():
    starts = np.concatenate([[0], np.cumsum(split_info.shard_lengths)])
    for file_path, start in zip(split_info.filepaths, starts):
      shard_start[os.path.basename(os.fspath(file_path))] = (
          split_info.name, int(start))
  indexes, pieces = {}, []
  for instruction in splits[split].file_instructions:
    base_split, start = shard_start[os.path.basename(instruction.filename)]
    if base_split not in indexes:
      indexes[base_split] = _read(builder, base_split)
      if indexes[base_split] is None:
        return None
    first = start + instruction.skip
    pieces.append((base_split, np.arange(first, first + instruction.take)))
  fields = list(indexed_fields(builder.info.features))
  return {k: (np.concatenate([indexes[s][k][rows] for s, rows in pieces])
              if pieces else np.zeros((0,)))
          for k in fields}


def _read(builder: tfds.core.DatasetBuilder, split: str) -> Optional[Columns]:
  file_path = path(builder.data_dir, builder.name, split)
  if not file_path.exists():
    return None
  expected = builder.info.splits[split].num_examples
  fields = list(indexed_fields(builder.info.features))
  try:
    with file_path.open("rb") as f, np.load(f, allow_pickle=False) as index:
      columns = {k: index[k] for k in index.files}
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    problem = f"cannot be read ({e})"
  else:
    lengths = {k: len(columns[k]) for k in fields if k in columns}
    problem = None if (len(lengths) == len(fields) and
                       set(lengths.values()) == {expected}) else (
        f"has {lengths} rows of fields {fields}, the split {expected} records")
  if problem:
    raise errors.DataError(
        f"The index {file_path} does not fit split {split!r} of "
        f"{builder.data_dir}: it {problem}. Rewrite it with:\n  "
        f"{rebuild_command(builder)}")
  return columns
