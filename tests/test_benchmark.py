"""The benchmark entry point: one JSON line per measurement, sane values."""
import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np

import pytest

from big_transfer_med import memory_fit
from big_transfer_med import peers
from input_pipeline import errors
from tests import test_main


# On PYTHONPATH: a process that cannot import TensorFlow (tests/no_tensorflow).
NO_TENSORFLOW = os.path.join(test_main.REPO, "tests", "no_tensorflow")


def _records(*args, without_tensorflow=False):
  """The JSON records the benchmark prints, in order (`without_tensorflow`:
  as on a machine where tensorflow and tensorflow_datasets are missing).
  Each record gets `command_seconds`: the wall time of the whole command,
  an upper bound on any time it measured."""
  start = time.perf_counter()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             PYTHONPATH=os.pathsep.join(
                 [NO_TENSORFLOW] * without_tensorflow + [test_main.REPO]))
  result = subprocess.run(
      [sys.executable, "-m", "big_transfer_med.benchmark", *args],
      cwd=test_main.REPO, env=env, capture_output=True, text=True, timeout=400)
  assert result.returncode == 0, result.stderr[-3000:]
  seconds = time.perf_counter() - start
  return [dict(json.loads(line), command_seconds=seconds)
          for line in result.stdout.splitlines() if line.startswith("{")]


def _run(*args):
  return {r["measurement"] + (f"/{r['evaluator']}" if "evaluator" in r else ""): r
          for r in _records(*args)}


