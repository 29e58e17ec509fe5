"""A hospital's folder of chest X-rays and its labels CSV, as a user brings
them: sub-folders per patient and study, DICOM (16-bit MONOCHROME1 with a
rescale, and pydicom's real JPEG 2000 chest CR), 8- and 16-bit PNG and JPEG,
plus bad rows of every kind import_folder names."""
import os
import shutil

import numpy as np
from PIL import Image
from pydicom.data import get_testdata_file

from tests import make_cxr_testdata
from tests import segmentation_fixtures

FINDINGS = ("Effusion", "Cardiomegaly")
FORMATS = ("png8", "png16", "jpeg", "dicom16")


def _write_dicom16(path, pixels: np.ndarray) -> None:
  """A 12-bit MONOCHROME1 DICOM (stored = 4095 - value, rescaled by 2)."""
  import pydicom  # pylint: disable=g-import-not-at-top
  segmentation_fixtures.write_dicom(path, np.zeros((2, 2), np.uint8))
  ds = pydicom.dcmread(path)
  ds.Rows, ds.Columns = pixels.shape
  ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
  ds.PhotometricInterpretation = "MONOCHROME1"
  ds.RescaleSlope, ds.RescaleIntercept = 2, 0
  ds.BodyPartExamined = "CHEST"
  ds.PixelData = (4095 - (pixels.astype(np.uint16) >> 4)).astype(
      np.uint16).tobytes()
  ds.save_as(path, enforce_file_format=True)


def _write_image(path: str, fmt: str, pixels16: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if fmt == "png16":
    Image.fromarray(pixels16).save(path)
  elif fmt == "dicom16":
    _write_dicom16(path, pixels16)
  else:
    Image.fromarray((pixels16 >> 8).astype(np.uint8)).save(
        path, **({"quality": 95} if fmt == "jpeg" else {}))


def make_folder(root: str, patients: int = 12, images_per_patient: int = 2,
                size: int = 40, seed: int = 0):
  """Writes root/images/site/<patient>/<study>/<file> and returns (images
  dir, [CSV row dicts]) for the good images: patient i's findings are
  Effusion = i % 2, Cardiomegaly = 1 for i % 3 == 0, -1 for i % 3 == 1,
  blank otherwise; its images darken with Effusion (learnable)."""
  images = os.path.join(root, "images")
  rows = []
  for i in range(patients):
    effusion = i % 2
    for j in range(images_per_patient):
      fmt = FORMATS[(i + j) % len(FORMATS)]
      suffix = {"png8": ".png", "png16": ".png", "jpeg": ".jpg",
                "dicom16": ".dcm"}[fmt]
      relative = os.path.join(f"site{i % 2}", f"p{i:03d}", f"s{j}",
                              f"img{suffix}")
      pixels = make_cxr_testdata.radiograph(size, size + 8, seed + 10 * i + j,
                                            np.uint16)
      if effusion:
        pixels = (pixels * 0.6).astype(np.uint16)
      _write_image(os.path.join(images, relative), fmt, pixels)
      rows.append({"path": relative, "patient_id": f"P{i:03d}",
                   "study_id": f"P{i:03d}-S{j}", "view": "PA",
                   "sex": "F" if i % 2 else "M", "age": str(40 + i),
                   "Effusion": str(effusion),
                   "Cardiomegaly": {0: "1", 1: "-1", 2: ""}[i % 3]})
  return images, rows


def add_real_dicom(images: str, rows: list) -> None:
  """pydicom's real chest CR (JPEG 2000 lossless, MONOCHROME1, 15-bit)."""
  relative = os.path.join("site0", "real", "RG1_J2KR.dcm")
  os.makedirs(os.path.join(images, "site0", "real"))
  shutil.copy(get_testdata_file("RG1_J2KR.dcm"), os.path.join(images, relative))
  rows.append({"path": relative, "patient_id": "REAL1", "study_id": "",
               "view": "PA", "sex": "", "age": "", "Effusion": "0",
               "Cardiomegaly": "1"})


def add_bad_rows(images: str, rows: list) -> dict:
  """One bad row of each kind; returns {problem kind: path}."""
  def copy_row(path, patient, **changes):
    row = dict(rows[0], path=path, patient_id=patient, study_id="")
    row.update(changes)
    rows.append(row)

  os.makedirs(os.path.join(images, "bad"))
  png = os.path.join(images, "bad", "truncated.png")
  Image.fromarray(np.full((40, 48), 128, np.uint8)).save(png)
  with open(png, "r+b") as f:
    f.truncate(60)
  with open(os.path.join(images, "bad", "garbage.dcm"), "wb") as f:
    f.write(b"not a dicom" * 20)
  copy_row("bad/missing.png", "P900")
  copy_row("bad/truncated.png", "P901")
  copy_row("bad/garbage.dcm", "P902")
  copy_row(rows[1]["path"], rows[1]["patient_id"])  # Listed twice.
  copy_row(rows[2]["path"].replace("img", "other"), "", )  # No patient id.
  shutil.copy(os.path.join(images, rows[2]["path"]),
              os.path.join(images, rows[-1]["path"]))
  copy_row(rows[3]["path"].replace("img", "two"), "P903", Effusion="2")
  shutil.copy(os.path.join(images, rows[3]["path"]),
              os.path.join(images, rows[-1]["path"]))
  return {"missing file": "bad/missing.png",
          "unreadable image": "bad/truncated.png",
          "duplicate path": rows[1]["path"],
          "missing patient id": rows[-2]["path"],
          "label value other than 1 / 0 / -1 / blank": rows[-1]["path"]}


def write_csv(path: str, rows: list, columns) -> None:
  import csv  # pylint: disable=g-import-not-at-top
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(columns),
                            extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
