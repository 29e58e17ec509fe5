"""The entry point: config files, arguments, overrides and fail-fast errors."""
import os
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "fashion_mnist_upstream.py")


def _parse(*argv):
  flag_values = flags.FlagValues()
  # Override flags (--config.x) are found in sys_argv when the flag is defined.
  config_flags.DEFINE_config_file("config", None, flag_values=flag_values,
                                  lock_config=True, sys_argv=["prog", *argv])
  flag_values(["prog", *argv])
  return flag_values.config


def test_config_arguments_and_overrides():
  config = _parse(f"--config={CONFIG}:model=R50x1,res=64",
                  "--config.batch_size=32", "--config.optim.base_lr=0.5",
                  "--config.schedule.decay_steps=(10,20)")
  assert config.model.name == "R50x1" and config.data.resolution == 64
  assert config.batch_size == 32 and config.optim.base_lr == 0.5
  assert tuple(config.schedule.decay_steps) == (10, 20)
  assert config.data.classes == (0, 1, 2, 3, 4)


def test_unknown_override_key_is_refused():
  with pytest.raises(AttributeError, match='Did you mean "batch_size"'):
    _parse(f"--config={CONFIG}", "--config.batch_sise=32")


def test_typo_in_a_config_file_is_refused(tmp_path):
  bad = tmp_path / "bad_config.py"
  bad.write_text(
      "from big_transfer_med import config_lib\n"
      "def get_config():\n"
      "  c = config_lib.base_config()\n"
      "  c.optim.weight_decya = 0.0\n"
      "  return c\n")
  with pytest.raises(Exception, match="weight_decya"):
    _parse(f"--config={bad}")


def _run_main(*args, timeout=300):
  env = dict(os.environ, PYTHONPATH=REPO)
  return subprocess.run(
      [sys.executable, "-m", "big_transfer_med.main", *args],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_main_unknown_key_fails_before_any_work(tmp_path):
  workdir = tmp_path / "run"
  result = _run_main(f"--config={CONFIG}", f"--workdir={workdir}",
                     "--config.data.nmae=x")
  assert result.returncode != 0
  assert "nmae" in result.stderr
  assert not workdir.exists()


def test_main_missing_dataset_says_how_to_build(tmp_path):
  workdir = tmp_path / "run"
  result = _run_main(f"--config={CONFIG}", f"--workdir={workdir}",
                     f"--config.data.data_dir={tmp_path / 'empty'}")
  assert result.returncode == 2, result.stderr[-2000:]
  assert "ERROR: Dataset 'fashion_mnist_local' is not built" in result.stderr
  assert "tfds build --imports=input_pipeline.datasets fashion_mnist_local" in result.stderr
  assert not workdir.exists()  # Nothing written.


@pytest.mark.slow
def test_main_trains_and_writes_results(tiny_fmnist_data_dir, tmp_path):
  workdir = tmp_path / "run"
  result = _run_main(f"--config={CONFIG}", f"--workdir={workdir}",
                     f"--config.data.data_dir={tiny_fmnist_data_dir}",
                     "--config.total_epochs=0.32", "--config.batch_size=8",
                     "--config.schedule.warmup_epochs=0",
                     "--config.checkpoint.every_steps=0")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "step 2/2" in result.stderr and "images/s" in result.stderr
  assert "ETA" in result.stderr
  assert (workdir / "results.json").exists()
  assert (workdir / "checkpoints" / "2").exists()
