r"""Predictions of a trained run for DICOM / PNG / JPEG files.

  python -m big_transfer_med.predict --workdir=RUN image1.dcm image2.png ...

Reads the run's config.json, labels.json and latest checkpoint; each file is
read by input_pipeline.xray_io (DICOM modality LUT and MONOCHROME1 handled)
and preprocessed as the run's evaluation images are. Classification runs
score it: sigmoid probabilities for multi-label runs, softmax for
single-label ones. Segmentation runs write, under --out_dir (default
RUN/predictions), each class's predicted mask at the file's own size
(<name>_<class>_mask.png, 0/255) and an overlay of the masks' outlines and
areas on the image (<name>_overlay.png). Prints one JSON object: {file:
{label: probability}}, or {file: {'masks': {class: png}, 'overlay': png,
'area': {class: fraction of the image}}}.
"""
import json
import os
from typing import Any, Dict, Optional, Sequence

import jax
import numpy as np
import tensorflow as tf
from absl import app
from absl import flags
from PIL import Image

from big_transfer_med import atomic_files
from big_transfer_med import cli
from big_transfer_med import models
from big_transfer_med import paths
from big_transfer_med import run_dir
from input_pipeline import preprocessing
from input_pipeline import xray_io

# Overlay colours of classes 0, 1, ... (RGB), cycled.
COLOURS = ((255, 64, 32), (32, 200, 255), (80, 255, 64), (255, 220, 0))


def predict(workdir: str, image_paths: Sequence[str],
            out_dir: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
  """{path: {label: probability}} for each image file; for a segmentation
  run, {path: {'masks', 'overlay', 'area'}} with the PNGs written to
  `out_dir` (default WORKDIR/predictions)."""
  workdir = paths.absolute(workdir)
  config = run_dir.load_config(workdir)
  labels = run_dir.load_labels(workdir)
  names = labels["label_names"]
  task = config.task  # load_config fills it for runs from before the key.
  segmentation = task == "segmentation"
  variables = run_dir.load_variables(workdir)
  model = models.from_config(config.model, len(names), task=task)
  # Variables are an argument, not constants folded into the executable.
  apply = jax.jit(lambda v, images: model.apply(v, images, train=False))
  if segmentation:
    out_dir = paths.absolute(out_dir or os.path.join(workdir, "predictions"))
    os.makedirs(out_dir, exist_ok=True)
  out, stems = {}, set()
  for path in image_paths:
    image = xray_io.read_xray(path)[..., None]  # float32 [H, W, 1] in [0, 1].
    inputs = preprocessing.preprocess(
        tf.constant(image), config.data, train=False,
        rng=tf.zeros([2], tf.int64), whole_image=segmentation)
    logits = np.asarray(apply(variables, inputs.numpy()[None])[0])
    if segmentation:
      stem = _unique_stem(path, stems)
      out[path] = write_masks(image[..., 0], logits, config.data, names,
                              os.path.join(out_dir, stem))
      continue
    probabilities = (jax.nn.sigmoid(logits) if labels["multi_label"]
                     else jax.nn.softmax(logits))
    out[path] = {name: round(float(p), 6) for name, p in
                 zip(names, np.asarray(probabilities))}
  return out


def _unique_stem(path: str, taken: set) -> str:
  """The file's name without extension, numbered if another input had it."""
  stem = os.path.splitext(os.path.basename(path))[0]
  name, number = stem, 1
  while name in taken:
    number += 1
    name = f"{stem}_{number}"
  taken.add(name)
  return name


def logits_at_image_size(logits: np.ndarray, data_config, height: int,
                         width: int) -> np.ndarray:
  """Per-pixel logits [h, w, C] of the model's input mapped back onto the
  original image [height, width, C] (bilinear): undoes the evaluation
  resize and, with data.crop_to_square, places the centre square (the
  pixels outside it get no prediction: -inf)."""
  if not data_config.crop_to_square:
    return tf.image.resize(logits, [height, width]).numpy()
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  full = np.full((height, width, logits.shape[-1]), -np.inf, np.float32)
  full[top:top + side, left:left + side] = tf.image.resize(
      logits, [side, side]).numpy()
  return full


def write_masks(image: np.ndarray, logits: np.ndarray, data_config,
                class_names: Sequence[str], prefix: str) -> Dict[str, Any]:
  """Writes prefix_<class>_mask.png (0/255) per class and
  prefix_overlay.png (the image, each class's area tinted and outlined in
  its COLOURS entry) for grey `image` [H, W] in [0, 1] and the model's
  logits [h, w, C]; returns their paths and each class's area fraction."""
  height, width = image.shape
  predicted = logits_at_image_size(logits, data_config, height, width) > 0
  grey = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
  overlay = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
  result = {"masks": {}, "area": {}}
  for c, name in enumerate(class_names):
    mask = predicted[..., c]
    result["masks"][name] = _write_png(f"{prefix}_{name}_mask.png",
                                       mask.astype(np.uint8) * 255)
    result["area"][name] = round(float(mask.mean()), 6)
    colour = np.array(COLOURS[c % len(COLOURS)], np.float32)
    overlay[mask] = 0.6 * overlay[mask] + 0.4 * colour
    overlay[_outline(mask)] = colour
  result["overlay"] = _write_png(f"{prefix}_overlay.png",
                                 np.round(overlay).astype(np.uint8))
  return result


def _outline(mask: np.ndarray) -> np.ndarray:
  """The pixels of `mask` with a 4-neighbour outside it."""
  padded = np.pad(mask, 1)
  inside = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2]
            & padded[1:-1, 2:])
  return mask & ~inside


def _write_png(path: str, array: np.ndarray) -> str:
  with atomic_files.open_atomically(path, "wb") as f:
    Image.fromarray(array).save(f, format="PNG")
  return path


def main(argv):
  tf.config.set_visible_devices([], "GPU")
  images = argv[1:]
  if not images:
    raise app.UsageError("Give one or more image files after the flags.")
  print(json.dumps(predict(flags.FLAGS.workdir, images, flags.FLAGS.out_dir),
                   indent=2))


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "Run directory written by the trainer.")
  flags.DEFINE_string("out_dir", None, "Segmentation runs: where the mask and "
                      "overlay PNGs go (default: WORKDIR/predictions).")
  flags.mark_flag_as_required("workdir")
  cli.run(main)
