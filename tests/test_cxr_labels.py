"""Chest X-ray label parsing and harmonisation, on real rows of the real CSVs."""
import ast
import math

import numpy as np
import pytest
from etils import epath

from input_pipeline import errors
from input_pipeline import labels as labels_lib
from input_pipeline.datasets import cxr_chexpert
from input_pipeline.datasets import cxr_common
from input_pipeline.datasets import cxr_nih14
from input_pipeline.datasets import cxr_padchest
from tests import txrv_metadata


@pytest.fixture(scope="module")
def chexpert_rows():
  return txrv_metadata.rows("chexpert")


def _harmonize(names, values, label_set, uncertain="ignore", missing="mask"):
  h = labels_lib.Harmonizer(names, label_set, uncertain, missing)
  labels, mask = h(np.asarray(values, np.float32), rng=np.array([0, 1]))
  return h, np.asarray(labels), np.asarray(mask)


def test_real_chexpert_csv_parses_completely(chexpert_rows, tmp_path):
  path = txrv_metadata.write_csv("chexpert", str(tmp_path), "train.csv")
  parsed = [cxr_chexpert.parse_row(r) for _, r in cxr_chexpert.read_csv(path)]
  assert len(parsed) == 223_414
  assert len({p["patient_id"] for p in parsed}) == 64_540
  values = np.array([p["labels"] for p in parsed])
  assert set(np.unique(values[~np.isnan(values)])) == {-1.0, 0.0, 1.0}
  views = {p["view"] for p in parsed}
  assert {"AP", "PA", "LATERAL"} <= views <= set(cxr_common.VIEWS)
  lateral = [p for p, r in zip(parsed, chexpert_rows)
             if r["Frontal/Lateral"] == "Lateral"]
  assert lateral and all(p["view"] == "LATERAL" for p in lateral)


def test_real_chexpert_rows_blank_uncertain_and_no_finding(chexpert_rows):
  # Row 1: No Finding = 1, Pneumothorax 0.0, Support Devices 1.0, rest blank.
  first = cxr_chexpert.parse_row(chexpert_rows[0])
  assert first["patient_id"] == "patient00001" and first["view"] == "AP"
  assert first["sex"] == "Female" and first["age"] == 68
  _, labels, mask = _harmonize(labels_lib.CHEXPERT_COLUMNS, first["labels"],
                               "chexpert13")
  names = labels_lib.LABEL_SETS["chexpert13"]
  np.testing.assert_array_equal(mask, 1.0)  # No-Finding rule: blanks -> 0.
  assert labels[names.index("Support Devices")] == 1.0
  assert labels.sum() == 1.0
  # Row 2: uncertain (-1.0) Cardiomegaly, Edema, Consolidation, Atelectasis,
  # Pleural Effusion; Lung Opacity and Fracture positive; others blank.
  second = cxr_chexpert.parse_row(chexpert_rows[1])
  raw = dict(zip(labels_lib.CHEXPERT_COLUMNS, second["labels"]))
  assert raw["Cardiomegaly"] == -1.0 and math.isnan(raw["Pneumonia"])
  _, labels, mask = _harmonize(labels_lib.CHEXPERT_COLUMNS, second["labels"],
                               "common7")
  common7 = labels_lib.LABEL_SETS["common7"]
  expected_mask = [0, 0, 0, 0, 0, 0, 0]  # Uncertain or blank: all masked.
  np.testing.assert_array_equal(mask, expected_mask)
  _, labels, mask = _harmonize(labels_lib.CHEXPERT_COLUMNS, second["labels"],
                               "common7", uncertain="ones")
  for name in ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis",
               "Effusion"):
    assert labels[common7.index(name)] == 1.0
    assert mask[common7.index(name)] == 1.0
  assert mask[common7.index("Pneumonia")] == 0.0  # Blank stays masked.
  _, labels, mask = _harmonize(labels_lib.CHEXPERT_COLUMNS, second["labels"],
                               "common7", uncertain="lsr_ones", missing="zeros")
  assert 0.55 <= labels[common7.index("Edema")] <= 0.85
  assert mask[common7.index("Pneumonia")] == 1.0
  assert labels[common7.index("Pneumonia")] == 0.0


