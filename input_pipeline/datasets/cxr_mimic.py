"""MIMIC-CXR-JPG 2.0.0, read from the released folder (CSV.gz metadata + JPEGs)."""
import csv
import gzip
import io

import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from input_pipeline import errors
from input_pipeline import labels as labels_lib
from input_pipeline.datasets import base
from input_pipeline.datasets import cxr_common

METADATA = "mimic-cxr-2.0.0-metadata.csv.gz"
CHEXPERT = "mimic-cxr-2.0.0-chexpert.csv.gz"
SPLIT = "mimic-cxr-2.0.0-split.csv.gz"
SPLIT_NAMES = {"train": "train", "validate": "validation", "test": "test"}
COLUMNS = {
    METADATA: ("dicom_id", "subject_id", "study_id", "ViewPosition"),
    CHEXPERT: ("subject_id", "study_id") + tuple(
        c for c in labels_lib.CHEXPERT_COLUMNS),
    SPLIT: ("dicom_id", "study_id", "subject_id", "split"),
}


def read_csv_gz(path: epath.Path):
  """Yields (row number, dict); checks the columns this builder needs."""
  with path.open("rb") as f:
    text = io.TextIOWrapper(gzip.GzipFile(fileobj=f), newline="")
    reader = csv.DictReader(text)
    missing = [c for c in COLUMNS[path.name] if c not in (reader.fieldnames or ())]
    if missing:
      raise errors.DataError(f"{path}: missing columns {missing}.")
    yield from enumerate(reader, start=2)


def image_path(subject_id: str, study_id: str, dicom_id: str) -> str:
  """files/p10/p10000032/s50414267/<dicom_id>.jpg, relative to the release."""
  return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg"


class CxrMimic(cxr_common.CxrBuilder):
  """MIMIC-CXR-JPG: 14 CheXpert-labeller observations per study; official split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  LABEL_NAMES = labels_lib.CHEXPERT_COLUMNS
  HOMEPAGE = "https://physionet.org/content/mimic-cxr-jpg/2.0.0/"
  IMAGE_LAYOUT = "files/pNN/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg beside the CSVs"
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Download MIMIC-CXR-JPG 2.0.0 from {HOMEPAGE} (credentialed access) so that
  manual_dir contains:
    {METADATA}
    {CHEXPERT}
    {SPLIT}
    files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg ...
  then: tfds build --imports=input_pipeline.datasets cxr_mimic/default --manual_dir=DIR
  """

  def _split_generators(self, dl_manager):
    root = epath.Path(base.find_manual_dir(
        dl_manager, [METADATA, CHEXPERT, SPLIT],
        self.MANUAL_DOWNLOAD_INSTRUCTIONS))
    study_labels = {}
    for number, row in read_csv_gz(root / CHEXPERT):
      try:
        study_labels[row["study_id"]] = [
            cxr_common.parse_float(row[c]) for c in labels_lib.CHEXPERT_COLUMNS]
      except ValueError as e:
        raise errors.DataError(f"{root / CHEXPERT} row {number}: {e}") from e
    split_of = {row["dicom_id"]: row["split"] for _, row in read_csv_gz(root / SPLIT)}
    unknown = set(split_of.values()) - set(SPLIT_NAMES)
    if unknown:
      raise errors.DataError(f"{root / SPLIT}: unknown split names {unknown}.")
    splits = {name: [] for name in SPLIT_NAMES.values()}
    unlabeled = 0
    for number, row in read_csv_gz(root / METADATA):
      if row["dicom_id"] not in split_of:
        raise errors.DataError(f"{root / METADATA} row {number}: dicom_id "
                               f"{row['dicom_id']} is not in {SPLIT}.")
      labels = study_labels.get(row["study_id"])
      if labels is None:  # Study without a report label: nothing mentioned.
        unlabeled += 1
        labels = [float("nan")] * len(labels_lib.CHEXPERT_COLUMNS)
      path = image_path(row["subject_id"], row["study_id"], row["dicom_id"])
      splits[SPLIT_NAMES[split_of[row["dicom_id"]]]].append({
          "labels": labels, "patient_id": row["subject_id"],
          "study_id": row["study_id"],
          "view": cxr_common.normalize_view(row["ViewPosition"]),
          "sex": "", "age": float("nan"), "source_path": path})
    logging.info("%s: %d images of studies without labels (all not mentioned).",
                 root / CHEXPERT, unlabeled)
    cxr_common.check_patient_disjoint(splits, str(root / SPLIT))
    return {split: self._generate_examples(
                split, rows, lambda r: root / r["source_path"])
            for split, rows in splits.items()}
