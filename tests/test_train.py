"""The trainer on 2 CPU devices: learning, outputs in the workdir, exact resume."""
import glob
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from big_transfer_med import train
from tests import fmnist_fixtures


def _read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _final_params(workdir):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  restored = manager.restore(manager.latest_step())
  return manager.latest_step(), restored["params"]


def test_training_on_two_devices_reduces_loss(tiny_fmnist_data_dir, tmp_path):
  assert jax.local_device_count() == 2
  workdir = str(tmp_path / "run")
  config = fmnist_fixtures.tiny_config(tiny_fmnist_data_dir, total_steps=20,
                                       batch_size=16)
  summary = train.train_and_evaluate(config, workdir)
  rows = _read_metrics(workdir)
  losses = [r["train_loss"] for r in rows if "train_loss" in r]
  assert len(losses) == 20
  np.testing.assert_allclose(losses[0], math.log(5), rtol=1e-4)  # Zero head.
  assert np.mean(losses[-5:]) < 0.8 * losses[0]
  assert summary["metrics"]["examples"] == 20  # Every test example once.
  assert summary["metrics"]["loss"] < math.log(5)
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["metrics"] == summary["metrics"]
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["batch_size"] == 16
  assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  assert all({"steps_per_sec", "images_per_sec", "learning_rate"} <= r.keys()
             for r in rows if "train_loss" in r)
  # Checkpoints every 2 steps, the last 3 kept.
  steps = sorted(int(os.path.basename(p))
                 for p in glob.glob(os.path.join(workdir, "checkpoints", "*"))
                 if os.path.basename(p).isdigit())
  assert steps == [16, 18, 20]


def test_resume_continues_the_same_run(tiny_fmnist_data_dir, tmp_path):
  whole = str(tmp_path / "whole")
  config = fmnist_fixtures.tiny_config(tiny_fmnist_data_dir, total_steps=6)
  train.train_and_evaluate(config, whole)

  # The same run, stopped after step 4 and started again on its workdir
  # (constant learning rate: the first 4 steps are those of the 6-step run).
  parts = str(tmp_path / "parts")
  train.train_and_evaluate(
      fmnist_fixtures.tiny_config(tiny_fmnist_data_dir, total_steps=4), parts)
  assert _final_params(parts)[0] == 4
  train.train_and_evaluate(config, parts, allow_config_change=True)

  train_whole, train_parts = ([r for r in _read_metrics(w) if "train_loss" in r]
                               for w in (whole, parts))
  assert [r["step"] for r in train_parts] == [1, 2, 3, 4, 5, 6]
  for a, b in zip(train_whole, train_parts):
    assert a["train_loss"] == b["train_loss"]  # Same data, same updates.
  step_a, params_a = _final_params(whole)
  step_b, params_b = _final_params(parts)
  assert step_a == step_b == 6
  jax.tree.map(np.testing.assert_array_equal, params_a, params_b)


def _lowerings(fn) -> int:
  """How many programs JAX lowers (compiles; with or without the persistent
  compilation cache) while `fn()` runs."""
  events = []
  listener = lambda event, duration, **kwargs: events.append(event)  # noqa: E731
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    fn()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  return events.count("/jax/core/compile/jaxpr_to_mlir_module_duration")


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_train_step_is_compiled_once(precision):
  """The replicated state is laid out as the step returns it, so steps 2 and
  3 compile nothing (a state copied with flax's jax_utils.replicate is
  compiled again at step 2). Mixed precision keeps float32 master weights
  and optimiser state."""
  import functools  # pylint: disable=g-import-not-at-top
  from flax import jax_utils  # pylint: disable=g-import-not-at-top
  from big_transfer_med import config_lib, losses, models, optim, parallel  # pylint: disable=g-import-not-at-top
  model = models.get_model("R26x1", 5, precision)
  schedule = optim.create_schedule(0.1, 10)
  optimizer = optim.create_optimizer(schedule)
  step = parallel.per_device(functools.partial(
      train.train_step, model=model, loss_fn=losses.get_loss("softmax_xent"),
      optimizer=optimizer, schedule=schedule), donate_argnums=(0,))
  n = jax.local_device_count()
  batch = parallel.to_devices({
      "image": np.zeros((n, 2, 16, 16, 1), np.float32),
      "labels": np.eye(5, dtype=np.float32)[np.zeros((n, 2), int)],
      "mask": np.ones((n, 2), np.float32)})
  fresh = lambda: train.create_train_state(  # noqa: E731
      config_lib.base_config(), model, optimizer, (16, 16, 1))
  out = {}

  def steps(state, first, last):
    for _ in range(first, last + 1):
      state, out["metrics"] = step(state, batch)
    out["state"] = state

  # The naive copy first: its steps 2-3 compile the program ours reuses.
  controls = [(jax_utils.replicate, 1)] if precision == "float32" else []
  # Counting lowerings needs no persistent cache, and writing these
  # executables to it has crashed XLA:CPU's serialiser in a busy test worker
  # (twice on a fresh clone; never alone): this test only reads from it.
  min_compile_seconds = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1e9)
  try:
    for place, later_compiles in controls + [(parallel.replicate, 0)]:
      steps(place(fresh()), 1, 1)
      assert _lowerings(lambda: steps(out["state"], 2, 3)) == later_compiles, (
          place)
  finally:
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      min_compile_seconds)
  state, metrics = out["state"], out["metrics"]
  assert np.all(np.asarray(metrics["finite"]) == 1)
  assert {x.dtype for x in jax.tree.leaves((state.params, state.opt_state))
          if jnp.issubdtype(x.dtype, jnp.floating)} == {jnp.dtype("float32")}
