"""Linear few-shot evaluation of frozen pre-logit features (as in big_vision).

For each number of shots k and seed, k training examples per class are drawn
with the same rule as few-shot fine-tuning (pipeline.select_fewshot); a ridge
regression from the features to +-1 one-hot targets is solved in closed form
and scored by top-1 accuracy on the evaluation split. Features are centred on
the training subset's mean and scaled to unit mean norm, so one l2_reg fits
models of any width.

Periodically during a run (config.fewshot.every_steps) and at its end, or on
its own: python -m big_transfer_med.fewshot --workdir=RUN [--config.fewshot...]
"""
from typing import Dict, Optional

import jax
import ml_collections
import numpy as np
from absl import flags
from absl import logging
from flax import jax_utils
from jax.experimental import multihost_utils

from big_transfer_med import errors
from input_pipeline import pipeline


def ridge_accuracy(train_x: np.ndarray, train_y: np.ndarray,
                   test_x: np.ndarray, test_y: np.ndarray, num_classes: int,
                   l2_reg: float) -> float:
  """Top-1 accuracy of closed-form ridge regression onto +-1 targets."""
  mean = train_x.mean(0, keepdims=True)
  train_x, test_x = train_x - mean, test_x - mean
  scale = max(float(np.mean(np.linalg.norm(train_x, axis=1))), 1e-12)
  train_x, test_x = train_x / scale, test_x / scale
  targets = 2.0 * np.eye(num_classes)[train_y] - 1.0
  # Dual form (examples << features): W = X^T (X X^T + l2 I)^-1 Y; with a
  # bias through the centring above.
  gram = train_x @ train_x.T + l2_reg * np.eye(len(train_x))
  weights = train_x.T @ np.linalg.solve(gram, targets)
  predictions = np.argmax(test_x @ weights + targets.mean(0), axis=1)
  return float(np.mean(predictions == test_y))


class FewShotEvaluator:
  """Linear few-shot accuracy of a model's features on config.fewshot.dataset."""

  def __init__(self, config: ml_collections.ConfigDict, model):
    fc = config.fewshot
    data_config = ml_collections.ConfigDict(config.to_dict())
    d = data_config.data
    d.name, d.classes, d.sources = fc.dataset, tuple(fc.classes), ()
    d.train_split, d.eval_split = fc.train_split, fc.eval_split
    d.examples_per_class, d.exclusive, d.weights = 0, False, ()
    self.config = fc
    self.name = fc.dataset.replace("/", "_")
    self.data = pipeline.Pipeline(
        data_config, host_id=jax.process_index(),
        num_hosts=jax.process_count(),
        num_local_devices=jax.local_device_count())
    if self.data.multi_label:
      raise errors.ConfigError("config.fewshot.dataset must be single-label.")
    train = self.data.train.sources[0]
    labels, mask = train.label_matrix()
    self.num_classes = labels.shape[1]
    self.subsets = {(k, seed): pipeline.select_fewshot(labels, mask, k, seed)
                    for k in fc.shots for seed in fc.seeds}
    needed = np.unique(np.concatenate(list(self.subsets.values())))
    # Positions within the extracted subset, per (shots, seed).
    self.subsets = {key: np.searchsorted(needed, positions)
                    for key, positions in self.subsets.items()}
    self.train_y = np.argmax(labels[needed], 1)
    self.train_source = pipeline.MixedSource([train.subset(needed)])
    self.eval_y = np.argmax(self.data.eval.sources[0].label_matrix()[0], 1)
    self._features = jax.pmap(
        lambda params, images: model.apply({"params": params}, images,
                                           pre_logits=True))

  def _extract(self, params, source) -> np.ndarray:
    """Features of every example of `source`, in order (all hosts)."""
    features = []
    for batch in jax_utils.prefetch_to_device(
        self.data.ordered_iterator(source), 2):
      x = self._features(params, batch["image"])
      x, mask = (np.asarray(v).reshape((-1,) + v.shape[2:])
                 for v in jax.device_get((x, batch["mask"])))
      if jax.process_count() > 1:  # Per batch: keeps the global order.
        x, mask = multihost_utils.process_allgather((x, mask), tiled=True)
      features.append(x[mask > 0])
    return np.concatenate(features).astype(np.float64)

  def run(self, params) -> Dict[str, float]:
    """{'fewshot/<dataset>_<k>shot': mean accuracy over seeds, ..._std}."""
    train_x = self._extract(params, self.train_source)
    eval_x = self._extract(params, self.data.eval)
    results = {}
    for k in self.config.shots:
      accuracies = [
          ridge_accuracy(train_x[self.subsets[(k, s)]],
                         self.train_y[self.subsets[(k, s)]], eval_x,
                         self.eval_y, self.num_classes, self.config.l2_reg)
          for s in self.config.seeds]
      results[f"fewshot/{self.name}_{k}shot"] = float(np.mean(accuracies))
      results[f"fewshot/{self.name}_{k}shot_std"] = float(np.std(accuracies))
    logging.info("Linear few-shot on %s: %s", self.name,
                 {k: round(v, 4) for k, v in results.items()
                  if not k.endswith("_std")})
    return results


