"""Study runner: grid expansion, skipping finished jobs, commands, tables, plots."""
import csv
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from big_transfer_med import config_lib
from big_transfer_med import config_validation
from big_transfer_med import study
from input_pipeline import errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def compilation_cache_on(monkeypatch):
  """JAX's persistent compilation cache on, as users have it (conftest turns
  it off), in this process and the commands it starts."""
  from jax._src import compilation_cache  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("JAX_ENABLE_COMPILATION_CACHE", "true")
  saved = {name: getattr(jax.config, name) for name in (
      "jax_enable_compilation_cache", "jax_compilation_cache_dir")}
  jax.config.update("jax_enable_compilation_cache", True)
  compilation_cache.reset_cache()
  yield
  for name, value in saved.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


def _spec(workdir, **overrides):
  s = study.default_spec()
  s.name = "test study"
  s.config = os.path.join(REPO, "configs", "transfer.py")
  s.workdir = workdir
  s.sources = {"pretrained": "/ckpt/run", "scratch": ""}
  s.models = ("R26x1",)
  s.targets = ("fmnist_5to9",)
  s.shots = (1, 5, 0)
  s.seeds = (0, 1, 2)
  s.full_seeds = (0,)
  s.fewshot_args = "steps=2"
  for key, value in overrides.items():
    s[key] = value
  return s


def _finish(job, value):
  os.makedirs(job.workdir, exist_ok=True)
  with open(os.path.join(job.workdir, "results.json"), "w") as f:
    json.dump({"primary_metric": "accuracy", "step": 2,
               "metrics": {"accuracy": value}}, f)


def test_expand_grid_and_job_arguments(tmp_path):
  jobs = study.expand(_spec(str(tmp_path)))
  assert len(jobs) == 2 * (2 * 3 + 1)
  pretrained_5shot = [j for j in jobs if j.source == "pretrained"
                      and j.shots == 5]
  assert [j.seed for j in pretrained_5shot] == [0, 1, 2]
  job = pretrained_5shot[1]
  assert job.workdir == os.path.join(str(tmp_path), "pretrained", "R26x1",
                                     "fmnist_5to9", "5shot", "seed1")
  assert job.config_arg == ("target=fmnist_5to9,model=R26x1,shots=5,seed=1,"
                            "init=/ckpt/run,steps=2")
  scratch_full = [j for j in jobs if j.source == "scratch" and j.shots == 0]
  assert len(scratch_full) == 1 and "init=" not in scratch_full[0].config_arg
  assert "steps" not in scratch_full[0].config_arg  # fewshot_args only.
  # Few-shot jobs of either source compile one set of programs, full-shot
  # jobs (other arguments, MixUp) another.
  keys = {study.program_key(j) for j in jobs}
  assert len(keys) == 2
  assert study.program_key(job) == study.program_key(
      [j for j in jobs if j.source == "scratch" and j.shots == 1][2])


