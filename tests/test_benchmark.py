"""The benchmark entry point: one JSON line per measurement, sane values."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from big_transfer_med import errors
from big_transfer_med import peers
from tests import test_main


def _run(*args):
  env = dict(os.environ, PYTHONPATH=test_main.REPO,
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  result = subprocess.run(
      [sys.executable, "-m", "big_transfer_med.benchmark", *args],
      cwd=test_main.REPO, env=env, capture_output=True, text=True, timeout=400)
  assert result.returncode == 0, result.stderr[-3000:]
  return {r["measurement"]: r for r in map(json.loads, (
      line for line in result.stdout.splitlines() if line.startswith("{")))}


def test_model_measurements():
  out = _run("--what=peak,train,memory", "--model=R26x1", "--resolution=32",
             "--batch_size=2", "--steps=2", "--peak_size=256")
  peak, step, memory = (out["matmul_peak"], out["train_step"],
                        out["train_step_memory"])
  assert peak["flops_per_sec"] > 1e8
  # R26x1 at 32 px: ~0.4 GFLOPs per image for forward + backward.
  assert 0.1 < step["gflops_per_image"] < 2
  assert 0 < step["mfu"] < 1.5
  assert step["images_per_sec"] == 2 / step["step_seconds"]
  # Parameters, gradients-sized momentum and the update: > 3 x 4 bytes each.
  assert memory["peak_bytes"] > 3 * 4 * memory["parameters"]
  assert memory["parameters"] > 10_000_000


def test_input_and_end_to_end(tiny_fmnist_data_dir):
  out = _run("--what=input,seed_input,e2e", f"--config={test_main.CONFIG}",
             f"--config.data.data_dir={tiny_fmnist_data_dir}",
             "--config.batch_size=8", "--config.model.name=R26x1",
             "--steps=3", "--peer_images=24")
  assert out["input_pipeline"]["images_per_sec"] > 0
  assert out["input_pipeline"]["images_per_sec_per_core"] <= out[
      "input_pipeline"]["images_per_sec"]
  # The seed recipe (OpenCV + albumentations) on the same stored PNGs.
  peer = out["peer_input"]
  assert peer["encoding"] == "png" and peer["peer_images"] == 24
  assert peer["peer_reads"] == "fashion_mnist_local[train] as stored"
  assert peer["ratio"] == (out["input_pipeline"]["images_per_sec_per_core"] /
                           peer["peer_images_per_sec_per_core"])
  e2e = out["end_to_end"]
  assert e2e["fraction_of_model_only"] == (
      e2e["steps_per_sec"] / e2e["model_only_steps_per_sec"])
  assert 0.2 < e2e["fraction_of_model_only"] < 5


def test_timm_peer_runs_or_says_what_to_install():
  # torch + timm are optional (requirements-peers.txt): without them the peer
  # names the file to install; with them it runs timm's BiT train step (in a
  # subprocess: torch crashes when imported after TensorFlow).
  if not all(importlib.util.find_spec(m) for m in ("torch", "timm")):
    with pytest.raises(errors.ConfigError, match="requirements-peers.txt"):
      peers.timm_train_step_in_subprocess(model_name="R50x1", resolution=32,
                                          batch_size=2, steps=1,
                                          warmup_steps=1)
    return
  out = peers.timm_train_step_in_subprocess(
      model_name="R50x1", resolution=32, batch_size=2, steps=2,
      warmup_steps=1, num_classes=10)
  assert out["peer"].endswith("resnetv2_50x1_bit")
  assert out["peer_images_per_sec"] == 2 / out["peer_step_seconds"]
  with pytest.raises(errors.ConfigError, match="timm has no"):
    peers.timm_train_step_in_subprocess(model_name="R26x1", resolution=32,
                                        batch_size=2, steps=1, warmup_steps=1)
