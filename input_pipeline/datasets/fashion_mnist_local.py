"""Fashion-MNIST read from the original idx files in a manual directory.

The embedded real dataset of this repo: Debian's `dataset-fashion-mnist`
package installs the four idx files in /usr/share/datasets/fashion-mnist,
which is used when no --manual_dir is given.
"""
import gzip

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from input_pipeline import errors

from input_pipeline.datasets import base

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ("t-shirt_top", "trouser", "pullover", "dress", "coat",
               "sandal", "shirt", "sneaker", "bag", "ankle_boot")
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049


def _alternatives(stem):
  return f"{stem}.gz|{stem}"


def read_idx(path: str, magic: int) -> np.ndarray:
  """Reads an idx file (optionally gzipped); checks magic number and size."""
  try:
    with epath.Path(path).open("rb") as f:
      data = gzip.GzipFile(fileobj=f).read() if path.endswith(".gz") else (
          f.read())
  except (OSError, EOFError) as e:
    raise errors.DataError(f"{path}: cannot read ({e}); download it again.") from e
  if len(data) < 8 or int.from_bytes(data[:4], "big") != magic:
    raise errors.DataError(f"{path}: not an idx file with magic number {magic}; "
                     "is it the right file, fully downloaded?")
  ndim = magic & 0xFF
  dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
  offset = 4 + 4 * ndim
  expected = offset + int(np.prod(dims))
  if len(data) != expected:
    raise errors.DataError(f"{path}: {len(data)} bytes, expected {expected} for "
                     f"shape {dims}; the file is truncated or corrupt.")
  return np.frombuffer(data, np.uint8, offset=offset).reshape(dims)


class FashionMnistLocal(base.ArrayRecordBuilderMixin,
                        tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST (Zalando), 28x28 grayscale, 10 classes, from idx files."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Put the four Fashion-MNIST idx files (gzipped or not) in one directory:
    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz
  On Debian/Ubuntu `apt-get install dataset-fashion-mnist` puts them in
  {DEBIAN_DIR} (used by default); otherwise download them from
  https://github.com/zalandoresearch/fashion-mnist and pass the directory:
    tfds build --imports=input_pipeline.datasets fashion_mnist_local --manual_dir=DIR
  """

  def _info(self):
    return self.dataset_info_from_configs(
        description="Fashion-MNIST from the original idx files.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(28, 28, 1)),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            "id": np.int64,
        }),
        supervised_keys=("image", "label"),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    )

  def _split_generators(self, dl_manager):
    required = [_alternatives(f) for pair in _FILES.values() for f in pair]
    directory = base.find_manual_dir(dl_manager, required,
                                     self.MANUAL_DOWNLOAD_INSTRUCTIONS,
                                     fallback=DEBIAN_DIR)
    return {
        split: self._generate_examples(
            base.first_existing(directory, _alternatives(images)),
            base.first_existing(directory, _alternatives(labels)))
        for split, (images, labels) in _FILES.items()
    }

  def _generate_examples(self, images_path, labels_path):
    images = read_idx(images_path, _IMAGES_MAGIC)
    labels = read_idx(labels_path, _LABELS_MAGIC)
    if len(images) != len(labels):
      raise errors.DataError(f"{images_path} has {len(images)} images but "
                       f"{labels_path} has {len(labels)} labels.")
    if labels.max(initial=0) >= len(CLASS_NAMES):
      raise errors.DataError(f"{labels_path}: label {labels.max()} out of range 0-9.")
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image[..., None], "label": int(label), "id": i}
