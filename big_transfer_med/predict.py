r"""Predictions of a trained run for DICOM / PNG / JPEG files.

  python -m big_transfer_med.predict --workdir=RUN image1.dcm image2.png ...
  python -m big_transfer_med.predict --workdir=RUN --images=DIR --out_csv=preds.csv

Reads the run's config.json, labels.json and checkpoint (--checkpoint:
latest, best or a step); each file is read by input_pipeline.xray_io (DICOM
modality LUT and MONOCHROME1 handled) and preprocessed as the run's
evaluation images are, in batches. Classification runs score it: sigmoid
probabilities for multi-label runs, softmax for single-label ones.
Segmentation runs write, under --out_dir (default RUN/predictions), each
class's predicted mask at the file's own size (<name>_<class>_mask.png,
0/255) and an overlay of the masks' outlines and areas on the image
(<name>_overlay.png).

--saliency_dir=DIR writes class activation maps (saliency.py) of each
image's top class (or --saliency_classes=A,B / all): <name>_<class>_cam.png,
the image under the map, and <name>_<class>_cam.npy, the map at the image's
size.

A file that cannot be read, or a DICOM whose header says it is not a chest
radiograph (Modality, BodyPartExamined), gets an error instead and the
others go on. --images is a folder (every image under it, recursively) or a
text file listing one path per line. Prints one JSON object ({file: {label:
probability}}, {file: {'masks': {class: png}, 'overlay': png, 'area':
{class: fraction of the image}}} or {file: {'error': why}}), or with
--out_csv writes `path,<one column per class>,error` (paths relative to
--images; segmentation: each class's area) whole or not at all.
"""
import csv
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

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
from big_transfer_med import saliency
from input_pipeline import errors
from input_pipeline import preprocessing
from input_pipeline import xray_io

# Overlay colours of classes 0, 1, ... (RGB), cycled.
COLOURS = ((255, 64, 32), (32, 200, 255), (80, 255, 64), (255, 220, 0))
# What --images=DIR picks up; DICOM files often have no suffix at all.
IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg", "")


def find_images(images: str) -> Tuple[str, List[str]]:
  """(folder the paths are relative to, sorted image paths) of a folder
  (recursively; hidden files skipped) or of a text file of paths (one per
  line, relative to the file's folder unless absolute)."""
  images = paths.absolute(images)
  if os.path.isdir(images):
    found = []
    for root, folders, files in os.walk(images):
      folders[:] = [d for d in folders if not d.startswith(".")]
      found += [os.path.relpath(os.path.join(root, f), images) for f in files
                if not f.startswith(".")
                and os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES]
    if not found:
      raise errors.DataError(f"--images={images}: no {', '.join(s for s in IMAGE_SUFFIXES if s)} "
                             "or suffix-less files under it.")
    return images, sorted(found)
  if not os.path.isfile(images):
    raise errors.DataError(f"--images={images}: no such folder or file.")
  with open(images) as f:
    listed = [line.strip() for line in f if line.strip()]
  if not listed:
    raise errors.DataError(f"--images={images}: the list is empty.")
  return os.path.dirname(images), listed


