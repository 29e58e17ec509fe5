"""X-ray image IO on the real chest radiograph RG1 (pydicom-data) and rasters."""
import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from input_pipeline import errors
from input_pipeline import xray_io


@pytest.fixture(scope="module")
def rg1():
  return xray_io.read_xray(get_testdata_file("RG1_UNCR.dcm"))


def test_rg1_monochrome1_is_inverted_so_bone_is_bright(rg1):
  assert rg1.shape == (1955, 1841) and rg1.dtype == np.float32
  assert 0.0 <= rg1.min() and rg1.max() <= 1.0
  h, w = rg1.shape
  band = slice(int(0.35 * h), int(0.6 * h))
  mediastinum = rg1[band, int(0.45 * w):int(0.55 * w)].mean()
  lungs = np.concatenate([rg1[band, int(0.2 * w):int(0.32 * w)].ravel(),
                          rg1[band, int(0.68 * w):int(0.8 * w)].ravel()]).mean()
  assert mediastinum > lungs + 0.1  # Spine and heart brighter than air.
  # 15 bits stored: raw 874..26479 of 32767, inverted.
  np.testing.assert_allclose(rg1.max(), 1 - 874 / 32767, rtol=1e-6)


def test_rg1_jpeg2000_lossless_and_lossy(rg1):
  lossless = xray_io.read_xray(get_testdata_file("RG1_J2KR.dcm"))
  np.testing.assert_array_equal(lossless, rg1)
  lossy = xray_io.read_xray(get_testdata_file("RG1_J2KI.dcm"))
  assert np.abs(lossy - rg1).mean() < 0.01


def test_png_8_and_16_bit_and_jpeg(tmp_path, rg1):
  as16 = np.round(rg1 * 65535).astype(np.uint16)
  Image.fromarray(as16).save(tmp_path / "x16.png")
  np.testing.assert_allclose(xray_io.read_xray(tmp_path / "x16.png"),
                             as16 / 65535.0, atol=1e-7)
  as8 = np.round(rg1 * 255).astype(np.uint8)
  Image.fromarray(as8).save(tmp_path / "x8.png")
  np.testing.assert_allclose(xray_io.read_xray(tmp_path / "x8.png"),
                             as8 / 255.0, atol=1e-7)
  Image.fromarray(as8).save(tmp_path / "x.jpg", quality=95)
  assert np.abs(xray_io.read_xray(tmp_path / "x.jpg") - as8 / 255.0).mean() < 0.01


def test_bad_files_are_named(tmp_path):
  with pytest.raises(errors.DataError, match="nothing.png: no such file"):
    xray_io.read_xray(tmp_path / "nothing.png")
  (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
  with pytest.raises(errors.DataError, match="broken.png: cannot decode"):
    xray_io.read_xray(tmp_path / "broken.png")
