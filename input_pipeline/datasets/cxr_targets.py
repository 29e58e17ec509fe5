"""Single-label chest X-ray transfer targets: Tuberculosis, COVIDx CXR-2 and
paediatric pneumonia (Kermany et al. 2018).

Both store grey images like the other chest X-ray builders (configs
'default' <= 512 px, 'original', 'strict') with a ClassLabel 'label'.
"""
import os
import re

import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from input_pipeline import errors
from input_pipeline.datasets import base
from input_pipeline.datasets import cxr_common


class _CxrClassificationBuilder(cxr_common.CxrBuilder):
  """A CxrBuilder whose examples carry one class label."""

  CLASS_NAMES = ()
  EXTRA_FEATURES = {}  # Name -> TFDS feature, beside the common ones.

  def _info(self):
    return self.dataset_info_from_configs(
        description=self.__class__.__doc__,
        features=tfds.features.FeaturesDict({
            "image": cxr_common.image_feature(self.builder_config,
                                              self.IMAGE_DTYPE),
            "label": tfds.features.ClassLabel(names=self.CLASS_NAMES),
            "patient_id": tfds.features.Text(),
            "source": tfds.features.Text(),
            "source_path": tfds.features.Text(),
            **self.EXTRA_FEATURES,
        }),
        supervised_keys=("image", "label"),
        homepage=self.HOMEPAGE,
    )


# Shenzhen: CHNCXR_0001_0.png, Montgomery: MCUCXR_0001_0.png; _1 = TB. Each
# set's folder as the NLM zips unpack, or as Kaggle's copy (the seed's) does.
_TB_SETS = {
    "shenzhen": ("ChinaSet_AllFiles/CXR_png",
                 "ChinaSet_AllFiles/ChinaSet_AllFiles/CXR_png"),
    "montgomery": ("MontgomerySet/CXR_png", "Montgomery/MontgomerySet/CXR_png"),
}
_TB_FILE_RE = re.compile(r"^(CHNCXR|MCUCXR)_(\d+)_([01])\.png$")


