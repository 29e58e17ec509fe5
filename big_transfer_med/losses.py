"""Losses returning (sum, count) so that means are exact across devices and hosts.

The trainer divides the psum of the sums by the psum of the counts: the
gradient is the one of the global-batch mean however the batch is split.
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


def loss_mask(batch):
  """Per-example mask, times the per-label mask of multi-label data."""
  if "label_mask" in batch:
    return batch["label_mask"] * batch["mask"][..., None]
  return batch["mask"]


# Losses by name (config.loss): a new loss adds an entry here.
LOSSES = {"softmax_xent": softmax_xent, "sigmoid_xent": sigmoid_xent}


def get_loss(name: str) -> LossFn:
  if name not in LOSSES:
    raise errors.ConfigError(
        f"config.loss={name!r}: expected one of {sorted(LOSSES)}.")
  return LOSSES[name]
