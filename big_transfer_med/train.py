"""The one trainer for upstream pre-training and downstream fine-tuning.

Data parallel with `pmap` over all local devices; gradients are summed over
every device of every host and divided by the global example count.
"""
import functools
import json
import os
import time
from typing import Any, Dict, List, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import jax_utils
from flax import traverse_util
from jax.experimental import multihost_utils

from big_transfer_med import atomic_files
from big_transfer_med import checkpoints
from big_transfer_med import config_validation
from big_transfer_med import errors
from big_transfer_med import fewshot
from big_transfer_med import hyperrule
from big_transfer_med import losses
from big_transfer_med import metric_io
from big_transfer_med import metrics as metrics_lib
from big_transfer_med import models
from big_transfer_med import optim
from big_transfer_med import paths
from input_pipeline import pipeline

AXIS = "batch"
CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
LABELS_FILE = "labels.json"
FEWSHOT_FILE = "fewshot_examples.json"


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # Base key; step keys are fold_in(rng, step).


def unreplicate(tree):
  """The first device's copy of a pmap-replicated tree, on the host (without
  a device dispatch per tensor, unlike indexing)."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))[0], tree)


def create_train_state(config, model, optimizer, image_shape) -> TrainState:
  """Initialises parameters (head zero) and optimiser state from config.seed."""
  @jax.jit
  def init(rng):  # The seed is an argument: one executable for every seed.
    init_rng, state_rng = jax.random.split(rng)
    params = model.init(init_rng, jnp.zeros((1,) + image_shape))["params"]
    return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                      opt_state=optimizer.init(params), rng=state_rng)
  return init(jax.random.PRNGKey(config.seed))


def loss_mask(batch):
  """Per-example mask, times the per-label mask of multi-label data."""
  if "label_mask" in batch:
    return batch["label_mask"] * batch["mask"][..., None]
  return batch["mask"]


def mixup(rng, alpha: float, images, labels, mask):
  """MixUp with one lambda ~ Beta(alpha, alpha) per step (the same on every
  device); each example is mixed with its mirror in the per-device batch.
  Soft labels work for softmax and sigmoid losses alike; a label counts only
  where both mixed examples have it (mask product)."""
  lam = jax.random.beta(rng, alpha, alpha)
  mix = lambda x: lam * x + (1.0 - lam) * x[::-1]  # noqa: E731
  return mix(images), mix(labels), mask * mask[::-1]


def train_step(state: TrainState, batch, *, model, loss_fn, optimizer,
               schedule, mixup_alpha: float = 0.0):
  """One SGD step on this device's share of the global batch."""
  images, labels, mask = batch["image"], batch["labels"], loss_mask(batch)
  if mixup_alpha:
    rng = jax.random.fold_in(state.rng, state.step)
    images, labels, mask = mixup(rng, mixup_alpha, images, labels, mask)

  def loss_of(params):
    logits = model.apply({"params": params}, images)
    total, count = loss_fn(logits, labels, mask)
    return total, count

  (total, count), grads = jax.value_and_grad(loss_of, has_aux=True)(
      state.params)
  count = jnp.maximum(jax.lax.psum(count, AXIS), 1.0)
  grads = jax.tree.map(lambda g: jax.lax.psum(g, AXIS) / count, grads)
  loss = jax.lax.psum(total, AXIS) / count
  # The optimiser zeroes the update of a step with a non-finite gradient
  # (optax.apply_if_finite); the host applies config.on_nonfinite.
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.tree.norm(grads)
  metrics = {
      "train_loss": loss,
      "learning_rate": schedule(state.step),
      "grad_norm": grad_norm,
      "param_norm": optax.tree.norm(params),
      "finite": (jnp.isfinite(loss) & jnp.isfinite(grad_norm)).astype(
          jnp.float32),
  }
  new_state = state.replace(step=state.step + 1, params=params,
                            opt_state=opt_state)
  return new_state, metrics


def eval_step(params, batch, *, model, loss_fn, multi_label: bool,
              per_class: bool):
  """Sums of loss and correct predictions over this device's valid examples
  (psummed), and with `per_class` its scores, labels and masks."""
  logits = model.apply({"params": params}, batch["image"])
  mask = batch["mask"]
  total, count = loss_fn(logits, batch["labels"], loss_mask(batch))
  sums = {"loss": total, "loss_count": count, "examples": jnp.sum(mask)}
  if not multi_label:
    correct = jnp.argmax(logits, -1) == jnp.argmax(batch["labels"], -1)
    sums["correct"] = jnp.sum(correct * mask)
  out = {"sums": jax.lax.psum(sums, AXIS)}
  if per_class:
    scores = jax.nn.sigmoid(logits) if multi_label else jax.nn.softmax(logits)
    out["outputs"] = {"scores": scores, "labels": batch["labels"],
                      "label_mask": batch.get("label_mask",
                                              jnp.ones_like(scores)),
                      "mask": mask}
  return out


