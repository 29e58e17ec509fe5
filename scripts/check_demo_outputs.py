"""Checks that every stage of scripts/demo.sh left its outputs, and that they
parse: the upstream run (config, metrics, checkpoint, results with the linear
probe) and the study (one results.json per job, tables, plot). Then prints,
claim by claim, whether the numbers show what the demo is meant to show
(with DEMO_SMOKE=1, a few steps per stage, it says that they cannot).

  python scripts/check_demo_outputs.py UPSTREAM_WORKDIR STUDY_WORKDIR
"""
import csv
import glob
import json
import os
import sys

import numpy as np
from PIL import Image


def check(upstream: str, study: str) -> list:
  problems = []
  def need(path, what):
    if not os.path.exists(path):
      problems.append(f"missing {what}: {path}")
      return False
    return True

  results_path = os.path.join(upstream, "results.json")
  if need(results_path, "upstream results"):
    results = json.load(open(results_path))
    if not 0 <= results["metrics"]["accuracy"] <= 1:
      problems.append(f"{results_path}: accuracy {results['metrics']['accuracy']}")
    if not any(k.endswith("shot") for k in results["fewshot"]):
      problems.append(f"{results_path}: no linear few-shot probe results")
    need(os.path.join(upstream, "checkpoints", str(results["step"])),
         "upstream checkpoint of the last step")
  if need(os.path.join(upstream, "metrics.jsonl"), "upstream metrics"):
    for line in open(os.path.join(upstream, "metrics.jsonl")):
      json.loads(line)
  need(os.path.join(upstream, "config.json"), "upstream config")

  rows = []
  if need(os.path.join(study, "results.csv"), "study results table"):
    rows = list(csv.DictReader(open(os.path.join(study, "results.csv"))))
  jobs = glob.glob(os.path.join(study, "*", "*", "*", "*", "*", "results.json"))
  if not rows or len(rows) != len(jobs):
    problems.append(f"{study}: {len(rows)} rows in results.csv for "
                    f"{len(jobs)} finished jobs")
  sources = {r["source"] for r in rows}
  if sources != {"fmnist_0to4", "scratch"}:
    problems.append(f"{study}/results.csv: sources {sorted(sources)}")
  if need(os.path.join(study, "summary.csv"), "study summary"):
    summary = list(csv.DictReader(open(os.path.join(study, "summary.csv"))))
    if not summary or not all(0 <= float(s["mean"]) <= 1 for s in summary):
      problems.append(f"{study}/summary.csv: {summary}")
  if need(os.path.join(study, "summary.md"), "study table"):
    if "| fmnist_0to4 |" not in open(os.path.join(study, "summary.md")).read():
      problems.append(f"{study}/summary.md has no row for fmnist_0to4")
  plot = os.path.join(study, "plot_fmnist_5to9_R26x1.png")
  if need(plot, "study plot"):
    with Image.open(plot) as image:
      image.verify()
  return problems


def paired_gaps(study: str) -> dict:
  """shots -> {seed: pre-trained minus scratch accuracy} for the few-shot
  cells: both sources' jobs of one seed train on the same few-shot draw."""
  value = {(r["source"], int(r["shots"]), int(r["seed"])): float(r["value"])
           for r in csv.DictReader(open(os.path.join(study, "results.csv")))}
  gaps = {}
  for source, shots, seed in value:
    if source == "fmnist_0to4" and shots and ("scratch", shots, seed) in value:
      gaps.setdefault(shots, {})[seed] = (
          value[source, shots, seed] - value["scratch", shots, seed])
  return {k: dict(sorted(gaps[k].items())) for k in sorted(gaps)}


def _in_points(per_seed: dict):
  """The gaps of one shot count in accuracy points, their mean and std
  (ddof=1; 0 for one seed)."""
  points = 100 * np.array(list(per_seed.values()))
  return points, points.mean(), points.std(ddof=1) if len(points) > 1 else 0.0


def gap_table(gaps: dict) -> str:
  """Markdown: the paired gap per seed, its mean and std (points)."""
  seeds = sorted({seed for per_seed in gaps.values() for seed in per_seed})
  lines = ["| shots | " + " | ".join(f"seed {s}" for s in seeds)
           + " | mean ± std |", "|---" * (len(seeds) + 2) + "|"]
  for k, per_seed in gaps.items():
    _, mean, std = _in_points(per_seed)
    lines.append(f"| {k} | " + " | ".join(
        f"{100 * per_seed[s]:+.1f}" if s in per_seed else "-" for s in seeds)
        + f" | {mean:+.1f} ± {std:.1f} |")
  return "\n".join(lines)


