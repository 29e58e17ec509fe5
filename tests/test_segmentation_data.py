"""Segmentation data as released: SIIM-ACR's run-length encoding, and the
Montgomery and SIIM builders on generated files in the releases' layouts."""
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from input_pipeline import errors
from input_pipeline import masks
from input_pipeline.datasets import cxr_segmentation  # noqa: F401
from tests import segmentation_fixtures


def test_siim_rle_is_relative_and_column_major():
  """'1 2 3 1' on a 3 x 4 image: a run of 2 after pixel 1, then 3 pixels
  on, a run of 1; pixels counted down the columns."""
  expected = np.array([[0, 0, 1, 0],
                       [1, 0, 0, 0],
                       [1, 0, 0, 0]], np.uint8)
  np.testing.assert_array_equal(masks.decode_siim_rle("1 2 3 1", 3, 4),
                                expected)
  # The last column's last pixel is flat index 11.
  last = masks.decode_siim_rle("11 1", 3, 4)
  assert last[2, 3] == 1 and last.sum() == 1
  assert masks.decode_siim_rle(" -1", 3, 4).sum() == 0
  for bad, message in (("1 2 3", "pairs"), ("5 8", "past the 3x4 image"),
                       ("1 x", "not a list of integers")):
    with pytest.raises(ValueError, match=message):
      masks.decode_siim_rle(bad, 3, 4)


def _build(name, manual_dir, data_dir):
  builder = tfds.builder(name, data_dir=str(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir)))
  return {split: list(builder.as_data_source(split=split))
          for split in builder.info.splits}


def _montgomery(root, count=10, size=(30, 40)):
  """MontgomerySet/CXR_png + ManualMask/{leftMask,rightMask} (0/255 PNGs);
  returns {file name: the lungs' union}."""
  rng = np.random.default_rng(0)
  unions = {}
  for i in range(count):
    name = f"MCUCXR_{i + 1:04d}_{i % 2}.png"
    height, width = size if i else (600, 520)  # One to downscale.
    segmentation_fixtures.write_png(root / "MontgomerySet" / "CXR_png" / name,
         rng.integers(0, 256, (height, width), dtype=np.uint8))
    left = np.zeros((height, width), np.uint8)
    right = np.zeros((height, width), np.uint8)
    left[height // 4:3 * height // 4, width // 8:width // 2] = 255
    right[height // 5:height // 2, width // 2:7 * width // 8] = 255
    segmentation_fixtures.write_png(root / "MontgomerySet" / "ManualMask" / "leftMask" / name, left)
    segmentation_fixtures.write_png(root / "MontgomerySet" / "ManualMask" / "rightMask" / name, right)
    unions[name] = ((left | right) > 0).astype(np.uint8)
  return unions


def test_montgomery_builds_images_with_their_joined_lung_masks(tmp_path):
  unions = _montgomery(tmp_path / "manual")
  splits = _build("cxr_montgomery_lungs", tmp_path / "manual", tmp_path / "tfds")
  assert {k: len(v) for k, v in splits.items()} == {
      "train": 8, "validation": 1, "test": 1}
  for example in sum(splits.values(), []):
    name = os.path.basename(example["source_path"].decode())
    mask = example["mask"][..., 0]
    assert mask.shape == example["image"].shape[:2]
    assert set(np.unique(mask)) <= {0, 1}
    assert example["mask_pixels"].tolist() == [int(mask.sum())]
    if mask.shape == unions[name].shape:
      np.testing.assert_array_equal(mask, unions[name])
    else:  # 600 x 520 -> 591 x 512, nearest neighbour.
      assert mask.shape == (591, 512)
      rows = np.minimum((np.arange(591) + 0.5) * 600 / 591, 599).astype(int)
      cols = np.minimum((np.arange(512) + 0.5) * 520 / 512, 519).astype(int)
      agree = np.mean(mask == unions[name][rows][:, cols])
      assert agree > 0.99


def test_a_missing_or_misshapen_mask_names_the_file(tmp_path):
  _montgomery(tmp_path / "manual", count=4)
  right = tmp_path / "manual/MontgomerySet/ManualMask/rightMask"
  os.remove(right / "MCUCXR_0003_0.png")
  with pytest.raises(errors.DataError,
                     match=r"rightMask/MCUCXR_0003_0\.png is missing"):
    _build("cxr_montgomery_lungs", tmp_path / "manual", tmp_path / "a")
  segmentation_fixtures.write_png(str(right / "MCUCXR_0003_0.png"), np.zeros((10, 10), np.uint8))
  with pytest.raises(errors.DataError,
                     match=r"the masks of .*MCUCXR_0003_0\.png differ in size"):
    _build("cxr_montgomery_lungs", tmp_path / "manual", tmp_path / "b")


def test_siim_builds_dicoms_with_merged_rle_masks(tmp_path):
  """train-rle.csv as released (' EncodedPixels' header, -1 for none,
  several rows for an image with several regions): each image's mask is
  the union of its rows, aligned with its DICOM."""
  root = tmp_path / "manual"
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (10, 24, 20), dtype=np.uint8)
  regions = []
  for i in range(10):
    regions.append([])
    for r in range(i % 3):  # 0, 1 or 2 regions.
      region = np.zeros((24, 20), np.uint8)
      region[2 + 10 * r:6 + 10 * r, 3 + r:15] = 1
      regions[-1].append(region)
  rows = segmentation_fixtures.write_siim(root, images, regions)
  expected = {image_id: (images[i], sum(regions[i], np.zeros((24, 20),
                                                               np.uint8)))
              for i, image_id in enumerate(dict.fromkeys(r[0] for r in rows))}
  splits = _build("cxr_siim_pneumothorax", root, tmp_path / "tfds")
  examples = sum(splits.values(), [])
  assert len(examples) == 10 and len(splits["train"]) == 8
  for example in examples:
    pixels, mask = expected[example["patient_id"].decode()]
    np.testing.assert_array_equal(example["image"][..., 0], pixels)
    np.testing.assert_array_equal(example["mask"][..., 0], mask)
  assert sum(int(e["mask"].any()) for e in examples) == 6

  with open(root / "train-rle.csv", "a") as f:
    f.write(f"{rows[0][0]}, 470 30\n")
  with pytest.raises(errors.DataError,
                     match=r"train-rle\.csv row 15 .*past the 24x20 image"):
    _build("cxr_siim_pneumothorax", root, tmp_path / "bad")
