"""Reliability: non-finite steps, config changes on resume, crashes (SIGKILL)
and preemption (SIGTERM)."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf

from big_transfer_med import preemption
from big_transfer_med import run_dir
from big_transfer_med import train
from input_pipeline import errors
from input_pipeline import pipeline
from tests import fmnist_fixtures
from tests import test_main


def _checkpoint_steps(workdir):
  return sorted(int(os.path.basename(p)) for p in
                glob.glob(os.path.join(workdir, "checkpoints", "*"))
                if os.path.basename(p).isdigit())


def _restore(workdir, step=None):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  step = manager.latest_step() if step is None else step
  return manager.restore(step)


def _snapshot(directory):
  """{relative path: (size, mtime)} of every file under `directory`."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      st = os.stat(path)
      out[os.path.relpath(path, directory)] = (st.st_size, st.st_mtime_ns)
  return out


@pytest.fixture
def nan_at_step_3(monkeypatch):
  """Training batches of step 3 carry NaN images (a corrupt input)."""
  original = pipeline.Pipeline.train_batches

  def train_batches(self, config, start_step):
    for step, batch in enumerate(original(self, config, start_step),
                                 start_step + 1):
      if step == 3:
        batch = dict(batch, image=np.full_like(batch["image"], np.nan))
      yield batch
  monkeypatch.setattr(pipeline.Pipeline, "train_batches", train_batches)


def _nan_config(data_dir, **overrides):
  config = fmnist_fixtures.tiny_config(data_dir, total_steps=5, **overrides)
  config.checkpoint.every_steps = 1
  config.checkpoint.keep = 5
  config.log_every_steps = 5  # The check still runs before every save.
  return config


def test_nonfinite_step_stops_the_run_with_last_checkpoint_intact(
    tiny_fmnist_data_dir, tmp_path, nan_at_step_3):
  workdir = str(tmp_path / "run")
  with pytest.raises(errors.TrainingDivergedError,
                     match=r"non-finite \(loss nan\) at step 3\. .*last "
                           r"checkpoint \(step 2\) is intact.*on_nonfinite='skip'"):
    train.train_and_evaluate(_nan_config(tiny_fmnist_data_dir), workdir)
  assert _checkpoint_steps(workdir) == [1, 2]
  params = _restore(workdir)["params"]
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
  assert not os.path.exists(os.path.join(workdir, "results.json"))


def test_nonfinite_step_is_skipped_when_asked(tiny_fmnist_data_dir, tmp_path,
                                              nan_at_step_3):
  workdir = str(tmp_path / "run")
  config = _nan_config(tiny_fmnist_data_dir, on_nonfinite="skip")
  summary = train.train_and_evaluate(config, workdir)
  assert summary["nonfinite_steps"] == 1
  # Step 3 changed nothing: its state is step 2's, bit for bit.
  step2, step3 = _restore(workdir, 2), _restore(workdir, 3)
  jax.tree.map(np.testing.assert_array_equal, step2["params"], step3["params"])
  jax.tree.map(np.testing.assert_array_equal,
               step2["opt_state"]["inner_state"],
               step3["opt_state"]["inner_state"])  # Counters differ.
  assert step3["opt_state"]["total_notfinite"] == 1
  final = _restore(workdir)["params"]
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(final))
  assert not all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(step3["params"]), jax.tree.leaves(final)))  # 4, 5 did.


