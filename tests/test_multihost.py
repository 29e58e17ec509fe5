"""Multi-host: 2 processes x 2 CPU devices (jax.distributed, gloo) through the
real entry point, against 1 process x 4 devices with the same global batch."""
import glob
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from input_pipeline import pipeline
from tests import fmnist_fixtures
from tests import test_main


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _args(workdir, data_dir, steps):
  return [f"--config={test_main.CONFIG}:probe=no", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", "--config.total_epochs=0",
          f"--config.total_steps={steps}", "--config.batch_size=8",
          "--config.schedule.decay_type=constant",
          "--config.schedule.warmup_epochs=0", "--config.checkpoint.every_steps=2",
          "--config.log_every_steps=1"]


def _launch(args, processes: int, devices: int):
  """Runs main in `processes` processes of `devices` CPU devices each."""
  env = dict(os.environ, PYTHONPATH=test_main.REPO,
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  distributed = []
  if processes > 1:
    distributed = [f"--coordinator_address=127.0.0.1:{_free_port()}",
                   f"--num_processes={processes}"]
  running = [subprocess.Popen(
      [sys.executable, "-m", "big_transfer_med.main", *args, *distributed]
      + ([f"--process_id={i}"] if processes > 1 else []),
      cwd=test_main.REPO, env=env, stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True) for i in range(processes)]
  # Generous: on 2 busy cores (the suite runs beside it) a run can take 400 s.
  logs = [p.communicate(timeout=900)[1] for p in running]
  for p, log in zip(running, logs):
    assert p.returncode == 0, log[-3000:]
  return logs


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  steps = [r["step"] for r in rows if "train_loss" in r]
  assert len(steps) == len(set(steps))  # One writer, no step twice.
  return [r["train_loss"] for r in rows if "train_loss" in r]


def _params(workdir):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  return manager.latest_step(), manager.restore(manager.latest_step())["params"]


def test_two_hosts_match_one_host_and_resume(tiny_fmnist_data_dir, tmp_path):
  single, multi = tmp_path / "single", tmp_path / "multi"
  _launch(_args(single, tiny_fmnist_data_dir, 6), processes=1, devices=4)

  # Two legs: 3 steps, then the same run continued to 6 (both processes
  # restore the step-3 checkpoint).
  logs = _launch(_args(multi, tiny_fmnist_data_dir, 3), processes=2, devices=2)
  assert "JAX process 1/2" in logs[1] and "4 devices on 2 hosts" in logs[0]
  logs = _launch(_args(multi, tiny_fmnist_data_dir, 6) +
                 ["--allow_config_change"], processes=2, devices=2)
  assert all("Resumed from the checkpoint at step 3" in log for log in logs)

  np.testing.assert_allclose(_losses(multi), _losses(single), rtol=1e-5)
  assert len(_losses(multi)) == 6
  (step_a, a), (step_b, b) = _params(single), _params(multi)
  assert step_a == step_b == 6
  # Gradients are summed over the 4 devices in another order (gloo across the
  # processes): float32 rounding that 6 steps of SGD + AGC carry into the
  # weights, up to ~3e-6 on weights near zero (flip-only augmentation; the
  # losses above agree to 1e-5).
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4,
                                                       atol=2e-5), a, b)
  # Only process 0 writes metrics and results: one TensorBoard file per leg.
  assert len(glob.glob(str(multi / "events.out.tfevents.*"))) == 2
  results = json.load(open(multi / "results.json"))
  assert results["metrics"]["examples"] == json.load(
      open(single / "results.json"))["metrics"]["examples"]


def test_hosts_read_disjoint_shards_of_the_global_batch(tiny_fmnist_data_dir):
  config = fmnist_fixtures.tiny_config(tiny_fmnist_data_dir, batch_size=8)

  def first_batches(host_id, num_hosts):
    data = pipeline.Pipeline(config.data, host_id=host_id, num_hosts=num_hosts,
                             num_local_devices=1)
    it = data.train_batches(config, 0)
    return [next(it)["image"][0] for _ in range(3)]

  whole = first_batches(0, 1)
  shards = [first_batches(h, 2) for h in range(2)]
  for step in range(3):
    a, b = shards[0][step], shards[1][step]
    assert len(a) == len(b) == 4
    # Host h reads rows [4h, 4h + 4) of the global batch: disjoint, and
    # together the single-host batch, augmentation included (its randomness
    # is keyed by the global position).
    np.testing.assert_array_equal(np.concatenate([a, b]), whole[step])