def predict(workdir: str, image_paths: Sequence[str],
            out_dir: Optional[str] = None, checkpoint: str = "latest",
            batch_size: int = 16, root: str = "",
            progress: bool = False, saliency_dir: Optional[str] = None,
            saliency_classes: Sequence[str] = ()
            ) -> Dict[str, Dict[str, Any]]:
  """{path: {label: probability}} for each image file (`root` joined to
  relative paths); for a segmentation run, {path: {'masks', 'overlay',
  'area'}} with the PNGs written to `out_dir` (default WORKDIR/predictions);
  {path: {'error': why}} for a file that cannot be read or is not a chest
  radiograph. `checkpoint`: 'latest', 'best' or a step. With
  `saliency_dir`, each image's class activation maps (saliency.py) for
  `saliency_classes` (default its top class; 'all') are written there as
  <name>_<class>_cam.png / .npy at the image's size, listed under
  'saliency'."""
  if checkpoint not in run_dir.CHOICES and not checkpoint.isdigit():
    raise errors.ConfigError(f"--checkpoint={checkpoint!r}: expected latest, "
                             "best or a step number.")
  workdir = paths.absolute(workdir)
  config = run_dir.load_config(workdir)
  labels = run_dir.load_labels(workdir)
  names = labels["label_names"]
  segmentation = config.task == "segmentation"
  variables, source = run_dir.read_checkpoint(workdir, checkpoint)
  model = models.from_config(config.model, len(names), task=config.task)
  prepare = lambda image: preprocessing.preprocess(  # noqa: E731
      tf.constant(image), config.data, train=False,
      rng=tf.zeros([2], tf.int64), whole_image=segmentation).numpy()
  input_shape = prepare(np.zeros((8, 8, 1), np.float32)).shape
  check_fits(model, variables, input_shape, source, len(names))
  # Variables are an argument, not constants folded into the executable.
  apply = jax.jit(lambda v, images: model.apply(v, images, train=False))
  if saliency_dir:
    if segmentation:
      raise errors.ConfigError("--saliency_dir: a segmentation run draws its "
                               "masks instead (--out_dir).")
    saliency.chosen_classes(dict.fromkeys(names, 0.0), saliency_classes)
    saliency_dir = paths.absolute(saliency_dir)
    os.makedirs(saliency_dir, exist_ok=True)
    # One pass gives both: a map's spatial mean is the logit (exact).
    maps = jax.jit(lambda v, images: saliency.class_activation_maps(
        model, v, images))
  if segmentation:
    out_dir = paths.absolute(out_dir or os.path.join(workdir, "predictions"))
    os.makedirs(out_dir, exist_ok=True)
  out, stems = {}, set()
  with _progress(len(image_paths), progress) as bar:
    for first in range(0, len(image_paths), batch_size):
      batch = {}
      for path in image_paths[first:first + batch_size]:
        try:
          image = xray_io.read_xray(os.path.join(root, path),
                                    chest_only=True)[..., None]
          batch[path] = (image, prepare(image))
        except errors.DataError as e:
          out[path] = {"error": str(e)}
      if batch:
        inputs = np.stack([x for _, x in batch.values()])
        padded = np.zeros((batch_size,) + inputs.shape[1:], inputs.dtype)
        padded[:len(inputs)] = inputs  # One program for every batch.
        cams = (np.asarray(maps(variables, padded))[:len(inputs)]
                if saliency_dir else None)
        logits = (cams.mean(axis=(1, 2)) if saliency_dir else
                  np.asarray(apply(variables, padded))[:len(inputs)])
        for i, ((path, (image, _)), row) in enumerate(zip(batch.items(),
                                                          logits)):
          if segmentation:
            out[path] = write_masks(image[..., 0], row, config.data, names,
                                    os.path.join(out_dir,
                                                 _unique_stem(path, stems)))
            continue
          out[path] = _probabilities(row, names, labels["multi_label"])
          if saliency_dir:
            out[path]["saliency"] = _write_saliency(
                image[..., 0], cams[i], input_shape, config.data, names,
                saliency.chosen_classes(out[path], saliency_classes),
                os.path.join(saliency_dir, _unique_stem(path, stems)))
      bar.update(min(batch_size, len(image_paths) - first))
  return {path: out[path] for path in image_paths}


def _write_saliency(image, cams, input_shape, data_config, names, classes,
                    prefix) -> Dict[str, str]:
  """Each class's map at the image's size (placed on the model's input,
  then its resize and crop undone): {class: overlay PNG path}."""
  at_size = logits_at_image_size(
      saliency.at_input_size(cams, *input_shape[:2]), data_config,
      *image.shape, whole_image=False)
  return {name: saliency.write_map(image, at_size[..., names.index(name)],
                                   f"{prefix}_{name}_cam")["png"]
          for name in classes}


def _progress(total: int, show: bool):
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, unit="image", disable=not show, leave=False)


def _probabilities(logits, names, multi_label: bool) -> Dict[str, float]:
  probabilities = (jax.nn.sigmoid(logits) if multi_label
                   else jax.nn.softmax(logits))
  return {name: round(float(p), 6) for name, p in
          zip(names, np.asarray(probabilities))}


def check_fits(model, variables, input_shape, source: str,
               num_classes: int) -> None:
  """Fails before any image is read when the checkpoint's tensors do not fit
  the model that the run's config and labels.json describe."""
  expected = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), np.zeros((1,) + input_shape,
                                                          np.float32)))
  want = dict(jax.tree_util.tree_leaves_with_path(expected))
  have = dict(jax.tree_util.tree_leaves_with_path(variables))
  for key, leaf in want.items():
    got = have.get(key)
    if got is None or tuple(got.shape) != tuple(leaf.shape):
      raise errors.CheckpointMismatchError(
          f"{source}: {jax.tree_util.keystr(key)} is "
          f"{'missing' if got is None else tuple(got.shape)}, but the run's "
          f"config and labels.json ({num_classes} classes) make it "
          f"{tuple(leaf.shape)}: labels.json and the checkpoint are not of "
          "the same run.")


