r"""Transfer studies: a grid of fine-tuning runs, run or scheduled, then tabulated.

  python -m big_transfer_med.study --spec=configs/studies/fmnist_demo.py
  python -m big_transfer_med.study --spec=SPEC --mode=commands   # jobs.txt
  python -m big_transfer_med.study --spec=SPEC --mode=aggregate

A spec (an ml_collections config file) names a fine-tuning config file and
the grid: sources (name -> checkpoint; '' = from scratch) x models x targets
x shots (0 = full) x seeds. Each job is one run of the trainer in
<workdir>/<source>/<model>/<target>/<shots>/seed<seed>; a job whose
results.json exists is done and skipped, so a study can be re-run after a
crash or extended with more seeds. `--mode=run` runs the remaining jobs here,
each as its own process, `--parallel` at a time (logs in <workdir>/logs/);
`--mode=commands` writes the same command lines, one per remaining job, to
<workdir>/jobs.txt for a cluster scheduler, e.g. a SLURM array:
  sbatch --array=1-$(wc -l < jobs.txt) --wrap 'sed -n "${SLURM_ARRAY_TASK_ID}p" jobs.txt | bash'
Every mode ends by aggregating whatever results exist: results.csv (one row
per job), summary.csv and summary.md (mean +- std over seeds, beside the
paper's number where the spec has one: spec.paper) and the paper's kinds of
figure: metric vs shots per target and model (a line per source), metric vs
model size per target and shot count, and metric vs source (ordered by
upstream size, spec.source_sizes) per target and model.
"""
import csv
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent import futures
from typing import Dict, List, Sequence

import ml_collections
import numpy as np
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from big_transfer_med import atomic_files
from big_transfer_med import paths
from big_transfer_med import preemption
from big_transfer_med import starting_weights
from input_pipeline import errors


RESULTS_FILE = "results.json"


@dataclasses.dataclass(frozen=True)
class Job:
  source: str
  checkpoint: str
  model: str
  target: str
  shots: int  # 0: the full training set.
  seed: int
  workdir: str
  config_arg: str

  @property
  def done(self) -> bool:
    return os.path.exists(os.path.join(self.workdir, RESULTS_FILE))


def shots_name(shots: int) -> str:
  return "full" if shots == 0 else f"{shots}shot"


def expand(spec: ml_collections.ConfigDict) -> List[Job]:
  """The study's jobs, in a fixed order (sources, models, targets, shots, seeds)."""
  jobs = []
  for source, checkpoint in spec.sources.items():
    for model in spec.models:
      for target in spec.targets:
        for shots in spec.target_shots.get(target, spec.shots):
          seeds = spec.full_seeds if (shots == 0 and spec.full_seeds) else (
              spec.seeds)
          extra = spec.full_args if shots == 0 else spec.fewshot_args
          init = checkpoint.format(model=model)  # '{model}': one per model.
          for seed in seeds:
            args = [f"target={target}", f"model={model}", f"shots={shots}",
                    f"seed={seed}"] + ([f"init={init}"] if init else [])
            args += [a for a in (spec.args, extra,
                                 spec.source_args.get(source, "")) if a]
            jobs.append(Job(
                source, init, model, target, shots, seed,
                os.path.join(spec.workdir, source, model, target,
                             shots_name(shots), f"seed{seed}"),
                ",".join(args)))
  return jobs


def command(spec, job: Job) -> str:
  return (f"{sys.executable} -m big_transfer_med.main "
          f"--config={shlex.quote(f'{spec.config}:{job.config_arg}')} "
          f"--workdir={shlex.quote(job.workdir)}")


# Job arguments that leave every compiled program unchanged.
_SAME_PROGRAM_ARGS = ("seed=", "shots=", "init=")


def program_key(job: Job):
  """Jobs with one key compile the same programs: they differ only in seed,
  initial checkpoint or few-shot count (full-shot runs differ: MixUp)."""
  return job.shots == 0, tuple(a for a in job.config_arg.split(",")
                               if not a.startswith(_SAME_PROGRAM_ARGS))


