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