class CxrTuberculosis(_CxrClassificationBuilder):
  """Shenzhen (662) + Montgomery (138) chest X-rays, normal vs tuberculosis.

  One image per patient. No official split: a seeded 80/20 train/test split
  of the patients, stratified by set and label; config 'seed': the seed
  code's 85/15 per set (its files sorted, numpy RandomState(42) shuffle).
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = cxr_common.EIGHT_BIT_CONFIGS + [
      cxr_common.CxrConfig(
          name="seed", seed_split=True,
          description="The seed code's split: 85/15 of each set's sorted "
                      "files after a RandomState(42) shuffle; <= 512 px.")]
  CLASS_NAMES = ("normal", "tuberculosis")
  HOMEPAGE = "https://lhncbc.nlm.nih.gov/LHC-downloads/downloads.html#tuberculosis-image-data-sets"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the Shenzhen and/or Montgomery County sets (NLM) and unpack them
  so that manual_dir contains either or both of:
    ChinaSet_AllFiles/CXR_png/CHNCXR_0001_0.png ...
    MontgomerySet/CXR_png/MCUCXR_0001_0.png ...
  or, from Kaggle's copy, ChinaSet_AllFiles/ChinaSet_AllFiles/CXR_png/ and
  Montgomery/MontgomerySet/CXR_png/ (file names end in _0 = normal, _1 =
  tuberculosis), then:
  tfds build --imports=input_pipeline.datasets cxr_tuberculosis/default --manual_dir=DIR
  """

  def _split_generators(self, dl_manager):
    folders = [f for alternatives in _TB_SETS.values() for f in alternatives]
    root = base.find_manual_dir(dl_manager, ["|".join(folders)],
                                self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    groups, missing = {}, []
    for source, alternatives in _TB_SETS.items():
      folder = next((f for f in alternatives
                     if epath.Path(root, f).exists()), None)
      if folder is None:
        missing.append(f"{source} ({' or '.join(alternatives)})")
        continue
      for path in sorted(epath.Path(root, folder).iterdir()):
        match = _TB_FILE_RE.match(path.name)
        if not match:
          continue  # Thumbs.db, masks and other non-images.
        label = int(match.group(3))
        groups.setdefault((source, label), []).append({
            "label": label, "patient_id": f"{match.group(1)}_{match.group(2)}",
            "source": source, "source_path": f"{folder}/{path.name}"})
    if not groups:
      raise base.ManualDownloadError(
          f"{root}: no CHNCXR_*_[01].png / MCUCXR_*_[01].png files found in "
          f"{', '.join(folders)}; it holds "
          f"{sorted(p.name for p in epath.Path(root).iterdir())[:12]}."
          f"\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    if missing:
      logging.warning(
          "%s: only %s found; %s is not there, so the dataset holds one set "
          "(the seed paper used both).", root,
          " and ".join(sorted({s for s, _ in groups})), " and ".join(missing))
    splits = (_seed_tb_split(groups) if self.builder_config.seed_split
              else _patient_tb_split(groups))
    cxr_common.check_patient_disjoint(splits, root)
    return {split: self._generate_examples(
                split, rows, lambda r: epath.Path(root, r["source_path"]))
            for split, rows in splits.items()}


def _patient_tb_split(groups) -> dict:
  """80/20 of the patients of each (set, label) group."""
  splits = {"train": [], "test": []}
  for rows in groups.values():
    assignment = cxr_common.patient_split(
        [r["patient_id"] for r in rows], {"train": 0.8, "test": 0.2})
    for row in rows:
      splits[assignment[row["patient_id"]]].append(row)
  return splits


def _seed_tb_split(groups) -> dict:
  """The seed's transfer_learning/datasets/tuberculosis.py: per set, its
  files sorted, shuffled by numpy RandomState(42), the first int(0.85 N)
  train."""
  splits = {"train": [], "test": []}
  for source in _TB_SETS:
    rows = sorted((r for (s, _), rs in groups.items() if s == source
                   for r in rs), key=lambda r: r["source_path"])
    train, test = cxr_common.seed_code_split(rows, 0.85)
    splits["train"] += train
    splits["test"] += test
  return splits


class CxrCovidx(_CxrClassificationBuilder):
  """COVIDx CXR-2 (and later): COVID-19 negative vs positive, official splits."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  CLASS_NAMES = ("negative", "positive")
  HOMEPAGE = "https://www.kaggle.com/datasets/andyczhao/covidx-cxr2"
  IMAGE_LAYOUT = "train/<file>, test/<file> (val/<file>) beside the lists"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download COVIDx CXR-2 (Kaggle andyczhao/covidx-cxr2) and unpack it so that
  manual_dir contains:
    train.txt, test.txt (and val.txt in later versions): lines
      '<patient id> <file name> <negative|positive> <data source>'
    train/<file name>, test/<file name> (val/...)
  then: tfds build --imports=input_pipeline.datasets cxr_covidx/default --manual_dir=DIR
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


# Kermany et al. 2018: pneumonia files personN_bacteria_M.jpeg /
# personN_virus_M.jpeg, normal ones IM-XXXX-YYYY.jpeg or NORMAL2-IM-XXXX-YYYY.jpeg.
_PNEUMONIA_RE = re.compile(r"^(person\d+)_(bacteria|virus)_\d+\.jpe?g$", re.I)
_NORMAL_RE = re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+\.jpe?g$", re.I)
_PNEUMONIA_SPLITS = {"train": "train", "validation": "val", "test": "test"}


def parse_pneumonia_file(folder: str, name: str) -> dict:
  """Fields of one image from its class folder and file name: label,
  subtype (normal, bacterial, viral) and patient id."""
  if folder == "PNEUMONIA":
    match = _PNEUMONIA_RE.match(name)
    if not match:
      raise ValueError(f"{folder}/{name}: expected personN_bacteria_M.jpeg "
                       "or personN_virus_M.jpeg")
    return {"label": "pneumonia", "patient_id": match.group(1),
            "subtype": {"bacteria": "bacterial",
                        "virus": "viral"}[match.group(2).lower()]}
  match = _NORMAL_RE.match(name)
  return {"label": "normal", "subtype": "normal",
          "patient_id": match.group(1) if match else os.path.splitext(name)[0]}


class CxrPneumonia(_CxrClassificationBuilder):
  """Paediatric chest X-rays (Guangzhou), normal vs pneumonia, with the
  bacterial / viral subtype from the file name: Kermany et al. 2018,
  "Identifying medical diagnoses and treatable diseases by image-based deep
  learning", Cell 172(5) (data CC BY 4.0). The official train / val / test
  folders are the splits."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  CLASS_NAMES = ("normal", "pneumonia")
  EXTRA_FEATURES = {"subtype": tfds.features.ClassLabel(
      names=("normal", "bacterial", "viral"))}
  HOMEPAGE = "https://data.mendeley.com/datasets/rscbjbr9sj"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download "Chest X-Ray Images (Pneumonia)" (Kermany et al. 2018; Mendeley
  Data rscbjbr9sj, or Kaggle paultimothymooney/chest-xray-pneumonia) and
  unzip it so that manual_dir contains
    chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg
  (or train/, val/, test/ directly), then:
  tfds build --imports=input_pipeline.datasets cxr_pneumonia/default --manual_dir=DIR
  """

  def _split_generators(self, dl_manager):
    root = base.find_manual_dir(
        dl_manager, ["chest_xray/train|train", "chest_xray/test|test"],
        self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    top = "chest_xray" if epath.Path(root, "chest_xray/train").exists() else ""
    splits = {}
    for split, name in _PNEUMONIA_SPLITS.items():
      rows = []
      for folder in ("NORMAL", "PNEUMONIA"):
        directory = epath.Path(root, top, name, folder)
        if not directory.exists():
          continue
        for path in sorted(directory.iterdir()):
          if not path.name.lower().endswith((".jpeg", ".jpg")):
            continue  # .DS_Store and the like.
          relative = os.path.join(top, name, folder, path.name)
          try:
            fields = parse_pneumonia_file(folder, path.name)
          except ValueError as e:
            raise errors.DataError(f"{root}/{relative}: {e}") from e
          rows.append(dict(fields, source="kermany", source_path=relative))
      if rows or split != "validation":
        splits[split] = rows
    empty = [s for s in ("train", "test") if not splits[s]]
    if empty:
      where = epath.Path(root, top)
      raise errors.DataError(
          f"{where}: no .jpeg images in {', '.join(empty)}/{{NORMAL,PNEUMONIA}}/;"
          " expected chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg; "
          f"found {sorted(p.name for p in where.iterdir())[:12]}.")
    locate = lambda r: epath.Path(root, r["source_path"])  # noqa: E731
    return {split: self._generate_examples(split, rows, locate)
            for split, rows in splits.items()}