def evaluate(p_eval_step, params, batches, multi_label: bool = False,
             label_names=None) -> Dict[str, Any]:
  """Runs one pass; every example counts exactly once (padding is masked),
  whatever the device and host count."""
  # Sums and outputs stay on the devices until the pass is over: one
  # transfer per evaluation, none per batch.
  totals, outputs = None, []
  for batch in batches:
    out = p_eval_step(params, batch)
    totals = out["sums"] if totals is None else jax.tree.map(
        jnp.add, totals, out["sums"])
    if "outputs" in out:
      outputs.append(out["outputs"])
  totals = unreplicate(totals)  # psummed: every device holds the totals.
  outputs = [jax.tree.map(lambda x: np.asarray(x).reshape(
      (-1,) + x.shape[2:]), o) for o in jax.device_get(outputs)]
  result = {"loss": totals["loss"] / max(totals["loss_count"], 1),
            "examples": totals["examples"]}
  if "correct" in totals:
    result["accuracy"] = totals["correct"] / max(totals["examples"], 1)
  result = {k: float(v) for k, v in result.items()}
  if outputs:
    outputs = {k: np.concatenate([o[k] for o in outputs])
               for k in outputs[0]}
    if jax.process_count() > 1:
      outputs = multihost_utils.process_allgather(outputs, tiled=True)
    valid = outputs["mask"] > 0
    per_class = metrics_lib.classification_metrics(
        outputs["scores"][valid], outputs["labels"][valid],
        outputs["label_mask"][valid], multi_label, label_names)
    per_class.pop("accuracy", None)  # Exact already, from the sums.
    result.update(per_class)
  return result


def scalars_of(results: Dict[str, Any], prefix: str) -> Dict[str, float]:
  """The scalar entries of `results`, for metric writers."""
  return {f"{prefix}{k}": v for k, v in results.items()
          if isinstance(v, (int, float))}


def _write_json(path: str, obj) -> None:
  """Writes JSON atomically (a crash never leaves half a file)."""
  with atomic_files.open_atomically(path) as f:
    json.dump(obj, f, indent=2, sort_keys=True)


class NonFiniteGuard:
  """Applies config.on_nonfinite to the per-step `finite` flags."""

  def __init__(self, config):
    self._skip = config.on_nonfinite == "skip"
    self._max_consecutive = config.max_consecutive_nonfinite
    self._consecutive = 0

  def check(self, first_step: int, flags: List[float], losses: List[float],
            last_checkpoint) -> None:
    """`flags[i]` is 1 where step first_step + i was finite; raises
    TrainingDivergedError when the run must stop."""
    for i, (finite, loss) in enumerate(zip(flags, losses)):
      if finite:
        self._consecutive = 0
        continue
      step = first_step + i
      self._consecutive += 1
      kept = (f"Parameters were left unchanged by that step and the last "
              f"checkpoint (step {last_checkpoint}) is intact.")
      if not self._skip:
        raise errors.TrainingDivergedError(
            f"Loss or gradient became non-finite (loss {loss}) at step "
            f"{step}. {kept} Lower config.optim.base_lr, check the data, or "
            "set config.on_nonfinite='skip' to skip such steps.")
      if self._consecutive > self._max_consecutive:
        raise errors.TrainingDivergedError(
            f"{self._consecutive} consecutive non-finite steps up to step "
            f"{step} (config.max_consecutive_nonfinite="
            f"{self._max_consecutive}): the run has diverged. {kept}")
      logging.warning("Step %d: non-finite loss %s, step skipped.", step, loss)


def _format_duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