def test_consecutive_nonfinite_steps_still_stop(tiny_fmnist_data_dir, tmp_path,
                                                monkeypatch):
  original = pipeline.Pipeline.train_batches
  monkeypatch.setattr(
      pipeline.Pipeline, "train_batches", lambda self, config, start: (
          dict(b, image=np.full_like(b["image"], np.inf))
          for b in original(self, config, start)))
  config = _nan_config(tiny_fmnist_data_dir, on_nonfinite="skip",
                       max_consecutive_nonfinite=2)
  with pytest.raises(errors.TrainingDivergedError,
                     match="3 consecutive non-finite steps up to step 3"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


@pytest.mark.slow
def test_changed_config_is_refused_unless_allowed(tiny_fmnist_data_dir,
                                                  tmp_path):
  workdir = str(tmp_path / "run")
  config = fmnist_fixtures.tiny_config(tiny_fmnist_data_dir, total_steps=2)
  train.train_and_evaluate(config, workdir)
  before = _snapshot(workdir)

  # A resumed run cannot switch the input normalisation.
  other_inputs = fmnist_fixtures.tiny_config(tiny_fmnist_data_dir, total_steps=2)
  other_inputs.data.channels, other_inputs.data.normalization = 3, "imagenet"
  with pytest.raises(errors.ConfigError,
                     match="data.normalization: 'minus_one_one' -> 'imagenet'"):
    run_dir.check_saved_config(workdir, other_inputs, allow_change=False)

  changed = fmnist_fixtures.tiny_config(tiny_fmnist_data_dir, total_steps=4)
  changed.optim.base_lr = 0.2
  changed.log_every_steps = 2  # Run-neutral: not reported.
  with pytest.raises(errors.ConfigError) as e:
    train.train_and_evaluate(changed, workdir)
  message = str(e.value)
  assert "optim.base_lr: 0.1 -> 0.2" in message
  assert "total_steps: 2 -> 4" in message
  assert "log_every_steps" not in message and "--allow_config_change" in message
  assert _snapshot(workdir) == before  # Nothing written or touched.

  # Run-neutral changes alone continue the run.
  neutral = fmnist_fixtures.tiny_config(tiny_fmnist_data_dir, total_steps=2)
  neutral.log_every_steps = 2
  neutral.checkpoint.keep = 5
  train.train_and_evaluate(neutral, workdir)

  summary = train.train_and_evaluate(changed, workdir,
                                     allow_config_change=True)
  assert summary["step"] == 4
  kept = glob.glob(os.path.join(workdir, "config.before_*.json"))
  assert len(kept) == 1 and json.load(open(kept[0]))["optim"]["base_lr"] == 0.1
  assert json.load(open(os.path.join(workdir, "config.json")))["optim"][
      "base_lr"] == 0.2


@pytest.mark.slow
@pytest.mark.usefixtures("compilation_cache_for_commands")
def test_main_refuses_a_changed_config(tiny_fmnist_data_dir, tmp_path):
  workdir = tmp_path / "run"
  args = [f"--config={test_main.CONFIG}:probe=no", f"--workdir={workdir}",
          f"--config.data.data_dir={tiny_fmnist_data_dir}",
          "--config.total_epochs=0", "--config.total_steps=1",
          "--config.batch_size=8"]
  assert test_main._run_main(*args).returncode == 0
  result = test_main._run_main(*args, "--config.seed=1")
  assert result.returncode == 2
  assert "seed: 0 -> 1" in result.stderr
  assert "--allow_config_change" in result.stderr


# --- Crashes (SIGKILL) and preemption (SIGTERM), then the same command. ---


def _main_command(workdir, data_dir):
  return [sys.executable, "-m", "big_transfer_med.main",
          f"--config={test_main.CONFIG}:probe=no", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", "--config.total_epochs=0",
          "--config.total_steps=8", "--config.batch_size=8",
          "--config.schedule.warmup_epochs=0", "--config.schedule.warmup_steps=2",
          "--config.checkpoint.every_steps=1", "--config.checkpoint.keep=2",
          "--config.log_every_steps=1"]


def _start(command):
  env = dict(os.environ, PYTHONPATH=test_main.REPO)
  return subprocess.Popen(command, cwd=test_main.REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _signal_when(process, signum, condition, timeout=240):
  """Sends `signum` to `process` as soon as condition() holds (polled every
  ms) and waits for it to end."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if condition():
      process.send_signal(signum)
      process.wait()
      return
    if process.poll() is not None:
      raise AssertionError("finished before the signal: "
                           + process.stderr.read().decode()[-3000:])
    time.sleep(0.001)
  process.kill()
  raise AssertionError("condition never held")


def _saving(workdir):
  """A checkpoint of step >= 3 is being written (orbax's temporary dir)."""
  tmp = glob.glob(os.path.join(workdir, "checkpoints", "*.orbax-checkpoint-tmp*"))
  return [p for p in tmp if int(os.path.basename(p).split(".")[0]) >= 3]


def _train_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}


@pytest.mark.slow
@pytest.mark.usefixtures("compilation_cache_for_commands")
def test_crash_or_preemption_then_resume_is_the_uninterrupted_run(
    tiny_fmnist_data_dir, tmp_path):
  whole = tmp_path / "whole"
  done = subprocess.run(_main_command(whole, tiny_fmnist_data_dir),
                        cwd=test_main.REPO, capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=test_main.REPO))
  assert done.returncode == 0, done.stderr[-3000:]

  crashed = tmp_path / "crashed"
  command = _main_command(crashed, tiny_fmnist_data_dir)
  # 1. Killed in the middle of writing a checkpoint.
  _signal_when(_start(command), signal.SIGKILL, lambda: _saving(crashed))
  leftovers = _saving(crashed)
  assert leftovers, "the kill should land during a save"
  # 2. Preempted (SIGTERM) after one more save: it saves the next step and
  # exits with EXIT_PREEMPTED.
  latest = _checkpoint_steps(crashed)[-1]
  preempted = _start(command)
  _signal_when(preempted, signal.SIGTERM,
               lambda: _checkpoint_steps(crashed)[-1] > latest)
  message = preempted.stderr.read().decode().strip().splitlines()[-1]
  assert preempted.returncode == preemption.EXIT_PREEMPTED, message
  step = _checkpoint_steps(crashed)[-1]
  assert message == (f"Preempted (SIGTERM): saved a checkpoint at step {step}; "
                     "run the same command to continue from it.")
  assert step < 8
  # 3. Run to the end.
  result = subprocess.run(command, cwd=test_main.REPO, capture_output=True,
                          text=True, env=dict(os.environ,
                                              PYTHONPATH=test_main.REPO))
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Resumed from the checkpoint at step {step}." in result.stderr
  assert "Resumed from the checkpoint at step" in result.stderr
  assert not _saving(crashed)  # Leftover temporary directories removed.

  a, b = _restore(whole), _restore(crashed)
  jax.tree.map(np.testing.assert_array_equal, a, b)  # Bit for bit.
  # The same data in the same order: every step's loss is the same.
  assert _train_losses(whole) == _train_losses(crashed)
  assert sorted(_train_losses(crashed)) == list(range(1, 9))


def test_undecodable_image_at_training_time_is_named(tiny_fmnist_data_dir,
                                                     tmp_path, monkeypatch):
  """Damaged bytes in a built dataset (as after a disk fault): the error
  names the record, and the checkpoints already written stay intact."""
  original = pipeline.Source.read

  def truncated_image(serialized):
    example = tf.train.Example.FromString(serialized)
    image = example.features.feature["image"].bytes_list.value
    image[0] = image[0][:40]
    return example.SerializeToString()

  def read(self, positions):
    serialized, labels = original(self, positions)
    return [truncated_image(r) if self.split == "train" and record == 7
            else r for record, r in zip(self.indices[positions], serialized)
            ], labels
  monkeypatch.setattr(pipeline.Source, "read", read)
  data_before = _snapshot(tiny_fmnist_data_dir)
  workdir = str(tmp_path / "run")
  config = fmnist_fixtures.tiny_config(tiny_fmnist_data_dir, total_steps=12)
  config.checkpoint.every_steps = 1
  config.checkpoint.keep = 20
  with pytest.raises(errors.DataError) as e:
    train.train_and_evaluate(config, workdir)
  message = str(e.value)
  assert "fashion_mnist_local[train] record 7 (id " in message
  assert "(Invalid PNG. Failed to initialize decoder.)" in message
  assert "cannot be decoded" in message and "tfds build" in message
  for step in _checkpoint_steps(workdir):
    params = _restore(workdir, step)["params"]
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  assert _snapshot(tiny_fmnist_data_dir) == data_before


def test_failing_checkpoint_write_keeps_earlier_checkpoints(
    tiny_fmnist_data_dir, tmp_path, monkeypatch):
  """A save that fails (here: its final rename, as on a full or read-only
  disk) stops the run; the earlier checkpoints stay whole and the same
  command then continues from them."""
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=g-import-not-at-top
  original = atomicity.AtomicRenameTemporaryPath.finalize

  async def finalize(self, *args, **kwargs):
    if os.path.basename(str(self.get_final())) == "3":
      raise OSError(28, "No space left on device")
    return await original(self, *args, **kwargs)
  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize",
                      finalize)
  workdir = str(tmp_path / "run")
  config = fmnist_fixtures.tiny_config(tiny_fmnist_data_dir, total_steps=5)
  config.checkpoint.every_steps = 1
  config.checkpoint.keep = 10
  with pytest.raises(Exception, match="No space left on device"):
    train.train_and_evaluate(config, workdir)
  assert _checkpoint_steps(workdir) == [1, 2]
  for step in (1, 2):
    _restore(workdir, step)

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize",
                      original)
  summary = train.train_and_evaluate(config, workdir)
  assert summary["step"] == 5 and _checkpoint_steps(workdir) == [1, 2, 3, 4, 5]


