"""Image preprocessing and augmentation in TF (deterministic: stateless RNG).

Images arrive as decoded [H, W, C] integers (uint8/uint16, full range) or
floats in [0, 1], and leave as float32 [resolution, resolution, channels],
normalised as the model's checkpoint expects (`choices.NORMALIZATIONS`).
Cropping and resizing run on the stored dtype and everything after on the
small resized image, so no full-size float copy is ever made: resizing a
512 px uint8 image directly is ~3x faster than converting it first.
"""
import math

import ml_collections
import tensorflow as tf

from input_pipeline import errors
from input_pipeline.choices import AFFINE_FILLS, AUGMENTATIONS, NORMALIZATIONS


def full_scale(dtype: tf.DType) -> float:
  """The value of white: the dtype's maximum for integers, 1 for floats."""
  return 1.0 if dtype.is_floating else float(dtype.max)


def resize(image: tf.Tensor, size: int, nearest: bool = False) -> tf.Tensor:
  """Resizes to size x size (float32, same scale as `image`): area averaging
  when shrinking, bilinear otherwise; nearest-neighbour (masks) if asked."""
  if nearest:
    return tf.cast(tf.image.resize(image, [size, size], method="nearest"),
                   tf.float32)
  shrinking = tf.reduce_all(tf.shape(image)[:2] >= size)
  return tf.cond(
      shrinking,
      lambda: tf.image.resize(image, [size, size], method="area"),
      lambda: tf.image.resize(image, [size, size], method="bilinear"))


def random_crop_flip(image: tf.Tensor, padding: int, flip: bool,
                     rng: tf.Tensor) -> tf.Tensor:
  """Zero-pads by `padding`, crops back at a random offset, flips with p=0.5."""
  crop_rng, flip_rng = tf.unstack(
      tf.random.experimental.stateless_split(rng, 2))
  if padding:
    shape = tf.shape(image)
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    image = tf.image.stateless_random_crop(padded, shape, seed=crop_rng)
  if flip:
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_rng)
  return image


def center_crop_to_square(image: tf.Tensor) -> tf.Tensor:
  """Crops the centre square of side min(H, W)."""
  shape = tf.shape(image)
  side = tf.minimum(shape[0], shape[1])
  top, left = (shape[0] - side) // 2, (shape[1] - side) // 2
  return image[top:top + side, left:left + side]


def random_flip(rng: tf.Tensor) -> tf.Tensor:
  """True with probability 0.5 (the draw of stateless_random_flip_left_right)."""
  return tf.random.stateless_uniform([], rng, 0.0, 1.0) < 0.5


def random_affine(image: tf.Tensor, rng: tf.Tensor, shift: float,
                  scale: float, rotation_degrees: float,
                  flip: tf.Tensor = False, fill: str = "zeros",
                  nearest: bool = False) -> tf.Tensor:
  """Random shift (fraction of the size), scale (1 +- scale) and rotation
  about the centre, then a left-right flip where `flip`; outside pixels as
  `fill` (AFFINE_FILLS). Bilinear sampling (nearest-neighbour for masks:
  the same `rng` moves an image and its mask alike). The flip is folded
  into the same transform (one resampling pass instead of a second copy)."""
  if fill not in AFFINE_FILLS:
    raise errors.ConfigError(f"config.data.affine_fill={fill!r}: expected "
                             f"one of {AFFINE_FILLS}.")
  shape = tf.shape(image)[:2]
  size = tf.cast(shape, tf.float32)  # (H, W)
  params = tf.random.stateless_uniform([4], rng, -1.0, 1.0)
  angle = params[0] * rotation_degrees * math.pi / 180.0
  zoom = 1.0 + params[1] * scale
  ty, tx = params[2] * shift * size[0], params[3] * shift * size[1]
  cy, cx = size[0] / 2.0, size[1] / 2.0
  # The op maps output (x, y) to input coordinates: p_in = M p_out + offset,
  # with M = R(-angle) / zoom and the centre moved by the shift.
  cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
  offset_x = cx - (cos * (cx + tx) + sin * (cy + ty))
  offset_y = cy - (-sin * (cx + tx) + cos * (cy + ty))
  # Flipping maps output column x to W - 1 - x before the transform.
  sign = tf.where(flip, -1.0, 1.0)
  last = tf.where(flip, size[1] - 1.0, 0.0)
  offset_x += cos * last
  offset_y -= sin * last
  if fill == "reflect_101":
    # tf.pad's REFLECT is BORDER_REFLECT_101. A pad of size - 1 per side
    # covers every input point the transform reaches (at most
    # beyond the border for shift <= 0.25, zoom >= 0.9, any rotation: ~0.7
    # sizes at most); the input coordinates move by the pad.
    pad_y, pad_x = shape[0] - 1, shape[1] - 1
    image = tf.pad(image, [[pad_y, pad_y], [pad_x, pad_x], [0, 0]],
                   mode="REFLECT")
    offset_x += tf.cast(pad_x, tf.float32)
    offset_y += tf.cast(pad_y, tf.float32)
  transform = tf.stack([sign * cos, sin, offset_x,
                        -sign * sin, cos, offset_y, 0.0, 0.0])
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=transform[None],
      output_shape=shape, fill_value=0.0,
      interpolation="NEAREST" if nearest else "BILINEAR",
      fill_mode="CONSTANT")[0]


