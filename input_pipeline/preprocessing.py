"""Image preprocessing and augmentation in TF (deterministic: stateless RNG).

Images arrive as uint8 or uint16 [H, W, C] and leave as float32
[resolution, resolution, channels] in [-1, 1].
"""
import ml_collections
import tensorflow as tf

from big_transfer_med import errors

AUGMENTATIONS = ("none", "flip", "crop_flip")


def to_unit_range(image: tf.Tensor) -> tf.Tensor:
  """uint8/uint16 -> float32 in [0, 1] (scaled by the dtype's maximum)."""
  return tf.image.convert_image_dtype(image, tf.float32)


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """Resizes to size x size: area averaging when shrinking, bilinear otherwise."""
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


def preprocess(image: tf.Tensor, config: ml_collections.ConfigDict,
               train: bool, rng: tf.Tensor) -> tf.Tensor:
  """Preprocesses one image according to `config` (the config.data block).

  `rng` is a [2] int64 seed; the same seed gives the same augmentation.
  """
  if config.augment not in AUGMENTATIONS:
    raise errors.ConfigError(f"config.data.augment={config.augment!r}: "
                             f"expected one of {AUGMENTATIONS}.")
  image = resize(to_unit_range(image), config.resolution)
  if train and config.augment != "none":
    padding = config.crop_padding if config.augment == "crop_flip" else 0
    image = random_crop_flip(image, padding, flip=True, rng=rng)
  image = image * 2.0 - 1.0
  channels = image.shape[-1]
  if config.channels != channels:
    if channels != 1:
      raise errors.ConfigError(f"config.data.channels={config.channels} but "
                               f"the images have {channels} channels.")
    image = tf.tile(image, [1, 1, config.channels])
  return image
