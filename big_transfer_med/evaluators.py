"""Evaluators by name: `config.evals` maps a name to a ConfigDict with the
evaluator's `type` (a key of EVALUATORS), `every_steps` (0: only at the end
of the run) and its own settings. Every evaluator runs at the end of a run.

An evaluator is built once per run (its input pipelines too) as
`EVALUATORS[type](settings, config=..., model=..., data=...)` and has
`run(variables) -> {metric: float}` over replicated model variables. A new
task adds a class here (and its settings' rules to config_validation), not
an `if` in the trainer.
"""
from typing import Any, Dict

import jax
import jax.numpy as jnp
import ml_collections

from big_transfer_med import fewshot
from big_transfer_med import losses
from big_transfer_med import metrics
from big_transfer_med import parallel
from big_transfer_med import segmentation_metrics
from input_pipeline import errors


def eval_step(variables, batch, *, model, loss_fn, multi_label: bool,
              per_class: bool):
  """Sums of loss and correct predictions over this device's valid examples
  (summed over devices), and with `per_class` its scores, labels and masks."""
  logits = model.apply(variables, batch["image"], train=False)
  mask = batch["mask"]
  total, count = loss_fn(logits, batch["labels"], losses.loss_mask(batch))
  sums = {"loss": total, "loss_count": count, "examples": jnp.sum(mask)}
  if not multi_label:
    correct = jnp.argmax(logits, -1) == jnp.argmax(batch["labels"], -1)
    sums["correct"] = jnp.sum(correct * mask)
  out = {"sums": parallel.sum_over_devices(sums)}
  if per_class:
    scores = jax.nn.sigmoid(logits) if multi_label else jax.nn.softmax(logits)
    out["outputs"] = {"scores": scores, "labels": batch["labels"],
                      "label_mask": batch.get("label_mask",
                                              jnp.ones_like(scores)),
                      "mask": mask}
  return out


def one_pass(batches, step, variables):
  """Runs `step` over every batch: (the sum of its 'sums' over batches, its
  'outputs' (if any) of every example of every host in order, or None).
  Both stay on the devices until the pass is over: one transfer (and one
  gather across hosts) per evaluation, none per batch."""
  totals, outputs = None, []
  for batch in parallel.prefetch(iter(batches)):
    out = step(variables, batch)
    totals = out["sums"] if totals is None else jax.tree.map(
        jnp.add, totals, out["sums"])
    if "outputs" in out:
      outputs.append(out["outputs"])
  # Every device holds the sums.
  return (parallel.unreplicate(totals),
          parallel.gather_batches(outputs) if outputs else None)


class ClassificationEvaluator:
  """Loss and accuracy (single-label) over one pass of the run's eval split
  (config.data.eval_split); with `per_class`, ROC-AUC and average precision
  per class and their means (every prediction goes to the host: switch off
  for huge label spaces). Every example counts exactly once (padding is
  masked), whatever the device and host count."""

  def __init__(self, settings: ml_collections.ConfigDict, *, config, model,
               data):
    self.every_steps = settings.every_steps
    self.multi_label, self.label_names = data.multi_label, data.label_names
    self._batches = data.ordered_batches(config)  # Built once per run.
    self._step = parallel.per_device_with(
        eval_step, model=model, loss_fn=losses.get_loss(config.loss),
        multi_label=bool(data.multi_label), per_class=bool(settings.per_class))

  def run(self, variables) -> Dict[str, Any]:
    totals, outputs = one_pass(self._batches, self._step, variables)
    result = {"loss": totals["loss"] / max(totals["loss_count"], 1),
              "examples": totals["examples"]}
    if "correct" in totals:
      result["accuracy"] = totals["correct"] / max(totals["examples"], 1)
    result = {k: float(v) for k, v in result.items()}
    if outputs is not None:
      valid = outputs["mask"] > 0
      per_class = metrics.classification_metrics(
          outputs["scores"][valid], outputs["labels"][valid],
          outputs["label_mask"][valid], self.multi_label, self.label_names)
      per_class.pop("accuracy", None)  # Exact already, from the sums.
      result.update(per_class)
    return result


def segmentation_eval_step(variables, batch, *, model, loss_fn):
  """Loss sums over this device's valid images (summed over devices) and
  each image's overlap counts (segmentation_metrics.overlap_counts)."""
  logits = model.apply(variables, batch["image"], train=False)
  total, count = loss_fn(logits, batch["labels"], batch["mask"])
  sums = {"loss": total, "loss_count": count}
  return {"sums": parallel.sum_over_devices(sums), "outputs": {
      "counts": segmentation_metrics.overlap_counts(logits, batch["labels"]),
      "mask": batch["mask"]}}


class SegmentationEvaluator:
  """Loss, Dice and IoU (per class and their means; thresholds and the
  empty-mask convention in segmentation_metrics) over one pass of the run's
  eval split. Each image counts once (padding is masked), whatever the
  device and host count: only its overlap counts leave the devices."""

  def __init__(self, settings: ml_collections.ConfigDict, *, config, model,
               data):
    self.every_steps = settings.every_steps
    self.class_names = data.label_names
    self._batches = data.ordered_batches(config)
    self._step = parallel.per_device_with(
        segmentation_eval_step, model=model,
        loss_fn=losses.get_loss(config.loss))

  def run(self, variables) -> Dict[str, Any]:
    totals, outputs = one_pass(self._batches, self._step, variables)
    result = segmentation_metrics.scores(outputs["counts"], outputs["mask"],
                                         self.class_names)
    result["loss"] = float(totals["loss"] / max(totals["loss_count"], 1))
    return result


def reported_metrics(settings: ml_collections.ConfigDict, data) -> list:
  """The metrics a main evaluator (MAIN_TYPES) with `settings` reports as
  a run's `metrics`: config.primary_metric and checkpoint.best_metric name
  one of these."""
  if settings.type == "segmentation":
    return ["loss", "dice", "iou", "dice_pooled"]
  return (["loss"] + ([] if data.multi_label else ["accuracy"])
          + (["mean_auc", "map"] if settings.per_class else []))


# The first evaluator of these types is the run's main one.
MAIN_TYPES = ("classification", "segmentation")

EVALUATORS = {"classification": ClassificationEvaluator,
              "segmentation": SegmentationEvaluator,
              "fewshot_linear": fewshot.FewShotEvaluator}


def from_config(config: ml_collections.ConfigDict, model, data
                ) -> Dict[str, Any]:
  """{name: evaluator} for config.evals (ConfigDict order: by name)."""
  built = {}
  for name, settings in config.evals.items():
    if settings.type not in EVALUATORS:
      raise errors.ConfigError(
          f"config.evals.{name}.type={settings.type!r}: expected one of "
          f"{sorted(EVALUATORS)}.")
    built[name] = EVALUATORS[settings.type](settings, config=config,
                                            model=model, data=data)
  return built


def scalars(name: str, results: Dict[str, Any]) -> Dict[str, float]:
  """The scalar results of evaluator `name` as '<name>/<metric>'."""
  return {f"{name}/{k}": v for k, v in results.items()
          if isinstance(v, (int, float))}
