"""NIH ChestX-ray14, read from the released folder (CSV, split lists, PNGs)."""
import csv
import os

import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from input_pipeline import errors
from input_pipeline import labels as labels_lib
from input_pipeline.datasets import base
from input_pipeline.datasets import cxr_common

CSV_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
# The first seven columns; the bracketed ones after them contain commas.
COLUMNS = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID",
           "Patient Age", "Patient Gender", "View Position")
# Column names seen in other copies of the file.
COLUMN_ALIASES = {"Patient Sex": "Patient Gender"}
VALIDATION_FRACTION = 0.1


def read_csv(path: str):
  """Yields (row number, {column: value}) for the first seven columns."""
  with epath.Path(path).open() as f:
    reader = csv.reader(f)
    header = [COLUMN_ALIASES.get(h.strip(), h.strip()) for h in next(reader)]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
      raise errors.DataError(
          f"{path}: missing columns {missing}; expected a header starting "
          f"with {','.join(COLUMNS)}.")
    index = {c: header.index(c) for c in COLUMNS}
    for number, row in enumerate(reader, start=2):
      if not row:
        continue
      if len(row) <= max(index.values()):
        raise errors.DataError(f"{path} row {number}: {len(row)} fields, "
                               f"expected at least {max(index.values()) + 1}.")
      yield number, {c: row[i].strip() for c, i in index.items()}


def parse_row(row: dict) -> dict:
  """CSV row -> example fields (image excluded); labels in NIH_LABELS order."""
  findings = [f.strip() for f in row["Finding Labels"].split("|") if f.strip()]
  unknown = [f for f in findings
             if f not in labels_lib.NIH_LABELS and f != labels_lib.NO_FINDING]
  if unknown:
    raise ValueError(f"unknown finding(s) {unknown} in {row['Finding Labels']!r}")
  return {
      "labels": [float(name in findings) for name in labels_lib.NIH_LABELS],
      "patient_id": str(int(row["Patient ID"])),
      "study_id": "",
      "view": cxr_common.normalize_view(row["View Position"]),
      "sex": row["Patient Gender"],
      "age": cxr_common.parse_age(row["Patient Age"]),
      "source_path": row["Image Index"],
  }


def read_list(path: str) -> set:
  return {line.strip() for line in epath.Path(path).read_text().splitlines()
          if line.strip()}


def index_images(root: str) -> dict:
  """{file name: path} of every PNG under root (images_001/images/..., images/...)."""
  found = {}
  for directory, _, files in tf.io.gfile.walk(root):
    for name in files:
      if name.endswith(".png"):
        found[name] = os.path.join(directory, name)
  return found


class CxrNih14(cxr_common.CxrBuilder):
  """NIH ChestX-ray14: 14 findings; official test list, train/validation by patient."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  LABEL_NAMES = labels_lib.NIH_LABELS
  HOMEPAGE = "https://nihcc.app.box.com/v/ChestXray-NIHCC"
  IMAGE_LAYOUT = "images_0NN/images/*.png (or one images/ folder) beside the CSV"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download NIH ChestX-ray14 from https://nihcc.app.box.com/v/ChestXray-NIHCC
  and put in manual_dir:
    Data_Entry_2017_v2020.csv (or Data_Entry_2017.csv)
    train_val_list.txt
    test_list.txt
    images_001/images/00000001_000.png ... images_012/images/... (the
    extracted archives), or all PNGs in one images/ folder
  then: tfds build --imports=input_pipeline.datasets cxr_nih14/default --manual_dir=DIR
  """

  def _split_generators(self, dl_manager):
    root = base.find_manual_dir(
        dl_manager, ["|".join(CSV_NAMES), "train_val_list.txt", "test_list.txt"],
        self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    csv_path = base.first_existing(root, "|".join(CSV_NAMES))
    rows = cxr_common.parse_rows(csv_path, read_csv(csv_path), parse_row)
    test = read_list(os.path.join(root, "test_list.txt"))
    train_val = read_list(os.path.join(root, "train_val_list.txt"))
    cxr_common.check_patient_disjoint(
        {"test": [r for r in rows if r["source_path"] in test],
         "train_val": [r for r in rows if r["source_path"] in train_val]},
        f"{root}/test_list.txt and train_val_list.txt")
    carve = cxr_common.patient_split(
        [r["patient_id"] for r in rows if r["source_path"] in train_val],
        {"train": 1 - VALIDATION_FRACTION, "validation": VALIDATION_FRACTION})
    splits = {"train": [], "validation": [], "test": []}
    for row in rows:
      name = row["source_path"]
      if name in test:
        splits["test"].append(row)
      elif name in train_val:
        splits[carve[row["patient_id"]]].append(row)
    images = index_images(root)
    locate = lambda row: images.get(  # noqa: E731
        row["source_path"], os.path.join(root, "images", row["source_path"]))
    return {split: self._generate_examples(split, split_rows, locate)
            for split, split_rows in splits.items()}
