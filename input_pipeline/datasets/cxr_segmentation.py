"""Chest X-ray segmentation targets: Montgomery County lung masks and
SIIM-ACR pneumothorax, as released.

Each example holds the grey image and its mask ('mask': uint8 [H, W, 1],
0/1; 'mask_pixels': its foreground pixel count), stored at the same size: images downscaled with area interpolation,
masks with nearest-neighbour (configs 'default': shorter side <= 512 px,
'px1024': <= 1024). A mask that is missing or of another size than its
image stops the build, naming the file: masks are the labels.
"""
import csv
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from input_pipeline import errors
from input_pipeline import masks
from input_pipeline import xray_io
from input_pipeline.datasets import base
from input_pipeline.datasets import cxr_common

SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}


class _CxrSegmentationBuilder(base.ArrayRecordBuilderMixin,
                              tfds.core.GeneratorBasedBuilder):
  """Examples {image, mask, patient_id, source_path}; subclasses list the
  rows of each split and read each row's image and mask."""

  BUILDER_CONFIGS = [
      cxr_common.CxrConfig(
          name="default", max_short_side=cxr_common.DEFAULT_MAX_SHORT_SIDE,
          description="Images and masks downscaled to a shorter side of at "
                      "most 512 px (area / nearest)."),
      cxr_common.CxrConfig(
          name="px1024", max_short_side=1024,
          description="Images and masks downscaled to a shorter side of at "
                      "most 1024 px (area / nearest)."),
  ]
  CLASS_NAMES = ()
  HOMEPAGE = ""
  IMAGE_LAYOUT = ""

  def _info(self):
    return self.dataset_info_from_configs(
        description=self.__class__.__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 1),
                                         encoding_format="png"),
            "mask": tfds.features.Image(shape=(None, None, 1),
                                        encoding_format="png"),
            # Foreground pixels of each class in the stored mask: which
            # images show the class, without decoding masks (few-shot).
            "mask_pixels": tfds.features.Tensor(
                shape=(len(self.CLASS_NAMES),), dtype=np.int64),
            "patient_id": tfds.features.Text(),
            "source_path": tfds.features.Text(),
        }),
        homepage=self.HOMEPAGE,
        metadata=tfds.core.MetadataDict(class_names=list(self.CLASS_NAMES)),
    )

  def _read(self, row):
    """(image float [H, W] in [0, 1], mask uint8 [H, W] 0/1) of a row."""
    raise NotImplementedError

  def _generate_examples(self, split, rows, locate):
    cxr_common.require_images(rows, locate, self.IMAGE_LAYOUT)
    size = self.builder_config.max_short_side
    for row in rows:
      image, mask = self._read(row)
      if mask.shape != image.shape:
        raise errors.DataError(
            f"{self.name}[{split}]: the mask of {locate(row)} is "
            f"{mask.shape[1]}x{mask.shape[0]} px, its image "
            f"{image.shape[1]}x{image.shape[0]}: fix or restore the mask.")
      image = np.round(image * 255).astype(np.uint8)
      mask = cxr_common.downscale(mask, size, "nearest")
      yield row["source_path"], dict(
          row, image=cxr_common.downscale(image, size), mask=mask,
          mask_pixels=np.count_nonzero(mask.reshape(-1, mask.shape[-1]),
                                       axis=0).astype(np.int64))


# Montgomery County: MCUCXR_0001_0.png (_1 = tuberculosis), masks of the
# same name in ManualMask/leftMask and ManualMask/rightMask.
_MONTGOMERY_FOLDERS = ("MontgomerySet", "Montgomery/MontgomerySet")


