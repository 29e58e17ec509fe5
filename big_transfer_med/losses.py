"""Losses returning (sum, count) so that means are exact across devices and hosts.

The trainer divides the psum of the sums by the psum of the counts: the
gradient is the one of the global-batch mean however the batch is split.
Segmentation losses take per-pixel logits and masks [B, H, W, C]; their
Dice term is per image and class (a batch-level Dice, as the benchmark
paper's, would depend on how the batch is split).
"""
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from input_pipeline import errors

LossFn = Callable[..., Tuple[jax.Array, jax.Array]]


def softmax_xent(logits, labels, mask: Optional[jax.Array] = None):
  """Softmax cross-entropy. `labels` one-hot/soft [B, C]; `mask` [B] (1 = use)."""
  per_example = optax.softmax_cross_entropy(logits.astype(jnp.float32), labels)
  if mask is None:
    mask = jnp.ones_like(per_example)
  mask = mask.astype(jnp.float32)
  return jnp.sum(per_example * mask), jnp.sum(mask)


def sigmoid_xent(logits, labels, mask: Optional[jax.Array] = None):
  """Multi-label sigmoid cross-entropy; masked entries contribute nothing.

  `mask` is [B, C] per element (or [B] per example); the mean is over the
  unmasked elements.
  """
  if mask is None:
    mask = jnp.ones(labels.shape, jnp.float32)
  mask = jnp.broadcast_to(
      mask.reshape(mask.shape + (1,) * (labels.ndim - mask.ndim)),
      labels.shape).astype(jnp.float32)
  # Masked labels may be NaN (not mentioned): replace them before the loss,
  # since NaN * 0 would still poison the gradient.
  labels = jnp.where(mask > 0, labels, 0.0)
  per_element = optax.sigmoid_binary_cross_entropy(
      logits.astype(jnp.float32), labels)
  return jnp.sum(per_element * mask), jnp.sum(mask)


def soft_dice(logits, masks, mask: Optional[jax.Array] = None,
              smooth: float = 1.0):
  """Soft Dice loss per image and class, 1 - (2 sum(p t) + smooth) /
  (sum(p) + sum(t) + smooth) with p = sigmoid(logits) over the pixels;
  `logits`, `masks` [B, H, W, C], `mask` [B]. The count is images x classes."""
  probabilities = jax.nn.sigmoid(logits.astype(jnp.float32))
  masks = masks.astype(jnp.float32)
  intersection = jnp.sum(probabilities * masks, axis=(1, 2))
  total = jnp.sum(probabilities, axis=(1, 2)) + jnp.sum(masks, axis=(1, 2))
  per_image = 1.0 - (2.0 * intersection + smooth) / (total + smooth)
  if mask is None:
    mask = jnp.ones(per_image.shape[:1], jnp.float32)
  mask = jnp.broadcast_to(mask.astype(jnp.float32)[:, None], per_image.shape)
  return jnp.sum(per_image * mask), jnp.sum(mask)


def dice_sigmoid_xent(logits, masks, mask: Optional[jax.Array] = None):
  """Soft Dice plus the mean pixel sigmoid cross-entropy, per image and
  class (the same count as soft_dice)."""
  dice, count = soft_dice(logits, masks, mask)
  xent, _ = sigmoid_xent(logits, masks, mask)
  pixels = logits.shape[1] * logits.shape[2]
  return dice + xent / pixels, count


def loss_mask(batch):
  """Per-example mask, times the per-label mask of multi-label data."""
  if "label_mask" in batch:
    return batch["label_mask"] * batch["mask"][..., None]
  return batch["mask"]


# config.loss when the data decide (a folder dataset): softmax_xent for
# single-label data, sigmoid_xent for multi-label (train.resolve_config).
BY_LABELS = "by_labels"
# Losses by name (config.loss): a new loss adds an entry here.
LOSSES = {"softmax_xent": softmax_xent, "sigmoid_xent": sigmoid_xent,
          "dice": soft_dice, "dice_sigmoid_xent": dice_sigmoid_xent}
# Those that fit per-pixel masks (config.task='segmentation').
SEGMENTATION_LOSSES = ("dice", "dice_sigmoid_xent", "sigmoid_xent")


def get_loss(name: str) -> LossFn:
  if name not in LOSSES:
    raise errors.ConfigError(
        f"config.loss={name!r}: expected one of {sorted(LOSSES)}.")
  return LOSSES[name]
