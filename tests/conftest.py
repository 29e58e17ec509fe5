"""Shared fixtures. Every test process sees 2 CPU devices (set before JAX loads)."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# No persistent compilation cache (inherited by the commands tests run): XLA:CPU's
# executable serialiser has crashed busy test workers while writing entries.
# The tests of the cache itself turn it back on.
os.environ.setdefault("JAX_ENABLE_COMPILATION_CACHE", "false")

import pytest  # noqa: E402

from tests import fmnist_fixtures  # noqa: E402

REAL_FMNIST_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="session")
def tiny_fmnist_manual_dir(tmp_path_factory):
  """Generated idx files in the exact Fashion-MNIST layout (learnable classes)."""
  directory = tmp_path_factory.mktemp("fmnist_manual")
  fmnist_fixtures.write_idx_dataset(str(directory), num_train=96, num_test=40)
  return str(directory)


@pytest.fixture(scope="session")
def tiny_fmnist_data_dir(tiny_fmnist_manual_dir, tmp_path_factory):
  """A TFDS data_dir with fashion_mnist_local built from the generated files."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  fmnist_fixtures.build(tiny_fmnist_manual_dir, data_dir)
  return data_dir


CXR_TESTDATA = os.path.join(os.path.dirname(__file__), "testdata")


@pytest.fixture(scope="session")
def tiny_cxr_data_dir(tmp_path_factory):
  """A TFDS data_dir with our chest X-ray builders built from testdata/."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp("tfds_cxr"))
  for name, folder in (("cxr_chexpert", "cxr_chexpert"),
                       ("cxr_mimic", "cxr_mimic"), ("cxr_nih14", "cxr_nih14"),
                       ("cxr_padchest", "cxr_padchest"),
                       ("cxr_padchest_seed", "cxr_padchest"),
                       ("cxr_tuberculosis", "cxr_tuberculosis"),
                       ("cxr_covidx", "cxr_covidx")):
    tfds.builder(name, data_dir=data_dir).download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=os.path.join(CXR_TESTDATA, folder)))
  return data_dir