def run_jobs(spec, jobs: Sequence[Job], parallel: int = 1) -> List[str]:
  """Runs the jobs not yet done here, each as its own process (the command of
  `--mode=commands`, so a crash ends one job only), `parallel` at a time;
  logs go to <workdir>/logs/. Returns the failures.

  The jobs share XLA's persistent compilation cache. One job per
  `program_key` runs first (those compile different programs, so they run
  side by side); the rest then read their executables from the cache instead
  of compiling the same ones in parallel.
  """
  todo = [j for j in jobs if not j.done]
  logging.info("%d of %d jobs to run.", len(todo), len(jobs))
  log_dir = os.path.join(spec.workdir, "logs")
  os.makedirs(log_dir, exist_ok=True)
  env = dict(os.environ)
  env.setdefault("JAX_COMPILATION_CACHE_DIR",
                 os.path.join(spec.workdir, ".jax_cache"))
  # Every executable, however quick to compile: a job starts many small ones.
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

  def run(job: Job):
    start = time.time()
    name = os.path.relpath(job.workdir, spec.workdir).replace(os.sep, "_")
    log = os.path.join(log_dir, f"{name}.log")
    with open(log, "w") as f:
      returncode = subprocess.call(shlex.split(command(spec, job)), stdout=f,
                                   stderr=subprocess.STDOUT, env=env)
    return job, returncode, log, time.time() - start

  keys = [program_key(j) for j in todo]
  first = [j for i, j in enumerate(todo) if keys[i] not in keys[:i]]
  rest = [j for j in todo if j not in first]
  failures, finished = [], 0
  with futures.ThreadPoolExecutor(max(1, parallel)) as pool:
    for phase in (first, rest):
      for job, returncode, log, seconds in pool.map(run, phase):
        finished += 1
        if returncode or not job.done:
          failures.append(f"{job.workdir}: exit code {returncode}, log {log}")
        _report(job, f"{finished}/{len(todo)}", seconds,
                None if job.done and not returncode else
                f"exit code {returncode}; see {log}")
  return failures


def _report(job: Job, progress: str, seconds: float, failure=None) -> None:
  """Prints one line for a finished job: its metric, or why it failed."""
  label = (f"[{progress}] {job.source} {job.model} {job.target} "
           f"{shots_name(job.shots)} seed {job.seed}")
  if failure:
    print(f"{label}: FAILED ({failure})", flush=True)
    return
  with open(os.path.join(job.workdir, RESULTS_FILE)) as f:
    results = json.load(f)
  metric = results["primary_metric"]
  compiling = results.get("timing", {}).get("compile_seconds")
  print(f"{label}: {metric} {results['metrics'][metric]:.4f} "
        f"({seconds:.0f} s" + (f", compiling {compiling:.0f} s"
                               if compiling is not None else "") + ")",
        flush=True)


def run_jobs_in_process(spec, jobs: Sequence[Job]) -> List[str]:
  """Runs the jobs not yet done one after another in this process. Jobs
  whose programs agree (model, optimiser settings and schedule, shapes)
  reuse what the first of them traced and compiled, and no job pays for
  starting Python, TensorFlow and JAX: for many short jobs (few-shot) this
  is much faster than a process per job. A failing job is reported and the
  next one runs. Returns the failures."""
  from big_transfer_med import cli  # pylint: disable=g-import-not-at-top
  from big_transfer_med import config_lib  # pylint: disable=g-import-not-at-top
  cli.hide_accelerators_from_tensorflow()
  import jax  # pylint: disable=g-import-not-at-top
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir",
                      os.path.join(spec.workdir, ".jax_cache"))
  cli.lock_shared_compilation_cache()
  from big_transfer_med import train  # pylint: disable=g-import-not-at-top
  todo = [j for j in jobs if not j.done]
  logging.info("%d of %d jobs to run, in this process.", len(todo), len(jobs))
  failures = []
  for i, job in enumerate(todo, 1):
    start = time.time()
    try:
      config = config_lib.load_config_file(f"{spec.config}:{job.config_arg}")
      train.train_and_evaluate(config, job.workdir)
      failure = None
    except preemption.Preempted:
      raise  # The study stops (exit code 75); running it again resumes.
    except Exception as e:  # pylint: disable=broad-except
      logging.exception("Job %s failed.", job.workdir)
      failure = f"{type(e).__name__}: {e}".splitlines()[0]
      failures.append(f"{job.workdir}: {failure}")
    _report(job, f"{i}/{len(todo)}", time.time() - start, failure)
  return failures


def collect(jobs: Sequence[Job]) -> List[Dict]:
  """One row per finished job."""
  rows = []
  for job in jobs:
    if not job.done:
      continue
    with open(os.path.join(job.workdir, RESULTS_FILE)) as f:
      results = json.load(f)
    metric = results["primary_metric"]
    rows.append({"source": job.source, "model": job.model,
                 "target": job.target, "shots": job.shots, "seed": job.seed,
                 "metric": metric, "value": results["metrics"][metric],
                 "steps": results["step"],
                 **{k: results.get("timing", {}).get(k, "")
                    for k in ("wall_seconds", "compile_seconds")},
                 "workdir": job.workdir})
  return rows


