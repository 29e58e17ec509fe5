"""Checks that every stage of scripts/demo.sh left its outputs, and that they
parse: the upstream run (config, metrics, checkpoint, results with the linear
probe) and the study (one results.json per job, tables, plot). Then prints,
claim by claim, whether the numbers show what the demo is meant to show
(informative: a smoke run shows none of it).

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


def claims(upstream: str, study: str) -> list:
  """The demo's claims about its numbers, each with 'yes' or 'no'."""
  results = json.load(open(os.path.join(upstream, "results.json")))
  probe = {int(k.rsplit("_", 1)[1][:-4]): v
           for k, v in results["fewshot"].items() if k.endswith("shot")}
  cell = {(s["source"], int(s["shots"])): (float(s["mean"]), float(s["std"]))
          for s in csv.DictReader(open(os.path.join(study, "summary.csv")))}
  out = [(f"upstream accuracy on classes 0-4 >= 90% "
          f"({100 * results['metrics']['accuracy']:.1f}%)",
          results["metrics"]["accuracy"] >= 0.90)]
  if ("fmnist_0to4", 0) in cell:
    out.append((f"full-shot fine-tuning >= 95% "
                f"({100 * cell['fmnist_0to4', 0][0]:.1f}%)",
                cell["fmnist_0to4", 0][0] >= 0.95))
  for k in sorted(probe):
    if k >= 5 and ("fmnist_0to4", k) in cell:
      out.append((f"{k}-shot fine-tuning >= linear probe "
                   f"({100 * cell['fmnist_0to4', k][0]:.1f}% vs "
                   f"{100 * probe[k]:.1f}%)",
                   cell["fmnist_0to4", k][0] >= probe[k]))
  for k in sorted(shots for source, shots in cell if source == "fmnist_0to4"):
    if ("scratch", k) not in cell:
      continue
    (ours, our_std), (scratch, scratch_std) = cell["fmnist_0to4", k], cell[
        "scratch", k]
    name = f"{k}-shot" if k else "full-shot"
    if k:
      out.append((f"{name}: pre-trained beats scratch by more than the larger "
                  f"std ({100 * (ours - scratch):+.1f} vs "
                  f"{100 * max(our_std, scratch_std):.1f} points)",
                  ours - scratch > max(our_std, scratch_std)))
    else:
      out.append((f"{name}: pre-trained not worse than scratch "
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
  print("What the numbers show:\n" + "\n".join(claims(upstream, study)))


if __name__ == "__main__":
  main()
