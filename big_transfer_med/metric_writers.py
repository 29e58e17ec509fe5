"""Metric writers: clu's TensorBoard/logging writers plus a metrics.jsonl file."""
import json
import os
from typing import Any, Mapping

import jax
import numpy as np
from clu import metric_writers

from big_transfer_med import atomic_files

METRICS_FILE = "metrics.jsonl"


class JsonlWriter(metric_writers.MetricWriter):
  """Appends one JSON object per write_scalars call: {"step": s, name: value}.

  Opening it at `start_step` drops lines of later steps: a resumed run redoes
  those steps and writes them again, so the file never holds a step twice.
  """

  def __init__(self, path: str, start_step: int = 0):
    self._path = path
    if os.path.exists(path):
      with open(path) as f:
        kept = [line for line in f
                if line.strip() and json.loads(line)["step"] <= start_step]
      with atomic_files.open_atomically(path) as f:
        f.writelines(kept)
    self._file = open(path, "a")

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    row = {"step": int(step)}
    row.update({k: float(np.asarray(v)) for k, v in scalars.items()})
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


def create_writer(workdir: str, start_step: int) -> metric_writers.MetricWriter:
  """TensorBoard + metrics.jsonl on process 0; logging only elsewhere."""
  if jax.process_index() > 0:
    return metric_writers.create_default_writer(workdir, just_logging=True)
  return metric_writers.MultiWriter([
      metric_writers.create_default_writer(workdir, asynchronous=False),
      JsonlWriter(os.path.join(workdir, METRICS_FILE), start_step),
  ])
