"""CheXpert (Stanford), read from the released CheXpert-v1.0-small (or full) folder."""
import csv
import os

import tensorflow_datasets as tfds
from etils import epath

from input_pipeline import errors
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
  IMAGE_LAYOUT = ("CheXpert-v1.0-small/{train,valid}/patientXXXXX/studyN/"
                  "viewN_*.jpg beside the CSVs")
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download CheXpert-v1.0-small (or CheXpert-v1.0) from
  https://stanfordmlgroup.github.io/competitions/chexpert/ and unpack it so
  that manual_dir contains:
    CheXpert-v1.0-small/train.csv
    CheXpert-v1.0-small/valid.csv
    CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg ...
    CheXpert-v1.0-small/valid/...
  then: tfds build --imports=input_pipeline.datasets cxr_chexpert/default --manual_dir=DIR
  """

  def _split_generators(self, dl_manager):
    train_csv, valid_csv = ("|".join(f"{r}/{name}" for r in RELEASES)
                            for name in ("train.csv", "valid.csv"))
    root = base.find_manual_dir(dl_manager, [train_csv, valid_csv],
                                self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    train_path = base.first_existing(root, train_csv)
    csvs = {"train": train_path,
            "validation": os.path.join(os.path.dirname(train_path),
                                       "valid.csv")}
    splits = {split: cxr_common.parse_rows(path, read_csv(path), parse_row)
              for split, path in csvs.items()}
    cxr_common.check_patient_disjoint(splits, csvs["validation"])
    return {split: self._generate_examples(
                split, rows, lambda r: epath.Path(root, r["source_path"]))
            for split, rows in splits.items()}
