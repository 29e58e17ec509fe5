r"""Scores predictions against labels: per class AUROC and average precision
with 95% confidence intervals from a bootstrap over patients, and
sensitivity / specificity at a threshold chosen on validation predictions.

  python -m big_transfer_med.evaluate --predictions=preds.csv \
      --labels=labels.csv --out_dir=report/ [--bootstrap=1000] [--seed=0] \
      [--validation_predictions=val_preds.csv --validation_labels=val.csv]

predictions.csv: `path`, one column of scores per class, optionally `error`
(a row with an error is a failed prediction: counted and left out).
labels.csv: `path` and `patient_id`, then either one `label` column (single
label: its values are class names, each class scored one-vs-rest) or one
column per finding (multi-label): 1 positive, 0 negative, -1 uncertain and
blank not labelled (both left out of that finding, and counted). The
findings are the prediction columns the labels have (printed).

Writes OUT_DIR/metrics.csv, roc_<class>.png (the ROC curve with its 95%
bootstrap band), roc_all.png and summary.txt. The bootstrap resamples
patients, not images: images of one patient are correlated, and resampling
images would give intervals that are too narrow.
"""
import csv
import dataclasses
import os
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from absl import app
from absl import flags

from big_transfer_med import atomic_files
from big_transfer_med import cli
from big_transfer_med import metrics
from input_pipeline import errors

FPR_GRID = np.linspace(0.0, 1.0, 101)
_NOT_SCORES = ("path", "error")


@dataclasses.dataclass
class Predictions:
  classes: List[str]
  scores: Dict[str, np.ndarray]  # Normalised path -> (num_classes,) scores.
  failed: List[str]  # Normalised paths whose prediction failed (`error`).


@dataclasses.dataclass
class Labels:
  findings: List[str]
  paths: List[str]  # Normalised.
  patients: List[str]
  values: np.ndarray  # (rows, findings): 1, 0, or NaN (left out).
  uncertain: np.ndarray  # (findings,) rows with -1, left out.


def _rows(path: str) -> Tuple[List[str], List[Dict[str, str]]]:
  """Header and rows of a CSV file, or a one-line error naming it."""
  if not os.path.isfile(path):
    raise errors.DataError(f"{path}: no such file.")
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.DictReader(f)
      rows = list(reader)
      header = list(reader.fieldnames or [])
  except (UnicodeDecodeError, csv.Error) as e:
    raise errors.DataError(f"{path}: not a CSV file ({e}).") from e
  if "path" not in header:
    raise errors.DataError(f"{path}: no `path` column (header: {header}).")
  if not rows:
    raise errors.DataError(f"{path}: no rows under the header.")
  return header, rows


def _key(path: str) -> str:
  return os.path.normpath(path.strip())


def read_predictions(path: str) -> Predictions:
  """The scores of a predictions CSV (as predict writes it)."""
  header, rows = _rows(path)
  classes = [c for c in header if c not in _NOT_SCORES]
  if not classes:
    raise errors.DataError(f"{path}: no score columns besides path/error.")
  scores, failed = {}, []
  for line, row in enumerate(rows, 2):
    if (row.get("error") or "").strip():
      failed.append(_key(row["path"]))
      continue
    try:
      scores[_key(row["path"])] = np.array([float(row[c]) for c in classes])
    except (TypeError, ValueError) as e:
      raise errors.DataError(
          f"{path} line {line}: a score is not a number ({e}); a failed "
          "prediction goes in the `error` column.") from e
  return Predictions(classes, scores, failed)


def read_labels(path: str, classes: Sequence[str]) -> Labels:
  """The labels of `classes` in a labels CSV (see the module docstring)."""
  header, rows = _rows(path)
  if "patient_id" not in header:
    raise errors.DataError(f"{path}: no `patient_id` column: the confidence "
                           "intervals resample patients.")
  single = "label" in header
  findings = list(classes) if single else [c for c in classes if c in header]
  if not findings:
    raise errors.DataError(
        f"{path}: none of the prediction columns {list(classes)} is a "
        "column here, and there is no `label` column.")
  values = np.full((len(rows), len(findings)), np.nan)
  uncertain = np.zeros(len(findings), int)
  seen = {}
  for i, row in enumerate(rows):
    line = i + 2
    key = _key(row["path"])
    if key in seen:
      raise errors.DataError(f"{path} line {line}: path {row['path']!r} is "
                             f"also on line {seen[key]}.")
    seen[key] = line
    if not row["patient_id"].strip():
      raise errors.DataError(f"{path} line {line}: no patient_id.")
    if single:
      label = row["label"].strip()
      if label not in findings:
        raise errors.DataError(
            f"{path} line {line}: label {label!r} is not one of the "
            f"predicted classes {findings}.")
      values[i] = [float(label == c) for c in findings]
      continue
    for j, finding in enumerate(findings):
      value = row[finding].strip()
      if value in ("1", "1.0"):
        values[i, j] = 1.0
      elif value in ("0", "0.0"):
        values[i, j] = 0.0
      elif value in ("-1", "-1.0"):
        uncertain[j] += 1
      elif value:
        raise errors.DataError(
            f"{path} line {line}, column {finding}: {value!r} is not 1, 0, "
            "-1 (uncertain) or blank (not labelled).")
  return Labels(findings, [_key(r["path"]) for r in rows],
                [r["patient_id"].strip() for r in rows], values, uncertain)


