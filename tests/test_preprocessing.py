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


def test_reflect_101_fill_matches_opencv_border_reflect_101():
  """The seed's ShiftScaleRotate border (albumentations' default,
  cv2.BORDER_REFLECT_101): the transform our op applies is read back from
  coordinate images (bilinear sampling of a linear ramp is exact), then
  OpenCV's warpAffine with that map and BORDER_REFLECT_101 is the reference."""
  cv2 = pytest.importorskip("cv2")
  h, w = 40, 32
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  smooth = (0.5 + 0.25 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + xx / (4 * w)
            ).astype(np.float32)
  rng = tf.constant([5, 9], tf.int64)
  affine = lambda image, fill: preprocessing.random_affine(  # noqa: E731
      tf.constant(image[..., None]), rng, 0.25, 0.1, 45.0, fill=fill
  ).numpy()[..., 0]
  # Where the zero-fill output samples inside the image, the ramps give the
  # input coordinates: fit the affine map output (x, y) -> input (x, y).
  src_x, src_y = affine(xx + 1.0, "zeros") - 1.0, affine(yy + 1.0, "zeros") - 1.0
  inside = ((affine(np.ones_like(xx), "zeros") > 0.999)
            & (src_x > 0) & (src_y > 0))
  design = np.stack([xx[inside], yy[inside], np.ones(inside.sum())], 1)
  m_x = np.linalg.lstsq(design, src_x[inside], rcond=None)[0]
  m_y = np.linalg.lstsq(design, src_y[inside], rcond=None)[0]
  reference = cv2.warpAffine(
      smooth, np.stack([m_x, m_y]).astype(np.float64), (w, h),
      flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
      borderMode=cv2.BORDER_REFLECT_101)
  ours = affine(smooth, "reflect_101")
  outside = affine(np.ones_like(xx), "zeros") < 1e-3
  assert outside.mean() > 0.05  # The draw reaches well beyond the borders.
  # OpenCV quantises sampling positions to 1/32 pixel: a small tolerance.
  np.testing.assert_allclose(ours, reference, atol=3e-3)
  assert np.abs(ours[outside]).min() > 0.1  # Mirrored content, not black.


def test_normalizations_follow_the_checkpoint():
  """[-1, 1] (BiT, the seed's CXR models) and ImageNet mean/std per RGB
  channel (the seed's ImageNet models), from the same grey image."""
  image = tf.fill([8, 8, 1], tf.constant(51, tf.uint8))  # 0.2 of white.
  c = _config("none", resolution=8)
  np.testing.assert_allclose(
      preprocessing.preprocess(image, c, False, tf.constant([0, 0], tf.int64)),
      np.full((8, 8, 3), 0.2 * 2 - 1), atol=1e-6)
  c.normalization = "imagenet"
  out = preprocessing.preprocess(image, c, False, tf.constant([0, 0], tf.int64))
  np.testing.assert_allclose(
      out[0, 0], (0.2 - np.array([0.485, 0.456, 0.406])) /
      np.array([0.229, 0.224, 0.225]), rtol=1e-5)
  c.normalization = "zero_one"
  with pytest.raises(Exception, match="normalization"):
    preprocessing.preprocess(image, c, False, tf.constant([0, 0], tf.int64))


def test_resized_crop_trains_on_boxes_and_evaluates_on_the_centre():
  """augment='resized_crop' (the benchmark paper's): training crops a box of
  8-100% of the area at aspect 3/4-4/3 and resizes it (a box, not the whole
  image: draws differ by seed, the same seed gives the same image); with
  rotation 0 and no flip it is a plain resized crop of the image. Evaluation
  resizes to data.resize and takes the centre data.resolution square."""
  c = _config("resized_crop", resolution=16)
  c.crop_to_square, c.resize, c.rotation = False, 20, 0.0
  c.normalization = "minus_one_one"
  # A horizontal ramp: a crop's columns span a sub-range of the ramp.
  ramp = np.tile(np.linspace(0, 1, 40, dtype=np.float32)[None, :, None],
                 (30, 1, 3))
  outs = [preprocessing.preprocess(tf.constant(ramp), c, True,
                                   tf.constant([s, 1], tf.int64)).numpy()
          for s in range(12)]
  assert all(o.shape == (16, 16, 3) for o in outs)
  again = preprocessing.preprocess(tf.constant(ramp), c, True,
                                   tf.constant([0, 1], tf.int64)).numpy()
  np.testing.assert_array_equal(again, outs[0])
  spans = [o[8, :, 0].max() - o[8, :, 0].min() for o in outs]
  assert min(spans) < 1.5 and len({round(float(s), 3) for s in spans}) > 3
  # Each row of a crop of a horizontal ramp is monotone: flipped or not.
  assert all(np.all(np.diff(o[8, :, 0]) >= -1e-5) or
             np.all(np.diff(o[8, :, 0]) <= 1e-5) for o in outs)
  evaluated = preprocessing.preprocess(tf.constant(ramp), c, False,
                                       tf.constant([0, 1], tf.int64)).numpy()
  resized = tf.image.resize(ramp, [20, 20], method="area").numpy()
  np.testing.assert_allclose(evaluated, resized[2:18, 2:18] * 2 - 1,
                             atol=1e-5)
