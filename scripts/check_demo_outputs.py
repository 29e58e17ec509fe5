"""Checks that every stage of scripts/demo.sh left its outputs, and that they
parse: the upstream run (config, metrics, checkpoint, results with the linear
probe) and the study (one results.json per job, tables, plot).

  python scripts/check_demo_outputs.py UPSTREAM_WORKDIR STUDY_WORKDIR
"""
import csv
import glob
import json
import os
import sys

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


def main():
  upstream, study = sys.argv[1:3]
  problems = check(upstream, study)
  if problems:
    print("ERROR: demo outputs incomplete:\n  " + "\n  ".join(problems),
          file=sys.stderr)
    sys.exit(1)
  print(f"Table: {study}/summary.md; plot: {study}/plot_fmnist_5to9_R26x1.png "
        "(all outputs checked).")


if __name__ == "__main__":
  main()
