"""The 16 real paediatric chest radiographs of Kermany et al. 2018 ("Chest
X-Ray Images (Pneumonia)", CC BY 4.0) that ship in the PyPI wheel
pneumonia-model-package 0.3.0 (its copy of the dataset's val/ split: 8
NORMAL2-IM-*.jpeg, 8 person*_bacteria_*.jpeg), laid out as the released
dataset: chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg."""
import os
import zipfile

from tests import pypi_wheels

PACKAGE, VERSION = "pneumonia-model-package", "0.3.0"
PREFIX = "pneumonia_model_package/datasets/pneumonia-data/val/"
# How many of each class go to each split (8 normal + 8 pneumonia).
SPLITS = (("train", 4), ("val", 2), ("test", 2))


def jpegs():
  """{file name: JPEG bytes} of the 16 radiographs, in name order."""
  with zipfile.ZipFile(pypi_wheels.path(PACKAGE, VERSION)) as wheel:
    return {name[len(PREFIX):]: wheel.read(name)
            for name in sorted(wheel.namelist())
            if name.startswith(PREFIX) and name.endswith(".jpeg")}


def write_layout(root: str) -> dict:
  """Writes root/chest_xray/<split>/<CLASS>/<name>; returns {split: [paths]}."""
  files = jpegs()
  by_class = {"NORMAL": [n for n in files if n.startswith("NORMAL")],
              "PNEUMONIA": [n for n in files if n.startswith("person")]}
  assert all(len(v) == 8 for v in by_class.values()), by_class
  written = {}
  for folder, names in by_class.items():
    start = 0
    for split, count in SPLITS:
      directory = os.path.join(root, "chest_xray", split, folder)
      os.makedirs(directory, exist_ok=True)
      for name in names[start:start + count]:
        with open(os.path.join(directory, name), "wb") as f:
          f.write(files[name])
        written.setdefault(split, []).append(os.path.join(directory, name))
      start += count
  return written
