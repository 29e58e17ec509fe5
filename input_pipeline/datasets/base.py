"""Shared pieces of our manual-download TFDS builders."""
import os
from typing import Iterable, Optional

import tensorflow_datasets as tfds
from etils import epath

from input_pipeline import errors
from input_pipeline import split_index


class ManualDownloadError(errors.DataError):
  """The manual_dir is missing or lacks files the builder needs."""


class ArrayRecordBuilderMixin:
  """Writes ArrayRecord files by default, and an index of each split.

  The trainer reads examples by index, and selects them from the split's
  index (every field but the image; see split_index.py).

  Random access makes the data order a pure function of (seed, step), which
  is what exact resume and multi-host sharding rely on. `tfds build
  --file_format=...` still overrides it.
  """

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def download_and_prepare(self, *args, **kwargs):
    """TFDS's, leaving no folder behind when the build fails (TFDS removes
    its incomplete copy, but not the dataset and config folders it made
    for it, which would read as a dataset that exists)."""
    root = epath.Path(self.data_dir_root)
    made = [p for p in (root / self.name, epath.Path(self.data_dir).parent,
                        root / "downloads") if not p.exists()]
    try:
      return super().download_and_prepare(*args, **kwargs)
    except BaseException:
      for path in made:
        if path.exists():
          path.rmtree()
      raise

  def _generate_splits(self, dl_manager, download_config):
    """Builds the splits, then writes each one's index (split_index.py)."""
    split_infos = super()._generate_splits(dl_manager, download_config)
    if self.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
      split_index.write_all(self, split_infos)
    return split_infos


def find_manual_dir(dl_manager: tfds.download.DownloadManager,
                    required: Iterable[str], instructions: str,
                    fallback: Optional[str] = None) -> str:
  """Returns the first of (manual_dir, fallback) holding every `required` file.

  Each entry of `required` is a relative path; '|'-separated alternatives
  (e.g. 'x.gz|x') are accepted. Fails with a message listing what is
  missing where, and what to do.
  """
  candidates, report = [], []
  try:
    candidates.append(os.fspath(dl_manager.manual_dir))
  except AssertionError as e:  # TFDS: manual_dir not given, absent or empty.
    report.append(str(e).strip().splitlines()[0])
  if fallback and fallback not in candidates:
    candidates.append(fallback)
  for directory in candidates:
    missing = [r for r in required
               if not any(epath.Path(directory, alt).exists()
                          for alt in r.split("|"))]
    if not missing:
      return directory
    report.append(f"{directory}: missing {', '.join(missing)}")
  looked = "; ".join(report)
  raise ManualDownloadError(
      f"Cannot find the downloaded files ({looked}).\n{instructions}")


def first_existing(directory: str, alternatives: str) -> str:
  """Path of the first existing '|'-separated alternative under `directory`."""
  for alt in alternatives.split("|"):
    path = epath.Path(directory, alt)
    if path.exists():
      return os.fspath(path)
  raise ManualDownloadError(f"None of {alternatives} exists in {directory}.")
