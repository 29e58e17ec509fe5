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


# The seed code's PadChest (its transfer_learning/datasets/padchest.py, as
# released): raw Projection values kept (AP_horizontal is its "AP Supine";
# UNK and EXCLUDE dropped), rows with null Labels dropped, these ImageIDs
# (missing or broken files) dropped, no patient de-duplication.
SEED_PROJECTIONS = ("PA", "AP", "AP_horizontal", "L", "COSTAL")
SEED_DROPPED_IMAGES = frozenset({
    "216840111366964012819207061112010307142602253_04-014-084.png",
    "216840111366964012989926673512011074122523403_00-163-058.png",
    "216840111366964012959786098432011033083840143_00-176-115.png",
    "216840111366964012558082906712009327122220177_00-102-064.png",
    "216840111366964012339356563862009072111404053_00-043-192.png",
    "216840111366964013076187734852011291090445391_00-196-188.png",
    "216840111366964012373310883942009117084022290_00-064-025.png",
    "216840111366964012283393834152009033102258826_00-059-087.png",
    "216840111366964012373310883942009170084120009_00-097-074.png",
    "216840111366964012819207061112010315104455352_04-024-184.png",
    "216840111366964013829543166512013353113303615_02-092-190.png",
    "216840111366964012904401302362010337093236130_03-198-079.png",
    "216840111366964012904401302362010336141343749_03-198-010.png",
    "216840111366964012989926673512011151082430686_00-157-045.png",
    "216840111366964012989926673512011083134050913_00-168-009.png",
    "216840111366964012373310883942009077082646386_00-047-124.png",
    "216840111366964013686042548532013208193054515_02-026-007.png",
    "216840111366964013962490064942014134093945580_01-178-104.png",
    "216840111366964012819207061112010281134410801_00-129-131.png",
    "216840111366964013590140476722013043111952381_02-065-198.png",
    "216840111366964012283393834152009027091819347_00-007-136.png",
    "216840111366964012373310883942009152114636712_00-102-045.png",
    "216840111366964012283393834152009033140208626_00-059-118.png",
    "216840111366964013590140476722013058110301622_02-056-111.png",
    "216840111366964012487858717522009280135853083_00-075-001.png",
    "216840111366964013590140476722013049100117076_02-063-097.png",
    "216840111366964013649110343042013092101343018_02-075-146.png",
    "216840111366964012819207061112010306085429121_04-020-102.png",
    "269300710246070740096540277379121868595_e7zsan.png",
    "216840111366964012373310883942009180082307973_00-097-011.png",
})
# A finding counts if its lower-cased name or one of these terms occurs
# anywhere in the raw Labels string (plain substring: 'pseudonodule' is a
# nodule; 'consolidation' also makes Infiltration, so no image has
# Consolidation alone).
SEED_TERMS = {
    "Infiltration": ("infiltrates", "interstitial pattern",
                     "ground glass pattern", "reticular interstitial pattern",
                     "reticulonodular interstitial pattern", "alveolar pattern",
                     "consolidation", "air bronchogram"),
    "Consolidation": ("air bronchogram",),
    "Hilar Enlargement": ("adenopathy", "pulmonary artery enlargement"),
    "Support Devices": ("device", "pacemaker"),
}
SEED_SHUFFLE_SEED, SEED_TRAIN_FRACTION = 42, 0.9
# What pandas.read_csv reads as null (the seed's `Labels.isnull()`).
_PANDAS_NULLS = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan",
    "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a",
    "nan", "null"})


def seed_findings(raw_labels: str) -> np.ndarray:
  """1.0/0.0 over labels.PADCHEST_FINDINGS by the seed's substring rule."""
  return np.array([float(any(
      term in raw_labels for term in
      (finding.lower(),) + SEED_TERMS.get(finding, ())))
                   for finding in labels_lib.PADCHEST_FINDINGS], np.float32)


