"""Fashion-MNIST builder and the index-based tf.data pipeline."""
import gzip
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from input_pipeline import errors
from input_pipeline import pipeline
from input_pipeline.datasets import fashion_mnist_local
from tests import conftest
from tests import fmnist_fixtures
from tests import tfds_testing

TESTDATA = os.path.join(os.path.dirname(__file__), "testdata")


class FashionMnistLocalTest(tfds_testing.TfrecordFiles,
                            tfds.testing.DatasetBuilderTestCase):
  """TFDS's own builder test on idx files in the real layout (testdata/);
  the ArrayRecord files the trainer reads are checked below."""
  DATASET_CLASS = fashion_mnist_local.FashionMnistLocal
  SPLITS = {"train": 10, "test": 5}
  EXAMPLE_DIR = os.path.join(TESTDATA, "fashion_mnist_local")


def test_examples_match_the_idx_files(tiny_fmnist_manual_dir,
                                      tiny_fmnist_data_dir):
  with gzip.open(os.path.join(tiny_fmnist_manual_dir,
                              "train-images-idx3-ubyte.gz")) as f:
    images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
  builder = tfds.builder("fashion_mnist_local", data_dir=tiny_fmnist_data_dir)
  assert builder.info.file_format.value == "array_record"
  source = builder.as_data_source("train")
  assert len(source) == len(images)
  for record in source:
    np.testing.assert_array_equal(record["image"][..., 0], images[record["id"]])
    assert record["label"] == record["id"] % 10


def test_truncated_idx_file_is_named(tmp_path):
  fmnist_fixtures.write_idx_dataset(str(tmp_path), num_train=10, num_test=5)
  path = tmp_path / "train-images-idx3-ubyte.gz"
  with gzip.open(path) as f:
    data = f.read()
  with gzip.open(path, "wb") as f:
    f.write(data[:-100])
  with pytest.raises(errors.DataError, match="train-images-idx3-ubyte.gz.*truncated"):
    fashion_mnist_local.read_idx(str(path), 2051)


def test_missing_manual_files_say_what_to_do(tmp_path, monkeypatch):
  monkeypatch.setattr(fashion_mnist_local, "DEBIAN_DIR", str(tmp_path / "none"))
  (tmp_path / "manual").mkdir()
  builder = tfds.builder("fashion_mnist_local", data_dir=str(tmp_path / "tfds"))
  with pytest.raises(errors.DataError) as e:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(tmp_path / "manual")))
  message = str(e.value)
  assert "missing train-images-idx3-ubyte.gz" in message
  assert "apt-get install dataset-fashion-mnist" in message
  assert not os.path.exists(tmp_path / "tfds" / "fashion_mnist_local" / "1.0.0")


