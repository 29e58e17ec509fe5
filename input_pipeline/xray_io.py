"""Reading single radiographs from DICOM, PNG (8/16-bit) and JPEG files.

`read_xray` returns float32 [H, W] in [0, 1] with dense tissue bright (bone
white, air black), whatever the file's conventions.
"""
import numpy as np
from etils import epath
from PIL import Image

from input_pipeline import errors

_DICOM_MAGIC_OFFSET = 128


def _is_dicom(path: epath.Path) -> bool:
  with path.open("rb") as f:
    header = f.read(_DICOM_MAGIC_OFFSET + 4)
  return header[_DICOM_MAGIC_OFFSET:] == b"DICM" or path.suffix.lower() in (
      ".dcm", ".dicom")


def _read_dicom(path: epath.Path, chest_only: bool) -> np.ndarray:
  from pydicom.pixels import apply_modality_lut  # pylint: disable=g-import-not-at-top
  ds = _read_dataset(path)
  problem = _not_a_chest_radiograph(ds) if chest_only else ""
  if problem:
    raise errors.DataError(f"{path}: {problem}.")
  photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
  if photometric not in ("MONOCHROME1", "MONOCHROME2"):
    raise errors.DataError(f"{path}: photometric interpretation {photometric} "
                           "is not a grayscale radiograph.")
  if int(ds.get("NumberOfFrames", 1) or 1) > 1:
    raise errors.DataError(f"{path}: {ds.NumberOfFrames} frames; expected one.")
  try:
    pixels = ds.pixel_array
  except Exception as e:  # pylint: disable=broad-except
    raise errors.DataError(
        f"{path}: cannot decode pixel data (transfer syntax "
        f"{ds.file_meta.get('TransferSyntaxUID', '?')}): {e}. Compressed "
        "syntaxes need pydicom's plugins (pylibjpeg, pylibjpeg-openjpeg).") from e
  bits = int(ds.get("BitsStored", pixels.itemsize * 8))
  signed = int(ds.get("PixelRepresentation", 0)) == 1
  low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (
      0, 2 ** bits - 1)
  # The stored range through the modality LUT gives the value range.
  values = apply_modality_lut(pixels, ds).astype(np.float64)
  ends = apply_modality_lut(np.array([low, high], pixels.dtype), ds)
  low, high = float(np.min(ends)), float(np.max(ends))
  image = (values - low) / max(high - low, 1e-12)
  if photometric == "MONOCHROME1":  # Minimum is white: invert.
    image = 1.0 - image
  return np.clip(image, 0.0, 1.0).astype(np.float32)


def _read_dataset(path: epath.Path):
  """The parsed DICOM file (its pixel data decoded only when asked for)."""
  import pydicom  # pylint: disable=g-import-not-at-top
  try:
    with path.open("rb") as f:
      return pydicom.dcmread(f)
  except (pydicom.errors.InvalidDicomError, EOFError, OSError, ValueError,
          KeyError, TypeError) as e:
    raise errors.DataError(f"{path}: not a readable DICOM file ({e}).") from e


# DICOM modalities of projection radiographs: CR (computed), DX (digital),
# RG (radiographic imaging, e.g. digitised film).
RADIOGRAPH_MODALITIES = ("CR", "DX", "RG")
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG", "PORT CHEST")


def _not_a_chest_radiograph(ds) -> str:
  """Why a DICOM header says its image is not a chest radiograph
  (Modality, BodyPartExamined), or ''. Empty fields are not held against
  it."""
  modality = str(ds.get("Modality", "") or "").upper()
  body_part = str(ds.get("BodyPartExamined", "") or "").upper()
  if modality and modality not in RADIOGRAPH_MODALITIES:
    return (f"not a radiograph (DICOM Modality {modality}; expected one of "
            f"{', '.join(RADIOGRAPH_MODALITIES)})")
  if body_part and body_part not in CHEST_BODY_PARTS:
    return f"not a chest image (DICOM BodyPartExamined {body_part})"
  return ""


def _read_raster(path: epath.Path) -> np.ndarray:
  try:
    with path.open("rb") as f, Image.open(f) as image:
      image.load()
      array = np.asarray(image)
  except (OSError, SyntaxError, ValueError) as e:
    raise errors.DataError(f"{path}: cannot decode image ({e}).") from e
  if array.ndim == 3:
    array = np.asarray(Image.fromarray(array[..., :3]).convert("L"))
  if array.dtype == np.uint8:
    return array.astype(np.float32) / 255.0
  if array.dtype in (np.uint16, np.int32) and array.max(initial=0) <= 65535:
    return array.astype(np.float32) / 65535.0
  raise errors.DataError(f"{path}: unsupported pixel type {array.dtype}.")


def read_xray(path, chest_only: bool = False) -> np.ndarray:
  """Reads a radiograph as float32 [H, W] in [0, 1], bright = dense.

  DICOM: modality LUT (rescale slope/intercept), normalised by the range of
  BitsStored, MONOCHROME1 inverted; compressed transfer syntaxes decode where
  pydicom's plugins can. PNG: 8-bit / 255, 16-bit / 65535. JPEG: / 255.
  With `chest_only`, a DICOM whose header says it is not a chest radiograph
  (Modality other than CR / DX / RG, another BodyPartExamined) is refused
  (PNG and JPEG files say nothing of the kind).
  """
  path = epath.Path(path)
  if not path.exists():
    raise errors.DataError(f"{path}: no such file.")
  return (_read_dicom(path, chest_only) if _is_dicom(path)
          else _read_raster(path))
