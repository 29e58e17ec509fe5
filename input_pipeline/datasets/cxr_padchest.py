"""PadChest (BIMCV), read from the released CSV and 16-bit PNG folders."""
import ast
import csv
import gzip
import io
import math

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from input_pipeline import errors
from input_pipeline import labels as labels_lib
from input_pipeline.datasets import base
from input_pipeline.datasets import cxr_common

CSV_NAME = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
COLUMNS = ("ImageID", "ImageDir", "StudyID", "StudyDate_DICOM", "PatientID",
           "PatientBirth", "PatientSex_DICOM", "Projection", "Labels")
EXCLUDED_PROJECTIONS = ("EXCLUDE",)
SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def read_csv(path: epath.Path):
  """Yields (row number, dict) from the CSV (plain or .gz); checks columns."""
  with path.open("rb") as f:
    raw = gzip.GzipFile(fileobj=f) if path.suffix == ".gz" else f
    reader = csv.DictReader(io.TextIOWrapper(raw, newline=""))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
      raise errors.DataError(f"{path}: missing columns {missing}.")
    yield from enumerate(reader, start=2)


def parse_labels(value: str):
  """"['pleural effusion', 'cardiomegaly']" -> list of terms; None if null."""
  value = (value or "").strip()
  if value in ("", "None", "nan", "[]"):
    return None
  terms = ast.literal_eval(value)
  if not isinstance(terms, list):
    raise ValueError(f"Labels {value!r} is not a list")
  return [str(t) for t in terms]


def parse_row(row: dict):
  """CSV row -> example fields (image excluded), or None for rows the builder
  drops: null Labels (no report labels) and EXCLUDE projections."""
  terms = parse_labels(row["Labels"])
  if terms is None or row["Projection"].strip() in EXCLUDED_PROJECTIONS:
    return None
  birth = cxr_common.parse_float(row["PatientBirth"])
  year = cxr_common.parse_float(row["StudyDate_DICOM"][:4])
  return {
      "labels": labels_lib.padchest_findings(terms),
      "patient_id": row["PatientID"].strip(),
      "study_id": row["StudyID"].strip(),
      "view": cxr_common.normalize_view(row["Projection"]),
      "sex": row["PatientSex_DICOM"].strip(),
      "age": year - birth if not (math.isnan(birth) or math.isnan(year))
             else math.nan,
      "source_path": f"{int(row['ImageDir'])}/{row['ImageID'].strip()}",
  }


class CxrPadchest(cxr_common.CxrBuilder):
  """PadChest: 27 harmonised findings from the report labels; splits by patient."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  LABEL_NAMES = labels_lib.PADCHEST_FINDINGS
  IMAGE_DTYPE = np.uint16
  HOMEPAGE = "https://bimcv.cipf.es/bimcv-projects/padchest/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Download PadChest from {HOMEPAGE} and unzip every image archive into its
  numbered folder so that manual_dir contains:
    {CSV_NAME} (or .csv.gz)
    0/<ImageID>.png ... 50/..., 54/...   (16-bit PNGs; the CSV's ImageDir)
  then: tfds build --imports=input_pipeline.datasets cxr_padchest --manual_dir=DIR
  Rows with null Labels and Projection EXCLUDE are dropped (counted in the
  log); listed files that are missing or truncated are skipped.
  """

  def _split_generators(self, dl_manager):
    alternatives = f"{CSV_NAME}|{CSV_NAME}.gz"
    root = base.find_manual_dir(dl_manager, [alternatives],
                                self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    path = epath.Path(base.first_existing(root, alternatives))
    parsed = cxr_common.parse_rows(path, read_csv(path), parse_row)
    rows = [r for r in parsed if r is not None]
    dropped = len(parsed) - len(rows)
    logging.info("%s: dropped %d rows (null labels or excluded projection).",
                 path, dropped)
    split_of = cxr_common.patient_split([r["patient_id"] for r in rows],
                                        SPLIT_FRACTIONS)
    splits = {name: [] for name in SPLIT_FRACTIONS}
    for row in rows:
      splits[split_of[row["patient_id"]]].append(row)
    return {split: self._generate_examples(
                split, split_rows, lambda r: epath.Path(root, r["source_path"]))
            for split, split_rows in splits.items()}