def bit_forward_flops(depths, width, resolution, channels, classes):
  """FLOPs (2 per multiply-add) of a BiT ResNet-v2 forward pass, counted
  from the architecture: 7x7/2 root conv, 3x3/2 max pool, bottleneck units
  (1x1, 3x3 with the unit's stride, 1x1, projection in each stage's first
  unit), dense head. Normalisation and activations are left out (< 2%)."""
  w = 64 * width
  h = (resolution + 6 - 7) // 2 + 1
  flops = 2 * h * h * channels * w * 49
  h = (h + 2 - 3) // 2 + 1
  cin = w
  for stage, units in enumerate(depths):
    cmid, cout = w * 2 ** stage, 4 * w * 2 ** stage
    for unit in range(units):
      out = -(-h // (2 if stage and not unit else 1))
      flops += 2 * (h * h * cin * cmid + out * out * cmid * cmid * 9
                    + out * out * cmid * cout
                    + (out * out * cin * cout if unit == 0 else 0))
      h, cin = out, cout
  return flops + 2 * cin * classes


def _run_without_tensorflow(*args):
  return {r["measurement"]: r for r in _records(*args, without_tensorflow=True)}


@pytest.mark.slow
def test_model_measurements():
  """peak, train and memory, where TensorFlow cannot be imported (an
  accelerator machine with only JAX: README, "Accelerators")."""
  out = _run_without_tensorflow(
      "--what=peak,train,memory", "--model=R26x1", "--resolution=32",
      "--batch_size=2", "--steps=2", "--peak_size=256")
  peak, step, memory = (out["matmul_peak"], out["train_step"],
                        out["train_step_memory"])
  assert peak["flops_per_sec"] > 1e8
  # A train step costs about 3 forward passes per image (forward, then the
  # gradients of activations and of weights), plus per-parameter work the
  # batch shares (weight standardisation, AGC, the optimiser: tens of
  # FLOPs per parameter).
  forward = bit_forward_flops((2, 2, 2, 2), 1, 32, 3, 1000)
  per_parameter = memory["parameters"] / 2  # Per image, batch of 2.
  flops = step["gflops_per_image"] * 1e9
  assert 2.7 * forward + per_parameter < flops < 3.3 * forward + 50 * per_parameter
  assert 0 < step["mfu"] < 1.5
  # Parameters, gradients-sized momentum and the update: > 3 x 4 bytes each.
  assert memory["peak_bytes"] > 3 * 4 * memory["parameters"]
  assert memory["parameters"] > 10_000_000


def test_the_tensorflow_blocker_blocks():
  """The blocker the test above relies on makes the import fail."""
  result = subprocess.run(
      [sys.executable, "-c", "import tensorflow"], capture_output=True,
      text=True, env=dict(os.environ, PYTHONPATH=NO_TENSORFLOW), timeout=60)
  assert result.returncode != 0
  assert "blocked by tests/no_tensorflow" in result.stderr


@pytest.mark.slow
def test_xla_cpu_options_run_each_in_its_own_process():
  """--xla_cpu: each option's train step runs in a fresh process under its
  XLA_FLAGS (the user's own flags kept), one record per option; an unknown
  option is refused before anything runs."""
  out = _records("--what=train", "--model=R26x1", "--resolution=32",
                 "--batch_size=2", "--steps=1", "--xla_cpu=default,onednn",
                 "--rounds=1", without_tensorflow=True)
  by_option = {r["xla_cpu"]: r for r in out
               if r["measurement"] == "train_step_xla_cpu"}
  assert set(by_option) == {"default", "onednn"}
  for name, record in by_option.items():
    assert len(record["images_per_sec_runs"]) == 1, record
    # One step of 2 images took less than the whole command.
    assert record["images_per_sec"] == np.median(record["images_per_sec_runs"])
    assert record["images_per_sec"] > 2 / record["command_seconds"]
    # The child's own XLA_FLAGS: the option's flags, and the caller's.
    assert "--xla_force_host_platform_device_count=1" in record[
        "run_xla_flags"]
    assert ("--xla_cpu_use_onednn=true" in record["run_xla_flags"]) == (
        name == "onednn")
  assert by_option["default"]["vs_default"] == 1.0
  assert by_option["onednn"]["vs_default"] == pytest.approx(
      by_option["onednn"]["images_per_sec"]
      / by_option["default"]["images_per_sec"])
  result = subprocess.run(
      [sys.executable, "-m", "big_transfer_med.benchmark", "--what=train",
       "--xla_cpu=default,fastest"], cwd=test_main.REPO, capture_output=True,
      text=True, timeout=120)
  assert result.returncode != 0
  assert "--xla_cpu: unknown ['fastest']" in result.stderr
  result = subprocess.run(
      [sys.executable, "-m", "big_transfer_med.benchmark", "--what=train",
       "--xla_cpu=default,onednn", "--conv_lowering=native,matmul"],
      cwd=test_main.REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "--xla_cpu compares options at one --conv_lowering" in result.stderr


@pytest.mark.slow
def test_memory_falls_with_accumulation():
  """XLA's memory analysis of the compiled step: 4 micro-batches need less
  temporary memory than the whole device batch at once (per-unit remat is
  not measured here: XLA:CPU's buffer assignment does not turn it into a
  saving; README, "Memory")."""
  temp = {r["accum_steps"]: r["temp_bytes"] for r in _records(
      "--what=memory", "--model=R26x1", "--resolution=96", "--batch_size=16",
      "--num_classes=10", "--remat=none", "--accum_steps=1,4")}
  assert temp[4] < 0.8 * temp[1]


@pytest.mark.slow
def test_input_end_to_end_and_evaluation(tiny_fmnist_data_dir):
  out = _run("--what=input,input_stages,seed_input,e2e,eval",
             f"--config={test_main.CONFIG}",
             f"--config.data.data_dir={tiny_fmnist_data_dir}",
             "--config.batch_size=8", "--config.model.name=R26x1",
             "--steps=3", "--peer_images=24", "--passes=1")
  pipeline_record = out["input_pipeline"]
  # Its batches of 8 were read within the command's wall time.
  assert pipeline_record["images_per_sec"] > (
      pipeline_record["batches"] * 8 / pipeline_record["command_seconds"])
  assert pipeline_record["images_per_sec_per_core"] == pytest.approx(
      pipeline_record["images_per_sec"] / pipeline_record["cores"])
  stages = out["input_stages"]
  assert stages["images"] == 24 and stages["stored_shape"] == [28, 28, 1]
  assert set(stages["ms_per_image"]) == {"decode", "decode_resize", "preprocess"}
  # 24 images per pass, every stage within the command's wall time.
  assert all(0 < 24 * ms / 1000 < stages["command_seconds"]
             for ms in stages["ms_per_image"].values())
  # The seed recipe (OpenCV + albumentations) on the same stored PNGs.
  peer = out["peer_input"]
  assert peer["encoding"] == "png" and peer["peer_images"] == 24
  assert peer["peer_reads"] == "fashion_mnist_local[train] as stored"
  assert peer["peer_images_per_sec_per_core"] > 24 / peer["command_seconds"]
  assert peer["ratio"] == pytest.approx(
      peer["ours_images_per_sec_per_core"]
      / peer["peer_images_per_sec_per_core"])
  assert peer["ours_images_per_sec_per_core"] == (
      pipeline_record["images_per_sec_per_core"])
  e2e = out["end_to_end"]
  assert 0.2 < e2e["fraction_of_model_only"] < 5
  # Both evaluators of the config; later passes reuse the compiled step and
  # the pipeline built once.
  for name in ("val", "fewshot"):
    evaluation = out[f"evaluation/{name}"]
    assert 0 < evaluation["pass_seconds"] <= evaluation["first_pass_seconds"]
    assert evaluation["first_pass_seconds"] < evaluation["command_seconds"]


@pytest.mark.slow
def test_segmentation_measurements(montgomery_data_dir):
  """--task=segmentation times the U-Net's step (more work than the
  encoder's three passes: the decoder), and eval runs a segmentation
  config's pipeline and its Dice evaluator."""
  data_dir, _ = montgomery_data_dir
  out = _run("--what=train,eval", "--task=segmentation", "--model=R26x1",
             "--resolution=32", "--batch_size=2", "--steps=1",
             "--num_classes=1", f"--config={test_main.REPO}/configs/"
             f"transfer.py:target=montgomery_lungs,model=R26x1,res=32,"
             f"batch=4,steps=1,data_dir={data_dir}", "--passes=1")
  step = out["train_step"]
  assert step["task"] == "segmentation"
  encoder = bit_forward_flops((2, 2, 2, 2), 1, 32, 3, 0)
  assert step["gflops_per_image"] * 1e9 > 3.2 * encoder
  evaluation = out["evaluation/val"]
  assert 0 < evaluation["pass_seconds"] <= evaluation["first_pass_seconds"]
  assert evaluation["first_pass_seconds"] < evaluation["command_seconds"]


@pytest.mark.slow
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
  assert out["peer_images_per_sec"] == pytest.approx(
      2 / out["peer_step_seconds"])  # The median step's batch of 2.
  with pytest.raises(errors.ConfigError, match="timm has no"):
    peers.timm_train_step_in_subprocess(model_name="R26x1", resolution=32,
                                        batch_size=2, steps=1, warmup_steps=1)


@pytest.mark.parametrize("budget", [999, 1000, 1036, 1037, 5000, 123_456])
def test_largest_fitting_batch_agrees_with_trying_every_batch(budget):
  """Against an exhaustive search, on a memory curve that is not linear
  (steps where XLA changes buffer reuse) and a fixed part of 1000."""
  evaluated = []

  def peak(b):
    evaluated.append(b)
    return 1000 + 37 * b + 90 * (b // 8) + (b * b) // 400

  expected = max([b for b in range(1, 10_000) if peak(b) <= budget],
                 default=0)
  evaluated.clear()
  largest, exact = memory_fit.largest_fitting(peak, budget)
  assert (largest, exact) == (expected, True)
  assert len(evaluated) <= 8


def test_accumulation_takes_the_fewest_micro_batches_that_fit():
  # Share 64 per device; micro-batches up to 12 fit alone, but the whole
  # share's input adds to each step's memory, so 8 micro-batches of 8 are
  # over and 16 of 4 fit.
  peak_with = lambda k: 100 * (64 // k) + 20 * 64  # noqa: E731
  assert memory_fit.accumulation(64, 12, peak_with, 2000) == 16
  assert memory_fit.accumulation(64, 12, peak_with, 2080) == 8
  assert memory_fit.accumulation(64, 0, peak_with, 10 ** 9) is None


@pytest.mark.slow
def test_fit_reports_a_batch_that_fits_and_the_accumulation():
  """The command end to end on a small model: its answers hold in XLA's
  memory analysis (`fit` compiles the steps it names; ~6 compiles)."""
  (record,) = _records(
      "--what=fit", "--model=R26x1", "--resolution=32", "--num_classes=10",
      "--conv_lowering=native", "--precisions=float32", "--remat=none",
      "--device_memory=300MiB", "--global_batch=256", "--devices=2")
  budget = 300 * 2 ** 20
  assert record["precision"] == "float32"
  # The whole device share (128) does not fit: micro-batches are needed.
  assert 1 <= record["largest_micro_batch"] < 128
  assert record["largest_is_exact"]
  assert record["peak_gib_at_largest"] * 2 ** 30 <= budget
  share, k = record["per_device_batch"], record["accum_steps"]
  assert share == 128 and share % k == 0 and k > 1
  assert record["micro_batch"] == share // k <= record["largest_micro_batch"]
  assert record["peak_gib_with_accum"] * 2 ** 30 <= budget


@pytest.mark.slow
def test_startup_on_generated_builds_with_and_without_their_index(tmp_path):
  out = _records("--what=startup", "--startup_rows=300",
                 "--startup_image_sizes=8,24", "--startup_release_scale=0.001",
                 f"--startup_fixtures={tmp_path}",
                 "--config=configs/r50x1_chest.py:sources=nih14",
                 "--config.batch_size=16", "--config.data.resolution=32")
  # The four releases at 1/1000 of their sizes: 224 + 377 + 112 + 161 images.
  assert [(r["data"], r["rows"], r["image_size"], r["index"]) for r in out] == [
      ("nih14", 300, 8, True), ("nih14", 300, 8, False),
      ("nih14", 300, 24, True), ("nih14", 300, 24, False),
      ("chexpert+mimic+nih14+padchest", 874, 16, True),
      ("chexpert+mimic+nih14+padchest", 874, 16, False)]
  assert out[2]["bytes_per_record"] > out[0]["bytes_per_record"]
  for r in out:
    assert 0 < r["seconds_to_open"] < r["seconds_to_first_batch"]
    assert r["startup_seconds"] < r["seconds_to_first_batch"]
  # The builds keep their index files (hidden only while measured).
  for size in (8, 24):
    built = tmp_path / f"nih14_300_rows_{size}px" / "tfds" / "cxr_nih14" / "default"
    assert len(list(built.glob("*/*.index.npz"))) == 3
