"""The one trainer for upstream pre-training and downstream fine-tuning.

Data parallel over all devices (parallel.py); gradients are summed over
every device of every host and divided by the global example count. Parts
come by name: the model (models.py), the loss (losses.py), evaluators
(config.evals, evaluators.py) and the data (input_pipeline.pipeline); the
state and the step that updates it are train_state.py.
"""
import os
from typing import Any, Dict, Tuple

import jax
import ml_collections
from absl import logging
from clu import periodic_actions

from big_transfer_med import compile_clock
from big_transfer_med import config_validation
from big_transfer_med import evaluators
from big_transfer_med import hyperrule
from big_transfer_med import losses
from big_transfer_med import metric_writers
from big_transfer_med import models
from big_transfer_med import optim
from big_transfer_med import parallel
from big_transfer_med import paths
from big_transfer_med import preemption
from big_transfer_med import pretrained_weights
from big_transfer_med import run_dir
from big_transfer_med import train_metrics
from big_transfer_med import train_state
from input_pipeline import errors


def _main_eval(config) -> Tuple[str, Any]:
  """(name, settings) of the first classification or segmentation
  evaluator, or (None, None): its results are the run's `metrics`."""
  return next(((n, e) for n, e in config.evals.items()
               if e.type in evaluators.MAIN_TYPES), (None, None))


def check_micro_batches(batch_size: int, devices: int, accum_steps: int) -> None:
  """global batch = devices x micro-batch x accum_steps, in whole numbers."""
  if batch_size % (devices * accum_steps):
    per_device = batch_size / devices
    raise errors.ConfigError(
        f"config.batch_size={batch_size} over {devices} devices is "
        f"{per_device:g} per device, which config.accum_steps={accum_steps} "
        "cannot split into equal micro-batches: choose them so that "
        "batch_size = devices x micro-batch x accum_steps.")


def resolve_config(config, data) -> ml_collections.ConfigDict:
  """The run's final config: BiT-HyperRule applied (if asked) from the data's
  size, the seed's warmup K and the primary metric chosen, and what they
  leave checked."""
  config = hyperrule.apply(config, len(data.train), data.image_size)
  if config.loss == losses.BY_LABELS:
    config.loss = "sigmoid_xent" if data.multi_label else "softmax_xent"
  if config.schedule.warmup_start == "lr_over_k" and not config.schedule.warmup_k:
    config.schedule.warmup_k = jax.device_count()
  config_validation.validate(config, resolved=True)
  check_micro_batches(config.batch_size, jax.device_count(), config.accum_steps)
  _check_task(config, data)
  name, settings = _main_eval(config)
  reported = [] if name is None else evaluators.reported_metrics(settings,
                                                                 data)
  if not config.primary_metric and reported:
    config.primary_metric = (
        "dice" if config.task == "segmentation" else
        "accuracy" if not data.multi_label else
        "mean_auc" if settings.per_class else "loss")
  if config.primary_metric and config.primary_metric not in reported:
    raise errors.ConfigError(
        f"config.primary_metric={config.primary_metric!r}: this run's "
        f"{settings.type if settings else 'main'} evaluator reports "
        f"{reported}.")
  return config


def _check_task(config, data) -> None:
  """config.task and config.loss fit the data (masks or labels)."""
  if config.task != data.task:
    named = "+".join(config.data.sources) or config.data.name
    raise errors.ConfigError(
        f"config.task={config.task!r} but {named} is "
        f"{data.task} data: set config.task={data.task!r} (and a "
        f"{data.task} evaluator and loss).")
  if config.task == "segmentation":
    if config.loss not in losses.SEGMENTATION_LOSSES:
      raise errors.ConfigError(
          f"config.loss={config.loss!r} does not fit segmentation: use one "
          f"of {list(losses.SEGMENTATION_LOSSES)}.")
    return
  if data.multi_label != (config.loss == "sigmoid_xent"):
    raise errors.ConfigError(
        f"config.loss={config.loss!r} does not fit "
        f"{'multi' if data.multi_label else 'single'}-label data: use "
        f"{'sigmoid_xent' if data.multi_label else 'softmax_xent'}.")


def _initial_state(config, model, optimizer, image_shape, workdir: str):
  """The state to start from: fresh from config.seed, then loaded from
  config.init.checkpoint unless the workdir has a checkpoint to resume
  (restored once the workdir is known to be this run's). Returns (state,
  the workdir's CheckpointStore or None, the loading report or None)."""
  state = train_state.create_train_state(config, model, optimizer, image_shape)
  store = (run_dir.CheckpointStore(workdir, config.checkpoint)
           if run_dir.has_checkpoints(workdir) else None)
  if (store and store.latest_step() is not None) or not config.init.checkpoint:
    return state, store, None
  # Before anything is written: a checkpoint that does not fit fails here.
  run_dir.check_init_normalization(config)
  variables, report = pretrained_weights.load_pretrained(
      config.init.checkpoint, train_state.variables_of(state),
      tuple(config.init.dont_load))
  logging.info("Initialised from %s (%s): %d tensors loaded, %d initialised (%s), "
               "%d in the file skipped (%s).", config.init.checkpoint,
               report["checkpoint"],
               len(report["loaded"]), len(report["initialised"]),
               ", ".join(report["initialised"]) or "-", len(report["skipped"]),
               ", ".join(report["skipped"][:10]) or "-")
  params = variables.pop("params")
  state = state.replace(params=params, model_state=variables,
                        opt_state=optimizer.init(params))
  return state, store, report