def test_aggregate_mean_std_table_and_plot(tmp_path):
  spec = _spec(str(tmp_path))
  jobs = study.expand(spec)
  values = {}
  for i, job in enumerate(jobs[:-1]):  # The last job is not finished.
    values[job] = 0.5 + 0.01 * i
    _finish(job, values[job])
  table = study.aggregate(spec, jobs)
  with open(os.path.join(spec.workdir, "summary.csv")) as f:
    summary = list(csv.DictReader(f))
  cell = [r for r in summary if r["source"] == "pretrained"
          and r["shots"] == "5"][0]
  expected = [values[j] for j in jobs if j.source == "pretrained"
              and j.shots == 5]
  np.testing.assert_allclose(float(cell["mean"]), np.mean(expected))
  np.testing.assert_allclose(float(cell["std"]), np.std(expected, ddof=1))
  assert cell["seeds"] == "3"
  assert len(summary) == 5  # The unfinished scratch full-shot cell is absent.
  with open(os.path.join(spec.workdir, "results.csv")) as f:
    assert len(list(csv.DictReader(f))) == len(jobs) - 1
  assert "| pretrained | R26x1 |" in table and "±" in table
  assert "paper" not in table  # This spec cites nothing.
  assert table.splitlines()[0] == (
      "| source | model | fmnist_5to9 1shot | fmnist_5to9 5shot | "
      "fmnist_5to9 full |")
  png = os.path.join(spec.workdir, "plot_fmnist_5to9_R26x1.png")
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_commands_mode_lists_only_unfinished_jobs(tmp_path):
  spec_file = tmp_path / "spec.py"
  spec_file.write_text(f"""
from big_transfer_med import study
def get_config():
  s = study.default_spec()
  s.workdir = {str(tmp_path / "study")!r}
  s.sources = {{"scratch": "",
                "imagenet21k": {str(tmp_path / "pretrained" / "BiT-M-")!r} + "{{model}}.npz"}}
  s.models = ("R26x1",)
  s.targets = ("fmnist_5to9",)
  s.shots = (1,)
  s.seeds = (0, 1)
  s.args = "eval_split=test[:20%]"
  return s
""")
  done = study.expand(_spec(str(tmp_path / "study"), sources={"scratch": ""},
                            shots=(1,), seeds=(0, 1), fewshot_args=""))[0]
  _finish(done, 0.7)
  result = subprocess.run(
      [sys.executable, "-m", "big_transfer_med.study", f"--spec={spec_file}",
       "--mode=commands"], cwd=REPO, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr
  with open(tmp_path / "study" / "jobs.txt") as f:
    lines = f.read().splitlines()
  assert len(lines) == 1 and "seed=1" in lines[0]
  # The spec's config file, made absolute: the command runs from anywhere.
  config = os.path.join(REPO, "configs", "transfer.py")
  assert f"'{config}:target=fmnist_5to9,model=R26x1,shots=1,seed=1,eval_split=test[:20%]'" in lines[0]
  assert "1 jobs done" in result.stdout
  # The BiT-M source's file is missing: its 2 jobs are left out, and the
  # file is named with where Google publishes it.
  missing = tmp_path / "pretrained" / "BiT-M-R26x1.npz"
  lines = result.stderr.splitlines()
  at = lines.index("1 init checkpoint(s) missing; their jobs are left out "
                   "until the files are there:")
  assert lines[at + 1] == (
      f"  {missing} (2 jobs): Google's BiT-M R26x1 (ImageNet-21k): "
      "https://storage.googleapis.com/bit_models/BiT-M-R26x1.npz")


@pytest.mark.slow
@pytest.mark.usefixtures("compilation_cache_on")
def test_run_mode_trains_skips_and_tabulates(tiny_fmnist_data_dir, tmp_path):
  spec = _spec(str(tmp_path / "study"), sources={"scratch": ""}, shots=(2,),
               seeds=(0, 1),
               args=f"res=32,resize=36,batch=8,data_dir={tiny_fmnist_data_dir}",
               fewshot_args="steps=2")
  jobs = study.expand(spec)
  assert study.run_jobs(spec, jobs, parallel=2) == []
  assert all(j.done for j in jobs)
  assert len(os.listdir(os.path.join(spec.workdir, "logs"))) == 2
  with open(os.path.join(jobs[0].workdir, "results.json")) as f:
    results = json.load(f)
  assert results["examples_per_class"] == 2 and results["step"] == 2
  assert results["train_examples"] == 10
  mtime = os.path.getmtime(os.path.join(jobs[0].workdir, "results.json"))
  assert study.run_jobs(spec, jobs) == []  # Nothing left to do.
  assert os.path.getmtime(os.path.join(jobs[0].workdir,
                                       "results.json")) == mtime
  # Seed 1 has seed 0's programs, so it ran after it and compiled nothing:
  # its process read every executable from the cache the jobs share.
  with open(os.path.join(jobs[1].workdir, "results.json")) as f:
    timing = json.load(f)["timing"]
  assert timing["compile_cache_hits"] > 0
  assert timing["compile_cache_misses"] == 0
  assert 0 < timing["compile_seconds"] < timing["wall_seconds"]
  table = study.aggregate(spec, jobs)
  assert "scratch" in table
  assert re.search(r"Time in the trainer: \d+ s over 2 jobs \(\d+-\d+ s "
                   r"each\), of which compiling \d+ s \(\d+%\)", table)


def _final_params(job):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  manager = ocp.CheckpointManager(os.path.join(job.workdir, "checkpoints"))
  return manager.restore(manager.latest_step())["params"]


@pytest.mark.slow
@pytest.mark.usefixtures("compilation_cache_on")
def test_in_process_jobs_equal_a_process_per_job(tiny_fmnist_data_dir,
                                                 tmp_path):
  """Two few-shot seeds in this process give bitwise the same models and
  results as the same jobs run as processes, and the second job traces and
  compiles nothing: it reuses the first one's programs."""
  args = f"res=32,resize=36,batch=8,data_dir={tiny_fmnist_data_dir}"
  separate, together = (
      _spec(str(tmp_path / name), sources={"scratch": ""}, shots=(2,),
            seeds=(0, 1), args=args, fewshot_args="steps=2")
      for name in ("separate", "together"))
  separate_jobs, together_jobs = study.expand(separate), study.expand(together)
  assert study.run_jobs(separate, separate_jobs, parallel=2) == []
  assert study.run_jobs_in_process(together, together_jobs) == []
  for a, b in zip(separate_jobs, together_jobs):
    results = []
    for job in (a, b):
      with open(os.path.join(job.workdir, "results.json")) as f:
        results.append(json.load(f))
    assert results[0]["metrics"] == results[1]["metrics"]
    params_a, params_b = (traverse_util.flatten_dict(_final_params(job))
                          for job in (a, b))
    assert params_a and params_a.keys() == params_b.keys()
    assert all(np.array_equal(params_a[k], params_b[k]) for k in params_a)
  with open(os.path.join(together_jobs[1].workdir, "results.json")) as f:
    timing = json.load(f)["timing"]
  assert timing["compile_cache_hits"] == timing["compile_cache_misses"] == 0


def test_jobs_are_selected_by_source_and_shots(tmp_path):
  spec = _spec(str(tmp_path))
  jobs = study.expand(spec)
  chosen = study.select_jobs(spec, jobs, ["scratch"], [1, 5])
  assert {(j.source, j.shots) for j in chosen} == {("scratch", 1),
                                                    ("scratch", 5)}
  assert len(chosen) == 6
  assert study.select_jobs(spec, jobs, [], []) == jobs
  assert [j.shots for j in study.select_jobs(spec, jobs, [], [0])] == [0, 0]
  with pytest.raises(errors.ConfigError, match=r"--sources: imagenet not "
                     r"among the spec's sources \(pretrained, scratch\)"):
    study.select_jobs(spec, jobs, ["imagenet"], [])


def test_paper_figures_and_numbers_beside_ours(tmp_path):
  """Two models, two sources with per-model checkpoints and sizes, per-target
  shots, the paper's number in the table and the three kinds of figure."""
  spec = _spec(str(tmp_path), models=("R26x1", "R50x1"),
               sources={"small": "/ckpt/{model}.npz", "big": "/ckpt/big_{model}"},
               targets=("fmnist_5to9", "cifar10"), shots=(1, 0),
               full_seeds=(), seeds=(0, 1))
  spec.target_shots = {"cifar10": (0,)}
  spec.source_sizes = {"small": 1000, "big": 5000}
  spec.source_args = {"big": "norm=imagenet"}
  spec.paper = {study.paper_key("cifar10", "big", "R50x1", 0): 97.8}
  jobs = study.expand(spec)
  assert len(jobs) == 2 * 2 * (2 * 2 + 1 * 2)
  big_r50 = [j for j in jobs if j.source == "big" and j.model == "R50x1"][0]
  assert "init=/ckpt/big_R50x1" in big_r50.config_arg
  assert big_r50.config_arg.endswith("norm=imagenet")
  assert not [j for j in jobs if j.target == "cifar10" and j.shots == 1]
  for i, job in enumerate(jobs):
    _finish(job, 0.9 + 0.001 * i)
  table = study.aggregate(spec, jobs)
  big_row = [line for line in table.splitlines()
             if line.startswith("| big | R50x1 |")][0]
  assert "(paper 97.8)" in big_row
  # Only where the paper has the cell, and the legend that says so.
  assert table.count("(paper ") == 2 and "(paper X): Cherti" in table
  names = sorted(n for n in os.listdir(spec.workdir) if n.endswith(".png"))
  assert names == sorted(
      [f"plot_{t}_{m}.png" for t in ("fmnist_5to9", "cifar10")
       for m in ("R26x1", "R50x1")]
      + [f"plot_{t}_{m}_by_source.png" for t in ("fmnist_5to9", "cifar10")
         for m in ("R26x1", "R50x1")]
      + ["plot_fmnist_5to9_1shot_by_model.png",
         "plot_fmnist_5to9_full_by_model.png", "plot_cifar10_full_by_model.png"])


def test_paper_presets_cover_the_papers_grid_and_numbers():
  """The presets expand to the paper's grid (R50x1 and R152x4, seeds 0-4,
  the paper's shots per target) and carry its headline numbers."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  specs = {}
  for name in ("seed_natural", "seed_medical", "benchmark_classification",
               "benchmark_segmentation"):
    loader = importlib.util.spec_from_file_location(
        name, os.path.join(REPO, "configs", "studies", f"{name}.py"))
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    specs[name] = study.absolute_spec_paths(module.get_config())
  natural, medical = specs["seed_natural"], specs["seed_medical"]
  jobs = study.expand(natural)
  assert {j.model for j in jobs} == {"R50x1", "R152x4"}
  assert {j.seed for j in jobs} == {0, 1, 2, 3, 4}
  assert {j.shots for j in jobs if j.target == "cifar10"} == {1, 5, 10, 100,
                                                               500, 0}
  assert {j.shots for j in jobs if j.target == "oxford_iiit_pet"} == {1, 5,
                                                                       10, 0}
  assert all("recipe=seed" in j.config_arg for j in jobs)
  paper = dict(natural.paper)
  assert paper[study.paper_key("cifar10", "imagenet21k", "R152x4", 0)] == 97.8
  assert paper[study.paper_key("cifar100", "imagenet21k", "R50x1", 0)] == 82.5
  paper = dict(medical.paper)
  assert paper[study.paper_key("padchest_cl", "chexpert_mimic", "R152x4",
                               100)] == 75.5
  assert paper[study.paper_key("tuberculosis", "chexpert_mimic_nih_padchest",
                               "R152x4", 0)] == 90.9
  assert {j.shots for j in study.expand(medical) if j.target == "covidx"} == {
      1, 5, 10, 100, 500, 0}
  # The benchmark paper's: ResNet-50, its recipe, its sources and numbers;
  # every job's config is valid.
  benchmark = specs["benchmark_classification"]
  jobs = study.expand(benchmark)
  assert {j.model for j in jobs} == {"resnet50"}
  assert {j.target for j in jobs} == {"nih14", "chexpert5"}
  assert {"scratch", "imagenet", "moco_v2", "swav", "imagenet_nih",
          "imagenet_chexpert"} <= {j.source for j in jobs}
  assert len(jobs) == 17 * 2 * 5
  paper = dict(benchmark.paper)
  assert paper[study.paper_key("nih14", "scratch", "resnet50", 0)] == 80.31
  assert paper[study.paper_key("chexpert5", "imagenet_nih", "resnet50",
                               0)] == 87.40
  for job in jobs[:: 2 * 5]:
    config = config_lib.load_config_file(f"{benchmark.config}:{job.config_arg}")
    assert config.recipe == "benchmark" and config.optim.name == "adam"
    config_validation.validate(config)
  # Its segmentation grid: a U-Net, pooled Dice, the table's numbers.
  segmentation = specs["benchmark_segmentation"]
  jobs = study.expand(segmentation)
  assert {j.target for j in jobs} == {"montgomery_lungs", "siim_pneumothorax"}
  assert {"scratch", "imagenet", "nih", "chexpert", "swav"} <= {
      j.source for j in jobs}
  assert len(jobs) == 19 * 2 * 5
  paper = dict(segmentation.paper)
  assert paper[study.paper_key("siim_pneumothorax", "imagenet_nih",
                               "resnet50", 0)] == 69.52
  assert paper[study.paper_key("montgomery_lungs", "scratch", "resnet50",
                               0)] == 97.55
  for job in jobs[:: 19 * 5]:
    config = config_lib.load_config_file(
        f"{segmentation.config}:{job.config_arg}")
    assert config.task == "segmentation" and config.loss == "dice"
    assert config.primary_metric == "dice_pooled"
    config_validation.validate(config)


def test_a_preempted_in_process_job_stops_the_study(tmp_path, monkeypatch):
  """A job's failure is reported and the next job runs, but a preemption
  (SIGTERM) ends the study itself, so that the scheduler's grace period is
  not spent starting the next job; the jobs after it stay to do."""
  from big_transfer_med import preemption  # pylint: disable=g-import-not-at-top
  from big_transfer_med import train  # pylint: disable=g-import-not-at-top
  spec = _spec(str(tmp_path / "study"), sources={"scratch": ""}, shots=(1,),
               seeds=(0, 1, 2), fewshot_args="")
  jobs = study.expand(spec)
  started = []

  def train_and_evaluate(config, workdir):
    started.append(workdir)
    if len(started) == 1:
      raise ValueError("a job's own failure")
    raise preemption.Preempted(step=3)

  monkeypatch.setattr(train, "train_and_evaluate", train_and_evaluate)
  with pytest.raises(preemption.Preempted):
    study.run_jobs_in_process(spec, jobs)
  assert started == [jobs[0].workdir, jobs[1].workdir]


def test_missing_init_checkpoints_are_named_with_where_to_get_them(tmp_path):
  from big_transfer_med import starting_weights  # pylint: disable=g-import-not-at-top
  run = tmp_path / "upstream"
  run.mkdir()
  missing = starting_weights.missing([
      "", f"{run}:best", "gs://bucket/run",  # Scratch, on disk, remote.
      str(tmp_path / "resnet50_imagenet.pth"), str(tmp_path / "swav.pth.tar"),
      str(tmp_path / "workdirs" / "seed_chexpert_R50x1"),
      str(tmp_path / "mystery.ckpt"), str(tmp_path / "swav.pth.tar")])
  assert list(missing.values()) == [
      "torchvision's ImageNet ResNet-50 (IMAGENET1K_V1; 97.8 MB; sha256 "
      "starts 0676ba61): https://download.pytorch.org/models/"
      "resnet50-0676ba61.pth",
      "SwAV / DeepCluster-v2 / SeLa-v2 ResNet-50 (ImageNet): "
      "github.com/facebookresearch/swav (its model zoo)",
      "a run of ours: train it first (the spec's docstring names its "
      "config), or point the source at a released checkpoint",
      "not a published file this project knows: check the spec's sources"]


def test_the_starting_weights_page_lists_every_starting_point():
  from big_transfer_med import starting_weights  # pylint: disable=g-import-not-at-top
  with open(os.path.join(REPO, "docs", "starting_weights.md")) as f:
    page = f.read()
  for point in starting_weights.STARTING_POINTS:
    assert point.what.format("").split(" (")[0].rstrip() in page, point
    assert point.where.format("R50x1") in page, point


def test_run_mode_fails_when_init_checkpoints_are_missing(tmp_path):
  """Nothing is trained for a source whose file is missing, and the study
  ends as a failed one (exit 1), naming the file first."""
  spec_file = tmp_path / "spec.py"
  spec_file.write_text(f"""
from big_transfer_med import study
def get_config():
  s = study.default_spec()
  s.workdir = {str(tmp_path / "study")!r}
  s.sources = {{"moco": {str(tmp_path / "moco_v2.pth.tar")!r}}}
  s.models = ("resnet50",)
  s.targets = ("fmnist_5to9",)
  s.shots = (1,)
  s.seeds = (0, 1)
  return s
""")
  result = subprocess.run(
      [sys.executable, "-m", "big_transfer_med.study", f"--spec={spec_file}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr
  assert (f"  {tmp_path / 'moco_v2.pth.tar'} (2 jobs): MoCo v1 / v2 "
          "ResNet-50 (ImageNet): github.com/facebookresearch/moco") in (
              result.stderr)
  assert result.stderr.rstrip().endswith(
      "ERROR: failed jobs:\n  2 jobs: their init checkpoints are missing "
      "(named above)")
  assert not (tmp_path / "study" / "moco").exists()
