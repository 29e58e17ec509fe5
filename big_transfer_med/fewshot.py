"""Linear few-shot evaluation of frozen pre-logit features (as in big_vision).

For each number of shots k and seed, k training examples per class are drawn
with the same rule as few-shot fine-tuning (pipeline.select_fewshot); a ridge
regression from the features to +-1 one-hot targets is solved in closed form
and scored by top-1 accuracy on the evaluation split. Features are centred on
the training subset's mean and scaled to unit mean norm, so one l2_reg fits
models of any width.

An evaluator of type 'fewshot_linear' in config.evals (config_lib.fewshot_eval), run
every `every_steps` and at the end of a run, or on its own:
  python -m big_transfer_med.fewshot --workdir=RUN [--dataset=... --shots=...]
"""
from typing import Dict

import ml_collections
import numpy as np
from absl import flags
from absl import logging

from big_transfer_med import parallel
from input_pipeline import errors


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
  """Linear few-shot accuracy of a model's features on `settings.dataset`
  (evaluator type 'fewshot_linear'; settings: config_lib.fewshot_eval)."""

  def __init__(self, settings: ml_collections.ConfigDict, *, config, model,
               data=None):
    del data  # Its own dataset.
    # TensorFlow loads only when data is read, not when the trainer's
    # modules are imported (the accelerator benchmark runs without it).
    from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
    self.every_steps = settings.every_steps
    self.settings = settings
    self.name = settings.dataset.replace("/", "_")
    # The run's config (resolution, channels, batch sizes) over the
    # evaluator's dataset.
    self._config = ml_collections.ConfigDict(config.to_dict())
    d = self._config.data
    d.name, d.classes, d.sources = settings.dataset, tuple(settings.classes), ()
    d.train_split, d.eval_split = settings.train_split, settings.eval_split
    d.examples_per_class, d.exclusive, d.weights = 0, False, ()
    data = pipeline.Pipeline(d, **parallel.host_layout())
    if data.multi_label:
      raise errors.ConfigError(
          f"{settings.dataset!r} (a 'fewshot_linear' evaluator's dataset) "
          "must be single-label.")
    train = data.train.sources[0]
    labels, mask = train.label_matrix()
    self.num_classes = labels.shape[1]
    subsets = {(k, seed): pipeline.select_fewshot(labels, mask, k, seed)
               for k in settings.shots for seed in settings.seeds}
    needed = np.unique(np.concatenate(list(subsets.values())))
    # Positions within the extracted subset, per (shots, seed).
    self.subsets = {key: np.searchsorted(needed, positions)
                    for key, positions in subsets.items()}
    self.train_y = np.argmax(labels[needed], 1)
    self.eval_y = np.argmax(data.eval.sources[0].label_matrix()[0], 1)
    # Built once per run.
    self._train_batches = data.ordered_batches(
        self._config, pipeline.MixedSource([train.subset(needed)]))
    self._eval_batches = data.ordered_batches(self._config)
    self._features = parallel.per_device(
        lambda variables, images: model.apply(variables, images,
                                              pre_logits=True, train=False))

  def _extract(self, variables, batches) -> np.ndarray:
    """Features of every example of `batches`, in order (all hosts)."""
    outputs = [(self._features(variables, batch["image"]), batch["mask"])
               for batch in parallel.prefetch(iter(batches))]
    features, mask = parallel.gather_batches(outputs)
    return features[mask > 0].astype(np.float64)

  def run(self, variables) -> Dict[str, float]:
    """{'<dataset>_<k>shot': mean accuracy over seeds, ..._std}."""
    train_x = self._extract(variables, self._train_batches)
    eval_x = self._extract(variables, self._eval_batches)
    results = {}
    for k in self.settings.shots:
      accuracies = [
          ridge_accuracy(train_x[self.subsets[(k, s)]],
                         self.train_y[self.subsets[(k, s)]], eval_x,
                         self.eval_y, self.num_classes, self.settings.l2_reg)
          for s in self.settings.seeds]
      results[f"{self.name}_{k}shot"] = float(np.mean(accuracies))
      results[f"{self.name}_{k}shot_std"] = float(np.std(accuracies))
    logging.info("Linear few-shot on %s: %s", self.name,
                 {k: round(v, 4) for k, v in results.items()
                  if not k.endswith("_std")})
    return results


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
  from big_transfer_med import pretrained_weights  # pylint: disable=g-import-not-at-top
  from big_transfer_med import run_dir  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  workdir, checkpoint = paths.absolute(f.workdir), paths.absolute(f.checkpoint)
  if workdir:
    config = run_dir.load_config(workdir)
    variables = run_dir.load_variables(workdir)
  elif checkpoint and f.model:
    config = config_lib.base_config()
    config.model.name, config.data.resolution = f.model, 224
    variables = pretrained_weights.load_body_variables(
        checkpoint, f.model, f.channels or 3)
  else:
    raise errors.ConfigError("Give --workdir, or --checkpoint and --model.")
  # The run's own probe, if it had one, where no flag says otherwise.
  run_probe = next((e for e in config.evals.values()
                    if e.type == "fewshot_linear"), config_lib.fewshot_eval())
  probe = config_lib.fewshot_eval(
      dataset=f.dataset or run_probe.dataset,
      classes=tuple(int(c) for c in f.classes) or (
          () if f.dataset else tuple(run_probe.classes)),
      shots=tuple(int(k) for k in f.shots),
      seeds=tuple(int(s) for s in f.seeds),
      train_split=f.train_split, eval_split=f.eval_split,
      l2_reg=run_probe.l2_reg)
  if not probe.dataset:
    raise errors.ConfigError("Give --dataset (a single-label TFDS name).")
  with config.unlocked():
    config.data.resolution = f.resolution or config.data.resolution
    config.data.channels = f.channels or config.data.channels
    config.data.data_dir = paths.absolute(f.data_dir) or config.data.data_dir
  model = models.from_config(config.model, None)
  evaluator = FewShotEvaluator(probe, config=config, model=model)
  results = evaluator.run(parallel.replicate(variables))
  print(json.dumps({f"fewshot/{k}": v for k, v in results.items()},
                   indent=2, sort_keys=True))


if __name__ == "__main__":
  from big_transfer_med import cli  # pylint: disable=g-import-not-at-top
  _define_flags()
  cli.run(main)