def _write_run_files(workdir: str, config, data) -> None:
  """config.json, labels.json and (few-shot runs) the chosen examples."""
  if jax.process_index() != 0:
    return
  write = lambda name, obj: run_dir.write_json(  # noqa: E731
      os.path.join(workdir, name), obj)
  write(run_dir.CONFIG_FILE, config.to_dict())
  write(run_dir.LABELS_FILE, {"label_names": data.label_names,
                              "multi_label": data.multi_label,
                              "task": data.task})
  if data.fewshot_positions is not None:
    write(run_dir.FEWSHOT_FILE, {
        "examples_per_class": config.data.examples_per_class,
        "fewshot_seed": config.data.fewshot_seed,
        "split": config.data.train_split, "records": data.fewshot_records,
        "ids": data.fewshot_ids, "positives_per_label": data.fewshot_counts})


def _run_evals(evals, state, step: int, writer, periodic: bool
               ) -> Dict[str, Dict[str, Any]]:
  """Runs the evaluators due at `step` (all unless `periodic`); writes and
  logs their results."""
  results = {}
  for name, evaluator in evals.items():
    if periodic and not (evaluator.every_steps
                         and step % evaluator.every_steps == 0):
      continue
    results[name] = evaluator.run(train_state.variables_of(state))
    writer.write_scalars(step, evaluators.scalars(name, results[name]))
    logging.info("step %d: %s %s", step, name,
                 evaluators.scalars(name, results[name]))
  return results


def _keep_if_best(best, step: int, results, state) -> None:
  """Offers the state to the best-checkpoint store (if the run keeps one)."""
  if best and best.offer(step, results, lambda: parallel.unreplicate(state)):
    logging.info("Kept step %d as the best %s.", step, best.metric)


def _summary(config, data, results, state, init_report) -> Dict[str, Any]:
  """What results.json holds: the main (classification or segmentation)
  evaluator's metrics as `metrics`, the few-shot probes' as `fewshot`, and
  what the run was."""
  c = config.data
  name, _ = _main_eval(config)
  target = (f"{'+'.join(c.sources)}:{c.label_set}" if c.sources else c.name)
  if c.classes:
    target += ":" + "_".join(map(str, c.classes))
  if c.exclusive:
    target += ":exclusive"
  summary = {
      "primary_metric": config.primary_metric, "target": target,
      "task": config.task,
      "metrics": results.get(name, {}), "evals": results,
      "fewshot": {f"{n}/{k}": v for n, r in results.items()
                  if config.evals[n].type == "fewshot_linear"
                  for k, v in r.items()},
      "step": int(parallel.unreplicate(state.step)),
      "data": "+".join(c.sources) if c.sources else c.name,
      "label_set": c.label_set if c.sources else None,
      "eval_split": c.eval_split, "model": config.model.name,
      "recipe": config.recipe,
      "seed": config.seed, "init_checkpoint": config.init.checkpoint or None,
      "examples_per_class": c.examples_per_class or None,
      "fewshot_seed": c.fewshot_seed if c.examples_per_class else None,
      "train_examples": len(data.train), "label_names": data.label_names,
      # Counted in the optimiser state, so across restarts too.
      "nonfinite_steps": int(parallel.unreplicate(
          state.opt_state.total_notfinite)),
  }
  if init_report is not None:
    summary["init"] = {k: len(init_report[k])
                       for k in ("loaded", "skipped", "initialised")}
    summary["init"].update(initialised_names=init_report["initialised"],
                           skipped_names=init_report["skipped"],
                           checkpoint=init_report["checkpoint"])
  return summary


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_config_change: bool = False) -> Dict[str, Any]:
  """Trains (resuming from the latest checkpoint in `workdir`) and evaluates.

  A workdir whose config.json differs from `config` in a key that changes
  the run is refused unless `allow_config_change`. Relative paths (the
  workdir, config.init.checkpoint, config.data.data_dir) are taken from the
  working directory. Returns the final summary, also written to results.json
  (with the run's wall, compile and checkpoint-wait seconds under `timing`).
  """
  with compile_clock.CompileClock() as clock:
    return _train_and_evaluate(config, workdir, allow_config_change, clock)


