"""Dice and IoU of binary masks, per class and mean, each image counted once.

Two halves, so that only a few numbers per image leave the devices:
`overlap_counts` (JAX, inside the evaluation step) reduces each image's
thresholded prediction and true mask to per-class pixel counts; `scores`
(NumPy, on the host, over every image of every host) turns them into
per-image Dice / IoU and averages. Padded examples (valid = 0) are left out.

Convention (SIIM-ACR's): an image whose true mask and prediction are both
empty scores 1 for that class (Dice and IoU); an empty true mask with any
predicted pixel scores 0. `dice_pooled` is Dice over all pixels of all
images at once (2 sum|P & T| / (sum|P| + sum|T|)): the benchmark paper's
code reports that one.
"""
from typing import Dict, Sequence

import jax.numpy as jnp
import numpy as np

THRESHOLD = 0.5  # On the sigmoid probability.


def overlap_counts(logits, masks) -> Dict[str, jnp.ndarray]:
  """Per image and class: pixels in the prediction (sigmoid(logits) >
  THRESHOLD, i.e. logits > 0), in the true mask (masks > 0.5) and in both.
  logits, masks: [batch, H, W, classes]. Returns {'intersection',
  'predicted', 'target'}, each [batch, classes] float32."""
  predicted = logits > 0.0  # sigmoid(x) > 0.5 exactly when x > 0.
  target = masks > 0.5
  count = lambda x: jnp.sum(x.astype(jnp.float32), axis=(1, 2))  # noqa: E731
  return {"intersection": count(predicted & target),
          "predicted": count(predicted), "target": count(target)}


def per_image(intersection, predicted, target):
  """(Dice, IoU) per image and class from overlap counts ([N, C] each), 1
  where both masks are empty."""
  intersection, predicted, target = (np.asarray(x, np.float64) for x in
                                     (intersection, predicted, target))
  total = predicted + target
  union = total - intersection
  empty = total == 0
  safe = lambda x: np.where(empty, 1.0, x)  # noqa: E731
  dice = np.where(empty, 1.0, 2.0 * intersection / safe(total))
  iou = np.where(empty, 1.0, intersection / safe(union))
  return dice, iou


def scores(counts: Dict[str, np.ndarray], valid: np.ndarray,
           class_names: Sequence[str]) -> Dict[str, float]:
  """Mean Dice and IoU over the valid images, per class ('dice/<name>') and
  averaged over classes ('dice', 'iou'), pooled Dice averaged over classes
  ('dice_pooled'); `images` counts the images."""
  keep = np.asarray(valid) > 0
  dice, iou = per_image(counts["intersection"][keep],
                        counts["predicted"][keep], counts["target"][keep])
  result = {"images": int(keep.sum())}
  if not keep.any():
    return dict(result, dice=float("nan"), iou=float("nan"))
  for i, name in enumerate(class_names):
    result[f"dice/{name}"] = float(dice[:, i].mean())
    result[f"iou/{name}"] = float(iou[:, i].mean())
  result["dice"] = float(dice.mean(axis=0).mean())
  result["iou"] = float(iou.mean(axis=0).mean())
  pooled, _ = per_image(*(counts[k][keep].sum(axis=0, keepdims=True) for k in
                          ("intersection", "predicted", "target")))
  result["dice_pooled"] = float(pooled.mean())
  return result