@pytest.mark.skipif(not os.path.exists(conftest.REAL_FMNIST_DIR),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_idx_files():
  images = fashion_mnist_local.read_idx(
      os.path.join(conftest.REAL_FMNIST_DIR, "t10k-images-idx3-ubyte.gz"), 2051)
  labels = fashion_mnist_local.read_idx(
      os.path.join(conftest.REAL_FMNIST_DIR, "t10k-labels-idx1-ubyte.gz"), 2049)
  assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
  np.testing.assert_array_equal(np.bincount(labels), [1000] * 10)
  assert 50 < images.mean() < 100  # Real photos on black, not noise.


def test_not_built_dataset_says_how_to_build(tmp_path):
  with pytest.raises(pipeline.DatasetNotFoundError) as e:
    pipeline.load_builder("fashion_mnist_local", str(tmp_path))
  message = str(e.value)
  assert "tfds build --imports=input_pipeline.datasets fashion_mnist_local" in message
  assert str(tmp_path) in message


def test_train_positions_are_deterministic_disjoint_and_resumable():
  n, batch = 10, 4
  full = [next(it) for it in [pipeline.train_positions(n, 7, batch, 0, 0, 1)]
          for _ in range(1)]
  stream = pipeline.train_positions(n, 7, batch, 0, 0, 1)
  steps = [next(stream) for _ in range(6)]
  # Each epoch is a permutation of all examples.
  indices = np.concatenate([i for _, i in steps])
  assert sorted(indices[:10]) == list(range(10))
  assert sorted(indices[10:20]) == list(range(10))
  assert not np.array_equal(indices[:10], indices[10:20])
  np.testing.assert_array_equal(full[0][1], steps[0][1])
  # Resuming at step 3 reads what the uninterrupted stream read.
  resumed = pipeline.train_positions(n, 7, batch, 3, 0, 1)
  for step in range(3, 6):
    np.testing.assert_array_equal(next(resumed)[1], steps[step][1])
  # Two hosts read disjoint halves of the same global batch.
  host0 = pipeline.train_positions(n, 7, batch, 0, 0, 2)
  host1 = pipeline.train_positions(n, 7, batch, 0, 1, 2)
  for step in range(6):
    both = np.concatenate([next(host0)[1], next(host1)[1]])
    np.testing.assert_array_equal(both, steps[step][1])


def test_eval_positions_cover_each_example_once():
  for hosts in (1, 2):
    seen = []
    for h in range(hosts):
      for positions, _ in pipeline.eval_positions(11, 4, h, hosts):
        seen.extend(p for p in positions if p < 11)
    assert sorted(seen) == list(range(11))


def test_pipeline_batches_classes_and_determinism(tiny_fmnist_data_dir):
  config = fmnist_fixtures.tiny_config(tiny_fmnist_data_dir)
  data = pipeline.Pipeline(config.data, num_local_devices=2)
  assert data.num_classes == 5 and len(data.train) == 50  # 96 -> classes 0-4.
  batch = next(data.train_batches(config, 0))
  assert batch["image"].shape == (2, 4, 32, 32, 1)
  assert batch["labels"].shape == (2, 4, 5)
  assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
  np.testing.assert_array_equal(batch["labels"].sum(-1), 1.0)
  again = next(data.train_batches(config, 0))
  np.testing.assert_array_equal(batch["image"], again["image"])
  later = next(data.train_batches(config, 1))
  assert not np.array_equal(batch["image"], later["image"])
  eval_batches = list(data.ordered_batches(config))
  masks = np.concatenate([b["mask"].ravel() for b in eval_batches])
  assert masks.sum() == len(data.eval) == 20 and len(masks) == 24
  labels = np.concatenate([b["labels"].reshape(-1, 5) for b in eval_batches])
  np.testing.assert_array_equal(np.bincount(labels[masks > 0].argmax(-1)),
                                [4] * 5)


def test_class_outside_dataset_is_a_config_error(tiny_fmnist_data_dir):
  config = fmnist_fixtures.tiny_config(tiny_fmnist_data_dir)
  config.data.classes = (3, 12)
  with pytest.raises(errors.ConfigError, match=r"config.data.classes has \[12\]"):
    pipeline.Pipeline(config.data)


def test_input_pipeline_never_imports_big_transfer_med():
  """The packages depend one way: big_transfer_med -> input_pipeline."""
  import ast  # pylint: disable=g-import-not-at-top
  import glob  # pylint: disable=g-import-not-at-top
  root = os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "input_pipeline")
  files = glob.glob(os.path.join(root, "**", "*.py"), recursive=True)
  assert len(files) > 10
  offending = []
  for path in files:
    with open(path) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import)
               else [node.module or ""] if isinstance(node, ast.ImportFrom)
               else [])
      offending += [f"{path}: {n}" for n in names
                    if n.split(".")[0] == "big_transfer_med"]
  assert not offending


def test_class_balanced_sampling_evens_out_the_classes():
  """The seed's WeightedRandomSampler (weights 1 / class count) as a
  position-seeded draw: a 9:1 imbalance becomes about 1:1, every index
  stays in range, and a resumed run draws what the uninterrupted one did."""
  classes = np.array([0] * 900 + [1] * 100)
  positions = np.arange(4000)
  indices = pipeline.class_balanced_indices(positions, classes, seed=3)
  assert indices.min() >= 0 and indices.max() < len(classes)
  share = np.mean(classes[indices] == 1)
  assert 0.46 < share < 0.54, share
  assert len(np.unique(indices[classes[indices] == 1])) > 95  # All visited.
  np.testing.assert_array_equal(
      pipeline.class_balanced_indices(positions[1500:1600], classes, seed=3),
      indices[1500:1600])
