"""Evaluation metrics agree with scikit-learn; masked entries are left out."""
import numpy as np
import pytest
from sklearn import metrics as sk

from big_transfer_med import metrics


@pytest.mark.parametrize("seed", range(5))
def test_auc_and_ap_match_sklearn_with_ties(seed):
  rng = np.random.default_rng(seed)
  labels = rng.random(300) < 0.3
  scores = np.round(rng.random(300) + 0.5 * labels, 1)  # Many ties.
  np.testing.assert_allclose(metrics.roc_auc(scores, labels),
                             sk.roc_auc_score(labels, scores), rtol=1e-12)
  np.testing.assert_allclose(metrics.average_precision(scores, labels),
                             sk.average_precision_score(labels, scores),
                             rtol=1e-12)


def test_multi_label_metrics_exclude_masked_entries():
  rng = np.random.default_rng(0)
  n, c = 400, 5
  labels = (rng.random((n, c)) < 0.4).astype(np.float32)
  scores = rng.random((n, c)) + 0.3 * labels
  mask = (rng.random((n, c)) < 0.8).astype(np.float32)
  labels[:, 4] = 0.0  # No positives: no AUC for this class.
  result = metrics.classification_metrics(scores, labels, mask,
                                          multi_label=True)
  expected_auc = [sk.roc_auc_score(labels[mask[:, j] > 0, j],
                                   scores[mask[:, j] > 0, j]) for j in range(4)]
  expected_ap = [sk.average_precision_score(labels[mask[:, j] > 0, j],
                                            scores[mask[:, j] > 0, j])
                 for j in range(4)]
  np.testing.assert_allclose(result["mean_auc"], np.mean(expected_auc))
  np.testing.assert_allclose(result["map"], np.mean(expected_ap))
  assert result["auc_classes"] == 4
  assert np.isnan(result["per_class_auc"]["4"])
  assert "accuracy" not in result


def test_single_label_metrics_match_sklearn_one_vs_rest():
  rng = np.random.default_rng(1)
  y = rng.integers(0, 4, 200)
  logits = rng.normal(size=(200, 4)) + 2.0 * np.eye(4)[y]
  probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  result = metrics.classification_metrics(
      probabilities, np.eye(4)[y], label_names=["a", "b", "c", "d"])
  assert result["accuracy"] == sk.accuracy_score(y, probabilities.argmax(1))
  np.testing.assert_allclose(
      result["mean_auc"],
      sk.roc_auc_score(y, probabilities, multi_class="ovr", average="macro"))
  np.testing.assert_allclose(result["per_class_auc"]["c"],
                             sk.roc_auc_score(y == 2, probabilities[:, 2]))
