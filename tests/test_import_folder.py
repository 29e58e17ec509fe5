"""import_folder: a hospital's folder and labels CSV, checked, built as a TFDS
dataset, and trained on as target=folder:NAME or beside the public sources."""
import csv
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from pydicom.data import get_testdata_file

from configs import r50x1_chest
from input_pipeline.datasets import folder_labels
from input_pipeline import pipeline
from input_pipeline import xray_io
from input_pipeline.datasets import cxr_folder
from tests import folder_fixtures
from tests import test_main

COLUMNS = ("path", "patient_id", "study_id", "view", "sex", "age",
           "Effusion", "Cardiomegaly", "notes")


def _import(*args, cwd=None):
  return subprocess.run(
      [sys.executable, "-m", "big_transfer_med.import_folder", *args],
      cwd=cwd or test_main.REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=test_main.REPO))


@pytest.fixture(scope="module")
def hospital(tmp_path_factory):
  """(root, images, rows as written, {problem kind: path}) of a folder with
  every format, pydicom's real JPEG 2000 chest CR, and one bad row of each
  kind; labels.csv is written with an unrelated 'notes' column."""
  root = str(tmp_path_factory.mktemp("hospital"))
  images, rows = folder_fixtures.make_folder(root)
  folder_fixtures.add_real_dicom(images, rows)
  bad = folder_fixtures.add_bad_rows(images, rows)
  bad["unreadable image"] = "bad/garbage.dcm"
  folder_fixtures.write_csv(os.path.join(root, "labels.csv"), rows, COLUMNS)
  return root, images, rows, bad


@pytest.fixture(scope="module")
def built(hospital, tmp_path_factory):
  """The hospital built as 'myhosp' by the command; (data_dir, its stdout)."""
  root, images, _, _ = hospital
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  result = _import("--name=myhosp", f"--images={images}",
                   f"--labels={root}/labels.csv", f"--data_dir={data_dir}")
  assert result.returncode == 0, result.stderr[-3000:]
  return data_dir, result.stdout


def test_check_only_names_each_kind_of_problem_and_writes_nothing(hospital,
                                                                  tmp_path):
  root, images, rows, bad = hospital
  result = _import("--name=myhosp", f"--images={images}",
                   f"--labels={root}/labels.csv", "--check_only",
                   f"--data_dir={tmp_path}/tfds", cwd=str(tmp_path))
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert ("multi-label, findings: Effusion, Cardiomegaly; columns not used: "
          "notes") in out
  for kind, path in bad.items():
    line = next(l for l in out.splitlines() if f": {kind} (first" in l)
    count = 2 if kind == "unreadable image" else 1
    assert line.strip().startswith(f"{count} row"), line
  assert "bad/truncated.png" in out and "'Effusion' ('2')" in out
  # Good rows: 12 patients x 2 images and the real DICOM (the first listing
  # of the duplicated path stays); the 6 bad rows come last.
  good = len(rows) - 6
  assert good == 25
  assert f"{good} usable images of 13 patients" in out
  per_split = {l.split()[0]: [int(x) for x in l.split()[1:]]
               for l in out.splitlines()
               if l.strip().split(" ")[0] in folder_labels.SPLITS}
  assert sum(v[0] for v in per_split.values()) == good
  assert sum(v[1] for v in per_split.values()) == 13
  assert os.listdir(tmp_path) == []  # No dataset, no report file.


