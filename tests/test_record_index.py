"""The per-split index written at build time, and what start-up reads."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from input_pipeline import errors
from input_pipeline import pipeline
from input_pipeline import split_index
from tests import make_cxr_testdata
from tests import test_cxr_pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILT = ("cxr_chexpert", "cxr_mimic", "cxr_nih14", "cxr_padchest",
         "cxr_padchest_seed", "cxr_tuberculosis", "cxr_covidx")


def _decoded_field(records, name):
  """`name` of every record as TFDS itself decodes the whole record."""
  values = [r[name] for r in records]
  if isinstance(values[0], str):
    return np.array([v.encode() for v in values], np.bytes_)
  return np.array(values)


@pytest.mark.parametrize("name", BUILT)
def test_the_index_holds_every_field_but_the_image_of_each_record(
    tiny_cxr_data_dir, name):
  builder = tfds.builder(name, data_dir=tiny_cxr_data_dir)
  splits = builder.info.splits
  largest = max(splits, key=lambda s: splits[s].num_examples)
  for split in list(splits) + [f"{largest}[1:]+{list(splits)[-1]}"]:
    index = split_index.load(builder, split)
    records = list(builder.as_data_source(split))
    assert "image" not in index and "image" in records[0]
    assert set(index) == set(records[0]) - {"image"}
    for field, column in index.items():
      np.testing.assert_array_equal(column, _decoded_field(records, field),
                                    err_msg=f"{name} {split} {field}")


def _copy_dataset(data_dir, name, target):
  shutil.copytree(os.path.join(data_dir, name), os.path.join(target, name))
  builder = tfds.builder(f"{name}/default", data_dir=str(target))
  return builder, {s: split_index.path(builder.data_dir, name, s)
                   for s in builder.info.splits}


def _selection(data_dir):
  """What start-up selects from cxr_nih14: views, few-shot, labels, ids."""
  config = test_cxr_pipeline._config(data_dir, "sources=nih14")
  config.data.views = ("PA",)
  config.data.examples_per_class = 1
  pipeline._INDEXES.clear()
  data = pipeline.Pipeline(config.data)
  source = data.train.sources[0]
  return (data.fewshot_ids, source.indices, source.label_matrix(),
          data.eval.sources[0].indices)


def test_a_build_without_index_still_works_and_the_command_writes_it(
    tiny_cxr_data_dir, tmp_path, caplog):
  builder, paths = _copy_dataset(tiny_cxr_data_dir, "cxr_nih14", tmp_path)
  written = {s: split_index.load(builder, s) for s in paths}
  indexed = _selection(str(tmp_path))
  for file_path in paths.values():
    file_path.unlink()
  unindexed = _selection(str(tmp_path))
  for a, b in zip(indexed, unindexed):
    np.testing.assert_equal(a, b)
  command = (f"python -m input_pipeline.record_index cxr_nih14/default "
             f"--data_dir={tmp_path}")
  assert command in caplog.text
  # As a user types it, from another directory.
  subprocess.run([sys.executable, *command.split()[1:]], check=True,
                 cwd=tmp_path, env={**os.environ, "PYTHONPATH": REPO},
                 capture_output=True)
  for split, file_path in paths.items():
    assert file_path.exists()
    for field, column in split_index.load(builder, split).items():
      np.testing.assert_array_equal(column, written[split][field])


def test_an_index_that_does_not_fit_its_split_names_the_file_and_the_fix(
    tiny_cxr_data_dir, tmp_path):
  builder, paths = _copy_dataset(tiny_cxr_data_dir, "cxr_nih14", tmp_path)
  train = split_index.load(builder, "train")
  damaged = {"short": {k: v[:-1] for k, v in train.items()},
             "missing field": {k: v for k, v in train.items() if k != "view"}}
  for problem, columns in damaged.items():
    np.savez(paths["train"].with_name("tmp.npz"), **columns)
    paths["train"].with_name("tmp.npz").replace(paths["train"])
    with pytest.raises(errors.DataError) as e:
      _selection(str(tmp_path))
    message = str(e.value)
    assert str(paths["train"]) in message, problem
    assert "python -m input_pipeline.record_index cxr_nih14/default" in message
  paths["train"].write_bytes(b"not an npz file")
  with pytest.raises(errors.DataError, match="cannot be read"):
    _selection(str(tmp_path))


class CountingReads:
  """Records the record numbers of every read of a random-access source."""

  def __init__(self, source, reads):
    self._source, self.reads = source, reads

  def __len__(self):
    return len(self._source)

  def __getattr__(self, name):
    return getattr(self._source, name)

  def __getitems__(self, records):
    self.reads.append(list(records))
    return self._source.__getitems__(records)


class CountingSource(CountingReads):
  """A split's TFDS data source whose reads, decoded (its own) or raw (its
  ArrayRecord data_source's), are all recorded."""

  def __init__(self, source, reads):
    super().__init__(source, reads)
    self.data_source = CountingReads(source.data_source, reads)


@pytest.fixture(scope="module")
def nih_at_scale(tmp_path_factory):
  """cxr_nih14 built from 400 generated images with full metadata rows."""
  manual = str(tmp_path_factory.mktemp("nih_manual"))
  make_cxr_testdata.make_nih_at_scale(manual, 400)
  data_dir = str(tmp_path_factory.mktemp("nih_tfds"))
  tfds.builder("cxr_nih14/default", data_dir=data_dir).download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual))
  return data_dir


def _reads(monkeypatch, config, host_id, num_hosts, steps):
  """Record reads of start-up, of `steps` train batches and of one eval pass."""
  reads = {"train": [], "validation": []}
  open_split = pipeline._open_split
  monkeypatch.setattr(pipeline, "_open_split", lambda builder, split:
                      CountingSource(open_split(builder, split), reads[split]))
  data = pipeline.Pipeline(config.data, host_id=host_id, num_hosts=num_hosts)
  start_up = sum(map(len, reads.values()))
  batches = data.train_batches(config, 0)
  for _ in range(steps):
    next(batches)
  list(data.ordered_batches(config))
  return start_up, reads["train"][:steps], sum(reads["validation"], [])


def test_start_up_reads_no_record_and_each_host_reads_only_its_share(
    nih_at_scale, monkeypatch):
  config = test_cxr_pipeline._config(nih_at_scale, "sources=nih14")
  config.data.views = ("PA",)
  config.batch_size = 8
  pipeline._INDEXES.clear()
  one_host = _reads(monkeypatch, config, 0, 1, steps=6)
  hosts = [_reads(monkeypatch, config, h, 2, steps=6) for h in range(2)]
  assert one_host[0] == hosts[0][0] == hosts[1][0] == 0
  for step, batch in enumerate(one_host[1]):
    assert len(batch) == 8
    assert hosts[0][1][step] == batch[:4] and hosts[1][1][step] == batch[4:]
  # Evaluation: every record once, each by one host (padding aside).
  eval_records = sorted(set(one_host[2]))
  shares = [set(h[2]) for h in hosts]
  assert sorted(shares[0] | shares[1]) == eval_records
  assert len(shares[0] & shares[1]) <= 1  # Padding reads record 0.
  # Nor does few-shot selection (labels, and ids for results.json).
  config.data.examples_per_class = 2
  assert _reads(monkeypatch, config, 1, 2, steps=1)[0] == 0