def roc_curve(scores: np.ndarray, labels: np.ndarray):
  """(false positive rates, true positive rates, thresholds), one point per
  distinct score, from (0, 0) (threshold +inf) to (1, 1)."""
  order = np.argsort(-scores, kind="stable")
  scores, labels = scores[order], labels[order]
  last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
  true_pos = np.cumsum(labels)[last]
  false_pos = last + 1 - true_pos
  return (np.r_[0.0, false_pos / max(false_pos[-1], 1)],
          np.r_[0.0, true_pos / max(true_pos[-1], 1)],
          np.r_[np.inf, scores[last]])


def youden_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
  """The score threshold (positive if score >= it) maximising
  sensitivity + specificity - 1."""
  fpr, tpr, thresholds = roc_curve(scores, labels)
  return float(thresholds[1:][np.argmax((tpr - fpr)[1:])])


def _class_statistics(scores, labels, threshold) -> Dict[str, float]:
  out = {"auroc": metrics.roc_auc(scores, labels),
         "average_precision": metrics.average_precision(scores, labels)}
  if threshold is not None and 0 < labels.sum() < len(labels):
    predicted, positive = scores >= threshold, labels > 0.5
    out["sensitivity"] = float(predicted[positive].mean())
    out["specificity"] = float((~predicted[~positive]).mean())
  return out


def score_class(scores, labels, patients, threshold: Optional[float],
                resamples: int, rng: np.random.Generator):
  """Point estimates, 95% percentile intervals over `resamples` patient
  resamples (those with both classes), and the ROC band on FPR_GRID."""
  point = _class_statistics(scores, labels, threshold)
  names, first = np.unique(patients, return_inverse=True)
  rows_of = [np.flatnonzero(first == p) for p in range(len(names))]
  draws, bands = {k: [] for k in point}, []
  for _ in range(resamples):
    rows = np.concatenate([rows_of[p] for p in
                           rng.integers(0, len(names), len(names))])
    if labels[rows].min() == labels[rows].max():
      continue  # One class only: no AUROC.
    for k, v in _class_statistics(scores[rows], labels[rows],
                                  threshold).items():
      draws[k].append(v)
    fpr, tpr, _ = roc_curve(scores[rows], labels[rows])
    bands.append(np.interp(FPR_GRID, fpr, tpr))
  out = dict(point, patients=len(names), resamples=len(bands))
  for k, values in draws.items():
    low, high = (np.percentile(values, [2.5, 97.5]) if values
                 else (np.nan, np.nan))
    out[f"{k}_low"], out[f"{k}_high"] = float(low), float(high)
  band = (np.percentile(bands, [2.5, 97.5], axis=0) if bands
          else np.full((2, len(FPR_GRID)), np.nan))
  return out, band


def _matched(predictions: Predictions, labels: Labels):
  """(scores, labels, patients) of the labelled rows with a prediction, and
  how many labelled rows had no prediction row at all."""
  have = [i for i, p in enumerate(labels.paths) if p in predictions.scores]
  columns = [predictions.classes.index(f) for f in labels.findings]
  scores = np.array([predictions.scores[labels.paths[i]][columns]
                     for i in have]).reshape(len(have), len(columns))
  return (scores, labels.values[have], np.array(labels.patients)[have],
          len(set(labels.paths) - set(predictions.scores)
              - set(predictions.failed)))


def evaluate(predictions_csv: str, labels_csv: str, out_dir: str,
             resamples: int = 1000, seed: int = 0,
             validation: Optional[Tuple[str, str]] = None) -> List[dict]:
  """Scores each class, writes the report (module docstring); returns the
  rows of metrics.csv."""
  predictions = read_predictions(predictions_csv)
  labels = read_labels(labels_csv, predictions.classes)
  scores, values, patients, unpredicted = _matched(predictions, labels)
  if not len(scores):
    raise errors.DataError(f"{predictions_csv}: no row matches a path of "
                           f"{labels_csv} (paths are compared as written).")
  thresholds = [None] * len(labels.findings)
  if validation:
    val_predictions = read_predictions(validation[0])
    val = _matched(val_predictions,
                   read_labels(validation[1], predictions.classes))
    thresholds = [_threshold_on(val[0][:, j], val[1][:, j])
                  for j in range(len(labels.findings))]
  rng = np.random.default_rng(seed)
  results, bands = [], []
  for j, finding in enumerate(labels.findings):
    keep = ~np.isnan(values[:, j])
    row = {"class": finding, "images": int(keep.sum()),
           "positives": int(values[keep, j].sum()),
           "negatives": int((values[keep, j] == 0).sum()),
           "uncertain_left_out": int(labels.uncertain[j]),
           "threshold": thresholds[j]}
    statistics, band = score_class(scores[keep, j], values[keep, j],
                                   patients[keep], thresholds[j], resamples,
                                   rng)
    results.append({**row, **statistics})
    bands.append(band)
  counts = {"labelled rows": len(labels.paths),
            "failed predictions (left out)": len(predictions.failed),
            "labelled rows without a prediction (left out)": unpredicted,
            "predictions without a label row (left out)":
                len(predictions.scores) - len(scores)}
  _write_report(out_dir, results, bands, counts, scores, values)
  return results