def _train_and_evaluate(config, workdir: str, allow_config_change: bool,
                        clock: compile_clock.CompileClock) -> Dict[str, Any]:
  workdir = paths.absolute(workdir)
  config = paths.absolute_config_paths(config)
  config_validation.validate(config)  # Before any data is read.
  # TensorFlow loads only here: the train step runs without it.
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  data = pipeline.Pipeline(config.data, **parallel.host_layout())
  config = resolve_config(config, data)  # Final before any batch is built.
  steps_per_epoch = len(data.train) / config.batch_size
  optimizer, schedule, total_steps = optim.from_config(config, steps_per_epoch)
  model = models.from_config(config.model, data.num_classes,
                             bn_axis_name=parallel.AXIS, task=config.task)
  image_shape = (config.data.resolution, config.data.resolution,
                 config.data.channels)
  evals = evaluators.from_config(config, model, data)
  # Once the data are found: a run that cannot start prints its error alone.
  logging.info("JAX process %d/%d, local devices %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  logging.info("Model %s, %d classes, input %s; %d training examples "
               "(%.1f steps/epoch), %d steps; %d devices on %d hosts.",
               config.model.name, data.num_classes, image_shape,
               len(data.train), steps_per_epoch, total_steps,
               jax.device_count(), jax.process_count())

  state, store, init_report = _initial_state(config, model, optimizer,
                                             image_shape, workdir)
  run_dir.check_saved_config(workdir, config, allow_config_change)
  # Only now that config, data and weights are known to be good, touch the
  # workdir.
  os.makedirs(workdir, exist_ok=True)
  store = store or run_dir.CheckpointStore(workdir, config.checkpoint)
  _write_run_files(workdir, config, data)
  best = (run_dir.BestCheckpoint(workdir, config.checkpoint.best_metric)
          if config.checkpoint.best_metric else None)
  if store.latest_step() is not None:
    state = store.restore(state)
    logging.info("Resumed from the checkpoint at step %d.", int(state.step))
  start_step = int(state.step)
  logging.info("%s parameters.", f"{sum(x.size for x in jax.tree.leaves(state.params)):,}")

  p_train_step = parallel.per_device_with(
      train_state.train_step, (0,), model=model,
      loss_fn=losses.get_loss(config.loss), optimizer=optimizer,
      schedule=schedule,
      mixup_alpha=float(config.mixup_alpha or 0.0),
      accum_steps=config.accum_steps)
  writer = metric_writers.create_writer(workdir, start_step)
  if start_step == 0 and jax.process_index() == 0:
    writer.write_hparams(config.to_dict())
  log = train_metrics.TrainLog(config, total_steps, writer, start_step)
  profile = (periodic_actions.Profile(
      logdir=workdir, num_profile_steps=config.profile_steps)
             if config.profile_steps and jax.process_index() == 0 else None)
  state = parallel.replicate(state)
  if start_step == 0 and config.init.reestimate_batch_stats:
    # From batches of their own: the training stream stays as it would be.
    state = train_state.reestimate_batch_stats(
        state, parallel.prefetch(data.train_batches(config, 0)),
        config.init.reestimate_batch_stats, model=model)
    logging.info("Re-estimated the BatchNorm running averages on %d "
                 "training batches.", config.init.reestimate_batch_stats)
  batches = parallel.prefetch(data.train_batches(config, start_step))
  try:
    with preemption.Notice() as notice:
      for step in range(start_step + 1, total_steps + 1):
        state, step_metrics = p_train_step(state, next(batches))
        preempted = notice.reached(step)
        save_now = preempted or store.due(step) or step == total_steps
        log.add(step, step_metrics, check=save_now,
                last_checkpoint=store.latest_step())
        if profile:
          profile(step)
        results = (_run_evals(evals, state, step, writer, periodic=True)
                   if step < total_steps else None)
        if results:
          log.restart_clock()  # Evaluation time is not training speed.
          _keep_if_best(best, step, results, state)
        # Unreplicating costs a transfer of the state: only when saving.
        waited = (store.save(step, lambda: parallel.unreplicate(state),
                             force=preempted or step == total_steps)
                  if save_now else None)
        if waited is not None:
          logging.info("Saved a checkpoint at step %d: the step loop waited "
                       "%.2f s%s.", step, waited, " (written in the background)"
                       if config.checkpoint.async_save else "")
        if preempted:
          writer.flush()
          raise preemption.Preempted(step, notice.signal_name)
  except BaseException:
    # orbax writes saves in the background: let those under way finish, so
    # the last checkpoint an error names (a non-finite step, a preemption)
    # exists.
    store.close()
    if best:
      best.close()
    raise

  results = _run_evals(evals, state, total_steps, writer, periodic=False)
  _keep_if_best(best, total_steps, results, state)
  writer.flush()
  store.close()
  summary = _summary(config, data, results, state, init_report)
  if best:
    step, value = best.best()
    summary["best_checkpoint"] = {"metric": best.metric, "step": step,
                                  "value": value}
    best.close()
  summary["timing"] = dict(clock.report(),
                           checkpoint_wait_seconds=store.wait_seconds)
  if jax.process_index() == 0:
    run_dir.write_json(os.path.join(workdir, run_dir.RESULTS_FILE), summary)
  return summary
