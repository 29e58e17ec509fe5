"""What users type: relative paths, config values and files checked before
anything is written, and every mistake reported in one line (exit code 2)."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from big_transfer_med import config_lib
from big_transfer_med import config_validation
from big_transfer_med import paths
from big_transfer_med import pretrained_weights
from big_transfer_med import study
from input_pipeline import errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "fashion_mnist_upstream.py")
TORCH_FILE = os.path.join(REPO, "tests", "testdata", "torch")


def _run(module, *args, cwd=REPO, timeout=600, unset=()):
  env = {k: v for k, v in os.environ.items() if k not in unset}
  env["PYTHONPATH"] = REPO
  return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd,
                        env=env, capture_output=True, text=True,
                        timeout=timeout)


def _error_line(result) -> str:
  """The one ERROR line of a failed command; fails on tracebacks."""
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith("ERROR")]
  assert len(lines) == 1, result.stderr[-3000:]
  return lines[0]


# Relative and remote paths.

def test_absolute_keeps_remote_and_empty_paths(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert paths.absolute("runs/a") == str(tmp_path / "runs" / "a")
  assert paths.absolute("gs://bucket/runs/a") == "gs://bucket/runs/a"
  assert paths.absolute("") == "" and paths.absolute(None) is None
  assert paths.absolute("~/x") == os.path.join(os.path.expanduser("~"), "x")
  c = config_lib.base_config()
  c.init.checkpoint, c.data.data_dir = "up", "gs://bucket/tfds"
  absolute = paths.absolute_config_paths(c)
  assert absolute.init.checkpoint == str(tmp_path / "up")
  assert absolute.data.data_dir == "gs://bucket/tfds"
  assert c.init.checkpoint == "up"  # The given config is not changed.


def test_study_spec_paths_are_made_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  spec = study.default_spec()
  spec.workdir, spec.targets = "studies/s", ("fmnist_5to9",)
  spec.sources = {"up": "runs/up", "scratch": "", "bucket": "gs://b/up"}
  spec = study.absolute_spec_paths(spec)
  assert spec.workdir == str(tmp_path / "studies" / "s")
  assert spec.config == str(tmp_path / "configs" / "transfer.py")
  assert dict(spec.sources) == {"up": str(tmp_path / "runs" / "up"),
                                "scratch": "", "bucket": "gs://b/up"}
  job = next(j for j in study.expand(spec) if j.source == "up")
  assert f"init={tmp_path / 'runs' / 'up'}" in study.command(spec, job)


@pytest.mark.slow
@pytest.mark.usefixtures("compilation_cache_for_commands")
def test_main_with_relative_paths_from_another_directory(
    tiny_fmnist_data_dir, tmp_path):
  """Save and init.checkpoint from relative paths (orbax needs absolute
  ones), run from a directory that is not the repository. (A resume reads
  the workdir made absolute by the same first line of the trainer.)"""
  cwd = tmp_path / "elsewhere"
  cwd.mkdir()
  data_dir = os.path.relpath(tiny_fmnist_data_dir, cwd)
  config = os.path.relpath(CONFIG, cwd)
  common = [f"--config={config}:probe=no", f"--config.data.data_dir={data_dir}",
            "--config.batch_size=8", "--config.total_epochs=0",
            "--config.schedule.warmup_epochs=0",
            "--config.checkpoint.every_steps=1", "--config.log_every_steps=1"]
  first = _run("big_transfer_med.main", *common, "--workdir=runs/up",
               "--config.total_steps=2", cwd=cwd)
  assert first.returncode == 0, first.stderr[-3000:]
  assert (cwd / "runs" / "up" / "checkpoints" / "2").is_dir()
  saved = json.loads((cwd / "runs" / "up" / "config.json").read_text())
  assert saved["data"]["data_dir"] == tiny_fmnist_data_dir

  finetuned = _run("big_transfer_med.main", *common, "--workdir=runs/ft",
                   "--config.total_steps=1",
                   "--config.init.checkpoint=runs/up", cwd=cwd)
  assert finetuned.returncode == 0, finetuned.stderr[-3000:]
  results = json.loads((cwd / "runs" / "ft" / "results.json").read_text())
  assert results["init_checkpoint"] == str(cwd / "runs" / "up")
  assert results["init"]["loaded"] > 0 and results["init"]["initialised"] == 0


# Config values.

def test_every_base_config_key_has_exactly_one_rule():
  keys = {k for k in config_validation.flat_items(config_lib.base_config())
          if not k.startswith("evals.")}
  assert keys == set(config_validation.RULES)
  evals = (config_lib.classification_eval(), config_lib.segmentation_eval(),
           config_lib.fewshot_eval())
  assert {e.type for e in evals} == set(config_validation.EVAL_RULES)
  for settings in evals:
    assert set(settings) == set(config_validation.EVAL_RULES[settings.type])


def _with_probe(c):
  config_lib.add_eval(c, "probe", config_lib.fewshot_eval(
      dataset="fashion_mnist_local"))
  return c


@pytest.mark.parametrize("key", sorted(config_validation.RULES) + [
    f"evals.val.{k}" for k in config_lib.classification_eval()] + [
        f"evals.probe.{k}" for k in config_lib.fewshot_eval()])
def test_every_key_refuses_a_value_of_the_wrong_kind(key):
  values = _with_probe(config_lib.base_config()).to_dict()
  *parents, leaf = key.split(".")
  node = values
  for p in parents:
    node = node[p]
  node[leaf] = {1, 2}  # No rule accepts a set.
  import ml_collections  # pylint: disable=g-import-not-at-top
  with pytest.raises(errors.ConfigError, match=rf"^config\.{key}="):
    config_validation.validate(ml_collections.ConfigDict(values))


def _valid_config():
  c = _with_probe(config_lib.base_config())
  c.data.resolution, c.total_steps = 32, 10
  return c


@pytest.mark.parametrize("key,value", [
    ("batch_size", -4), ("batch_size", 0), ("log_every_steps", 0),
    ("optim.base_lr", -0.1), ("optim.momentum", -0.5),
    ("optim.momentum", 1.0), ("optim.weight_decay", -1e-4),
    ("schedule.warmup_steps", -5), ("schedule.warmup_epochs", -1.0),
    ("schedule.decay_factor", -0.1), ("schedule.decay_factor", 0.0),
    ("schedule.decay_factor", 2.0), ("schedule.decay_steps", (30, 20)),
    ("mixup_alpha", -0.2), ("total_steps", -1), ("total_epochs", -1.0),
    ("checkpoint.keep", 0), ("checkpoint.every_steps", -1),
    ("data.augment", "rotate"), ("data.channels", 2), ("data.resolution", 0),
    ("data.shift", 1.5), ("data.views", ("PA", "SIDE")),
    ("data.sources", ("chexpert", "imagenet")), ("data.label_set", "all"),
    ("data.uncertain", "maybe"), ("data.classes", (1, 1)),
    ("model.name", "R51x1"), ("model.precision", "float16"),
    ("loss", "hinge"), ("primary_metric", "f1"), ("on_nonfinite", "ignore"),
    ("init.dont_load", ("head/[",)), ("evals.probe.shots", (0, 5)),
    ("evals.probe.l2_reg", 0.0), ("evals.val.every_steps", -1),
    ("evals.val.type", "detection"), ("seed", -1), ("optim.agc_eps", 0.0),
])
def test_bad_values_are_refused_naming_key_and_allowed(key, value):
  c = _valid_config()
  *parents, leaf = key.split(".")
  node = c
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(errors.ConfigError) as raised:
    config_validation.validate(c)
  message = str(raised.value)
  assert message.startswith(f"config.{key}={value!r}: expected ")
  assert "\n" not in message


def test_rules_across_keys():
  c = _valid_config()
  c.total_epochs = 2.0
  with pytest.raises(errors.ConfigError, match="only one of config.total_steps"):
    config_validation.validate(c)
  c = _valid_config()
  c.data.sources, c.data.weights = ("chexpert", "nih14"), (1.0,)
  with pytest.raises(errors.ConfigError, match="config.data.weights"):
    config_validation.validate(c)
  c = _valid_config()
  c.data.augment, c.data.resize = "bit", 16
  with pytest.raises(errors.ConfigError, match="config.data.resize=16"):
    config_validation.validate(c)
  c = _valid_config()
  c.hyperrule, c.data.resolution, c.total_steps = True, None, None
  config_validation.validate(c)  # HyperRule will fill them ...
  with pytest.raises(errors.ConfigError, match="data.resolution is unset"):
    config_validation.validate(c, resolved=True)  # ... and then they count.


def test_batch_norm_reestimation_needs_a_batch_norm_model():
  c = _valid_config()
  c.init.reestimate_batch_stats = 4
  with pytest.raises(errors.ConfigError,
                     match=r"config\.init\.reestimate_batch_stats=4: expected "
                     r"0: config\.model\.name='R\w+' has no BatchNorm"):
    config_validation.validate(c)
  c.model.name = "resnet18"
  config_validation.validate(c)


@pytest.mark.parametrize("config_file,arg", [
    ("fashion_mnist_upstream.py", ""), ("fashion_mnist_upstream.py", "model=R50x1,res=64"),
    ("r50x1_chest.py", ""), ("r50x1_chest.py", "sources=chexpert+mimic,label_set=union"),
    ("r50x1_chest.py", "sources=nih14,views=all"), ("r152x4_chest.py", "sources=nih14"),
    ("transfer.py", "target=cifar10,init=x.npz"),
    ("transfer.py", "target=padchest_cl,model=R152x4,shots=5,seed=2"),
    ("transfer.py", "target=fmnist_5to9,res=28,resize=32,steps=20,batch=16,lr=0.5"),
    ("transfer.py", "target=nih14,model=resnet50,recipe=benchmark,init=x.pth"),
    ("r50x1_chest.py", "model=resnet50,sources=nih14,init=x.pth"),
])
def test_shipped_configs_are_valid(config_file, arg):
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  flag_values = flags.FlagValues()
  spec = os.path.join(REPO, "configs", config_file) + (f":{arg}" if arg else "")
  config_flags.DEFINE_config_file("config", None, flag_values=flag_values,
                                  sys_argv=["", f"--config={spec}"])
  flag_values(["", f"--config={spec}"])
  config_validation.validate(flag_values.config)


@pytest.mark.parametrize("arg,expected", [
    ("foo=1", r"unknown argument 'foo' in 'foo=1' \(keys: model, res, epochs, probe\)"),
    ("res=abc", "argument res='abc' is not a valid int"),
    ("res", "argument 'res' is not of the form key=value"),
])
def test_config_arguments_are_checked(arg, expected):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("c", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  with pytest.raises(errors.ConfigError, match=expected):
    module.get_config(arg)


# One line per mistake, nothing written.

@pytest.mark.slow
@pytest.mark.parametrize("args,expected", [
    (["--config.batch_size=-4"], "ERROR: config.batch_size=-4: expected an integer >= 1."),
    (["--config.data.augment=rotate", "--config.checkpoint.keep=0"],
     "ERROR: config.checkpoint.keep=0: expected an integer >= 1."),
    (["--config.optim.nmomentum=0.5"], "Did you mean --config.optim.momentum?"),
    (["--config.batch_size=abc"], "ERROR: flag --config.batch_size=abc: invalid literal"),
], ids=["negative-batch", "first-bad-key", "unknown-key", "not-a-number"])
def test_main_bad_value_is_one_line_and_writes_nothing(args, expected, tmp_path):
  workdir = tmp_path / "run"
  line = _error_line(_run("big_transfer_med.main", f"--config={CONFIG}",
                          f"--workdir={workdir}", *args))
  assert expected in line, line
  assert not workdir.exists()


def test_main_bad_config_files_are_one_line(tmp_path):
  (tmp_path / "syntax.py").write_text("def get_config(:\n  pass\n")
  (tmp_path / "raises.py").write_text("def get_config():\n  return 1 / 0\n")
  cases = {
      "configs/nonexistent.py": "ERROR: --config=configs/nonexistent.py: no such config file",
      f"{tmp_path}/syntax.py": f"does not load: SyntaxError in {tmp_path}/syntax.py, line 1",
      f"{tmp_path}/raises.py": "does not load: ZeroDivisionError: division by zero",
      f"{CONFIG}:nope=1": "unknown argument 'nope' in 'nope=1'",
      os.path.join(REPO, "configs", "transfer.py"): "configs/transfer.py needs target=",
  }
  for config, expected in cases.items():
    line = _error_line(_run("big_transfer_med.main", f"--config={config}",
                            f"--workdir={tmp_path / 'run'}"))
    assert expected in line, line
  assert not (tmp_path / "run").exists()


def _bad_checkpoints(directory):
  """Damaged or foreign files named like checkpoints."""
  np.savez(directory / "good.npz", **{"resnet/group_norm/gamma": np.ones(3)})
  good = (directory / "good.npz").read_bytes()
  real_torch = open(glob.glob(os.path.join(TORCH_FILE, "*.pt*"))[0], "rb").read()
  files = {"empty.npz": b"", "truncated.npz": good[:len(good) // 2],
           "text.npz": b"not a checkpoint\n", "empty.pth": b"",
           "truncated.pth": real_torch[:len(real_torch) // 2],
           "random.pth.tar": np.random.default_rng(0).bytes(4096)}
  for name, data in files.items():
    (directory / name).write_bytes(data)
  np.savez(directory / "objects.npz", names=np.array([{"a": 1}], dtype=object))
  return sorted(files) + ["objects.npz"]


def test_damaged_checkpoints_fail_naming_the_file(tmp_path):
  template = pretrained_weights.variables_template("R26x1", 10)
  for name in _bad_checkpoints(tmp_path):
    path = str(tmp_path / name)
    with pytest.raises(errors.CheckpointMismatchError) as raised:
      pretrained_weights.load_pretrained(path, template)
    assert path in str(raised.value), name
    assert "\n" not in str(raised.value), name
  empty_dir = tmp_path / "not_a_run"
  empty_dir.mkdir()
  with pytest.raises(errors.CheckpointMismatchError, match="holds no checkpoint"):
    pretrained_weights.load_pretrained(str(empty_dir), template)


def test_main_damaged_init_checkpoint_is_one_line(tiny_fmnist_data_dir,
                                                  tmp_path):
  (tmp_path / "empty.npz").write_bytes(b"")
  workdir = tmp_path / "run"
  line = _error_line(_run(
      "big_transfer_med.main", f"--config={CONFIG}", f"--workdir={workdir}",
      f"--config.data.data_dir={tiny_fmnist_data_dir}", "--config.batch_size=8",
      f"--config.init.checkpoint={tmp_path / 'empty.npz'}"))
  assert f"{tmp_path / 'empty.npz'} cannot be read as a checkpoint" in line
  assert not workdir.exists()


@pytest.mark.parametrize("module,args,expected", [
    ("big_transfer_med.predict", ["--workdir=nowhere", "x.png"],
     "nowhere/config.json not found"),
    ("big_transfer_med.fewshot", ["--dataset=fashion_mnist_local"],
     "Give --workdir, or --checkpoint and --model."),
    ("big_transfer_med.study", ["--spec=configs/studies/fmnist_demo.py",
                                "--spec.sourcez=1"], "Did you mean --spec.sources?"),
    ("big_transfer_med.study", ["--spec=configs/studies/fmnist_demo.py",
                                "--sources=imagenet", "--mode=commands"],
     "--sources: imagenet not among the spec's sources (fmnist_0to4, scratch)"),
    ("big_transfer_med.study", ["--spec=configs/studies/fmnist_demo.py",
                                "--shots=five", "--mode=commands"],
     "--shots=five: expected whole numbers (0 = full-shot)"),
    ("big_transfer_med.study", ["--spec=configs/studies/fmnist_demo.py",
                                "--in_process", "--parallel=2"],
     "--parallel applies to a process per job, not to --in_process"),
    ("big_transfer_med.benchmark", ["--what=flops"], "--what: unknown ['flops']"),
    ("big_transfer_med.benchmark", ["--what=peak,memory", "--batch_size=6",
                                    "--accum_steps=1,4"],
     "--accum_steps=1,4: expected integers >= 1 that divide --batch_size=6"),
    ("big_transfer_med.benchmark", ["--what=memory", "--remat=layer"],
     "--remat: unknown ['layer']; expected none, unit."),
    ("big_transfer_med.benchmark", ["--what=fit", "--device_memory=80G"],
     "--device_memory: '80G' is not a size like 80GiB"),
    ("big_transfer_med.benchmark", ["--what=fit", "--global_batch=500",
                                    "--devices=8"],
     "--global_batch=500 does not divide over --devices=8."),
    ("big_transfer_med.benchmark", ["--what=fit", "--precisions=fp16"],
     "--precisions: unknown ['fp16']; expected bfloat16, float32."),
    ("big_transfer_med.main", ["--workdir=x"], "ERROR: flag --config"),
    ("big_transfer_med.main", [f"--config={CONFIG}", "--workdir=x",
                               "--host_timeout_seconds=0"],
     "flag --host_timeout_seconds=0: 0 is not a positive integer"),
])
def test_every_entry_point_reports_one_line(module, args, expected):
  line = _error_line(_run(module, *args))
  assert expected in line, line


# Quiet by default.


def test_a_run_that_cannot_start_prints_its_error_alone(tmp_path):
  """No TensorFlow / XLA start-up lines, no library warnings, none of our
  own progress lines: stderr is the error."""
  result = _run("big_transfer_med.main", f"--config={CONFIG}",
                f"--workdir={tmp_path / 'run'}",
                f"--config.data.data_dir={tmp_path / 'no_data'}",
                # As a user's shell has it (the tests set it).
                unset=("TF_CPP_MIN_LOG_LEVEL",))
  _error_line(result)
  assert result.stderr.startswith(
      "ERROR: Dataset 'fashion_mnist_local' is not built"), result.stderr


def _entry_point(tmp_path, body: str, *args):
  """Runs a one-off entry point (cli.run over `body`, a main(argv) that may
  use absl `logging`) with a --workdir flag."""
  code = ("from absl import flags, logging\n"
          "from big_transfer_med import cli\n"
          "flags.DEFINE_string('workdir', None, '')\n"
          f"def main(argv):\n  {body}\n"
          "cli.run(main)\n")
  return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO,
                        env=dict(os.environ, PYTHONPATH=REPO),
                        capture_output=True, text=True, timeout=120)


def test_ctrl_c_outside_the_step_loop_says_where_the_run_resumes(tmp_path):
  for name in ("3", "5", "7.orbax-checkpoint-tmp-1"):  # 7: not complete.
    (tmp_path / "checkpoints" / name).mkdir(parents=True)
  result = _entry_point(tmp_path, "raise KeyboardInterrupt",
                        f"--workdir={tmp_path}")
  assert result.returncode == 130
  assert result.stderr == (
      f"Interrupted (Ctrl-C): run the same command to continue from the "
      f"checkpoint at step 5 in {tmp_path}.\n")
  result = _entry_point(tmp_path, "raise KeyboardInterrupt",
                        f"--workdir={tmp_path / 'new'}")
  assert result.stderr.splitlines() == [
      f"Interrupted (Ctrl-C): no checkpoint in {tmp_path / 'new'} yet; the "
      "same command starts afresh."]


def test_other_libraries_log_errors_only_unless_verbosity_is_given(tmp_path):
  """A record from outside big_transfer_med/ and input_pipeline/ (here the
  -c program's) is shown from ERROR up; any --verbosity shows it all."""
  body = "logging.info('library info'); logging.error('library error')"
  quiet = _entry_point(tmp_path, body)
  assert quiet.returncode == 0, quiet.stderr
  assert "library error" in quiet.stderr
  assert "library info" not in quiet.stderr
  verbose = _entry_point(tmp_path, body, "--verbosity=0")
  assert "library info" in verbose.stderr and "library error" in verbose.stderr
