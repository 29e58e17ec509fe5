"""Losses: softmax for single-label, masked sigmoid for multi-label."""
import jax
import jax.numpy as jnp
import numpy as np

from big_transfer_med import losses


def _np_sigmoid_xent(logits, labels):
  p = 1 / (1 + np.exp(-logits))
  return -(labels * np.log(p) + (1 - labels) * np.log(1 - p))


def test_masked_sigmoid_is_mean_over_unmasked_elements():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 3))
  labels = rng.integers(0, 2, size=(4, 3)).astype(np.float64)
  mask = np.array([[1, 0, 1], [1, 1, 1], [0, 0, 0], [0, 1, 0]], np.float64)
  labels_with_nan = np.where(mask > 0, labels, np.nan)
  total, count = losses.sigmoid_xent(
      jnp.asarray(logits, jnp.float32),
      jnp.asarray(labels_with_nan, jnp.float32), jnp.asarray(mask, jnp.float32))
  loss = total / count
  expected = _np_sigmoid_xent(logits, labels)[mask > 0].mean()
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_masked_entries_give_no_gradient_even_if_nan():
  logits = jnp.array([[0.3, -1.0, 2.0]])
  labels = jnp.array([[1.0, jnp.nan, 0.0]])
  mask = jnp.array([[1.0, 0.0, 1.0]])
  grad = jax.grad(lambda l: losses.sigmoid_xent(l, labels, mask)[0])(logits)
  assert np.all(np.isfinite(grad))
  assert float(grad[0, 1]) == 0.0 and float(grad[0, 0]) != 0.0


def test_per_example_mask_for_sigmoid_and_softmax():
  logits = jnp.array([[2.0, -1.0], [0.5, 0.5]])
  labels = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  mask = jnp.array([1.0, 0.0])
  total, count = losses.sigmoid_xent(logits, labels, mask)
  assert float(count) == 2.0
  np.testing.assert_allclose(
      total, _np_sigmoid_xent(np.array([2.0, -1.0]), np.array([1.0, 0.0])).sum(),
      rtol=1e-5)
  total, count = losses.softmax_xent(logits, labels, mask)
  assert float(count) == 1.0
  np.testing.assert_allclose(total, -np.log(np.exp(2) / (np.exp(2) + np.exp(-1))),
                             rtol=1e-5)


def _numpy_soft_dice(logits, masks, smooth=1.0):
  """Soft Dice loss per image and class, from its definition."""
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  out = np.zeros(logits.shape[::3])
  for n in range(logits.shape[0]):
    for c in range(logits.shape[-1]):
      inter = np.sum(p[n, ..., c] * masks[n, ..., c])
      out[n, c] = 1 - (2 * inter + smooth) / (
          p[n, ..., c].sum() + masks[n, ..., c].sum() + smooth)
  return out


def test_segmentation_losses_match_their_definitions_and_masks():
  """soft_dice and dice_sigmoid_xent per image and class, padded images
  left out, against NumPy; the mean over the global batch is the same
  however the batch is split into (sum, count) shares."""
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 6, 7, 2)).astype(np.float32)
  masks = (rng.random((5, 6, 7, 2)) < 0.4).astype(np.float32)
  valid = np.array([1, 1, 1, 1, 0], np.float32)
  dice = _numpy_soft_dice(logits, masks)[:4]
  total, count = losses.soft_dice(logits, masks, valid)
  assert count == 8
  np.testing.assert_allclose(total, dice.sum(), rtol=1e-5)
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  xent = -(masks * np.log(p) + (1 - masks) * np.log(1 - p))
  per_image_xent = xent.mean(axis=(1, 2))[:4]
  total, count = losses.dice_sigmoid_xent(logits, masks, valid)
  assert count == 8
  np.testing.assert_allclose(total, (dice + per_image_xent).sum(), rtol=1e-5)
  halves = [losses.dice_sigmoid_xent(logits[s], masks[s], valid[s])
            for s in (slice(0, 2), slice(2, 5))]
  np.testing.assert_allclose(sum(t for t, _ in halves) / sum(c for _, c in halves),
                             total / count, rtol=1e-5)
