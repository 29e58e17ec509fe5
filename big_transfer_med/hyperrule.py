"""BiT-HyperRule: fine-tuning hyper-parameters from the training-set size.

As in the released BiT code: the schedule and MixUp depend on the number of
training examples, the resolution on the image size. `apply` fills only the
config keys left unset (None), so any of them can be overridden.
"""
from typing import Optional, Sequence, Tuple

import ml_collections

from input_pipeline import errors

SMALL, MEDIUM = 20_000, 500_000  # Dataset-size thresholds of the rule.
SMALL_IMAGE_AREA = 96 * 96


def schedule_boundaries(dataset_size: int) -> Tuple[int, ...]:
  """(warmup end, decay 1, decay 2, decay 3, total steps); x0.1 at each decay."""
  if dataset_size < SMALL:
    return (100, 200, 300, 400, 500)
  if dataset_size < MEDIUM:
    return (500, 3000, 6000, 9000, 10_000)
  return (500, 6000, 12_000, 18_000, 20_000)


def resolution(image_size: Sequence[Optional[int]]) -> Tuple[int, int]:
  """(resize, random-crop size) for images of (height, width).

  Unknown sizes (None: images of varying size) count as large.
  """
  height, width = image_size[:2]
  if height and width and height * width < SMALL_IMAGE_AREA:
    return (160, 128)
  return (512, 480)


def mixup_alpha(dataset_size: int) -> float:
  return 0.1 if dataset_size >= SMALL else 0.0


def apply(config: ml_collections.ConfigDict, dataset_size: int,
          image_size: Sequence[Optional[int]]) -> ml_collections.ConfigDict:
  """Returns a copy of `config` with the rule's values for every unset key.

  With config.total_steps or config.total_epochs set but no warmup or decay,
  the rule's boundaries are scaled to that length (a shortened run keeps the
  schedule's shape).
  """
  if not config.hyperrule:
    return config
  if dataset_size <= 0:
    raise errors.ConfigError("BiT-HyperRule needs a non-empty training set.")
  c = ml_collections.ConfigDict(config.to_dict())  # Unlocked copy.
  warmup, *decays, total = schedule_boundaries(dataset_size)
  if not c.total_steps and not c.total_epochs:
    c.total_steps = total
  # The run's length in steps (epochs of dataset_size / batch_size steps).
  length = c.total_steps or c.total_epochs * dataset_size / c.batch_size
  if length:
    scale = length / total
    s = c.schedule
    if s.warmup_steps is None and not s.warmup_epochs:
      s.warmup_steps = int(round(warmup * scale))
    if not s.decay_steps and not s.decay_epochs:
      s.decay_steps = tuple(int(round(d * scale)) for d in decays)
  resize, crop = resolution(image_size)
  if c.data.resolution is None:
    c.data.resolution = crop
    if c.data.resize is None:
      c.data.resize = resize
  if c.mixup_alpha is None:
    c.mixup_alpha = mixup_alpha(dataset_size)
  c.lock()
  return c