def test_real_nih_csv_parses_completely(tmp_path):
  path = txrv_metadata.write_csv("nih", str(tmp_path),
                                 "Data_Entry_2017_v2020.csv")
  parsed = [cxr_nih14.parse_row(r) for _, r in cxr_nih14.read_csv(path)]
  assert len(parsed) == 112_120
  assert len({p["patient_id"] for p in parsed}) == 30_805
  by_name = {p["source_path"]: p for p in parsed}
  assert np.sum(by_name["00000001_001.png"]["labels"]) == 2  # Cardiomegaly|Emphysema
  no_finding = [p for p in parsed if sum(p["labels"]) == 0]
  assert len(no_finding) > 50_000
  thickening = labels_lib.NIH_LABELS.index("Pleural_Thickening")
  assert sum(p["labels"][thickening] for p in parsed) > 3000
  _, labels, mask = _harmonize(labels_lib.NIH_LABELS,
                               by_name["00000001_001.png"]["labels"], "union")
  union = labels_lib.LABEL_SETS["union"]
  assert mask.sum() == 14  # NIH annotates 14 of the union's findings.
  assert mask[union.index("Lung Opacity")] == 0.0
  assert labels[union.index("Emphysema")] == 1.0


def test_nih_csv_variants_seen_in_the_wild(tmp_path):
  path = tmp_path / "Data_Entry_2017.csv"
  path.write_text(
      "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,"
      "Patient Sex,View Position,OriginalImage[Width,Height],"
      "OriginalImagePixelSpacing[x,y],\n"
      "00000013_005.png,Emphysema|Infiltration,5,13,060Y,M,AP,3056,2544,0.139,0.139,\n")
  (_, row), = list(cxr_nih14.read_csv(str(path)))
  parsed = cxr_nih14.parse_row(row)
  assert parsed["age"] == 60 and parsed["sex"] == "M"
  bad = tmp_path / "bad.csv"
  bad.write_text("Image Index,Finding Labels,Patient ID\nx.png,Mass,1\n")
  with pytest.raises(errors.DataError, match=r"bad.csv: missing columns \['Follow-up #'"):
    list(cxr_nih14.read_csv(str(bad)))


def test_real_padchest_label_strings():
  rows = txrv_metadata.rows("padchest")
  assert len(rows) == 160_861
  null = [r for r in rows if r["Labels"] in ("", "None", "nan")]
  assert null  # Some rows have no labels at all.
  findings = labels_lib.PADCHEST_FINDINGS
  first = rows[0]
  assert ast.literal_eval(first["Labels"]) == ["normal"]
  np.testing.assert_array_equal(
      labels_lib.padchest_findings(ast.literal_eval(first["Labels"])), 0.0)
  second = labels_lib.padchest_findings(ast.literal_eval(rows[1]["Labels"]))
  positives = {findings[i] for i in np.flatnonzero(second)}
  # ['pulmonary fibrosis', 'chronic changes', 'kyphosis', 'pseudonodule',
  #  'ground glass pattern']: no Nodule from 'pseudonodule'.
  assert positives == {"Fibrosis", "Infiltration"}
  vectors = np.array([labels_lib.padchest_findings(ast.literal_eval(r["Labels"]))
                      for r in rows[:20000] if r["Labels"] not in
                      ("", "None", "nan")])
  counts = dict(zip(findings, vectors.sum(0)))
  assert all(counts[f] > 0 for f in ("Effusion", "Cardiomegaly", "Nodule",
                                     "Scoliosis", "Support Devices",
                                     "Aortic Elongation"))


def test_real_padchest_csv_parses_completely(tmp_path):
  path = txrv_metadata.write_csv("padchest", str(tmp_path),
                                 cxr_padchest.CSV_NAME)
  parsed = [cxr_padchest.parse_row(r)
            for _, r in cxr_padchest.read_csv(epath.Path(path))]
  kept = [p for p in parsed if p is not None]
  assert len(parsed) == 160_861
  assert 0 < len(parsed) - len(kept) < 1000  # Null labels, EXCLUDE.
  assert len({p["patient_id"] for p in kept}) > 60_000
  assert {p["view"] for p in kept} == set(cxr_common.VIEWS)
  ages = np.array([p["age"] for p in kept])
  assert 40 < np.nanmedian(ages) < 80


def test_label_sets_and_unknown_names():
  assert len(labels_lib.LABEL_SETS["chexpert13"]) == 13
  assert len(labels_lib.LABEL_SETS["nih14"]) == 14
  assert len(labels_lib.LABEL_SETS["padchest27"]) == 27
  assert set(labels_lib.LABEL_SETS["common7"]) <= set(labels_lib.CANONICAL)
  for name in ("chexpert13", "nih14", "padchest27"):
    assert set(labels_lib.LABEL_SETS[name]) <= set(labels_lib.CANONICAL)
  with pytest.raises(errors.ConfigError, match="label_set='nih15'"):
    labels_lib.Harmonizer(labels_lib.NIH_LABELS, "nih15")
  with pytest.raises(errors.ConfigError, match="uncertain='maybe'"):
    labels_lib.Harmonizer(labels_lib.NIH_LABELS, "nih14", uncertain="maybe")


