"""CheXpert (Stanford), read from the released CheXpert-v1.0-small (or full) folder."""
import csv
import os

import tensorflow_datasets as tfds
from etils import epath

from big_transfer_med import errors
from input_pipeline import labels as labels_lib
from input_pipeline.datasets import base
from input_pipeline.datasets import cxr_common

RELEASES = ("CheXpert-v1.0-small", "CheXpert-v1.0")
HEADER = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA") + (
    labels_lib.CHEXPERT_COLUMNS)


def read_csv(path: str):
  """Yields (row number, dict) for each row; checks the header first."""
  with epath.Path(path).open() as f:
    reader = csv.DictReader(f)
    missing = [c for c in HEADER if c not in (reader.fieldnames or ())]
    if missing:
      raise errors.DataError(
          f"{path}: missing columns {missing}; expected the CheXpert header "
          f"{','.join(HEADER)}.")
    for number, row in enumerate(reader, start=2):
      yield number, row


def parse_row(row: dict) -> dict:
  """CSV row -> example fields (image excluded). Labels in CHEXPERT_COLUMNS
  order: 1 / 0 / -1 (uncertain) / NaN (blank, not mentioned)."""
  path = row["Path"]
  parts = path.split("/")
  if len(parts) < 5 or not parts[2].startswith("patient"):
    raise ValueError(f"unexpected Path {path!r}")
  view = ("LATERAL" if row["Frontal/Lateral"].strip() == "Lateral"
          else cxr_common.normalize_view(row["AP/PA"]))
  return {
      "labels": [cxr_common.parse_float(row[c])
                 for c in labels_lib.CHEXPERT_COLUMNS],
      "patient_id": parts[2],
      "study_id": f"{parts[2]}/{parts[3]}",
      "view": view,
      "sex": row["Sex"].strip(),
      "age": cxr_common.parse_age(row["Age"]),
      "source_path": path,
  }


class CxrChexpert(cxr_common.CxrBuilder):
  """CheXpert chest radiographs with 14 observations (train / validation)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  LABEL_NAMES = labels_lib.CHEXPERT_COLUMNS
  HOMEPAGE = "https://stanfordmlgroup.github.io/competitions/chexpert/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download CheXpert-v1.0-small (or CheXpert-v1.0) from
  https://stanfordmlgroup.github.io/competitions/chexpert/ and unpack it so
  that manual_dir contains:
    CheXpert-v1.0-small/train.csv
    CheXpert-v1.0-small/valid.csv
    CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg ...
    CheXpert-v1.0-small/valid/...
  then: tfds build --imports=input_pipeline.datasets cxr_chexpert --manual_dir=DIR
  """

  def _split_generators(self, dl_manager):
    root = None
    for release in RELEASES:
      try:
        root = base.find_manual_dir(
            dl_manager, [f"{release}/train.csv", f"{release}/valid.csv"],
            self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        break
      except base.ManualDownloadError:
        if release == RELEASES[-1]:
          raise
    release = next(r for r in RELEASES
                   if epath.Path(root, r, "train.csv").exists())
    csvs = {"train": os.path.join(root, release, "train.csv"),
            "validation": os.path.join(root, release, "valid.csv")}
    patients = {split: {parse_row(r)["patient_id"] for _, r in read_csv(p)}
                for split, p in csvs.items()}
    shared = patients["train"] & patients["validation"]
    if shared:
      raise errors.DataError(
          f"{csvs['validation']}: patients also in train.csv "
          f"({sorted(shared)[:5]}); the official split is patient-disjoint.")
    return {split: self._generate_examples(split, path, root)
            for split, path in csvs.items()}

  def _generate_examples(self, split, csv_path, root):
    def rows():
      for number, row in read_csv(csv_path):
        try:
          example = parse_row(row)
        except (KeyError, ValueError) as e:
          raise errors.DataError(f"{csv_path} row {number}: {e}") from e
        yield example["source_path"], example, os.path.join(
            root, example["source_path"])
    yield from self._examples_from_rows(split, rows())
