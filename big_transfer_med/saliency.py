"""Class activation maps (CAM, Zhou et al. 2016) of our classifiers.

Every classifier here ends in global average pooling and a dense head, so
class k's map M_k = A . w_k + b_k over the last feature map A is exact: its
mean over positions is the logit, and it equals Grad-CAM (Selvaraju et al.
2017) at the last block up to Grad-CAM's ReLU and scale, since there the
gradient of logit k is w_k / (h w) at every position.
"""
from typing import Dict, Sequence

import jax.numpy as jnp
import numpy as np
from PIL import Image

from big_transfer_med import atomic_files
from input_pipeline import errors


def class_activation_maps(model, variables, images) -> jnp.ndarray:
  """[B, h, w, classes] maps of `images` [B, H, W, C] at the feature map's
  resolution (stride 32); their spatial mean is the model's logits."""
  head = variables["params"].get("head")
  if head is None or "kernel" not in head or head["kernel"].ndim != 2:
    raise errors.ConfigError("Saliency maps need a classifier with a dense "
                             "head (not a segmentation run).")
  features = model.apply(variables, images, feature_map=True, train=False)
  return jnp.einsum("bhwc,ck->bhwk", features, head["kernel"]) + head["bias"]


def at_input_size(cams: np.ndarray, height: int, width: int) -> np.ndarray:
  """Maps [h, w, K] at the model's input size [height, width, K], each cell
  placed where its receptive field is centred. Both families pad their
  stride-2 layers symmetrically (7x7 pad 3, 3x3 pad 1, 1x1 pad 0), so cell
  j is centred on input pixel j * stride, not on the middle of its stride
  block (j + 0.5) * stride, as a plain image resize would put it: half a
  cell (16 px) off. Linear between cells, constant beyond the last."""
  rows = np.arange(height) * cams.shape[0] / height
  cols = np.arange(width) * cams.shape[1] / width
  along_rows = np.stack([np.interp(rows, np.arange(cams.shape[0]),
                                   cams[:, j, k])
                         for j in range(cams.shape[1])
                         for k in range(cams.shape[2])], axis=-1)
  along_rows = along_rows.reshape(height, cams.shape[1], cams.shape[2])
  return np.stack([np.stack([np.interp(cols, np.arange(cams.shape[1]),
                                       along_rows[i, :, k])
                             for k in range(cams.shape[2])], axis=-1)
                   for i in range(height)]).astype(np.float32)


def chosen_classes(scores: Dict[str, float], chosen: Sequence[str]
                   ) -> list:
  """The classes to map for one image: `chosen` (names, or 'all'), else the
  highest-scoring one."""
  if not chosen:
    return [max(scores, key=scores.get)]
  if list(chosen) == ["all"]:
    return list(scores)
  unknown = [c for c in chosen if c not in scores]
  if unknown:
    raise errors.ConfigError(f"--saliency_classes has {unknown}; the run's "
                             f"classes are {list(scores)} (or 'all').")
  return list(chosen)


def _jet(values: np.ndarray) -> np.ndarray:
  """[..., 3] float colours of values in [0, 1] (blue -> cyan -> yellow ->
  red, as matplotlib's jet)."""
  v = values[..., None]
  return np.clip(np.concatenate([1.5 - np.abs(4 * v - 3),
                                 1.5 - np.abs(4 * v - 2),
                                 1.5 - np.abs(4 * v - 1)], axis=-1), 0, 1)


def write_map(image: np.ndarray, cam: np.ndarray, prefix: str
              ) -> Dict[str, str]:
  """Writes prefix.npy (the map at the image's size, float32, NaN where the
  model saw nothing) and prefix.png (the grey image [H, W] in [0, 1] under
  the map scaled to its own range, jet colours); returns both paths."""
  cam = np.where(np.isfinite(cam), cam, np.nan).astype(np.float32)
  seen = np.isfinite(cam)
  low, high = (np.nanmin(cam), np.nanmax(cam)) if seen.any() else (0.0, 1.0)
  scaled = np.nan_to_num((cam - low) / max(high - low, 1e-12))
  grey = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=-1)
  blend = np.where(seen[..., None], 0.5 * grey + 0.5 * _jet(scaled), grey)
  with atomic_files.open_atomically(f"{prefix}.npy", "wb") as f:
    np.save(f, cam, allow_pickle=False)
  with atomic_files.open_atomically(f"{prefix}.png", "wb") as f:
    Image.fromarray(np.round(blend * 255).astype(np.uint8)).save(f, "PNG")
  return {"png": f"{prefix}.png", "npy": f"{prefix}.npy"}
