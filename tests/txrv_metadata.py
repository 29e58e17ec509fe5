"""Real dataset metadata from the torchxrayvision wheel (PyPI), read at test time.

The wheel ships the real CheXpert train.csv, NIH Data_Entry_2017_v2020.csv and
PadChest CSV (no images). It is downloaded once into .cache/ (never committed).
"""
import csv
import gzip
import io
import os
import zipfile

from tests import pypi_wheels

WHEEL_VERSION = "1.5.7"
FILES = {
    "chexpert": "torchxrayvision/data/chexpert_train.csv.gz",
    "nih": "torchxrayvision/data/Data_Entry_2017_v2020.csv.gz",
    "padchest": "torchxrayvision/data/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz",
}


def wheel_path() -> str:
  """Path of the downloaded wheel; downloads it if needed, else skips."""
  return pypi_wheels.path("torchxrayvision", WHEEL_VERSION)


def read_text(which: str) -> str:
  with zipfile.ZipFile(wheel_path()) as wheel:
    return gzip.decompress(wheel.read(FILES[which])).decode("utf-8")


def write_csv(which: str, directory: str, name: str) -> str:
  """Writes the real CSV as `name` in `directory` (as the publisher ships it)."""
  path = os.path.join(directory, name)
  with open(path, "w", newline="") as f:
    f.write(read_text(which))
  return path


def rows(which: str):
  return list(csv.DictReader(io.StringIO(read_text(which))))
