"""evaluate: point estimates against scikit-learn, the patient bootstrap's
interval against DeLong's analytic one, the threshold against sklearn's ROC,
and the command as a user types it."""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as sk_metrics

from big_transfer_med import cli
from big_transfer_med import evaluate
from input_pipeline import errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, header, rows):
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  return str(path)


def _synthetic(n_patients, images_per_patient, separation, seed):
  """One finding; a patient's images share its label and (nearly) its
  score. Returns (paths, patients, labels, scores)."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(rng.random(n_patients) < 0.4, images_per_patient)
  patient_score = np.repeat(rng.normal(size=n_patients), images_per_patient)
  scores = (patient_score + separation * labels
            + 0.01 * rng.normal(size=labels.size))
  patients = np.repeat([f"p{i}" for i in range(n_patients)],
                       images_per_patient)
  paths = [f"img/{i}.png" for i in range(labels.size)]
  return paths, patients, labels.astype(float), scores


def _delong_interval(scores, labels):
  """DeLong et al. 1988: the AUROC's variance from its structural
  components, and the normal 95% interval."""
  pos, neg = scores[labels > 0.5], scores[labels < 0.5]
  psi = (pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None])
  auc = psi.mean()
  variance = psi.mean(1).var(ddof=1) / len(pos) + psi.mean(0).var(
      ddof=1) / len(neg)
  half = stats.norm.ppf(0.975) * np.sqrt(variance)
  return auc, auc - half, auc + half


def test_bootstrap_interval_agrees_with_delong_on_a_large_case():
  _, patients, labels, scores = _synthetic(3000, 1, 1.2, seed=0)
  out, band = evaluate.score_class(scores, labels, patients, None, 1000,
                                   np.random.default_rng(0))
  auc, low, high = _delong_interval(scores, labels)
  assert out["auroc"] == pytest.approx(auc, abs=1e-12)
  assert out["auroc"] == pytest.approx(sk_metrics.roc_auc_score(labels,
                                                                scores))
  assert high - low == pytest.approx(0.036, abs=0.01)  # The case's width.
  assert out["auroc_low"] == pytest.approx(low, abs=0.004)
  assert out["auroc_high"] == pytest.approx(high, abs=0.004)
  assert out["resamples"] == 1000 and out["patients"] == 3000
  assert np.all(band[0] <= band[1]) and band[1][-1] == 1.0


def test_the_bootstrap_resamples_patients_not_images():
  """Four near-copies of each patient's image add no information: the
  interval stays as wide as with one image each (resampling images would
  narrow it by about half)."""
  widths = {}
  for images in (1, 4):
    _, patients, labels, scores = _synthetic(600, images, 1.0, seed=1)
    out, _ = evaluate.score_class(scores, labels, patients, None, 500,
                                  np.random.default_rng(0))
    widths[images] = out["auroc_high"] - out["auroc_low"]
  assert widths[4] == pytest.approx(widths[1], rel=0.2)


def test_roc_curve_and_youden_threshold_match_sklearn():
  _, _, labels, scores = _synthetic(400, 1, 1.0, seed=2)
  scores = np.round(scores, 1)  # Ties: one point per distinct score.
  fpr, tpr, thresholds = sk_metrics.roc_curve(labels, scores,
                                              drop_intermediate=False)
  ours = evaluate.roc_curve(scores, labels)
  np.testing.assert_allclose(ours[0], fpr)
  np.testing.assert_allclose(ours[1], tpr)
  np.testing.assert_array_equal(ours[2][1:], thresholds[1:])
  assert len(ours[0]) == len(np.unique(scores)) + 1
  assert evaluate.youden_threshold(scores, labels) == thresholds[
      np.argmax(tpr - fpr)]


def _report_case(tmp_path):
  """Multi-label labels (blank, -1), two images per patient, a failed
  prediction, a label row without a prediction, validation files."""
  rng = np.random.default_rng(3)
  n = 120
  truth = rng.random((n, 2)) < [0.3, 0.5]
  scores = truth + rng.normal(scale=0.8, size=(n, 2))
  label_rows, prediction_rows = [], []
  for i in range(n):
    cells = ["1" if t else "0" for t in truth[i]]
    if i % 10 == 3:
      cells[0] = ""  # Not labelled.
    if i % 10 == 7:
      cells[1] = "-1"  # Uncertain.
    label_rows.append([f"a/{i}.dcm", f"p{i // 2}", *cells, "PA"])
    if i == 5:
      prediction_rows.append([f"a/{i}.dcm", "", "", "unreadable DICOM"])
    elif i != 8:
      prediction_rows.append([f"./a/{i}.dcm", *scores[i], ""])
  prediction_rows.append(["a/extra.dcm", 0.5, 0.5, ""])
  labels = _write(tmp_path / "labels.csv",
                  ["path", "patient_id", "Effusion", "Edema", "view"],
                  label_rows)
  predictions = _write(tmp_path / "preds.csv",
                       ["path", "Edema", "Effusion", "error"],
                       [[r[0], r[2], r[1], r[3]] for r in prediction_rows])
  return predictions, labels, truth, scores


def test_report_matches_sklearn_and_counts_what_it_left_out(tmp_path):
  predictions, labels, truth, scores = _report_case(tmp_path)
  results = evaluate.evaluate(predictions, labels, str(tmp_path / "report"),
                              resamples=200, seed=0,
                              validation=(predictions, labels))
  assert [r["class"] for r in results] == ["Edema", "Effusion"]
  scored = np.array([i not in (5, 8) for i in range(len(truth))])
  for r, j in zip(results, (1, 0)):
    keep = scored.copy()
    keep[3::10] &= j != 0  # Effusion's blanks.
    keep[7::10] &= j != 1  # Edema's uncertain.
    y, s = truth[keep, j], scores[keep, j]
    assert r["images"] == keep.sum() and r["positives"] == y.sum()
    assert r["uncertain_left_out"] == (12 if j == 1 else 0)
    assert r["auroc"] == pytest.approx(sk_metrics.roc_auc_score(y, s))
    assert r["average_precision"] == pytest.approx(
        sk_metrics.average_precision_score(y, s))
    assert r["auroc_low"] < r["auroc"] < r["auroc_high"]
    assert r["threshold"] == pytest.approx(evaluate.youden_threshold(s, y))
    assert r["sensitivity"] == pytest.approx(
        sk_metrics.recall_score(y, s >= r["threshold"]))
    assert r["specificity"] == pytest.approx(
        sk_metrics.recall_score(~y, s < r["threshold"]))
  summary = (tmp_path / "report" / "summary.txt").read_text()
  assert "1  failed predictions (left out)" in summary
  assert "1  labelled rows without a prediction (left out)" in summary
  assert "1  predictions without a label row (left out)" in summary
  with open(tmp_path / "report" / "metrics.csv") as f:
    written = list(csv.DictReader(f))
  assert float(written[0]["auroc"]) == pytest.approx(results[0]["auroc"])


def test_single_label_csv_scores_each_class_one_vs_rest(tmp_path):
  rng = np.random.default_rng(4)
  names = np.array(["normal", "pneumonia", "covid"])
  truth = rng.integers(0, 3, 90)
  scores = np.eye(3)[truth] + rng.normal(scale=0.7, size=(90, 3))
  labels = _write(tmp_path / "l.csv", ["path", "patient_id", "label"],
                  [[f"{i}.png", f"p{i}", names[t]] for i, t in
                   enumerate(truth)])
  predictions = _write(tmp_path / "p.csv", ["path", *names],
                       [[f"{i}.png", *s] for i, s in enumerate(scores)])
  results = evaluate.evaluate(predictions, labels, str(tmp_path / "r"),
                              resamples=0)
  for j, r in enumerate(results):
    assert r["class"] == names[j] and r["positives"] == (truth == j).sum()
    assert r["auroc"] == pytest.approx(
        sk_metrics.roc_auc_score(truth == j, scores[:, j]))
    assert np.isnan(r["auroc_low"]) and r["resamples"] == 0


@pytest.mark.parametrize("header,rows,message", [
    (["path", "patient_id", "Edema"], [["a/0.dcm", "p0", "yes"]],
     r"labels.csv line 2, column Edema: 'yes' is not 1, 0, -1"),
    (["path", "Edema"], [["a/0.dcm", "1"]], r"labels.csv: no `patient_id`"),
    (["path", "patient_id", "Edema"], [["a/0.dcm", "p0", "1"],
                                       ["a/0.dcm", "p1", "0"]],
     r"labels.csv line 3: path 'a/0.dcm' is also on line 2"),
    (["path", "patient_id", "Cardiomegaly"], [["a/0.dcm", "p0", "1"]],
     r"none of the prediction columns \['Edema'\]"),
])
def test_bad_labels_are_named(tmp_path, header, rows, message):
  labels = _write(tmp_path / "labels.csv", header, rows)
  predictions = _write(tmp_path / "preds.csv", ["path", "Edema"],
                       [["a/0.dcm", "0.3"]])
  with pytest.raises(errors.DataError, match=message):
    evaluate.evaluate(predictions, labels, str(tmp_path / "report"))
  assert not (tmp_path / "report").exists()


def test_the_command_as_typed(tmp_path):
  """Relative paths from the user's directory; a report, then a file that
  is not a CSV: one ERROR line, exit 2, the earlier report untouched."""
  predictions, labels, _, _ = _report_case(tmp_path)
  command = [sys.executable, "-m", "big_transfer_med.evaluate",
             "--predictions=preds.csv", "--labels=labels.csv",
             "--out_dir=report/", "--bootstrap=100"]
  env = dict(os.environ, PYTHONPATH=REPO)
  result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Edema: AUROC" in result.stdout
  report = tmp_path / "report"
  assert sorted(os.listdir(report)) == [
      "metrics.csv", "roc_Edema.png", "roc_Effusion.png", "roc_all.png",
      "summary.txt"]
  before = (report / "metrics.csv").read_bytes()
  (tmp_path / "labels.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
  result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == cli.EXIT_USER_ERROR
  assert result.stderr.strip().startswith("ERROR: labels.csv: ")
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert (report / "metrics.csv").read_bytes() == before