def timing_line(rows: Sequence[Dict]) -> str:
  """Trainer wall time per job and the share of it spent compiling."""
  timed = [r for r in rows if r["wall_seconds"] != ""]
  if not timed:
    return ""
  wall = np.array([r["wall_seconds"] for r in timed])
  compiling = np.array([r["compile_seconds"] for r in timed])
  return (f"Time in the trainer: {wall.sum():.0f} s over {len(timed)} jobs "
          f"({wall.min():.0f}-{wall.max():.0f} s each), of which compiling "
          f"{compiling.sum():.0f} s ({100 * compiling.sum() / wall.sum():.0f}%)."
          "\n")


def paper_key(target: str, source: str, model: str, shots: int) -> str:
  """The key of a cell in spec.paper."""
  return f"{target}|{source}|{model}|{shots}"


def summarise(rows: Sequence[Dict], paper=None) -> List[Dict]:
  """Mean and std (over seeds, ddof=1; 0 for one seed) per cell of the grid,
  and the paper's value (%) where `paper` (spec.paper) has the cell."""
  paper = paper or {}
  cells = {}
  for row in rows:
    key = (row["source"], row["model"], row["target"], row["shots"],
           row["metric"])
    cells.setdefault(key, []).append(row["value"])
  out = []
  for (source, model, target, shots, metric), values in cells.items():
    out.append({"source": source, "model": model, "target": target,
                "shots": shots, "metric": metric,
                "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "seeds": len(values),
                "paper": paper.get(paper_key(target, source, model, shots),
                                   "")})
  return out


