"""scripts/check_demo_outputs.py: the demo's claims, on tables in the
layout the study writes (results.csv, summary.csv) and the upstream's
results.json."""
import csv
import importlib.util
import json
import os

import numpy as np
import pytest

from tests import test_main

_spec = importlib.util.spec_from_file_location(
    "check_demo_outputs",
    os.path.join(test_main.REPO, "scripts", "check_demo_outputs.py"))
check_demo_outputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_demo_outputs)


def _write(tmp_path, accuracy):
  """A study of 3 seeds x 1/5/10 shots + full (seed 0) for both sources,
  with accuracy(source, shots, seed); its summary as study.summarise
  writes it; an upstream with a probe of 0.5 / 0.7 / 0.78."""
  upstream, study = tmp_path / "up", tmp_path / "study"
  upstream.mkdir()
  study.mkdir()
  (upstream / "results.json").write_text(json.dumps({
      "step": 10, "metrics": {"accuracy": 0.91},
      "timing": {"wall_seconds": 300.0, "compile_seconds": 20.0},
      "fewshot": {"fashion_mnist_local_1shot": 0.5,
                  "fashion_mnist_local_5shot": 0.7,
                  "fashion_mnist_local_10shot": 0.78}}))
  rows = [{"source": source, "shots": shots, "seed": seed,
           "value": accuracy(source, shots, seed),
           "wall_seconds": 200.0 if not shots else 10.0 + shots,
           "compile_seconds": 5.0 if seed == 0 else 0.0}
          for source in ("fmnist_0to4", "scratch")
          for shots in (1, 5, 10, 0) for seed in ((0,) if not shots else
                                                   (0, 1, 2))]
  with open(study / "results.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  cells = {}
  for r in rows:
    cells.setdefault((r["source"], r["shots"]), []).append(r["value"])
  with open(study / "summary.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["source", "shots", "mean", "std"])
    writer.writeheader()
    for (source, shots), values in cells.items():
      writer.writerow({"source": source, "shots": shots,
                       "mean": np.mean(values),
                       "std": np.std(values, ddof=1) if len(values) > 1 else 0})
  return str(upstream), str(study)


def _verdicts(lines):
  """Claim text (without its numbers) -> 'yes' / 'no'."""
  return {line.strip()[3:].strip().split(" (")[0]: line.split()[0]
          for line in lines}


def test_a_paired_gap_counts_each_seed_against_its_own_draw(tmp_path):
  """Scratch varies a lot from draw to draw, the pre-trained model a little
  less, and it is ahead on every draw: the paired claim holds although the
  gap of the means (+4) is smaller than scratch's std (~12)."""
  draw = {0: -0.12, 1: 0.0, 2: 0.12}  # What each seed's draw adds.
  accuracy = lambda source, shots, seed: (  # noqa: E731
      (0.96 if source == "fmnist_0to4" else 0.94) if not shots else
      0.5 + 0.03 * shots ** 0.5 + draw[seed] + 0.04 * (source == "fmnist_0to4"))
  upstream, study = _write(tmp_path, accuracy)
  gaps = check_demo_outputs.paired_gaps(study)
  assert list(gaps) == [1, 5, 10]
  for per_seed in gaps.values():
    assert per_seed == pytest.approx({0: 0.04, 1: 0.04, 2: 0.04})
  assert "| 1 | +4.0 | +4.0 | +4.0 | +4.0 ± 0.0 |" in (
      check_demo_outputs.gap_table(gaps))
  verdicts = _verdicts(check_demo_outputs.claims(upstream, study))
  for k in (1, 5, 10):
    assert verdicts[f"{k}-shot: pre-trained ahead of scratch on every seed, "
                    "same draws"] == "yes"
  assert verdicts["upstream accuracy on classes 0-4 >= 90%"] == "yes"
  assert verdicts["full-shot fine-tuning >= 95%"] == "yes"
  assert verdicts["full-shot: pre-trained not worse than scratch"] == "yes"
  # 5 shots: 0.5 + 0.067 + 0.04 = 60.7% < the probe's 70%.
  assert verdicts["5-shot fine-tuning >= linear probe"] == "no"
  # Few-shot: 3 seeds x (11 + 15 + 20) s, compiling 5 s per shot count.
  assert check_demo_outputs.time_split(upstream, study) == (
      "pre-training 300 s over 1 job(s), compiling 20 s; "
      "few-shot (fmnist_0to4) 138 s over 9 job(s), compiling 15 s; "
      "full-shot (fmnist_0to4) 200 s over 1 job(s), compiling 5 s; "
      "few-shot (scratch) 138 s over 9 job(s), compiling 15 s; "
      "full-shot (scratch) 200 s over 1 job(s), compiling 5 s")


def test_one_seed_behind_fails_the_paired_claim(tmp_path):
  """Ahead by 10 points on two draws, behind by 1 on the third: the mean
  gap is positive, the claim is not."""
  def accuracy(source, shots, seed):
    if not shots:
      return 0.95
    gap = -0.01 if seed == 2 else 0.10
    return 0.6 + (gap if source == "fmnist_0to4" else 0.0)
  upstream, study = _write(tmp_path, accuracy)
  lines = check_demo_outputs.claims(upstream, study)
  paired = [line for line in lines if "every seed" in line]
  assert len(paired) == 3
  assert all(line.split()[0] == "no" for line in paired), paired
  assert "smallest -1.0" in paired[0]
