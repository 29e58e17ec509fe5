"""The trainer on 2 CPU devices: learning, outputs in the workdir, exact resume."""
import glob
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from big_transfer_med import train
from big_transfer_med import train_state
from input_pipeline import errors
from tests import fmnist_fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _final_params(workdir):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  restored = manager.restore(manager.latest_step())
  return manager.latest_step(), restored["params"]


@pytest.mark.slow
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


@pytest.mark.slow
def test_resume_continues_the_same_run(tiny_fmnist_data_dir, tmp_path):
  whole = str(tmp_path / "whole")
  config = fmnist_fixtures.tiny_config(tiny_fmnist_data_dir, total_steps=6)
  train.train_and_evaluate(config, whole)

  # The same run, stopped after step 4 and started again on its workdir
  # (constant learning rate: the first 4 steps are those of the 6-step run);
  # its first part saves synchronously, the rest in the background.
  parts = str(tmp_path / "parts")
  first = fmnist_fixtures.tiny_config(tiny_fmnist_data_dir, total_steps=4)
  first.checkpoint.async_save = False
  waits = [train.train_and_evaluate(first, parts)["timing"][
      "checkpoint_wait_seconds"]]
  assert _final_params(parts)[0] == 4
  waits.append(train.train_and_evaluate(config, parts, allow_config_change=True)[
      "timing"]["checkpoint_wait_seconds"])
  assert all(w > 0 for w in waits)

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


@pytest.mark.slow
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
      train_state.train_step, model=model, loss_fn=losses.get_loss("softmax_xent"),
      optimizer=optimizer, schedule=schedule), donate_argnums=(0,))
  n = jax.local_device_count()
  batch = parallel.to_devices({
      "image": np.zeros((n, 2, 16, 16, 1), np.float32),
      "labels": np.eye(5, dtype=np.float32)[np.zeros((n, 2), int)],
      "mask": np.ones((n, 2), np.float32)})
  fresh = lambda: train_state.create_train_state(  # noqa: E731
      config_lib.base_config(), model, optimizer, (16, 16, 1))
  out = {}

  def steps(state, first, last):
    for _ in range(first, last + 1):
      state, out["metrics"] = step(state, batch)
    out["state"] = state

  # The naive copy first: its steps 2-3 compile the program ours reuses.
  controls = [(jax_utils.replicate, 1)] if precision == "float32" else []
  for place, later_compiles in controls + [(parallel.replicate, 0)]:
    steps(place(fresh()), 1, 1)
    assert _lowerings(lambda: steps(out["state"], 2, 3)) == later_compiles, (
        place)
  state, metrics = out["state"], out["metrics"]
  assert np.all(np.asarray(metrics["finite"]) == 1)
  assert {x.dtype for x in jax.tree.leaves((state.params, state.opt_state))
          if jnp.issubdtype(x.dtype, jnp.floating)} == {jnp.dtype("float32")}


def _steps_with_accumulation(accum_steps, batches):
  """The initial and final train state and the per-step losses after
  `batches` on the local devices (sigmoid loss, MixUp)."""
  import functools  # pylint: disable=g-import-not-at-top
  from big_transfer_med import config_lib, losses, models, optim, parallel  # pylint: disable=g-import-not-at-top
  num_classes = batches[0]["labels"].shape[-1]
  model = models.get_model("R26x1", num_classes, "float32")
  schedule = optim.create_schedule(0.1, 10, warmup_steps=2)
  # AGC on: it must see the accumulated gradient, not a micro-batch's.
  optimizer = optim.create_optimizer(schedule, weight_decay=1e-4,
                                     agc_clipping=0.01)
  step = parallel.per_device(functools.partial(
      train_state.train_step, model=model, loss_fn=losses.get_loss("sigmoid_xent"),
      optimizer=optimizer, schedule=schedule, mixup_alpha=0.1,
      accum_steps=accum_steps))
  initial = train_state.create_train_state(config_lib.base_config(), model,
                                     optimizer, (32, 32, 1))
  state, step_losses = parallel.replicate(initial), []
  for batch in batches:
    state, metrics = step(state, parallel.to_devices(batch))
    step_losses.append(float(parallel.unreplicate(metrics["train_loss"])))
  return initial, parallel.unreplicate(state), step_losses