def test_patient_split_is_disjoint_deterministic_and_sized():
  patients = [str(i) for i in range(1000)] * 3
  split = cxr_common.patient_split(patients, {"train": 0.8, "validation": 0.1,
                                              "test": 0.1})
  again = cxr_common.patient_split(list(reversed(patients)),
                                   {"train": 0.8, "validation": 0.1, "test": 0.1})
  assert split == again
  counts = {s: sum(v == s for v in split.values()) for s in ("train", "validation", "test")}
  assert counts == {"train": 800, "validation": 100, "test": 100}


def test_no_finding_rules_on_the_real_chexpert_csv(chexpert_rows):
  """'No Finding' = 1 with a finding marked positive: our default keeps it
  (a positive Support Devices stays); the seed's rule ('all') makes every
  one of the 13 findings negative. On the real CSV the two differ on the
  8,808 rows that have No Finding = 1 and Support Devices = 1."""
  parsed = np.array([cxr_chexpert.parse_row(r)["labels"]
                     for r in chexpert_rows], np.float32)
  columns = list(labels_lib.CHEXPERT_COLUMNS)
  both = ((parsed[:, columns.index("No Finding")] == 1)
          & (parsed[:, columns.index("Support Devices")] == 1))
  assert both.sum() == 8_808
  rows = parsed[both]
  names = labels_lib.LABEL_SETS["chexpert13"]
  ours = labels_lib.Harmonizer(columns, "chexpert13")
  seed = labels_lib.Harmonizer(columns, "chexpert13", no_finding="all")
  ours_labels, ours_mask = (np.asarray(x) for x in ours(rows))
  seed_labels, seed_mask = (np.asarray(x) for x in seed(rows))
  assert (ours_labels[:, names.index("Support Devices")] == 1).all()
  assert (seed_labels == 0).all() and (seed_mask == 1).all()
  # Rows with No Finding blank or 0 are the same under both rules.
  others = parsed[parsed[:, columns.index("No Finding")] != 1][:2000]
  for a, b in zip(ours(others), seed(others)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(errors.ConfigError, match="no_finding"):
    labels_lib.Harmonizer(columns, "chexpert13", no_finding="some")


@pytest.mark.slow
def test_seed_padchest_cl_on_the_real_csv(tmp_path):
  """PadChest-Cl as the seed forms it, on the real CSV: views (AP_horizontal
  as AP Supine, COSTAL kept, UNK and EXCLUDE dropped), null Labels and its
  30 named files dropped, RandomState(42) 90/10 split of the rest, then
  images with exactly one of the 27 substring-matched findings per split.
  Against our default rules (word-boundary terms, frontal views,
  patient-disjoint 80/10/10)."""
  path = txrv_metadata.write_csv("padchest", str(tmp_path), "padchest.csv")
  rows = [r for _, r in cxr_padchest.read_csv(epath.Path(path))]
  assert len(rows) == 160_861
  viewed = [r for r in rows if r["Projection"] in cxr_padchest.SEED_PROJECTIONS]
  assert len(viewed) == 160_842
  assert len(cxr_padchest.SEED_DROPPED_IMAGES) == 30
  splits = cxr_padchest.seed_selection(rows)
  assert (len(splits["train"]), len(splits["test"])) == (144_638, 16_071)
  single = {s: [r for r in v if r["seed_labels"].sum() == 1]
            for s, v in splits.items()}
  assert (len(single["train"]), len(single["test"])) == (37_387, 4_153)
  names = labels_lib.PADCHEST_FINDINGS
  consolidation = names.index("Consolidation")
  assert not any(r["seed_labels"][consolidation] for r in single["train"])
  # 'pseudonodule' counts as a nodule for the seed, not for us.
  raw = "['pseudonodule']"
  assert cxr_padchest.seed_findings(raw)[names.index("Nodule")] == 1
  assert labels_lib.padchest_findings(["pseudonodule"])[names.index("Nodule")] == 0
  # Ours on the same CSV (the builder's row parser, frontal views, exactly
  # one finding, before the patient split): about 13,300 fewer images.
  ours = [cxr_padchest.parse_row(r) for r in rows]
  ours = [p for p in ours if p is not None and p["view"] in
          ("PA", "AP", "AP_SUPINE") and p["labels"].sum() == 1]
  assert len(ours) == 28_226
