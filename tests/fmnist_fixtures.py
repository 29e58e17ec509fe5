"""Tiny Fashion-MNIST stand-ins in the real idx(.gz) format, and a tiny config."""
import gzip
import os

import numpy as np
import tensorflow_datasets as tfds

from big_transfer_med import config_lib
import input_pipeline.datasets  # noqa: F401  (registers the builder)


def idx_bytes(array: np.ndarray) -> bytes:
  """Serialises uint8 `array` in idx format (magic 0x0800 | ndim)."""
  header = (0x0800 | array.ndim).to_bytes(4, "big")
  header += b"".join(d.to_bytes(4, "big") for d in array.shape)
  return header + array.astype(np.uint8).tobytes()


def make_images(labels: np.ndarray, seed: int) -> np.ndarray:
  """Noise plus a bright 7x7 square whose position encodes the class."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 60, size=(len(labels), 28, 28), dtype=np.uint8)
  for image, label in zip(images, labels):
    row, col = divmod(int(label), 4)
    image[2 + 8 * row:9 + 8 * row, 2 + 6 * col:9 + 6 * col] = 230
  return images


def write_idx_dataset(directory: str, num_train: int, num_test: int) -> None:
  for prefix, n, seed in (("train", num_train, 0), ("t10k", num_test, 1)):
    labels = np.arange(n, dtype=np.uint8) % 10
    for kind, array in (("images-idx3", make_images(labels, seed)),
                        ("labels-idx1", labels)):
      with gzip.open(os.path.join(directory, f"{prefix}-{kind}-ubyte.gz"),
                     "wb") as f:
        f.write(idx_bytes(array))


def build(manual_dir: str, data_dir: str) -> None:
  builder = tfds.builder("fashion_mnist_local", data_dir=data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))


def tiny_config(data_dir: str, **overrides):
  """R26x1 at 32 px on the tiny data: a few seconds per step on the CPU."""
  c = config_lib.base_config()
  c.model.name = "R26x1"
  c.data.name = "fashion_mnist_local"
  c.data.data_dir = data_dir
  c.data.classes = (0, 1, 2, 3, 4)
  c.data.resolution = 32
  c.data.channels = 1
  c.batch_size = 8
  c.total_steps = 6
  c.schedule.decay_type = "constant"
  c.schedule.warmup_steps = 0
  c.optim.base_lr = 0.1
  c.log_every_steps = 1
  c.evals.val.every_steps = 0
  c.checkpoint.every_steps = 2
  return override(c, **overrides)


def override(config, **values):
  """`config` with values['a.b'] set at config.a.b (like --config.a.b)."""
  for key, value in values.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config
