"""Dice and IoU (segmentation_metrics) against an independent NumPy
computation on boolean masks, on generated masks and on the real lung masks
in the torchxrayvision wheel (REFERENCE: 517 binary masks, 0/255 PNG)."""
import jax
import numpy as np
import pytest

from big_transfer_med import segmentation_metrics
from tests import segmentation_fixtures

def _reference(predicted, target, valid):
  """Mean over valid images of Dice / IoU per class, straight from the
  definitions on boolean masks [N, H, W, C]: 2|P & T| / (|P| + |T|) and
  |P & T| / |P | T|, 1 for two empty masks."""
  dice, iou = [], []
  for n in np.flatnonzero(valid):
    d, j = [], []
    for c in range(target.shape[-1]):
      p, t = predicted[n, ..., c], target[n, ..., c]
      if not p.any() and not t.any():
        d.append(1.0), j.append(1.0)
        continue
      both = np.logical_and(p, t).sum()
      d.append(2 * both / (p.sum() + t.sum()))
      j.append(both / np.logical_or(p, t).sum())
    dice.append(d), iou.append(j)
  return np.mean(dice, axis=0), np.mean(iou, axis=0)


def _scores(logits, masks, valid, names):
  counts = jax.device_get(jax.jit(segmentation_metrics.overlap_counts)(
      logits, masks))
  return segmentation_metrics.scores(counts, valid, names)


def test_dice_and_iou_match_the_definitions_with_padding_and_empty_masks():
  rng = np.random.default_rng(0)
  target = rng.random((7, 12, 10, 2)) < 0.3
  predicted = target ^ (rng.random(target.shape) < 0.2)
  target[0, ..., 0] = predicted[0, ..., 0] = False  # Both empty: 1.
  target[1, ..., 1] = False  # Nothing to find, something predicted: 0.
  predicted[1, ..., 1] = False
  predicted[1, 0, 0, 1] = True
  predicted[2, ..., 0] = False  # Nothing found: 0.
  valid = np.array([1, 1, 1, 1, 1, 0, 0])  # The last two are padding.
  target[5:] = True
  logits = np.where(predicted, 3.0, -3.0).astype(np.float32)
  result = _scores(logits, target.astype(np.float32), valid, ("a", "b"))
  dice, iou = _reference(predicted, target, valid)
  assert result["images"] == 5
  np.testing.assert_allclose([result["dice/a"], result["dice/b"]], dice,
                             rtol=1e-12)
  np.testing.assert_allclose([result["iou/a"], result["iou/b"]], iou,
                             rtol=1e-12)
  assert result["dice"] == pytest.approx(dice.mean())
  assert result["iou"] == pytest.approx(iou.mean())
  kept = valid > 0
  pooled = [2 * np.logical_and(predicted[kept, ..., c], target[kept, ..., c]
                               ).sum() / (predicted[kept, ..., c].sum()
                                          + target[kept, ..., c].sum())
            for c in range(2)]
  assert result["dice_pooled"] == pytest.approx(np.mean(pooled), rel=1e-12)
  per_image_dice, per_image_iou = segmentation_metrics.per_image(
      *(jax.device_get(segmentation_metrics.overlap_counts(logits, target))[k]
        for k in ("intersection", "predicted", "target")))
  assert per_image_dice[0, 0] == per_image_iou[0, 0] == 1.0
  assert per_image_dice[1, 1] == per_image_iou[1, 1] == 0.0
  assert per_image_dice[2, 0] == 0.0
  # A logit of exactly 0 is probability 0.5: not above the threshold.
  zero = _scores(np.zeros((1, 2, 2, 1), np.float32),
                 np.ones((1, 2, 2, 1), np.float32), np.ones(1), ("a",))
  assert zero["dice"] == 0.0


def test_real_lung_masks_against_shifted_copies():
  """Real lung masks against copies shifted by 0-12 pixels: Dice and IoU as
  the definitions give them, 1 for no shift, falling as the shift grows."""
  masks = segmentation_fixtures.real_lung_masks(8)
  valid = np.ones(len(masks))
  previous = 1.0 + 1e-9
  for shift in (0, 3, 6, 12):
    shifted = np.roll(masks, shift, axis=2)
    logits = np.where(shifted, 4.0, -4.0).astype(np.float32)
    result = _scores(logits, masks.astype(np.float32), valid, ("lung",))
    dice, iou = _reference(shifted, masks, valid)
    assert result["dice"] == pytest.approx(float(dice[0]), rel=1e-12)
    assert result["iou"] == pytest.approx(float(iou[0]), rel=1e-12)
    assert result["dice"] < previous and result["iou"] <= result["dice"]
    previous = result["dice"]
    if shift == 0:
      assert result["dice"] == result["iou"] == 1.0