def random_resized_crop(image: tf.Tensor, resolution: int, rng: tf.Tensor,
                        rotation_degrees: float, nearest: bool = False
                        ) -> tf.Tensor:
  """torchvision's RandomResizedCrop(resolution) (a box of 8-100% of the
  area, aspect ratio 3/4-4/3, up to 10 tries, else the whole image), then a
  flip and a rotation by up to `rotation_degrees` about the centre (black
  corners, as RandomRotation)."""
  box_rng, flip_rng, affine_rng = tf.unstack(
      tf.random.experimental.stateless_split(rng, 3))
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), tf.zeros([1, 0, 4]), seed=box_rng,
      area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
      max_attempts=10, use_image_if_no_bounding_boxes=True)
  channels = image.shape[-1]
  image = tf.slice(image, begin, size)
  image.set_shape([None, None, channels])  # A dynamic slice loses it.
  image = tf.cast(tf.image.resize(image, [resolution, resolution],
                                  method="nearest" if nearest else "bilinear"),
                  tf.float32)
  return random_affine(image, affine_rng, 0.0, 0.0, rotation_degrees,
                       flip=random_flip(flip_rng), nearest=nearest)


def normalize(image: tf.Tensor, white: float, normalization: str
              ) -> tf.Tensor:
  """Maps pixels in [0, white] to the inputs a checkpoint expects."""
  if normalization not in NORMALIZATIONS:
    raise errors.ConfigError(
        f"config.data.normalization={normalization!r}: expected one of "
        f"{sorted(NORMALIZATIONS)}.")
  if normalization == "minus_one_one":
    return image * (2.0 / white) - 1.0
  mean, std = (tf.constant(v, tf.float32) for v in
               NORMALIZATIONS[normalization])
  return (image / white - mean) / std


def preprocess(image: tf.Tensor, config: ml_collections.ConfigDict,
               train: bool, rng: tf.Tensor, whole_image: bool = False
               ) -> tf.Tensor:
  """Preprocesses one decoded image (see the module doc) per config.data.

  `rng` is a [2] int64 seed; the same seed gives the same augmentation.
  With `whole_image` (segmentation) evaluation resizes the whole image,
  never centre-cropping it: every pixel of its mask is scored.
  """
  white = full_scale(image.dtype)
  image = _geometry(image, config, train, rng, nearest=False,
                    whole_image=whole_image)
  channels = image.shape[-1]
  if config.channels != channels:
    if channels != 1:
      raise errors.ConfigError(f"config.data.channels={config.channels} but "
                               f"the images have {channels} channels.")
    image = tf.tile(image, [1, 1, config.channels])
  return normalize(image, white, config.normalization)


def preprocess_mask(mask: tf.Tensor, config: ml_collections.ConfigDict,
                    train: bool, rng: tf.Tensor) -> tf.Tensor:
  """The mask [H, W, classes] (0/1) of an image preprocessed by
  preprocess(image, config, train, rng, whole_image=True) with the same
  `rng`: moved by the same crops, flips and affine transform, sampled
  nearest-neighbour. Returns float32 0/1 [resolution, resolution, classes]."""
  return _geometry(tf.cast(mask, tf.float32), config, train, rng,
                   nearest=True, whole_image=True)


def _geometry(image: tf.Tensor, config: ml_collections.ConfigDict,
              train: bool, rng: tf.Tensor, nearest: bool, whole_image: bool
              ) -> tf.Tensor:
  """Every crop, resize, flip and affine of config.data.augment (float32
  out, the scale of `image`); a function of the image size and `rng` only,
  so an image and its mask get the same."""
  if config.augment not in AUGMENTATIONS:
    raise errors.ConfigError(f"config.data.augment={config.augment!r}: "
                             f"expected one of {AUGMENTATIONS}.")
  if config.crop_to_square:
    image = center_crop_to_square(image)
  augment = config.augment if train else "none"
  if augment == "bit":
    if not config.resize or config.resize < config.resolution:
      raise errors.ConfigError(
          f"config.data.augment='bit' needs config.data.resize "
          f"({config.resize}) >= config.data.resolution ({config.resolution}).")
    crop_rng, flip_rng = tf.unstack(
        tf.random.experimental.stateless_split(rng, 2))
    image = resize(image, config.resize, nearest)
    image = tf.image.stateless_random_crop(
        image, [config.resolution, config.resolution, tf.shape(image)[-1]],
        seed=crop_rng)
    image = random_crop_flip(image, 0, flip=True, rng=flip_rng)
  elif augment == "resized_crop":
    image = random_resized_crop(image, config.resolution, rng,
                                config.rotation, nearest)
  elif config.augment == "resized_crop" and not whole_image:  # Evaluation.
    image = resize(image, config.resize or config.resolution)
    image = tf.image.resize_with_crop_or_pad(image, config.resolution,
                                             config.resolution)
  else:
    image = resize(image, config.resolution, nearest)
  if augment == "cxr":
    affine_rng, flip_rng = tf.unstack(
        tf.random.experimental.stateless_split(rng, 2))
    image = random_affine(image, affine_rng, config.shift, config.scale,
                          config.rotation, flip=random_flip(flip_rng),
                          fill=config.affine_fill, nearest=nearest)
  elif augment in ("flip", "crop_flip"):
    padding = config.crop_padding if augment == "crop_flip" else 0
    image = random_crop_flip(image, padding, flip=True, rng=rng)
  return image