def from_config(config, model) -> Optional[FewShotEvaluator]:
  return FewShotEvaluator(config, model) if config.fewshot.dataset else None


def _define_flags():
  flags.DEFINE_string("workdir", None, "A run of ours (config.json + checkpoints).")
  flags.DEFINE_string("checkpoint", None, "Or a .npz / .pth.tar (with --model).")
  flags.DEFINE_string("model", None, "Model name for --checkpoint, e.g. R50x1.")
  flags.DEFINE_string("dataset", None, "Single-label TFDS dataset to evaluate on.")
  flags.DEFINE_list("classes", [], "Class subset of --dataset (default all).")
  flags.DEFINE_list("shots", ["1", "5", "10", "25"], "Shots per class.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the few-shot draws.")
  flags.DEFINE_string("train_split", "train", "Split the shots come from.")
  flags.DEFINE_string("eval_split", "test", "Split scored.")
  flags.DEFINE_integer("resolution", None, "Input size (default: the run's).")
  flags.DEFINE_integer("channels", None, "Input channels (default: the run's, else 3).")
  flags.DEFINE_string("data_dir", None, "TFDS data_dir.")


def main(argv):
  """Prints the linear few-shot accuracies of a run or checkpoint as JSON."""
  del argv
  import json  # pylint: disable=g-import-not-at-top
  from big_transfer_med import config_lib  # pylint: disable=g-import-not-at-top
  from big_transfer_med import models  # pylint: disable=g-import-not-at-top
  from big_transfer_med import paths  # pylint: disable=g-import-not-at-top
  from big_transfer_med import runs  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  workdir, checkpoint = paths.absolute(f.workdir), paths.absolute(f.checkpoint)
  if workdir:
    config, params = runs.load_config(workdir), runs.load_params(workdir)
  elif checkpoint and f.model:
    config = config_lib.base_config()
    config.model.name, config.data.resolution = f.model, 224
    params = runs.load_checkpoint_params(checkpoint, f.model, f.channels or 3)
  else:
    raise errors.ConfigError("Give --workdir, or --checkpoint and --model.")
  with config.unlocked():
    fc = config.fewshot
    fc.dataset = f.dataset or fc.dataset
    if not fc.dataset:
      raise errors.ConfigError("Give --dataset (a single-label TFDS name).")
    fc.classes = tuple(int(c) for c in f.classes) or (
        () if f.dataset else fc.classes)
    fc.shots = tuple(int(k) for k in f.shots)
    fc.seeds = tuple(int(s) for s in f.seeds)
    fc.train_split, fc.eval_split = f.train_split, f.eval_split
    config.data.resolution = f.resolution or config.data.resolution
    config.data.channels = f.channels or config.data.channels
    config.data.data_dir = paths.absolute(f.data_dir) or config.data.data_dir
  model = models.get_model(config.model.name, None, config.model.precision)
  results = FewShotEvaluator(config, model).run(jax_utils.replicate(params))
  print(json.dumps(results, indent=2, sort_keys=True))


if __name__ == "__main__":
  from big_transfer_med import cli  # pylint: disable=g-import-not-at-top
  _define_flags()
  cli.run(main)