def _write_csv(path: str, rows: Sequence[Dict]) -> None:
  with atomic_files.open_atomically(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def markdown_table(summary: Sequence[Dict]) -> str:
  """Rows: source and model; columns: target and shots; cells 'mean +- std'
  in percent."""
  columns = sorted({(s["target"], s["shots"]) for s in summary},
                   key=lambda c: (c[0], c[1] == 0, c[1]))
  row_keys = list(dict.fromkeys((s["source"], s["model"]) for s in summary))
  cell = {(s["source"], s["model"], s["target"], s["shots"]): s
          for s in summary}
  header = ["source", "model"] + [f"{t} {shots_name(k)}" for t, k in columns]
  lines = ["| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
  for source, model in row_keys:
    values = []
    for target, shots in columns:
      s = cell.get((source, model, target, shots))
      text = f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}" if s else "-"
      if s and s["paper"] != "":
        text += f" (paper {s['paper']:.1f})"
      values.append(text)
    lines.append("| " + " | ".join([source, model] + values) + " |")
  metrics = sorted({s["metric"] for s in summary})
  cited = any(s["paper"] != "" for s in summary)
  return "\n".join(lines) + (
      f"\n\nMetric: {', '.join(metrics)} (%), mean ± std over seeds"
      + ("; (paper X): Cherti & Jitsev 2021, mean of its 5 seeds"
         if cited else "") + ".\n")


def _line_plot(cells: Sequence[Dict], x_key: str, ticks: Sequence,
               tick_names: Sequence[str], line_key: str, line_name,
               x_label: str, title: str, path: str) -> str:
  """Mean +- std of `cells` against cell[x_key] (in the order of `ticks`),
  one line per cell[line_key]; the paper's values as open markers."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  x = {k: i for i, k in enumerate(ticks)}
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for line in dict.fromkeys(c[line_key] for c in cells):
    points = sorted((x[c[x_key]], c["mean"], c["std"], c["paper"])
                    for c in cells if c[line_key] == line)
    xs, means, stds, papers = zip(*points)
    drawn = ax.errorbar(xs, 100 * np.array(means), yerr=100 * np.array(stds),
                        marker="o", capsize=3, label=line_name(line))
    paper = [(px, p) for px, p in zip(xs, papers) if p != ""]
    if paper:
      ax.plot(*zip(*paper), linestyle="none", marker="s", fillstyle="none",
              color=drawn.lines[0].get_color())
  ax.set_xticks(range(len(ticks)), tick_names)
  ax.set_xlabel(x_label)
  ax.set_ylabel(f"{cells[0]['metric']} (%)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def plot(summary: Sequence[Dict], directory: str,
         source_sizes=None) -> List[str]:
  """The paper's figures, one PNG each (squares: the paper's values):
  per (target, model) metric vs shots (full shot at the right end), a line
  per source; per (target, shots) metric vs model size, a line per source;
  per (target, model) metric vs source ordered by upstream size
  (`source_sizes`: name -> images), a line per shot count."""
  sizes = dict(source_sizes or {})
  order = lambda k: (k == 0, k)  # noqa: E731
  paths = []
  for target, model in dict.fromkeys((s["target"], s["model"])
                                     for s in summary):
    cells = [s for s in summary if s["target"] == target and s["model"] == model]
    shots = sorted({s["shots"] for s in cells}, key=order)
    paths.append(_line_plot(
        cells, "shots", shots, [shots_name(k) for k in shots], "source", str,
        "training examples per class", f"{target}, {model}",
        os.path.join(directory, f"plot_{target}_{model}.png")))
    sources = sorted({s["source"] for s in cells},
                     key=lambda n: (sizes.get(n, 0), n))
    if len(sources) > 1:
      paths.append(_line_plot(
          cells, "source", sources,
          [f"{n}\n({sizes[n]:,})" if n in sizes else n for n in sources],
          "shots", shots_name, "upstream data (images)",
          f"{target}, {model}: by source",
          os.path.join(directory, f"plot_{target}_{model}_by_source.png")))
  models = list(dict.fromkeys(s["model"] for s in summary))
  if len(models) > 1:
    for target, shots in dict.fromkeys((s["target"], s["shots"])
                                       for s in summary):
      cells = [s for s in summary
               if s["target"] == target and s["shots"] == shots]
      paths.append(_line_plot(
          cells, "model", models, models, "source", str, "model",
          f"{target}, {shots_name(shots)}: by model size",
          os.path.join(directory,
                       f"plot_{target}_{shots_name(shots)}_by_model.png")))
  return paths


def aggregate(spec, jobs: Sequence[Job]) -> str:
  """Writes the tables and plots of the finished jobs; returns the Markdown."""
  rows = collect(jobs)
  if not rows:
    return "No finished jobs yet.\n"
  summary = summarise(rows, dict(spec.paper))
  os.makedirs(spec.workdir, exist_ok=True)
  _write_csv(os.path.join(spec.workdir, "results.csv"), rows)
  _write_csv(os.path.join(spec.workdir, "summary.csv"), summary)
  table = markdown_table(summary)
  summary_md = os.path.join(spec.workdir, "summary.md")
  with atomic_files.open_atomically(summary_md) as f:
    f.write(f"# {spec.name}\n\n{len(rows)} of {len(jobs)} jobs finished.\n\n"
            + table + "\n" + timing_line(rows))
  plots = plot(summary, spec.workdir, dict(spec.source_sizes))
  logging.info("Wrote %s/summary.{csv,md}, results.csv and %s.",
               spec.workdir, ", ".join(plots))
  return table + "\n" + timing_line(rows)


def default_spec() -> ml_collections.ConfigDict:
  """All keys a spec may set; spec files start from it."""
  s = ml_collections.ConfigDict()
  s.name = "study"
  s.config = "configs/transfer.py"  # Fine-tuning config file.
  s.workdir = ""
  s.sources = ml_collections.ConfigDict()  # name -> checkpoint ('' scratch).
  s.models = ("R50x1",)
  s.targets = ()
  s.shots = (0,)
  s.seeds = (0,)
  s.full_seeds = ()  # Seeds of the full-shot jobs; () = seeds.
  s.args = ""  # Extra config arguments for every job, e.g. 'res=128'.
  s.fewshot_args = ""  # ... for few-shot jobs only,
  s.full_args = ""  # ... for full-shot jobs only.
  # Source name -> extra config arguments of its jobs (e.g. 'norm=imagenet'
  # for a source trained on ImageNet-normalised inputs).
  s.source_args = ml_collections.ConfigDict()
  # Target -> its shots, where they differ from `shots`.
  s.target_shots = ml_collections.ConfigDict()
  # Source name -> number of upstream images (orders the by-source figure).
  s.source_sizes = ml_collections.ConfigDict()
  # paper_key(target, source, model, shots) -> the paper's value (%).
  s.paper = ml_collections.ConfigDict()
  return s


def select_jobs(spec, jobs: Sequence[Job], sources: Sequence[str],
                shots: Sequence[int]) -> List[Job]:
  """The jobs of `sources` with `shots` (an empty list selects all)."""
  unknown = sorted(set(sources) - set(spec.sources))
  if unknown:
    raise errors.ConfigError(
        f"--sources: {', '.join(unknown)} not among the spec's sources "
        f"({', '.join(spec.sources)}).")
  return [j for j in jobs if (not sources or j.source in sources)
          and (not shots or j.shots in shots)]


def absolute_spec_paths(spec: ml_collections.ConfigDict
                        ) -> ml_collections.ConfigDict:
  """A checked copy of `spec` whose workdir, config file and checkpoints are
  absolute, so the job commands run from any directory."""
  if not spec.workdir or not spec.targets or not spec.sources:
    raise errors.ConfigError("The study spec needs workdir, targets and "
                             "sources (see study.default_spec()).")
  spec = spec.copy_and_resolve_references()
  spec.workdir = paths.absolute(spec.workdir)
  spec.config = paths.absolute(spec.config)
  for name, checkpoint in spec.sources.items():
    spec.sources[name] = paths.absolute(checkpoint)
  return spec


def _define_flags():
  # Here, not at import: spec files import this module for default_spec().
  config_flags.DEFINE_config_file("spec", None, "Study spec file.",
                                  lock_config=True)
  flags.DEFINE_enum("mode", "run", ["run", "commands", "aggregate"],
                    "Run the jobs here, write jobs.txt, or only tabulate.")
  flags.DEFINE_integer("parallel", 1, "--mode=run: jobs at a time.")
  flags.DEFINE_bool("in_process", False,
                    "--mode=run: run the jobs one after another in this "
                    "process (programs compiled once, no start-up per job) "
                    "instead of a process per job.")
  flags.DEFINE_list("shots", [],
                    "--mode=run/commands: only the jobs with these shots "
                    "(0 = full).")
  flags.DEFINE_list("sources", [],
                    "--mode=run/commands: only the jobs of these sources (by "
                    "name), e.g. 'scratch' while a pre-training it does not "
                    "need still runs; the tables cover every finished job.")


def _with_inits_on_disk(jobs: Sequence[Job]) -> List[Job]:
  """`jobs` less those whose init checkpoint is missing, which are named on
  stderr with where to get each (nothing is downloaded)."""
  todo = [j for j in jobs if not j.done]
  lacking = starting_weights.missing([j.checkpoint for j in todo])
  if lacking:
    print(f"{len(lacking)} init checkpoint(s) missing; their jobs are left "
          "out until the files are there:", file=sys.stderr)
    for init, where in lacking.items():
      count = sum(j.checkpoint == init for j in todo)
      print(f"  {init} ({count} jobs): {where}", file=sys.stderr)
  return [j for j in jobs if j.done or j.checkpoint not in lacking]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if flags.FLAGS.in_process and flags.FLAGS.parallel != 1:
    raise app.UsageError(
        "--parallel applies to a process per job, not to --in_process: run "
        "several study processes, each with its own --sources / --shots.")
  spec, mode = absolute_spec_paths(flags.FLAGS.spec), flags.FLAGS.mode
  jobs = expand(spec)
  try:
    shots = [int(k) for k in flags.FLAGS.shots]
  except ValueError:
    raise errors.ConfigError(
        f"--shots={','.join(flags.FLAGS.shots)}: expected whole numbers "
        "(0 = full-shot), e.g. --shots=1,5,10.") from None
  selected = select_jobs(spec, jobs, flags.FLAGS.sources, shots)
  chosen = _with_inits_on_disk(selected)
  failures = []
  if mode == "commands":
    os.makedirs(spec.workdir, exist_ok=True)
    todo = [command(spec, j) for j in chosen if not j.done]
    path = os.path.join(spec.workdir, "jobs.txt")
    with atomic_files.open_atomically(path) as f:
      f.write("".join(c + "\n" for c in todo))
    print(f"Wrote {len(todo)} commands ({sum(j.done for j in jobs)} jobs "
          f"done) to {path}.")
  elif mode == "run":
    failures = (run_jobs_in_process(spec, chosen) if flags.FLAGS.in_process
                else run_jobs(spec, chosen, flags.FLAGS.parallel))
    if len(chosen) < len(selected):  # A run that could not do every job.
      failures.append(f"{len(selected) - len(chosen)} jobs: their init "
                      "checkpoints are missing (named above)")
  print(aggregate(spec, jobs))
  if failures:
    print("ERROR: failed jobs:\n  " + "\n  ".join(failures), file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  from big_transfer_med import cli  # pylint: disable=g-import-not-at-top
  _define_flags()
  cli.run(main)
