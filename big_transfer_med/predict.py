r"""Per-label probabilities of a trained run for DICOM / PNG / JPEG files.

  python -m big_transfer_med.predict --workdir=RUN image1.dcm image2.png ...

Reads the run's config.json, labels.json and latest checkpoint; each file is
read by input_pipeline.xray_io (DICOM modality LUT and MONOCHROME1 handled),
preprocessed as the run's evaluation images are, and scored: sigmoid
probabilities for multi-label runs, softmax for single-label ones. Prints
one JSON object {file: {label: probability}}.
"""
import json
from typing import Dict, Sequence

import jax
import numpy as np
import tensorflow as tf
from absl import app
from absl import flags

from big_transfer_med import cli
from big_transfer_med import models
from big_transfer_med import paths
from big_transfer_med import run_dir
from input_pipeline import preprocessing
from input_pipeline import xray_io


def predict(workdir: str,
            image_paths: Sequence[str]) -> Dict[str, Dict[str, float]]:
  """{path: {label: probability}} for each image file."""
  workdir = paths.absolute(workdir)
  config = run_dir.load_config(workdir)
  labels = run_dir.load_labels(workdir)
  variables = run_dir.load_variables(workdir)
  model = models.from_config(config.model, len(labels["label_names"]))
  # Variables are an argument, not constants folded into the executable.
  apply = jax.jit(lambda v, images: model.apply(v, images, train=False))
  out = {}
  for path in image_paths:
    image = xray_io.read_xray(path)[..., None]  # float32 [H, W, 1] in [0, 1].
    image = preprocessing.preprocess(tf.constant(image), config.data,
                                     train=False, rng=tf.zeros([2], tf.int64))
    logits = apply(variables, image.numpy()[None])[0]
    probabilities = (jax.nn.sigmoid(logits) if labels["multi_label"]
                     else jax.nn.softmax(logits))
    out[path] = {name: round(float(p), 6) for name, p in
                 zip(labels["label_names"], np.asarray(probabilities))}
  return out


def main(argv):
  tf.config.set_visible_devices([], "GPU")
  images = argv[1:]
  if not images:
    raise app.UsageError("Give one or more image files after the flags.")
  print(json.dumps(predict(flags.FLAGS.workdir, images), indent=2))


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "Run directory written by the trainer.")
  flags.mark_flag_as_required("workdir")
  cli.run(main)
