"""Evaluation metrics over all predictions of an evaluation pass (NumPy).

ROC-AUC and average precision follow scikit-learn's definitions (ties in the
scores handled the same way); entries whose label mask is 0 are left out, and
a class without both positives and negatives gets NaN and is left out of the
means (`*_classes` says how many classes a mean covers).
"""
from typing import Dict, Optional, Sequence

import numpy as np
from scipy import stats


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Binary ROC-AUC: the Mann-Whitney U statistic with average ranks for ties."""
  positive = labels > 0.5
  num_pos, num_neg = int(positive.sum()), int((~positive).sum())
  if not num_pos or not num_neg:
    return float("nan")
  ranks = stats.rankdata(scores)
  return float((ranks[positive].sum() - num_pos * (num_pos + 1) / 2) /
               (num_pos * num_neg))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
  """sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds."""
  positive = labels > 0.5
  num_pos = int(positive.sum())
  if not num_pos:
    return float("nan")
  order = np.argsort(-scores, kind="stable")
  scores, positive = scores[order], positive[order]
  # Last index of each run of equal scores: a threshold admits all ties.
  last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
  true_pos = np.cumsum(positive)[last]
  precision = true_pos / (last + 1)
  recall = true_pos / num_pos
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _per_class(fn, scores, labels, label_mask) -> np.ndarray:
  out = []
  for j in range(scores.shape[1]):
    keep = label_mask[:, j] > 0
    out.append(fn(scores[keep, j], labels[keep, j]))
  return np.array(out)


def classification_metrics(scores: np.ndarray, labels: np.ndarray,
                           label_mask: Optional[np.ndarray] = None,
                           multi_label: bool = False,
                           label_names: Optional[Sequence[str]] = None
                           ) -> Dict[str, object]:
  """Accuracy (single-label), per-class and mean ROC-AUC and AP, for valid
  examples only. `scores`, `labels`, `label_mask`: [examples, classes]."""
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels, np.float64)
  if label_mask is None:
    label_mask = np.ones_like(labels)
  names = list(label_names) if label_names is not None else [
      str(j) for j in range(scores.shape[1])]
  result = {}
  if not multi_label:
    result["accuracy"] = float(np.mean(
        np.argmax(scores, -1) == np.argmax(labels, -1))) if len(scores) else (
            float("nan"))
  auc = _per_class(roc_auc, scores, labels, label_mask)
  ap = _per_class(average_precision, scores, labels, label_mask)
  with np.errstate(all="ignore"):
    result["mean_auc"] = float(np.nanmean(auc)) if np.isfinite(auc).any() else (
        float("nan"))
    result["map"] = float(np.nanmean(ap)) if np.isfinite(ap).any() else (
        float("nan"))
  result["auc_classes"] = int(np.isfinite(auc).sum())
  result["per_class_auc"] = dict(zip(names, auc.tolist()))
  result["per_class_ap"] = dict(zip(names, ap.tolist()))
  return result
