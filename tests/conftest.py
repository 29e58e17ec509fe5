"""Shared fixtures. Every test process sees 2 CPU devices (set before JAX loads)."""
import gc
import os
import sys

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
def _worker_compilation_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture
def compilation_cache_for_commands(_worker_compilation_cache, monkeypatch):
  """The commands this test starts share a persistent compilation cache
  (one per test worker; the trainer locks it), as a user's repeated runs
  would: a resumed or repeated run loads what the first one compiled. The
  worker itself keeps compiling in memory only (see above)."""
  monkeypatch.setenv("JAX_ENABLE_COMPILATION_CACHE", "true")
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", _worker_compilation_cache)


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
  """After each test file, JAX's compiled programs and traces are freed: a
  worker runs dozens of files, and kept, they grow it by GiBs (over 8 GiB
  per worker measured) while other tests start processes beside it."""
  yield
  if "jax" in sys.modules:
    sys.modules["jax"].clear_caches()
  gc.collect()


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


def _build_segmentation(name: str, manual_dir, data_dir) -> None:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import input_pipeline.datasets  # noqa: F401  pylint: disable=g-import-not-at-top
  tfds.builder(name, data_dir=str(data_dir)).download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))


@pytest.fixture(scope="session")
def montgomery_data_dir(tmp_path_factory):
  """cxr_montgomery_lungs built from the release's layout: 40 generated
  radiographs (dark lungs) with the real lung masks of the torchxrayvision
  wheel, 64 px (split 32 / 4 / 4). Returns (data_dir, manual_dir)."""
  from tests import segmentation_fixtures  # pylint: disable=g-import-not-at-top
  manual = tmp_path_factory.mktemp("montgomery_manual")
  data_dir = tmp_path_factory.mktemp("tfds_montgomery")
  segmentation_fixtures.write_montgomery(
      manual, segmentation_fixtures.real_lung_masks(40, size=64)[..., 0])
  _build_segmentation("cxr_montgomery_lungs", manual, data_dir)
  return str(data_dir), str(manual)


@pytest.fixture(scope="session")
def siim_data_dir(tmp_path_factory):
  """cxr_siim_pneumothorax built from the release's layout: 20 generated
  32 px DICOMs, every other one with a dark region (one or two RLE rows)
  and train-rle.csv (split 16 / 2 / 2). Returns the data_dir."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tests import segmentation_fixtures  # pylint: disable=g-import-not-at-top
  manual = tmp_path_factory.mktemp("siim_manual")
  data_dir = tmp_path_factory.mktemp("tfds_siim")
  rng = np.random.default_rng(0)
  images, regions = [], []
  for i in range(20):
    parts = []
    for r in range(i % 2 + (i % 4 == 1)):  # 0, 2, 0, 1 regions, ...
      part = np.zeros((32, 32), bool)
      top, left = rng.integers(2, 20, size=2)
      part[top:top + 10, left:left + 8] = True
      parts.append(part.astype(np.uint8))
    images.append(segmentation_fixtures.radiograph_of(
        np.any(parts, axis=0) if parts else np.zeros((32, 32), bool), rng))
    regions.append(parts)
  segmentation_fixtures.write_siim(manual, np.stack(images), regions)
  _build_segmentation("cxr_siim_pneumothorax", manual, data_dir)
  return str(data_dir)


@pytest.fixture
def preempt_after_step_1(monkeypatch):
  """run(fn): calls fn() (a train_and_evaluate) as if preempted after step
  1: it saves that step and stops. Resuming with the same config then
  needs no second compile of the train step, as a shorter run would."""
  from big_transfer_med import preemption  # pylint: disable=g-import-not-at-top

  def run(fn):
    with monkeypatch.context() as patched:
      patched.setattr(preemption.Notice, "reached",
                      lambda self, step: step == 1)
      with pytest.raises(preemption.Preempted):
        fn()
  return run