def _unique_stem(path: str, taken: set) -> str:
  """The file's name without extension, numbered if another input had it."""
  stem = os.path.splitext(os.path.basename(path))[0]
  name, number = stem, 1
  while name in taken:
    number += 1
    name = f"{stem}_{number}"
  taken.add(name)
  return name


def input_region(data_config, height: int, width: int, whole_image: bool
                 ) -> Tuple[int, int, int, int]:
  """(top, left, rows, columns) of an image [height, width] that the
  model's evaluation input shows (preprocessing.preprocess): the centre
  square with data.crop_to_square, and of that, with data.augment=
  'resized_crop' (not for whole-image segmentation), the centre
  resolution / resize of the resized copy."""
  top, left, rows, columns = 0, 0, height, width
  if data_config.crop_to_square:
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    rows = columns = side
  resized = data_config.resize or data_config.resolution
  if (data_config.augment == "resized_crop" and not whole_image
      and resized > data_config.resolution):
    offset = (resized - data_config.resolution) // 2
    top += round(offset * rows / resized)
    left += round(offset * columns / resized)
    rows = round(rows * data_config.resolution / resized)
    columns = round(columns * data_config.resolution / resized)
  return top, left, rows, columns


def logits_at_image_size(logits: np.ndarray, data_config, height: int,
                         width: int, whole_image: bool = True) -> np.ndarray:
  """Per-pixel logits [h, w, C] of the model's input mapped back onto the
  original image [height, width, C] (bilinear): the evaluation resize and
  crops undone (input_region); pixels the model did not see get -inf."""
  top, left, rows, columns = input_region(data_config, height, width,
                                          whole_image)
  full = np.full((height, width, logits.shape[-1]), -np.inf, np.float32)
  full[top:top + rows, left:left + columns] = tf.image.resize(
      logits, [rows, columns]).numpy()
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
  f = flags.FLAGS
  tf.config.set_visible_devices([], "GPU")
  if f.batch_size < 1:
    raise errors.ConfigError(f"--batch_size={f.batch_size}: give 1 or more.")
  root, images = ("", list(argv[1:]))
  if f.images:
    if images:
      raise app.UsageError("Give --images or image files, not both.")
    root, images = find_images(f.images)
  if not images:
    raise app.UsageError("Give --images=DIR (or a list file) or image files "
                         "after the flags.")
  out = predict(f.workdir, images, f.out_dir, f.checkpoint, f.batch_size,
                root, progress=True, saliency_dir=f.saliency_dir,
                saliency_classes=f.saliency_classes)
  if not f.out_csv:
    print(json.dumps(out, indent=2))
    return
  failed = write_csv(out, f.out_csv, run_dir.load_labels(
      paths.absolute(f.workdir))["label_names"])
  print(f"Wrote {paths.absolute(f.out_csv)}: {len(out) - failed} predicted, "
        f"{failed} with an error.")


def write_csv(predictions: Dict[str, Dict[str, Any]], path: str,
              names: Sequence[str]) -> int:
  """Writes `path,<names>,error` (a segmentation run: each class's area);
  returns how many rows have an error."""
  failed = 0
  with atomic_files.open_atomically(paths.absolute(path), newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["path", *names, "error"])
    for image, result in predictions.items():
      values = result.get("area", result)
      failed += "error" in result
      writer.writerow([image, *(values.get(n, "") for n in names),
                       result.get("error", "")])
  return failed


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "Run directory written by the trainer.")
  flags.DEFINE_string("checkpoint", "latest", "Which checkpoint of the run: "
                      "latest, best or a step.")
  flags.DEFINE_string("images", None, "A folder of images (read "
                      "recursively) or a text file listing one per line.")
  flags.DEFINE_string("out_csv", None, "Write path,<class...>,error here "
                      "instead of printing JSON.")
  flags.DEFINE_integer("batch_size", 16, "Images per forward pass.")
  flags.DEFINE_string("out_dir", None, "Segmentation runs: where the mask and "
                      "overlay PNGs go (default: WORKDIR/predictions).")
  flags.DEFINE_string("saliency_dir", None, "Write each image's class "
                      "activation maps here (<name>_<class>_cam.png, .npy).")
  flags.DEFINE_list("saliency_classes", [], "Classes to map (default: each "
                    "image's top class; 'all').")
  flags.mark_flag_as_required("workdir")
  cli.run(main)