def test_build_stores_every_format_and_lists_bad_rows(hospital, built):
  root, images, rows, bad = hospital
  data_dir, out = built
  builder = cxr_folder.load("myhosp", data_dir)
  with open(os.path.join(builder.data_dir, "errors.csv")) as f:
    listed = list(csv.DictReader(f))
  assert set(listed[0]) == set(folder_labels.ERRORS_HEADER)
  for kind, path in bad.items():
    assert any(r["path"] == path and r["problem"].startswith(kind)
               for r in listed), (kind, listed)
  assert len(listed) == 6
  # Patient-disjoint splits holding every good image once.
  by_path = {}
  patients = {}
  for split in builder.info.splits:
    source = builder.as_data_source(split)
    for example in source:
      by_path[example["source_path"].decode()] = example
      patients.setdefault(example["patient_id"].decode(), set()).add(split)
  assert all(len(s) == 1 for s in patients.values())
  bad_paths = {r["path"] for r in listed}
  expected = [r for r in rows[:-6] if r["path"] not in bad_paths - {
      bad["duplicate path"]}]
  assert len(by_path) == len(expected) == 25
  for row in expected:
    stored = by_path[row["path"]]
    labels = stored["labels"]
    for i, finding in enumerate(("Effusion", "Cardiomegaly")):
      value = row[finding]
      assert (math.isnan(labels[i]) if value == "" else
              labels[i] == float(value)), (row, labels)
    # Every format is read by xray_io and stored as 8-bit grey.
    expect = np.round(xray_io.read_xray(os.path.join(images, row["path"]))
                      * 255)
    if row["patient_id"] != "REAL1":
      np.testing.assert_array_equal(stored["image"][..., 0], expect)
  # The real CR: JPEG 2000 decodes to the uncompressed release's pixels,
  # MONOCHROME1 inverted, shorter side 512, aspect kept.
  real = by_path["site0/real/RG1_J2KR.dcm"]["image"][..., 0]
  assert min(real.shape) == 512 and real.shape[0] > real.shape[1]
  uncompressed = xray_io.read_xray(get_testdata_file("RG1_UNCR.dcm"))
  assert abs(real.shape[0] / real.shape[1]
             - uncompressed.shape[0] / uncompressed.shape[1]) < 0.01
  small = np.asarray(Image.fromarray(np.round(uncompressed * 255).astype(
      np.uint8)).resize(real.shape[::-1], Image.BOX), np.float32)
  assert np.mean(np.abs(small - real)) < 2.0
  # Loadable by TFDS itself, by name.
  source = tfds.data_source("cxr_folder/myhosp", data_dir=data_dir,
                            split="train")
  assert len(source) == builder.info.splits["train"].num_examples
  assert "Built myhosp in" in out and "target=folder:myhosp" in out


def test_building_a_name_twice_keeps_the_first(hospital, built):
  root, images, _, _ = hospital
  data_dir, _ = built
  version_dir = cxr_folder.dataset_dir("myhosp", data_dir)
  before = {p: os.path.getmtime(os.path.join(version_dir, p))
            for p in os.listdir(version_dir)}
  result = _import("--name=myhosp", f"--images={images}",
                   f"--labels={root}/labels.csv", f"--data_dir={data_dir}")
  assert result.returncode == 2
  assert result.stderr.strip().count("\n") == 0, result.stderr
  assert "already built" in result.stderr
  assert before == {p: os.path.getmtime(os.path.join(version_dir, p))
                    for p in os.listdir(version_dir)}


def _single_label_csv(root, rows, splits):
  labels = [dict(r, label="effusion" if r["Effusion"] == "1" else "normal",
                 split=splits(r)) for r in rows]
  path = os.path.join(root, "single.csv")
  folder_fixtures.write_csv(path, labels, ("path", "patient_id", "split",
                                           "label"))
  return path


def test_a_split_column_is_kept_and_a_patient_in_two_splits_stops(tmp_path):
  images, rows = folder_fixtures.make_folder(str(tmp_path), patients=6)
  split_of = lambda r: ("test" if r["patient_id"] == "P005"  # noqa: E731
                        else "train")
  labels = _single_label_csv(str(tmp_path), rows, split_of)
  result = _import("--name=single", f"--images={images}", f"--labels={labels}",
                   f"--data_dir={tmp_path}/tfds")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "single-label, classes: effusion, normal" in result.stdout
  builder = cxr_folder.load("single", f"{tmp_path}/tfds")
  assert builder.info.features["label"].names == ["effusion", "normal"]
  test = builder.as_data_source("test")
  assert {e["patient_id"].decode() for e in test} == {"P005"}
  assert [e["label"] for e in test] == [0, 0]  # P005: Effusion = 1.
  assert builder.info.splits["train"].num_examples == 10

  # One image of P001 (CSV lines 4 and 5) in test too: the build stops
  # naming the patient and its rows.
  mixed = lambda r: ("test" if r["path"] == rows[3]["path"]  # noqa: E731
                     else split_of(r))
  labels = _single_label_csv(str(tmp_path), rows, mixed)
  result = _import("--name=mixed", f"--images={images}", f"--labels={labels}",
                   f"--data_dir={tmp_path}/tfds")
  assert result.returncode == 2
  line = result.stderr.strip()
  assert "\n" not in line and "patient P001" in line, line
  assert "rows [4, 5]" in line, line
  assert [d for d in os.listdir(f"{tmp_path}/tfds/cxr_folder")
          if not d.startswith(".")] == ["single"]  # TFDS keeps a .config/.


def test_strict_stops_at_the_first_bad_row_leaving_nothing(hospital, tmp_path):
  root, images, _, _ = hospital
  result = _import("--name=myhosp", f"--images={images}",
                   f"--labels={root}/labels.csv", "--strict",
                   f"--data_dir={tmp_path}")
  assert result.returncode == 2
  assert "row 27 (bad/missing.png): missing file" in result.stderr
  assert result.stderr.strip().count("\n") == 0, result.stderr
  assert not os.path.exists(os.path.join(tmp_path, "cxr_folder"))


