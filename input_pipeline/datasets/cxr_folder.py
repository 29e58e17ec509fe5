"""A user's own chest X-rays: a folder of images (DICOM, PNG, JPEG, any
layout) and a labels CSV (folder_labels.py), stored as the other chest X-ray
builders store theirs.

Each dataset is a config of `cxr_folder` named by the user; build it with
  python -m big_transfer_med.import_folder --name=NAME --images=DIR --labels=CSV
(which checks it first and writes errors.csv), or with TFDS directly:
  tfds build --imports=input_pipeline.datasets cxr_folder \
      --config='{"name": "NAME", "images": "DIR", "labels": "CSV"}'
and train on it with configs/transfer.py:target=folder:NAME, or as an
upstream source 'folder:NAME'. Images are stored as 8-bit grey PNG with a
shorter side of at most 512 px (as CheXpert and MIMIC-CXR-JPG release
theirs); multi-label findings as 1 / 0 / -1 / NaN (blank), like CheXpert's.
"""
import dataclasses
import os
from typing import Optional

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from input_pipeline import errors
from input_pipeline.datasets import folder_labels
from input_pipeline import xray_io
from input_pipeline.datasets import cxr_common

BUILDER_NAME = "cxr_folder"


@dataclasses.dataclass
class FolderConfig(cxr_common.CxrConfig):
  """images: the folder; labels: the CSV; findings: the finding columns
  (default: those holding 1 / 0 / -1); split: train/validation/test
  percentages for a CSV without a 'split' column, drawn by patient with
  split_seed."""
  images: str = ""
  labels: str = ""
  findings: tuple = ()
  split: str = "80/10/10"
  split_seed: int = 0


def dataset_dir(name: str, data_dir: Optional[str]) -> epath.Path:
  """Where folder dataset `name` is (or will be) built."""
  root = data_dir or os.path.expanduser("~/tensorflow_datasets")
  return epath.Path(root, BUILDER_NAME, name, str(CxrFolder.VERSION))


def load(name: str, data_dir: Optional[str]) -> tfds.core.DatasetBuilder:
  """The built folder dataset `name` (read from its files: the config
  lives with the data, not in code), or a DataError saying how to build it."""
  path = dataset_dir(name, data_dir)
  if not (path / "dataset_info.json").exists():
    raise errors.DataError(
        f"Folder dataset {name!r} is not built in {path.parent.parent} "
        "(config.data.data_dir). Build it from your images and labels CSV:\n"
        f"  python -m big_transfer_med.import_folder --name={name} "
        f"--images=DIR --labels=labels.csv "
        f"--data_dir={path.parent.parent.parent}")
  return tfds.builder_from_directory(os.fspath(path))


def read_image(path: str, max_short_side: Optional[int]) -> np.ndarray:
  """A radiograph file (DICOM, PNG, JPEG) as uint8 [h, w, 1], bright =
  dense, downscaled to a shorter side of at most max_short_side.
  Raises cxr_common.ImageError for a bad file."""
  try:
    image = xray_io.read_xray(path)
  except errors.DataError as e:
    raise cxr_common.ImageError(str(e)) from e
  image = np.round(image * 255.0).astype(np.uint8)
  if max_short_side is None:
    return image[..., None]
  return cxr_common.downscale(image, max_short_side)


class CxrFolder(cxr_common.CxrBuilder):
  """A folder of chest X-rays with a labels CSV (see the module doc)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  # TFDS builds a JSON --config only for builders that list one; this one
  # has no folder and says how to give one.
  BUILDER_CONFIGS = [FolderConfig(
      name="unset", description="Give the folder and CSV: see the module doc.")]
  IMAGE_LAYOUT = "the paths of the labels CSV's 'path' column"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Nothing to download: build from your own folder and CSV with
    python -m big_transfer_med.import_folder --name=NAME --images=DIR --labels=CSV
  """

  def __init__(self, **kwargs):
    self._table = None
    super().__init__(**kwargs)

  def table(self) -> folder_labels.Table:
    if self._table is None:
      c = self.builder_config
      if not c.images or not c.labels:
        raise errors.ConfigError(
            f"{BUILDER_NAME} needs a config with images and labels: "
            "python -m big_transfer_med.import_folder --name=NAME "
            "--images=DIR --labels=CSV")
      self._table = folder_labels.read_table(
          c.labels, c.images, tuple(c.findings),
          folder_labels.parse_fractions(c.split), c.split_seed)
    return self._table

  def _info(self):
    table = self.table()
    features = cxr_common.features(
        table.label_names, cxr_common.image_feature(self.builder_config),
        table.single_label)
    return self.dataset_info_from_configs(
        description=f"Chest X-rays of {self.builder_config.images} labelled "
                    f"by {self.builder_config.labels}.",
        features=features,
        supervised_keys=("image", "label") if table.single_label else None,
        metadata=tfds.core.MetadataDict(
            label_names=list(table.label_names),
            single_label=table.single_label))

  def _split_generators(self, dl_manager):
    table = self.table()
    if table.problems and self.builder_config.strict_images:
      raise errors.DataError(f"{table.csv_path}: {table.problems[0].line()} "
                             "(strict: fix it, or build without strict to "
                             "skip bad rows).")
    mixed = [p for p in table.problems
             if p.problem.startswith(folder_labels.PATIENT_IN_TWO_SPLITS)]
    if mixed:
      raise errors.DataError(
          f"{table.csv_path}: {mixed[0].problem} (rows "
          f"{sorted({p.row for p in mixed})[:10]}); a patient's images must "
          "all be in one split: fix the 'split' column.")
    splits = {s: [] for s in folder_labels.SPLITS}
    for row in table.rows:
      splits[row["split"]].append(self._example_fields(row, table.single_label))
    splits = {s: rows for s, rows in splits.items() if rows}
    cxr_common.check_patient_disjoint(splits, table.csv_path)
    images = self.builder_config.images
    return {split: self._generate_examples(
                split, rows, lambda r: os.path.join(images, r["source_path"]))
            for split, rows in splits.items()}

  @staticmethod
  def _example_fields(row: dict, single_label: bool) -> dict:
    fields = {k: row[k] for k in ("source_path", "patient_id", "study_id",
                                  "sex", "age")}
    fields["view"] = cxr_common.normalize_view(row["view"] or None)
    if single_label:
      fields["label"] = row["label"]
    else:
      fields["labels"] = np.array(row["labels"], np.float32)
    return fields

  def _read_image(self, path: str):
    return read_image(path, self.builder_config.max_short_side)  # DICOM too.

  def _generate_examples(self, split: str, rows, locate):
    # Local only: the Beam workers read with the PIL loader, and a
    # hospital's folder is not a Beam-sized release.
    return self._generate_local(split, rows, locate)
