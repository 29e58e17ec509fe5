"""The one trainer for upstream pre-training and downstream fine-tuning.

Data parallel with `pmap` over all local devices; gradients are summed over
every device of every host and divided by the global example count.
"""
import functools
import json
import os
import time
from typing import Any, Dict

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import jax_utils

from big_transfer_med import errors
from big_transfer_med import losses
from big_transfer_med import metric_io
from big_transfer_med import models
from big_transfer_med import optim
from input_pipeline import pipeline

AXIS = "batch"
CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # Base key; step keys are fold_in(rng, step).


def create_train_state(config, model, optimizer, image_shape) -> TrainState:
  """Initialises parameters (head zero) and optimiser state from config.seed."""
  rng = jax.random.PRNGKey(config.seed)
  init_rng, state_rng = jax.random.split(rng)

  @jax.jit
  def init():
    params = model.init(init_rng, jnp.zeros((1,) + image_shape))["params"]
    return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                      opt_state=optimizer.init(params), rng=state_rng)
  return init()


def loss_mask(batch):
  """Per-example mask, times the per-label mask of multi-label data."""
  if "label_mask" in batch:
    return batch["label_mask"] * batch["mask"][..., None]
  return batch["mask"]


def train_step(state: TrainState, batch, *, model, loss_fn, optimizer,
               schedule):
  """One SGD step on this device's share of the global batch."""

  def loss_of(params):
    logits = model.apply({"params": params}, batch["image"])
    total, count = loss_fn(logits, batch["labels"], loss_mask(batch))
    return total, count

  (total, count), grads = jax.value_and_grad(loss_of, has_aux=True)(
      state.params)
  count = jnp.maximum(jax.lax.psum(count, AXIS), 1.0)
  grads = jax.tree.map(lambda g: jax.lax.psum(g, AXIS) / count, grads)
  loss = jax.lax.psum(total, AXIS) / count
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      "train_loss": loss,
      "learning_rate": schedule(state.step),
      "grad_norm": optax.tree.norm(grads),
      "param_norm": optax.tree.norm(params),
  }
  new_state = state.replace(step=state.step + 1, params=params,
                            opt_state=opt_state)
  return new_state, metrics


def eval_step(params, batch, *, model, loss_fn, multi_label: bool):
  """Sums of loss and correct predictions over this device's valid examples."""
  logits = model.apply({"params": params}, batch["image"])
  mask = batch["mask"]
  total, count = loss_fn(logits, batch["labels"], loss_mask(batch))
  sums = {"loss": total, "loss_count": count, "examples": jnp.sum(mask)}
  if not multi_label:
    correct = jnp.argmax(logits, -1) == jnp.argmax(batch["labels"], -1)
    sums["correct"] = jnp.sum(correct * mask)
  return jax.lax.psum(sums, AXIS)


def evaluate(p_eval_step, params, batches) -> Dict[str, float]:
  """Runs one pass; every example counts exactly once (padding is masked)."""
  totals = None
  for batch in batches:
    sums = jax.tree.map(lambda x: x[0], p_eval_step(params, batch))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  result = {"loss": totals["loss"] / max(totals["loss_count"], 1),
            "examples": totals["examples"]}
  if "correct" in totals:
    result["accuracy"] = totals["correct"] / max(totals["examples"], 1)
  return {k: float(v) for k, v in result.items()}


