"""Single-label chest X-ray transfer targets: Tuberculosis and COVIDx CXR-2.

Both store grey images like the other chest X-ray builders (configs
'default' <= 512 px, 'original', 'strict') with a ClassLabel 'label'.
"""
import os
import re

import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from input_pipeline.datasets import base
from input_pipeline.datasets import cxr_common


class _CxrClassificationBuilder(cxr_common.CxrBuilder):
  """A CxrBuilder whose examples carry one class label."""

  CLASS_NAMES = ()

  def _info(self):
    original = self.builder_config.max_short_side is None
    return self.dataset_info_from_configs(
        description=self.__class__.__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(
                shape=(None, None, 1), dtype=self.IMAGE_DTYPE,
                encoding_format=None if original else "png"),
            "label": tfds.features.ClassLabel(names=self.CLASS_NAMES),
            "patient_id": tfds.features.Text(),
            "source": tfds.features.Text(),
            "source_path": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage=self.HOMEPAGE,
    )


# Shenzhen: CHNCXR_0001_0.png, Montgomery: MCUCXR_0001_0.png; _1 = TB.
_TB_SETS = {"shenzhen": "ChinaSet_AllFiles/CXR_png",
            "montgomery": "MontgomerySet/CXR_png"}
_TB_FILE_RE = re.compile(r"^(CHNCXR|MCUCXR)_(\d+)_([01])\.png$")


class CxrTuberculosis(_CxrClassificationBuilder):
  """Shenzhen (662) + Montgomery (138) chest X-rays, normal vs tuberculosis.

  One image per patient. No official split: a seeded 80/20 train/test split
  of the patients, stratified by set and label.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  CLASS_NAMES = ("normal", "tuberculosis")
  HOMEPAGE = "https://lhncbc.nlm.nih.gov/LHC-downloads/downloads.html#tuberculosis-image-data-sets"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the Shenzhen and/or Montgomery County sets (NLM) and unpack them
  so that manual_dir contains either or both of:
    ChinaSet_AllFiles/CXR_png/CHNCXR_0001_0.png ...
    MontgomerySet/CXR_png/MCUCXR_0001_0.png ...
  (file names end in _0 = normal, _1 = tuberculosis), then:
  tfds build --imports=input_pipeline.datasets cxr_tuberculosis --manual_dir=DIR
  """

  def _split_generators(self, dl_manager):
    root = base.find_manual_dir(dl_manager, ["|".join(_TB_SETS.values())],
                                self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    groups = {}
    for source, folder in _TB_SETS.items():
      directory = epath.Path(root, folder)
      if not directory.exists():
        continue
      for path in sorted(directory.iterdir()):
        match = _TB_FILE_RE.match(path.name)
        if not match:
          continue  # Thumbs.db, masks and other non-images.
        label = int(match.group(3))
        groups.setdefault((source, label), []).append({
            "label": label, "patient_id": f"{match.group(1)}_{match.group(2)}",
            "source": source, "source_path": f"{folder}/{path.name}"})
    if not groups:
      raise base.ManualDownloadError(
          f"{root}: no CHNCXR_*_[01].png / MCUCXR_*_[01].png files found."
          f"\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    splits = {"train": [], "test": []}
    for rows in groups.values():
      assignment = cxr_common.patient_split(
          [r["patient_id"] for r in rows], {"train": 0.8, "test": 0.2})
      for row in rows:
        splits[assignment[row["patient_id"]]].append(row)
    cxr_common.check_patient_disjoint(splits, root)
    return {split: self._generate_examples(
                split, rows, lambda r: epath.Path(root, r["source_path"]))
            for split, rows in splits.items()}


class CxrCovidx(_CxrClassificationBuilder):
  """COVIDx CXR-2 (and later): COVID-19 negative vs positive, official splits."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  CLASS_NAMES = ("negative", "positive")
  HOMEPAGE = "https://www.kaggle.com/datasets/andyczhao/covidx-cxr2"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download COVIDx CXR-2 (Kaggle andyczhao/covidx-cxr2) and unpack it so that
  manual_dir contains:
    train.txt, test.txt (and val.txt in later versions): lines
      '<patient id> <file name> <negative|positive> <data source>'
    train/<file name>, test/<file name> (val/...)
  then: tfds build --imports=input_pipeline.datasets cxr_covidx --manual_dir=DIR
  """

  def _split_generators(self, dl_manager):
    root = base.find_manual_dir(dl_manager, ["train.txt", "test.txt"],
                                self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    lists = {"train": "train", "validation": "val", "test": "test"}
    splits = {}
    for split, name in lists.items():
      path = epath.Path(root, f"{name}.txt")
      if path.exists():
        splits[split] = cxr_common.parse_rows(
            os.fspath(path), self._read_list(path),
            lambda row, folder=name: self._parse(row, folder))
    shared = (set.intersection(*[{r["patient_id"] for r in rows}
                                 for rows in (splits["train"], splits["test"])]))
    if shared:  # Known in some releases; the official split is kept.
      logging.warning("%s: %d patients in both train and test (e.g. %s).",
                      root, len(shared), sorted(shared)[:3])
    return {split: self._generate_examples(
                split, rows, lambda r: epath.Path(root, r["source_path"]))
            for split, rows in splits.items()}

  @staticmethod
  def _read_list(path):
    with path.open() as f:
      for number, line in enumerate(f, start=1):
        if line.strip():
          yield number, line.split()

  def _parse(self, fields, folder):
    if len(fields) < 4:
      raise ValueError(f"expected '<patient> <file> <class> <source>', got "
                       f"{' '.join(fields)!r}")
    label = fields[-2].lower()
    if label not in self.CLASS_NAMES:
      raise ValueError(f"class {fields[-2]!r} is not one of "
                       f"{self.CLASS_NAMES} (COVIDx CXR-2 labels)")
    return {"label": label, "patient_id": fields[0], "source": fields[-1],
            "source_path": f"{folder}/{' '.join(fields[1:-2])}"}