def seed_selection(rows):
  """The rows the seed keeps, in CSV order, and its split: {'train': rows,
  'test': rows} (numpy RandomState(42) shuffles the kept rows; the first
  int(0.9 N) train). Each row gets 'seed_labels'."""
  kept = [dict(r, seed_labels=seed_findings(r["Labels"])) for r in rows
          if (r["Projection"] or "") in SEED_PROJECTIONS
          and (r["Labels"] or "") not in _PANDAS_NULLS
          and r["ImageID"] not in SEED_DROPPED_IMAGES]
  train, test = cxr_common.seed_code_split(kept, SEED_TRAIN_FRACTION,
                                          SEED_SHUFFLE_SEED)
  return {"train": train, "test": test}


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
  return dict(_fields(row), labels=labels_lib.padchest_findings(terms))


def _fields(row: dict) -> dict:
  """The example fields of a CSV row besides labels and image."""
  birth = cxr_common.parse_float(row["PatientBirth"])
  year = cxr_common.parse_float(row["StudyDate_DICOM"][:4])
  return {
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
  BUILDER_CONFIGS = cxr_common.BUILDER_CONFIGS  # No JPEG: 16-bit images.
  HOMEPAGE = "https://bimcv.cipf.es/bimcv-projects/padchest/"
  IMAGE_LAYOUT = ("<ImageDir>/<ImageID> (numbered folders) or <ImageID> (one "
                  "flat folder) beside the CSV")
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Download PadChest from {HOMEPAGE} and unzip the image archives so that
  manual_dir contains {CSV_NAME} (or .csv.gz) and either
    <ImageDir>/<ImageID>   (0/..., 50/, 54/: one folder per archive, named
                            by the CSV's ImageDir; ImageID ends in .png)
  or
    <ImageID>              (every archive unzipped into one flat folder, as
                            the seed code reads them)
  (16-bit PNGs), then: tfds build --imports=input_pipeline.datasets cxr_padchest/default --manual_dir=DIR
  Rows with null Labels and Projection EXCLUDE are dropped (counted in the
  log); listed files that are missing or truncated are skipped.
  """

  def _find_csv(self, dl_manager):
    """(manual_dir, path of the CSV in it)."""
    alternatives = f"{CSV_NAME}|{CSV_NAME}.gz"
    root = base.find_manual_dir(dl_manager, [alternatives],
                                self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    return root, epath.Path(base.first_existing(root, alternatives))

  def _split_generators(self, dl_manager):
    root, path = self._find_csv(dl_manager)
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
    locate = _locator(root, rows)
    return {split: self._generate_examples(split, split_rows, locate)
            for split, split_rows in splits.items()}


def _locator(root: str, rows):
  """Where the images are: in numbered <ImageDir>/ folders, or all in `root`
  (decided once, from the first rows whose files exist in either)."""
  def nested(row):
    return epath.Path(root, row["source_path"])

  def flat(row):
    return epath.Path(root, row["source_path"].split("/", 1)[1])

  for row in rows[:200]:
    if nested(row).exists():
      return nested
    if flat(row).exists():
      logging.info("%s: reading PadChest images from one flat folder.", root)
      return flat
  return nested


class CxrPadchestSeed(CxrPadchest):
  """PadChest as the seed paper's code formed it (see SEED_* above): its
  views, filters and substring-matched 27 findings, and a random 90/10
  split by image (RandomState(42)): 'train' and 'validation' (the 10% the
  seed validated and tested on). Not patient-disjoint, as in the seed."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = CxrPadchest.MANUAL_DOWNLOAD_INSTRUCTIONS.replace(
      "cxr_padchest ", "cxr_padchest_seed ")

  def _split_generators(self, dl_manager):
    root, path = self._find_csv(dl_manager)
    selected = seed_selection(r for _, r in read_csv(path))
    splits = {ours: [dict(_fields(r), labels=r["seed_labels"])
                     for r in selected[theirs]]
              for ours, theirs in (("train", "train"), ("validation", "test"))}
    locate = _locator(root, splits["train"])
    return {split: self._generate_examples(split, rows, locate)
            for split, rows in splits.items()}