def _write_json(path: str, obj) -> None:
  """Writes JSON atomically (a crash never leaves half a file)."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _format_duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


class CheckpointStore:
  """orbax CheckpointManager of the (unreplicated) train state."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict):
    self._every = config.checkpoint.every_steps
    self._manager = ocp.CheckpointManager(
        os.path.join(workdir, "checkpoints"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=config.checkpoint.keep, create=True))

  def latest_step(self):
    return self._manager.latest_step()

  def restore(self, template: TrainState) -> TrainState:
    step = self._manager.latest_step()
    target = flax.serialization.to_state_dict(jax.device_get(template))
    restored = self._manager.restore(step, args=ocp.args.StandardRestore(target))
    return flax.serialization.from_state_dict(template, restored)

  def save(self, step: int, state: TrainState, force: bool = False) -> bool:
    """Saves if `step` is a multiple of checkpoint.every_steps (or `force`)."""
    if not (force or (self._every and step % self._every == 0)):
      return False
    tree = flax.serialization.to_state_dict(jax.device_get(state))
    return self._manager.save(step, args=ocp.args.StandardSave(tree),
                              force=force)

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> Dict[str, Any]:
  """Trains (resuming from the latest checkpoint in `workdir`) and evaluates.

  Returns the final evaluation metrics, also written to results.json.
  """
  is_chief = jax.process_index() == 0
  num_devices = jax.local_device_count()
  data = pipeline.Pipeline(config, host_id=jax.process_index(),
                           num_hosts=jax.process_count(),
                           num_local_devices=num_devices)
  steps_per_epoch = len(data.train) / config.batch_size
  optimizer, schedule, total_steps = optim.from_config(config, steps_per_epoch)
  loss_fn = losses.get_loss(config.loss)
  multi_label = data.multi_label
  if multi_label != (config.loss == "sigmoid_xent"):
    raise errors.ConfigError(
        f"config.loss={config.loss!r} does not fit "
        f"{'multi' if multi_label else 'single'}-label data: use "
        f"{'sigmoid_xent' if multi_label else 'softmax_xent'}.")
  model = models.get_model(config.model.name, data.num_classes)
  image_shape = (config.data.resolution, config.data.resolution,
                 config.data.channels)
  logging.info("Model %s, %d classes, input %s; %d training examples "
               "(%.1f steps/epoch), %d steps; %d devices on %d hosts.",
               config.model.name, data.num_classes, image_shape,
               len(data.train), steps_per_epoch, total_steps,
               jax.device_count(), jax.process_count())

  # Only now that config and data are known to be good, touch the workdir.
  os.makedirs(workdir, exist_ok=True)
  if is_chief:
    _write_json(os.path.join(workdir, CONFIG_FILE), config.to_dict())
  state = create_train_state(config, model, optimizer, image_shape)
  store = CheckpointStore(workdir, config)
  if store.latest_step() is not None:
    state = store.restore(state)
    logging.info("Resumed from the checkpoint at step %d.", int(state.step))
  start_step = int(state.step)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info("%s parameters.", f"{num_params:,}")

  p_train_step = jax.pmap(
      functools.partial(train_step, model=model, loss_fn=loss_fn,
                        optimizer=optimizer, schedule=schedule),
      axis_name=AXIS, donate_argnums=(0,))
  p_eval_step = jax.pmap(
      functools.partial(eval_step, model=model, loss_fn=loss_fn,
                        multi_label=multi_label), axis_name=AXIS)
  run_eval = lambda params: evaluate(  # noqa: E731
      p_eval_step, params,
      jax_utils.prefetch_to_device(data.eval_iterator(), 2))

  writer = metric_io.create_writer(workdir, start_step)
  if start_step == 0 and is_chief:
    writer.write_hparams(config.to_dict())
  state = jax_utils.replicate(state)
  batches = jax_utils.prefetch_to_device(data.train_iterator(start_step), 2)
  images_per_step = config.batch_size
  last_time, last_step = time.time(), start_step
  train_metrics = []
  for step in range(start_step + 1, total_steps + 1):
    state, metrics = p_train_step(state, next(batches))
    train_metrics.append(metrics)
    scalars = {}
    if step % config.log_every_steps == 0 or step == total_steps:
      means = jax.tree.map(lambda *x: float(np.mean([v[0] for v in x])),
                           *jax.device_get(train_metrics))
      train_metrics = []
      if not np.isfinite(means["train_loss"]):
        raise errors.TrainingDivergedError(
            f"Loss became {means['train_loss']} by step {step}; the last "
            f"checkpoint (step {store.latest_step()}) is intact. Lower "
            "config.optim.base_lr or check the data.")
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
    if (config.eval_every_steps and step % config.eval_every_steps == 0
        and step != total_steps):
      results = run_eval(state.params)
      scalars.update({f"eval_{k}": v for k, v in results.items()})
      logging.info("step %d: eval %s", step, results)
      last_time = time.time()  # Evaluation time is not training speed.
    if scalars:
      writer.write_scalars(step, scalars)
    if store.save(step, jax_utils.unreplicate(state),
                  force=step == total_steps):
      logging.info("Saved a checkpoint at step %d.", step)

  results = run_eval(state.params)
  writer.write_scalars(total_steps, {f"final_{k}": v for k, v in results.items()})
  writer.flush()
  store.close()
  logging.info("Final evaluation on %s[%s] after %d steps: %s",
               config.data.name, config.data.eval_split, total_steps, results)
  summary = {"metrics": results, "step": total_steps,
             "data": config.data.name, "eval_split": config.data.eval_split,
             "model": config.model.name, "seed": config.seed}
  if is_chief:
    _write_json(os.path.join(workdir, RESULTS_FILE), summary)
  return summary