def time_split(upstream: str, study: str) -> str:
  """Seconds in the trainer per stage, and of them compiling (the stages
  overlap in wall time: two processes run side by side)."""
  timing = json.load(open(os.path.join(upstream, "results.json")))["timing"]
  stages = {"pre-training": [(timing["wall_seconds"],
                              timing["compile_seconds"])]}
  for row in csv.DictReader(open(os.path.join(study, "results.csv"))):
    stage = "full-shot" if row["shots"] == "0" else "few-shot"
    stages.setdefault(f"{stage} ({row['source']})", []).append(
        (float(row["wall_seconds"]), float(row["compile_seconds"])))
  return "; ".join(
      f"{name} {sum(w for w, _ in jobs):.0f} s over {len(jobs)} job(s), "
      f"compiling {sum(c for _, c in jobs):.0f} s"
      for name, jobs in stages.items())


def claims(upstream: str, study: str) -> list:
  """The demo's claims about its numbers, each with 'yes' or 'no'."""
  results = json.load(open(os.path.join(upstream, "results.json")))
  probe = {int(k.rsplit("_", 1)[1][:-4]): v
           for k, v in results["fewshot"].items() if k.endswith("shot")}
  cell = {(s["source"], int(s["shots"])): float(s["mean"])
          for s in csv.DictReader(open(os.path.join(study, "summary.csv")))}
  out = [(f"upstream accuracy on classes 0-4 >= 90% "
          f"({100 * results['metrics']['accuracy']:.1f}%)",
          results["metrics"]["accuracy"] >= 0.90)]
  if ("fmnist_0to4", 0) in cell:
    out.append((f"full-shot fine-tuning >= 95% "
                f"({100 * cell['fmnist_0to4', 0]:.1f}%)",
                cell["fmnist_0to4", 0] >= 0.95))
  for k in sorted(probe):
    if k >= 5 and ("fmnist_0to4", k) in cell:
      out.append((f"{k}-shot fine-tuning >= linear probe "
                  f"({100 * cell['fmnist_0to4', k]:.1f}% vs "
                  f"{100 * probe[k]:.1f}%)",
                  cell["fmnist_0to4", k] >= probe[k]))
  for k, per_seed in paired_gaps(study).items():
    points, mean, std = _in_points(per_seed)
    out.append((f"{k}-shot: pre-trained ahead of scratch on every seed, "
                f"same draws ({mean:+.1f} ± {std:.1f} points over "
                f"{len(points)} seeds, smallest {points.min():+.1f})",
                bool(np.all(points > 0))))
  if ("fmnist_0to4", 0) in cell and ("scratch", 0) in cell:
    ours, scratch = cell["fmnist_0to4", 0], cell["scratch", 0]
    out.append((f"full-shot: pre-trained not worse than scratch "
                f"({100 * ours:.1f}% vs {100 * scratch:.1f}%)",
                ours >= scratch))
  return [f"  {'yes' if ok else 'no '}  {text}" for text, ok in out]


def main():
  upstream, study = sys.argv[1:3]
  problems = check(upstream, study)
  if problems:
    print("ERROR: demo outputs incomplete:\n  " + "\n  ".join(problems),
          file=sys.stderr)
    sys.exit(1)
  print(f"Table: {study}/summary.md; plot: {study}/plot_fmnist_5to9_R26x1.png "
        "(all outputs checked).")
  if os.environ.get("DEMO_SMOKE") == "1":
    print("Smoke mode: every stage ran a few steps, so the numbers say "
          "nothing yet; the claims are checked by the full run "
          "(bash scripts/demo.sh).")
    return
  print("Fine-tuned minus from scratch, paired by seed (the same few-shot "
        "draw), accuracy points:\n" + gap_table(paired_gaps(study)))
  print("What the numbers show:\n" + "\n".join(claims(upstream, study)))
  print("Time in the trainer by stage (two processes share the cores): "
        + time_split(upstream, study) + ".")


if __name__ == "__main__":
  main()