class CxrMontgomeryLungs(_CxrSegmentationBuilder):
  """Montgomery County chest X-rays (138) with manual lung masks (left and
  right lung joined: one class, 'lung'). No official split: a seeded
  80/10/10 split of the patients (one image each)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  CLASS_NAMES = ("lung",)
  HOMEPAGE = "https://lhncbc.nlm.nih.gov/LHC-downloads/downloads.html#tuberculosis-image-data-sets"
  IMAGE_LAYOUT = ("MontgomerySet/CXR_png/MCUCXR_*.png with "
                  "MontgomerySet/ManualMask/{leftMask,rightMask}/ beside it")
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the Montgomery County set (NLM) and unpack it so that manual_dir
  contains MontgomerySet/CXR_png/MCUCXR_0001_0.png ... and
  MontgomerySet/ManualMask/leftMask/MCUCXR_0001_0.png ... and
  MontgomerySet/ManualMask/rightMask/MCUCXR_0001_0.png ... (or Kaggle's
  Montgomery/MontgomerySet/...), then:
  tfds build --imports=input_pipeline.datasets cxr_montgomery_lungs/default --manual_dir=DIR
  """

  def _split_generators(self, dl_manager):
    root = base.find_manual_dir(
        dl_manager, ["|".join(f"{f}/CXR_png" for f in _MONTGOMERY_FOLDERS)],
        self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    folder = next(f for f in _MONTGOMERY_FOLDERS
                  if epath.Path(root, f, "CXR_png").exists())
    self._manual_root, self._root = root, epath.Path(root, folder)
    rows = [{"patient_id": path.stem, "source_path": f"{folder}/CXR_png/{path.name}"}
            for path in sorted(epath.Path(self._root, "CXR_png").glob("MCUCXR_*.png"))]
    assignment = cxr_common.patient_split([r["patient_id"] for r in rows],
                                          SPLIT_FRACTIONS)
    return {split: self._generate_examples(
                split, [r for r in rows if assignment[r["patient_id"]] == split],
                lambda r: epath.Path(root, r["source_path"]))
            for split in SPLIT_FRACTIONS}

  def _read(self, row):
    image_path = epath.Path(self._manual_root, row["source_path"])
    lungs = []
    for side in ("leftMask", "rightMask"):
      path = epath.Path(self._root, "ManualMask", side, image_path.name)
      if not path.exists():
        raise errors.DataError(
            f"{self.name}: {path} is missing (the {side} of {image_path}): "
            "restore it, or remove the image.")
      lungs.append(masks.read_binary_mask(path))
    if lungs[0].shape != lungs[1].shape:
      raise errors.DataError(
          f"{self.name}: the masks of {image_path} differ in size "
          f"({lungs[0].shape} and {lungs[1].shape}): fix or restore them.")
    return xray_io.read_xray(image_path), lungs[0] | lungs[1]


class CxrSiimPneumothorax(_CxrSegmentationBuilder):
  """SIIM-ACR Pneumothorax Segmentation (2019): chest X-ray DICOMs with
  pneumothorax masks run-length encoded in train-rle.csv (one row per
  pneumothorax region, merged per image; -1 for none). The labelled images
  are split 80/10/10 by image with a seed (the challenge's test masks were
  not released)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  CLASS_NAMES = ("pneumothorax",)
  HOMEPAGE = "https://www.kaggle.com/c/siim-acr-pneumothorax-segmentation"
  IMAGE_LAYOUT = "dicom-images-train/<study>/<series>/<ImageId>.dcm"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the SIIM-ACR Pneumothorax Segmentation data (train-rle.csv and
  the DICOMs) so that manual_dir contains:
    train-rle.csv  (header: ImageId, EncodedPixels)
    dicom-images-train/<study UID>/<series UID>/<ImageId>.dcm
  then: tfds build --imports=input_pipeline.datasets cxr_siim_pneumothorax/default --manual_dir=DIR
  """

  def _split_generators(self, dl_manager):
    root = base.find_manual_dir(dl_manager,
                                ["train-rle.csv", "dicom-images-train"],
                                self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    csv_path = epath.Path(root, "train-rle.csv")
    self._encodings = read_rle_csv(csv_path)
    files = {p.stem: p for p in
             epath.Path(root, "dicom-images-train").glob("*/*/*.dcm")}
    unlisted = sorted(set(self._encodings) - set(files))
    if unlisted:
      logging.warning("%s: %d images of train-rle.csv have no DICOM (e.g. "
                      "%s); they are left out.", root, len(unlisted),
                      unlisted[:3])
    rows = [{"patient_id": image_id,
             "source_path": os.fspath(files[image_id].relative_to(root))}
            for image_id in sorted(self._encodings) if image_id in files]
    assignment = cxr_common.patient_split([r["patient_id"] for r in rows],
                                          SPLIT_FRACTIONS)
    self._root = root
    return {split: self._generate_examples(
                split, [r for r in rows if assignment[r["patient_id"]] == split],
                lambda r: epath.Path(root, r["source_path"]))
            for split in SPLIT_FRACTIONS}

  def _read(self, row):
    image = xray_io.read_xray(epath.Path(self._root, row["source_path"]))
    mask = np.zeros(image.shape, np.uint8)
    for number, encoded in self._encodings[row["patient_id"]]:
      try:
        mask |= masks.decode_siim_rle(encoded, *image.shape)
      except ValueError as e:
        raise errors.DataError(
            f"{epath.Path(self._root, 'train-rle.csv')} row {number} "
            f"({row['patient_id']}): {e}.") from e
    return image, mask


def read_rle_csv(path) -> dict:
  """train-rle.csv -> {ImageId: [(row number, EncodedPixels), ...]} (the
  released header has a space before EncodedPixels)."""
  encodings = {}
  with epath.Path(path).open() as f:
    reader = csv.DictReader(f, skipinitialspace=True)
    if not {"ImageId", "EncodedPixels"} <= set(reader.fieldnames or ()):
      raise errors.DataError(
          f"{path}: header {reader.fieldnames}; expected ImageId, "
          "EncodedPixels (SIIM-ACR's train-rle.csv).")
    for number, row in enumerate(reader, start=2):
      encodings.setdefault(row["ImageId"].strip(), []).append(
          (number, row["EncodedPixels"]))
  return encodings