def test_ctrl_c_is_a_preemption_and_a_second_one_stops_at_once():
  """In a single process Ctrl-C asks for a checkpoint and a stop, as SIGTERM
  does (the trainer names the signal); a second Ctrl-C raises at once; the
  previous handlers come back afterwards."""
  before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
  with preemption.Notice() as notice:
    assert not notice.reached(1)
    os.kill(os.getpid(), signal.SIGINT)
    assert notice.reached(2) and notice.signal_name == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  assert (signal.getsignal(signal.SIGINT),
          signal.getsignal(signal.SIGTERM)) == before
  assert str(preemption.Preempted(4, notice.signal_name)) == (
      "Preempted (SIGINT): saved a checkpoint at step 4; run the same "
      "command to continue from it.")


@pytest.mark.parametrize("spec,parts", [
    ("runs/up", ("runs/up", "")), ("runs/up:best", ("runs/up", "best")),
    ("runs/up:latest", ("runs/up", "latest")),
    ("runs/up:1200", ("runs/up", "1200")),
    ("gs://bucket/up", ("gs://bucket/up", "")),
    ("gs://bucket/up:40", ("gs://bucket/up", "40")),
    ("runs/a:b", ("runs/a:b", ""))])
def test_a_checkpoint_spec_names_a_run_and_which_checkpoint(spec, parts):
  assert run_dir.split_choice(spec) == parts