def _threshold_on(scores, labels):
  keep = ~np.isnan(labels)
  if keep.sum() == 0 or labels[keep].min() == labels[keep].max():
    return None  # Validation cannot choose one for this class.
  return youden_threshold(scores[keep], labels[keep])


def _write_report(out_dir, results, bands, counts, scores, values):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  columns = list(dict.fromkeys(k for r in results for k in r))
  with atomic_files.open_atomically(os.path.join(out_dir, "metrics.csv"),
                                    newline="") as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    writer.writerows(results)
  summary = [f"{n:>6}  {what}" for what, n in counts.items()] + [""]
  summary += [f"{r['class']}: AUROC {r['auroc']:.3f} ({r['auroc_low']:.3f}-"
              f"{r['auroc_high']:.3f}), AP {r['average_precision']:.3f}, "
              f"{r['positives']}+ / {r['negatives']}- in {r['patients']} "
              "patients" for r in results]
  with atomic_files.open_atomically(os.path.join(out_dir, "summary.txt")) as f:
    f.write("\n".join(summary) + "\n")
  print("\n".join(summary))
  everything = plt.figure(figsize=(5, 5))
  for j, (r, band) in enumerate(zip(results, bands)):
    keep = ~np.isnan(values[:, j])
    if r["positives"] and r["negatives"]:
      fpr, tpr, _ = roc_curve(scores[keep, j], values[keep, j])
    else:
      fpr = tpr = np.array([np.nan])
    label = f"{r['class']} {r['auroc']:.3f}"
    figure = plt.figure(figsize=(4, 4))
    plt.fill_between(FPR_GRID, band[0], band[1], alpha=0.3, label="95% band")
    plt.plot(fpr, tpr, label=label)
    _finish_plot(f"{r['class']}: AUROC {r['auroc']:.3f} "
                 f"({r['auroc_low']:.3f}-{r['auroc_high']:.3f})")
    name = re.sub(r"[^\w.-]+", "_", r["class"])
    _save(figure, os.path.join(out_dir, f"roc_{name}.png"))
    plt.figure(everything.number)
    plt.plot(fpr, tpr, label=label)
  _finish_plot("ROC per class (AUROC)")
  _save(everything, os.path.join(out_dir, "roc_all.png"))


def _finish_plot(title):
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  plt.plot([0, 1], [0, 1], "k:", lw=0.8)
  plt.xlabel("1 - specificity")
  plt.ylabel("sensitivity")
  plt.title(title, fontsize=9)
  plt.legend(fontsize=7, loc="lower right")


def _save(figure, path):
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  with atomic_files.open_atomically(path, "wb") as f:
    figure.savefig(f, format="png", dpi=100, bbox_inches="tight")
  plt.close(figure)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  if bool(f.validation_predictions) != bool(f.validation_labels):
    raise errors.ConfigError("--validation_predictions and "
                             "--validation_labels go together.")
  if f.bootstrap < 0:
    raise errors.ConfigError(f"--bootstrap={f.bootstrap}: give 0 or more.")
  validation = ((f.validation_predictions, f.validation_labels)
                if f.validation_predictions else None)
  evaluate(f.predictions, f.labels, f.out_dir, f.bootstrap, f.seed,
           validation)
  print(f"Wrote {os.path.join(f.out_dir, 'metrics.csv')} and the ROC plots.",
        file=sys.stderr)


if __name__ == "__main__":
  flags.DEFINE_string("predictions", None, "CSV: path, a score per class, "
                      "error.")
  flags.DEFINE_string("labels", None, "CSV: path, patient_id, and `label` or "
                      "a column per finding (1/0/-1/blank).")
  flags.DEFINE_string("out_dir", None, "Where the report goes.")
  flags.DEFINE_integer("bootstrap", 1000, "Patient resamples for the 95% "
                       "intervals (0: none).")
  flags.DEFINE_integer("seed", 0, "Seed of the resampling.")
  flags.DEFINE_string("validation_predictions", None, "Predictions on "
                      "validation images: each class's threshold (Youden).")
  flags.DEFINE_string("validation_labels", None, "Their labels.")
  flags.mark_flags_as_required(["predictions", "labels", "out_dir"])
  cli.run(main)