class CheckpointStore:
  """orbax CheckpointManager of the (unreplicated) train state."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict):
    self._every = config.checkpoint.every_steps
    self._manager = ocp.CheckpointManager(
        os.path.join(workdir, "checkpoints"),
        # A save is written to a temporary directory and renamed when
        # complete, so a crash mid-save leaves the previous checkpoints as
        # they were; the leftover is removed on the next start.
        options=ocp.CheckpointManagerOptions(
            max_to_keep=config.checkpoint.keep, create=True,
            cleanup_tmp_directories=True))

  def latest_step(self):
    return self._manager.latest_step()

  def restore(self, template: TrainState) -> TrainState:
    step = self._manager.latest_step()
    target = flax.serialization.to_state_dict(jax.device_get(template))
    restored = self._manager.restore(step, args=ocp.args.StandardRestore(target))
    return flax.serialization.from_state_dict(template, restored)

  def due(self, step: int) -> bool:
    """Whether `step` is a multiple of checkpoint.every_steps."""
    return bool(self._every and step % self._every == 0)

  def save(self, step: int, state: TrainState, force: bool = False) -> bool:
    """Saves `state` (unreplicated) at `step`."""
    tree = flax.serialization.to_state_dict(jax.device_get(state))
    return self._manager.save(step, args=ocp.args.StandardSave(tree),
                              force=force)

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def replicate(tree):
  """Copies `tree` to every local device with the sharding the train step's
  outputs have (pmap over the same axis name: its mesh axis is part of the
  sharding), so the step is compiled once, not again at step 2."""
  return jax.pmap(lambda x: x, axis_name=AXIS)(jax_utils.replicate(tree))


# Keys that change how a run is watched, not what it computes: a resumed run
# may change them freely.
RUN_NEUTRAL_KEYS = (
    "log_every_steps", "eval_every_steps", "eval_per_class", "primary_metric",
    "checkpoint.", "fewshot.", "on_nonfinite", "max_consecutive_nonfinite",
    "data.data_dir", "data.prefetch", "data.num_threads",
    "data.eval_batch_size", "data.eval_split")


def changed_keys(saved: Dict[str, Any], config) -> List[str]:
  """Keys whose value differs between a saved config.json and `config`,
  except RUN_NEUTRAL_KEYS, as 'key: old -> new'."""
  old = traverse_util.flatten_dict(saved, sep=".")
  new = traverse_util.flatten_dict(  # Through JSON: tuples become lists.
      json.loads(json.dumps(config.to_dict())), sep=".")
  return [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}"
          for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k) and not any(
              k == n or (n.endswith(".") and k.startswith(n))
              for n in RUN_NEUTRAL_KEYS)]


def _check_saved_config(workdir: str, config, allow_change: bool) -> None:
  """Refuses to continue a workdir whose run was configured differently."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  changed = changed_keys(saved, config)
  if not changed:
    return
  if not allow_change:
    raise errors.ConfigError(
        f"{workdir} holds a run with another config ({path}); continuing it "
        "with this one would not be the same run:\n  " + "\n  ".join(changed)
        + "\nUse another --workdir, or pass --allow_config_change to "
        "continue this run with the new values.")
  if jax.process_index() == 0:
    kept = os.path.join(workdir, f"config.before_{time.strftime('%Y%m%d-%H%M%S')}.json")
    os.replace(path, kept)
    logging.warning("Config changed on resume (the old one is kept as %s): "
                    "%s", kept, "; ".join(changed))


def _initialise_from(config, state: TrainState, optimizer
                     ) -> Tuple[TrainState, Dict[str, List[str]]]:
  """Loads config.init.checkpoint into a fresh state; returns it and the
  report of loaded / skipped / initialised tensors."""
  params, report = checkpoints.load_pretrained(
      config.init.checkpoint, state.params, tuple(config.init.dont_load))
  logging.info("Initialised from %s: %d tensors loaded, %d initialised (%s), "
               "%d in the file skipped (%s).", config.init.checkpoint,
               len(report["loaded"]), len(report["initialised"]),
               ", ".join(report["initialised"]) or "-", len(report["skipped"]),
               ", ".join(report["skipped"][:10]) or "-")
  return state.replace(params=params, opt_state=optimizer.init(params)), report


