"""Preprocessing numerics: integer inputs, the folded flip, the affine map."""
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from big_transfer_med import config_lib
from input_pipeline import preprocessing


def _config(augment, resolution=24):
  c = ml_collections.ConfigDict(config_lib.base_config().data.to_dict())
  c.augment, c.resolution, c.channels, c.crop_to_square = (
      augment, resolution, 3, True)
  return c


def _radiograph(dtype, shape=(50, 41, 1)):
  top = np.iinfo(dtype).max
  return np.random.default_rng(0).integers(0, top, shape, endpoint=True,
                                           dtype=dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("augment", ["none", "cxr", "crop_flip"])
def test_integer_images_match_their_unit_range_floats(dtype, augment):
  # Resizing runs on the stored integers; the result must equal resizing the
  # [0, 1] floats the image stands for.
  image = _radiograph(dtype)
  rng = tf.constant([3, 4], tf.int64)
  out = preprocessing.preprocess(tf.constant(image), _config(augment), True,
                                 rng)
  ref = preprocessing.preprocess(
      tf.constant(image.astype(np.float32) / np.iinfo(dtype).max),
      _config(augment), True, rng)
  assert out.dtype == tf.float32 and out.shape == (24, 24, 3)
  np.testing.assert_allclose(out, ref, atol=2e-5)
  assert -1.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 1.0


def test_flip_folded_into_the_affine_equals_flipping_after_it():
  image = tf.constant(_radiograph(np.uint8, (24, 24, 1)), tf.float32)
  rng = tf.constant([7, 8], tf.int64)
  plain = preprocessing.random_affine(image, rng, 0.25, 0.1, 45.0, flip=False)
  folded = preprocessing.random_affine(image, rng, 0.25, 0.1, 45.0, flip=True)
  np.testing.assert_allclose(folded, tf.image.flip_left_right(plain),
                             atol=1e-3)
  assert float(tf.reduce_max(tf.abs(plain - folded))) > 1.0  # Not symmetric.


def test_affine_identity_and_shift():
  image = tf.constant(_radiograph(np.uint8, (20, 16, 1)), tf.float32)
  rng = tf.constant([1, 2], tf.int64)
  same = preprocessing.random_affine(image, rng, 0.0, 0.0, 0.0)
  np.testing.assert_allclose(same, image, atol=1e-3)
  # A shift-only draw moves the content by params * shift * size pixels.
  params = tf.random.stateless_uniform([4], rng, -1.0, 1.0).numpy()
  shift = 0.25
  moved = preprocessing.random_affine(image, rng, shift, 0.0, 0.0).numpy()
  dy, dx = params[2] * shift * 20, params[3] * shift * 16
  y, x = 10, 8  # A pixel whose source stays inside the image.
  src_y, src_x = y - dy, x - dx
  y0, x0 = int(np.floor(src_y)), int(np.floor(src_x))
  fy, fx = src_y - y0, src_x - x0
  img = image.numpy()[..., 0]
  expected = ((1 - fy) * (1 - fx) * img[y0, x0] + (1 - fy) * fx * img[y0, x0 + 1]
              + fy * (1 - fx) * img[y0 + 1, x0] + fy * fx * img[y0 + 1, x0 + 1])
  np.testing.assert_allclose(moved[y, x, 0], expected, rtol=1e-3, atol=1e-2)