@pytest.mark.parametrize("case", ["not_a_csv", "empty_folder", "no_valid_row",
                                  "no_path_column"])
def test_unusable_input_is_one_line_and_exit_2(case, tmp_path):
  images = tmp_path / "images"
  images.mkdir()
  labels = tmp_path / "labels.csv"
  if case != "empty_folder":
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(images / "a.png")
  if case == "not_a_csv":
    labels.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe" * 30)
  elif case == "no_path_column":
    labels.write_text("file,patient,Effusion\na.png,1,1\n")
  else:
    labels.write_text("path,patient_id,Effusion\nmissing.png,1,1\n")
  result = _import("--name=x", f"--images={images}", f"--labels={labels}",
                   f"--data_dir={tmp_path}/tfds")
  assert result.returncode == 2, result.stderr[-2000:]
  line = result.stderr.strip()
  assert "\n" not in line and line.startswith("ERROR: "), line
  expected = {"not_a_csv": "not a text CSV", "empty_folder": "holds no files",
              "no_valid_row": "no usable row",
              "no_path_column": "lacks the column(s) ['path', 'patient_id']"}
  assert expected[case] in line
  assert not os.path.exists(tmp_path / "tfds")


def test_drawn_splits_are_by_patient_and_findings_can_be_chosen(tmp_path):
  images = tmp_path / "images"
  images.mkdir()
  lines = ["path,patient_id,Effusion,Cardiomegaly,Edema"]
  for i in range(300):  # 100 patients, 3 images each.
    (images / f"{i}.png").write_bytes(b"")
    lines.append(f"{i}.png,P{i // 3},{i % 2},,")
  (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
  table = folder_labels.read_table(
      str(tmp_path / "labels.csv"), str(images), ("Effusion", "Edema"),
      folder_labels.parse_fractions("70/20/10"), seed=3)
  assert table.label_names == ["Effusion", "Edema"]
  assert table.unused_columns == ["Cardiomegaly"]
  splits = {}
  for row in table.rows:
    splits.setdefault(row["patient_id"], set()).add(row["split"])
  assert all(len(s) == 1 for s in splits.values())
  counts = {s: sum(1 for v in splits.values() if s in v)
            for s in folder_labels.SPLITS}
  assert counts == {"train": 70, "validation": 20, "test": 10}
  with pytest.raises(Exception, match="--findings names \\['Edmea'\\]"):
    folder_labels.read_table(str(tmp_path / "labels.csv"), str(images),
                             ("Edmea",))


def test_a_folder_source_maps_its_findings_onto_the_label_set(built):
  """Upstream beside (or instead of) the public sources: the folder's
  Effusion column lands on the label set's Effusion; a finding it lacks is
  masked."""
  data_dir, _ = built
  config = r50x1_chest.get_config(
      "sources=folder:myhosp,label_set=common7")
  config.data.data_dir = data_dir
  data = pipeline.Pipeline(config.data)
  assert data.multi_label and data.label_names[4] == "Effusion"
  labels, mask = data.train.sources[0].label_matrix()
  raw = data.train.sources[0].stored_labels(data.train.sources[0].indices)
  np.testing.assert_array_equal(labels[:, 4], raw[:, 0])
  assert mask[:, 0].sum() == 0  # Atelectasis: not a column of the CSV.
  own = r50x1_chest.get_config(
      "sources=folder:myhosp")
  own.data.data_dir = data_dir
  assert pipeline.Pipeline(own.data).label_names == ["Effusion",
                                                      "Cardiomegaly"]


@pytest.mark.slow
def test_fine_tune_few_shot_on_a_folder_as_typed(built, tmp_path):
  data_dir, _ = built
  result = subprocess.run(
      [sys.executable, "-m", "big_transfer_med.main",
       "--config=configs/transfer.py:target=folder:myhosp,model=R26x1,"
       f"res=32,batch=4,steps=2,shots=2,data_dir={data_dir}",
       f"--workdir={tmp_path}/run"], cwd=test_main.REPO, capture_output=True,
      text=True, timeout=600, env=dict(os.environ, PYTHONPATH=test_main.REPO))
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.load(open(tmp_path / "run" / "results.json"))
  assert results["label_names"] == ["Effusion", "Cardiomegaly"]
  assert results["primary_metric"] == "mean_auc"
  assert results["examples_per_class"] == 2
  # 2 positives of each finding and 2 images without any, at most.
  assert 4 <= results["train_examples"] <= 6
  config = json.load(open(tmp_path / "run" / "config.json"))
  assert config["loss"] == "sigmoid_xent"
  shutil.rmtree(tmp_path / "run")