def _resolve_config(config, data) -> ml_collections.ConfigDict:
  """Applies BiT-HyperRule (if asked) and checks what it leaves."""
  config = hyperrule.apply(config, len(data.train), data.image_size)
  config_validation.validate(config, resolved=True)
  metrics = ["loss"] + ([] if data.multi_label else ["accuracy"]) + (
      ["mean_auc", "map"] if config.eval_per_class else [])
  if not config.primary_metric:
    config.primary_metric = (
        "accuracy" if not data.multi_label else
        "mean_auc" if config.eval_per_class else "loss")
  if config.primary_metric not in metrics:
    raise errors.ConfigError(
        f"config.primary_metric={config.primary_metric!r}: this run reports "
        f"{metrics}.")
  if data.multi_label != (config.loss == "sigmoid_xent"):
    raise errors.ConfigError(
        f"config.loss={config.loss!r} does not fit "
        f"{'multi' if data.multi_label else 'single'}-label data: use "
        f"{'sigmoid_xent' if data.multi_label else 'softmax_xent'}.")
  return config


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_config_change: bool = False) -> Dict[str, Any]:
  """Trains (resuming from the latest checkpoint in `workdir`) and evaluates.

  A workdir whose config.json differs from `config` in a key that changes
  the run is refused unless `allow_config_change`. Relative paths (the
  workdir, config.init.checkpoint, config.data.data_dir) are taken from the
  working directory. Returns the final summary, also written to results.json.
  """
  workdir = paths.absolute(workdir)
  config = paths.absolute_config_paths(config)
  config_validation.validate(config)  # Before any data is read.
  is_chief = jax.process_index() == 0
  num_devices = jax.local_device_count()
  data = pipeline.Pipeline(config, host_id=jax.process_index(),
                           num_hosts=jax.process_count(),
                           num_local_devices=num_devices)
  config = data.config = _resolve_config(config, data)
  steps_per_epoch = len(data.train) / config.batch_size
  optimizer, schedule, total_steps = optim.from_config(config, steps_per_epoch)
  loss_fn = losses.get_loss(config.loss)
  multi_label = data.multi_label
  model = models.get_model(config.model.name, data.num_classes,
                           config.model.precision)
  image_shape = (config.data.resolution, config.data.resolution,
                 config.data.channels)
  fewshot_evaluator = fewshot.from_config(config, model)
  logging.info("Model %s, %d classes, input %s; %d training examples "
               "(%.1f steps/epoch), %d steps; %d devices on %d hosts.",
               config.model.name, data.num_classes, image_shape,
               len(data.train), steps_per_epoch, total_steps,
               jax.device_count(), jax.process_count())

  state = create_train_state(config, model, optimizer, image_shape)
  resuming = os.path.isdir(os.path.join(workdir, "checkpoints"))
  store = CheckpointStore(workdir, config) if resuming else None
  init_report = None
  if store is None or store.latest_step() is None:
    if config.init.checkpoint:
      # Before anything is written: a checkpoint that does not fit fails here.
      state, init_report = _initialise_from(config, state, optimizer)

  _check_saved_config(workdir, config, allow_config_change)
  # Only now that config, data and weights are known to be good, touch the
  # workdir.
  os.makedirs(workdir, exist_ok=True)
  store = store or CheckpointStore(workdir, config)
  if is_chief:
    _write_json(os.path.join(workdir, CONFIG_FILE), config.to_dict())
    _write_json(os.path.join(workdir, LABELS_FILE),
                {"label_names": data.label_names, "multi_label": multi_label})
    if data.fewshot_positions is not None:
      _write_json(os.path.join(workdir, FEWSHOT_FILE), {
          "examples_per_class": config.data.examples_per_class,
          "fewshot_seed": config.data.fewshot_seed,
          "split": config.data.train_split, "records": data.fewshot_records,
          "ids": data.fewshot_ids, "positives_per_label": data.fewshot_counts})
  if store.latest_step() is not None:
    state = store.restore(state)
    logging.info("Resumed from the checkpoint at step %d.", int(state.step))
  start_step = int(state.step)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info("%s parameters.", f"{num_params:,}")

  p_train_step = jax.pmap(
      functools.partial(train_step, model=model, loss_fn=loss_fn,
                        optimizer=optimizer, schedule=schedule,
                        mixup_alpha=config.mixup_alpha or 0.0),
      axis_name=AXIS, donate_argnums=(0,))
  p_eval_step = jax.pmap(
      functools.partial(eval_step, model=model, loss_fn=loss_fn,
                        multi_label=multi_label,
                        per_class=config.eval_per_class), axis_name=AXIS)
  run_eval = lambda params: evaluate(  # noqa: E731
      p_eval_step, params,
      jax_utils.prefetch_to_device(data.eval_iterator(), 2), multi_label,
      data.label_names)

  writer = metric_io.create_writer(workdir, start_step)
  if start_step == 0 and is_chief:
    writer.write_hparams(config.to_dict())
  state = replicate(state)
  batches = jax_utils.prefetch_to_device(data.train_iterator(start_step), 2)
  images_per_step = config.batch_size
  last_time, last_step = time.time(), start_step
  train_metrics, unchecked = [], []
  guard = NonFiniteGuard(config)
  for step in range(start_step + 1, total_steps + 1):
    state, metrics = p_train_step(state, next(batches))
    train_metrics.append(metrics)
    unchecked.append(metrics)
    scalars = {}
    log_now = step % config.log_every_steps == 0 or step == total_steps
    save_now = store.due(step) or step == total_steps
    if log_now or save_now:
      # Before any checkpoint: no state after a non-finite step is saved
      # under 'stop'.
      fetched = jax.device_get([(m["finite"], m["train_loss"])
                                for m in unchecked])  # One transfer, no ops.
      guard.check(step - len(unchecked) + 1, [f[0] for f, _ in fetched],
                  [loss[0] for _, loss in fetched],
                  last_checkpoint=store.latest_step())
      unchecked = []
    if log_now:
      rows = [{k: float(v[0]) for k, v in m.items()}
              for m in jax.device_get(train_metrics)]
      train_metrics = []
      finite_rows = [r for r in rows if r["finite"]] or rows
      means = {k: float(np.mean([r[k] for r in finite_rows]))
               for k in rows[0] if k != "finite"}
      means["nonfinite_steps"] = float(len(rows) - sum(r["finite"]
                                                       for r in rows))
      now = time.time()
      steps_per_sec = (step - last_step) / max(now - last_time, 1e-9)
      last_time, last_step = now, step
      means["steps_per_sec"] = steps_per_sec
      means["images_per_sec"] = steps_per_sec * images_per_step
      scalars.update(means)
      logging.info(
          "step %d/%d: loss %.4f, lr %.5f | %.2f steps/s, %.1f images/s, "
          "ETA %s", step, total_steps, means["train_loss"],
          means["learning_rate"], steps_per_sec, means["images_per_sec"],
          _format_duration((total_steps - step) / max(steps_per_sec, 1e-9)))
    if step != total_steps and (
        config.eval_every_steps and step % config.eval_every_steps == 0):
      results = run_eval(state.params)
      scalars.update(scalars_of(results, "eval_"))
      logging.info("step %d: eval %s", step, scalars_of(results, ""))
      last_time = time.time()  # Evaluation time is not training speed.
    if step != total_steps and fewshot_evaluator and (
        config.fewshot.every_steps and step % config.fewshot.every_steps == 0):
      scalars.update(fewshot_evaluator.run(state.params))
      last_time = time.time()
    if scalars:
      writer.write_scalars(step, scalars)
    # Unreplicating costs a dispatch per tensor: only when saving.
    if save_now:
      if store.save(step, unreplicate(state),
                    force=step == total_steps):
        logging.info("Saved a checkpoint at step %d.", step)

  results = run_eval(state.params)
  final_scalars = scalars_of(results, "final_")
  fewshot_results = (fewshot_evaluator.run(state.params)
                     if fewshot_evaluator else {})
  final_scalars.update(fewshot_results)
  writer.write_scalars(total_steps, final_scalars)
  writer.flush()
  store.close()
  logging.info("Final evaluation on %s[%s] after %d steps: %s",
               config.data.name, config.data.eval_split, total_steps,
               scalars_of(results, ""))
  target = ("+".join(config.data.sources) + f":{config.data.label_set}"
            if config.data.sources else config.data.name)
  if config.data.classes:
    target += ":" + "_".join(map(str, config.data.classes))
  if config.data.exclusive:
    target += ":exclusive"
  summary = {
      "primary_metric": config.primary_metric, "target": target,
      "metrics": results, "fewshot": fewshot_results, "step": total_steps,
      "data": ("+".join(config.data.sources) if config.data.sources
               else config.data.name),
      "label_set": config.data.label_set if config.data.sources else None,
      "eval_split": config.data.eval_split, "model": config.model.name,
      "seed": config.seed, "init_checkpoint": config.init.checkpoint or None,
      "examples_per_class": config.data.examples_per_class or None,
      "fewshot_seed": (config.data.fewshot_seed
                       if config.data.examples_per_class else None),
      "train_examples": len(data.train), "label_names": data.label_names,
      # Counted in the optimiser state, so across restarts too.
      "nonfinite_steps": int(unreplicate(state.opt_state.total_notfinite)),
  }
  if init_report is not None:
    summary["init"] = {k: len(v) for k, v in init_report.items()}
    summary["init"]["initialised_names"] = init_report["initialised"]
  if is_chief:
    _write_json(os.path.join(workdir, RESULTS_FILE), summary)
  return summary
