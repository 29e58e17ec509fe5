"""Segmentation data in the releases' exact layouts, written for tests:
Montgomery County (CXR_png + ManualMask/{leftMask,rightMask}) and SIIM-ACR
(train-rle.csv + dicom-images-train/<study>/<series>/<ImageId>.dcm), with
the real lung masks of the torchxrayvision wheel (REFERENCE: 517 binary
masks, 0/255 PNG) where a test wants real shapes."""
import csv
import io
import os
import zipfile

import numpy as np
from PIL import Image

from tests import txrv_metadata

LUNG_MASKS = "torchxrayvision/data/semantic_masks_v7labs_lungs.zip"


def real_lung_masks(count: int, size: int = 96) -> np.ndarray:
  """The first `count` non-empty real lung masks, bool [count, size, size, 1]
  (nearest-neighbour resized)."""
  with zipfile.ZipFile(txrv_metadata.wheel_path()) as wheel:
    inner = zipfile.ZipFile(io.BytesIO(wheel.read(LUNG_MASKS)))
  names = sorted(n for n in inner.namelist() if not n.endswith("/"))
  masks = []
  for name in names:
    with Image.open(io.BytesIO(inner.read(name))) as image:
      array = np.asarray(image.convert("L").resize((size, size),
                                                   Image.NEAREST))
    if array.max() > 0:
      masks.append(array > 127)
    if len(masks) == count:
      break
  return np.stack(masks)[..., None]


def radiograph_of(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """A uint8 picture with dark lungs where `mask` [H, W] is set, bright
  tissue elsewhere, smooth shading (noise at 1/8 of the size, bilinearly
  enlarged) and fine grain on both: learnable, as real radiographs are."""
  height, width = mask.shape
  coarse = rng.normal(0, 20, (max(2, height // 8), max(2, width // 8)))
  shading = np.asarray(Image.fromarray(coarse.astype(np.float32), "F").resize(
      (width, height), Image.BILINEAR))
  base = (np.where(mask, 70.0, 170.0) + shading
          + rng.normal(0, 8, mask.shape))
  return np.clip(base, 0, 255).astype(np.uint8)


def write_png(path, array) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def write_montgomery(root, lungs: np.ndarray, seed: int = 0) -> dict:
  """MontgomerySet/CXR_png/MCUCXR_NNNN_T.png and its ManualMask/leftMask and
  rightMask (0/255 PNGs: each lung mask split at the middle column) for
  each mask of `lungs` [N, H, W] (bool); returns {file name: the union}."""
  rng = np.random.default_rng(seed)
  unions = {}
  for i, union in enumerate(lungs):
    name = f"MCUCXR_{i + 1:04d}_{i % 2}.png"
    write_png(os.path.join(root, "MontgomerySet", "CXR_png", name),
              radiograph_of(union, rng))
    half = union.shape[1] // 2
    for side, columns in (("leftMask", slice(None, half)),
                          ("rightMask", slice(half, None))):
      part = np.zeros(union.shape, np.uint8)
      part[:, columns] = union[:, columns] * 255
      write_png(os.path.join(root, "MontgomerySet", "ManualMask", side, name),
                part)
    unions[name] = union.astype(np.uint8)
  return unions


def write_dicom(path, pixels: np.ndarray) -> None:
  """An 8-bit MONOCHROME2 DICOM of `pixels`, as SIIM-ACR ships them."""
  from pydicom.dataset import Dataset, FileMetaDataset  # pylint: disable=g-import-not-at-top
  from pydicom import uid  # pylint: disable=g-import-not-at-top
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = uid.SecondaryCaptureImageStorage
  meta.MediaStorageSOPInstanceUID = uid.generate_uid()
  meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID, ds.SOPInstanceUID = (meta.MediaStorageSOPClassUID,
                                       meta.MediaStorageSOPInstanceUID)
  ds.Modality, ds.PatientID = "CR", os.path.basename(path)[:-4]
  ds.Rows, ds.Columns = pixels.shape
  ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
  ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
  ds.PixelRepresentation = 0
  ds.PixelData = pixels.tobytes()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  ds.save_as(path, enforce_file_format=True)


def encode_siim_rle(mask: np.ndarray) -> str:
  """Column-major relative runs (the release's encoding), written here
  independently of the decoder: positions of run starts and ends."""
  flat = np.r_[0, mask.T.reshape(-1), 0]
  changes = np.flatnonzero(np.diff(flat))
  starts, ends = changes[0::2], changes[1::2]
  gaps = starts - np.r_[0, ends[:-1]]
  return " ".join(f"{g} {e - s}" for g, s, e in zip(gaps, starts, ends))


def write_siim(root, images: np.ndarray, regions: list) -> list:
  """dicom-images-train/<study>/<series>/<ImageId>.dcm for each of `images`
  [N, H, W] uint8 and train-rle.csv (its ' EncodedPixels' header, one row
  per region of regions[i] (masks [H, W]), ' -1' for none); returns the
  rows written (ImageId, encoding)."""
  rows = []
  for i, (pixels, parts) in enumerate(zip(images, regions)):
    image_id = f"1.2.276.0.7230010.3.1.4.8323329.{1000 + i}.1517875166.{i}"
    write_dicom(os.path.join(root, "dicom-images-train", f"1.2.{i}",
                             f"1.3.{i}", f"{image_id}.dcm"), pixels)
    rows += [(image_id, encode_siim_rle(m)) for m in parts] or [
        (image_id, "-1")]
  with open(os.path.join(root, "train-rle.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["ImageId", " EncodedPixels"])
    writer.writerows((image_id, " " + encoded) for image_id, encoded in rows)
  return rows