@pytest.mark.slow
def test_accumulated_micro_batches_give_the_unsplit_update():
  """The check below in a fresh process: XLA:CPU's compiler has crashed
  (segfault, abort) compiling this accumulated step (a whole R26 inside a
  scan, pmapped) in CI workers; a process killed by a signal is run again,
  up to twice. A failing assertion fails at once."""
  code = ("from tests import test_train; "
          "test_train.check_accumulated_micro_batches()")
  env = dict(os.environ, PYTHONPATH=REPO)
  for _ in range(3):
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=1100)
    if result.returncode >= 0:
      break
  assert result.returncode == 0, result.stderr[-3000:]


def check_accumulated_micro_batches():
  """8 examples per device (2 devices) as 1 x 8, 4 x 2 and 8 x 1
  micro-batches: the same losses, parameters and momentum after 3 steps
  (float32 summation order aside: up to 2e-6 seen on the head's momentum),
  with MixUp, the masked multi-label loss (missing labels) and padding
  examples at once (one program per split: compiling is this test's cost).
  The softmax loss is covered through the trainer below."""
  n, per_device, num_classes = jax.local_device_count(), 8, 5
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(3):
    batch = {"image": rng.normal(size=(n, per_device, 32, 32, 1)).astype(np.float32),
             "mask": np.ones((n, per_device), np.float32),
             "labels": (rng.random((n, per_device, num_classes)) < 0.3
                        ).astype(np.float32),
             "label_mask": (rng.random((n, per_device, num_classes)) < 0.8
                            ).astype(np.float32)}
    batch["mask"][:, 2] = batch["mask"][:, -1] = 0  # Padding.
    batches.append(batch)
  initial, reference, reference_losses = _steps_with_accumulation(1, batches)
  assert max(float(np.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(initial.params), jax.tree.leaves(reference.params))) > 1e-3
  for accum_steps in (4, 8):
    _, state, step_losses = _steps_with_accumulation(accum_steps, batches)
    np.testing.assert_allclose(step_losses, reference_losses, rtol=1e-5)
    for (path, got), want in zip(
        jax.tree_util.tree_leaves_with_path((state.params, state.opt_state)),
        jax.tree.leaves((reference.params, reference.opt_state))):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5,
                                 err_msg=f"{accum_steps}{jax.tree_util.keystr(path)}")


def test_micro_batches_must_split_the_device_batch():
  train.check_micro_batches(256, 8, 4)  # 32 per device, micro-batch 8.
  with pytest.raises(errors.ConfigError, match=(
      r"config.batch_size=48 over 8 devices is 6 per device, which "
      r"config.accum_steps=4 cannot split")):
    train.check_micro_batches(48, 8, 4)


@pytest.mark.slow
def test_accumulation_changes_memory_not_the_run(tiny_fmnist_data_dir, tmp_path):
  """A run in micro-batches ends where the unsplit run ends (same data
  order, metrics within float32 reordering), and a workdir may be continued
  with another accumulation (e.g. on other hardware)."""
  runs = {}
  for accum_steps in (1, 4):
    config = fmnist_fixtures.tiny_config(tiny_fmnist_data_dir, total_steps=3,
                                         batch_size=16)
    config.accum_steps = accum_steps
    workdir = str(tmp_path / f"accum{accum_steps}")
    runs[accum_steps] = (train.train_and_evaluate(config, workdir), workdir)
  (unsplit, unsplit_dir), (split, split_dir) = runs[1], runs[4]
  np.testing.assert_allclose(
      [r["train_loss"] for r in _read_metrics(split_dir) if "train_loss" in r],
      [r["train_loss"] for r in _read_metrics(unsplit_dir) if "train_loss" in r],
      rtol=1e-5)
  np.testing.assert_allclose(split["metrics"]["loss"],
                             unsplit["metrics"]["loss"], rtol=1e-4)
  assert ({k for k in split if k != "timing"}
          == {k for k in unsplit if k != "timing"})
  for got, want in zip(jax.tree.leaves(_final_params(split_dir)),
                       jax.tree.leaves(_final_params(unsplit_dir))):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  config.accum_steps = 2  # Not a change of run: accepted, nothing retrained.
  assert train.train_and_evaluate(config, split_dir)["step"] == 3
