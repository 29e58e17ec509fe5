"""Writes the tiny chest X-ray test folders in tests/testdata (real layouts and
headers, generated images). Run from the repo root to regenerate:
  python -m tests.make_cxr_testdata
"""
import os

import numpy as np
from PIL import Image

TESTDATA = os.path.join(os.path.dirname(__file__), "testdata")
CHEXPERT_HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,"
    "Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,"
    "Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,"
    "Support Devices")
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,"
              "Patient Gender,View Position,OriginalImage[Width,Height],"
              "OriginalImagePixelSpacing[x,y]")


def radiograph(height, width, seed, dtype=np.uint8):
  """A smooth synthetic 'chest': bright border (bone) and darker lungs."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width] / np.array([[height], [width]])[..., None]
  lungs = np.exp(-((x - 0.3) ** 2 + (y - 0.5) ** 2) * 20) + np.exp(
      -((x - 0.7) ** 2 + (y - 0.5) ** 2) * 20)
  image = 0.9 - 0.6 * lungs + 0.05 * rng.standard_normal((height, width))
  top = np.iinfo(dtype).max
  return np.clip(image * top, 0, top).astype(dtype)


def write(path, array, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, **kwargs)


def make_chexpert(root):
  release = os.path.join(root, "CheXpert-v1.0-small")
  train = [
      "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,0.0,,,,1.0",
      "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg,Female,87,Frontal,AP,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,",
      "CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg,Female,83,Frontal,AP,,,,1.0,,,-1.0,,,,,,1.0,",
      "CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.jpg,Female,83,Lateral,,,,,1.0,,,,,,,,,1.0,",
      "CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg,Male,41,Frontal,PA,,,,,,1.0,,,,0.0,,,,",
      # Listed but never shipped: skipped and counted by the builder.
      "CheXpert-v1.0-small/train/patient00004/study1/view1_frontal.jpg,Male,20,Frontal,PA,1.0,,,,,,,,,,,,,",
  ]
  valid = [
      "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg,Male,73,Frontal,AP,0.0,1.0,1.0,1.0,0.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0",
      "CheXpert-v1.0-small/valid/patient64542/study1/view2_lateral.jpg,Male,70,Lateral,,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,1.0",
  ]
  os.makedirs(release, exist_ok=True)
  for name, rows in (("train.csv", train), ("valid.csv", valid)):
    with open(os.path.join(release, name), "w") as f:
      f.write("\n".join([CHEXPERT_HEADER] + rows) + "\n")
  for i, row in enumerate(train[:-1] + valid):
    path = row.split(",")[0]
    # One large image checks the default config's downscaling.
    shape = (560, 530) if i == 0 else (40, 32)
    write(os.path.join(root, path), radiograph(*shape, seed=i), quality=90)


def make_nih(root):
  os.makedirs(root, exist_ok=True)
  rows = [
      ("00000001_000.png", "Cardiomegaly", 0, 1, 57, "M", "PA"),
      ("00000001_001.png", "Cardiomegaly|Emphysema", 1, 1, 58, "M", "PA"),
      ("00000002_000.png", "No Finding", 0, 2, 81, "M", "PA"),
      ("00000003_000.png", "Hernia", 0, 3, 81, "F", "PA"),
      ("00000003_001.png", "Hernia|Pleural_Thickening", 1, 3, 74, "F", "AP"),
      ("00000004_000.png", "Mass|Nodule", 0, 4, 82, "M", "AP"),
      ("00000005_000.png", "No Finding", 0, 5, 69, "F", "PA"),
      ("00000006_000.png", "Effusion|Infiltration", 0, 6, 60, "F", "PA"),
  ]
  with open(os.path.join(root, "Data_Entry_2017_v2020.csv"), "w") as f:
    f.write(NIH_HEADER + "\n")
    for r in rows:
      f.write(",".join(map(str, r)) + ",2682,2749,0.143,0.143\n")
  test = {"00000003_000.png", "00000003_001.png"}
  with open(os.path.join(root, "test_list.txt"), "w") as f:
    f.write("\n".join(sorted(test)) + "\n")
  with open(os.path.join(root, "train_val_list.txt"), "w") as f:
    f.write("\n".join(sorted(r[0] for r in rows if r[0] not in test)) + "\n")
  for i, r in enumerate(rows):
    folder = "images_001" if i < 4 else "images_002"
    write(os.path.join(root, folder, "images", r[0]), radiograph(36, 36, i))


if __name__ == "__main__":
  for name, make in (("cxr_chexpert", make_chexpert), ("cxr_nih14", make_nih)):
    make(os.path.join(TESTDATA, name))
