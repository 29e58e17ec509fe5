"""The chest X-ray path on real radiographs: the 16 Kermany et al. 2018
images from a PyPI wheel (tests/kermany_radiographs.py) in the released
layout, built by `cxr_pneumonia`; and as a user's folder with a labels CSV
(and pydicom's real chest CR), imported, fine-tuned on, predicted with
saliency maps and evaluated, all as typed."""
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image
from pydicom.data import get_testdata_file

from big_transfer_med import train
from input_pipeline import errors
from input_pipeline import pipeline
from input_pipeline import preprocessing
from input_pipeline import xray_io
from input_pipeline.datasets import cxr_targets
from tests import kermany_radiographs
from tests import test_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRANSFER = os.path.join(REPO, "configs", "transfer.py")


@pytest.fixture(scope="module")
def kermany(tmp_path_factory):
  """(manual_dir, {split: [jpeg paths]}, data_dir) with cxr_pneumonia built."""
  root = str(tmp_path_factory.mktemp("kermany"))
  written = kermany_radiographs.write_layout(os.path.join(root, "manual"))
  data_dir = os.path.join(root, "tfds")
  tfds.builder("cxr_pneumonia", data_dir=data_dir).download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          manual_dir=os.path.join(root, "manual")))
  return os.path.join(root, "manual"), written, data_dir


def test_build_keeps_labels_subtypes_patients_and_the_images(kermany):
  manual, written, data_dir = kermany
  builder = tfds.builder("cxr_pneumonia", data_dir=data_dir)
  assert {s: len(builder.as_data_source(s)) for s in builder.info.splits} == {
      "train": 8, "validation": 4, "test": 4}
  for split, name in (("train", "train"), ("validation", "val"),
                      ("test", "test")):
    by_path = {ex["source_path"].decode(): ex
               for ex in builder.as_data_source(split)}
    for path in written[name]:
      ex = by_path[os.path.relpath(path, manual)]
      file_name = os.path.basename(path)
      assert ex["label"] == (0 if file_name.startswith("NORMAL") else 1)
      assert ex["subtype"] == (0 if file_name.startswith("NORMAL") else 1)
      if file_name.startswith("person"):
        assert ex["patient_id"].decode() == file_name.split("_")[0]
      # The stored image is the JPEG's grey pixels, shorter side cut to
      # 512 px (area), aspect kept: compare with PIL's own decode.
      original = np.asarray(Image.open(path).convert("L"), np.float32)
      h, w = original.shape
      assert ex["image"].shape[-1] == 1 and min(ex["image"].shape[:2]) == 512
      assert abs(ex["image"].shape[0] / ex["image"].shape[1] - h / w) < 0.01
      reference = tf.image.resize(original[..., None], ex["image"].shape[:2],
                                  method="area").numpy()
      assert np.abs(ex["image"].astype(np.float32) - reference).mean() < 1.0


def test_file_names_give_subtype_and_patient():
  parse = cxr_targets.parse_pneumonia_file
  assert parse("PNEUMONIA", "person1_virus_6.jpeg") == {
      "label": "pneumonia", "patient_id": "person1", "subtype": "viral"}
  assert parse("PNEUMONIA", "person1946_bacteria_4874.jpeg")["subtype"] == (
      "bacterial")
  assert parse("NORMAL", "NORMAL2-IM-1427-0001.jpeg")["patient_id"] == (
      "NORMAL2-IM-1427")
  assert parse("NORMAL", "IM-0115-0001.jpeg")["patient_id"] == "IM-0115"
  with pytest.raises(ValueError, match="personN_bacteria_M"):
    parse("PNEUMONIA", "IM-0115-0001.jpeg")


def test_wrong_layout_fails_naming_what_was_expected(kermany, tmp_path):
  manual, _, _ = kermany
  flat = tmp_path / "flat"
  for split in ("train", "test"):
    (flat / split).mkdir(parents=True)  # Class folders missing.
  with pytest.raises(errors.DataError,
                     match=r"no \.jpeg images in train, test/\{NORMAL,PNEUMONIA\}"):
    tfds.builder("cxr_pneumonia", data_dir=str(tmp_path / "tfds")
                 ).download_and_prepare(download_config=tfds.download.
                                        DownloadConfig(manual_dir=str(flat)))
  assert os.path.isdir(manual)  # Nothing of the source is touched.


def _command(module, *args, timeout=600):
  result = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=REPO))
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def _hospital_folder(root: str) -> dict:
  """The 16 real radiographs as a user's folder (one sub-folder per class)
  and pydicom's real chest CR (JPEG 2000), with a labels CSV whose split
  column is Kermany's and which holds a bad row of each kind."""
  images = os.path.join(root, "images")
  rows = []
  split_of = {"train": "train", "val": "validation", "test": "test"}
  for split, paths in kermany_radiographs.write_layout(
      os.path.join(root, "released")).items():
    for path in paths:
      folder, name = path.split(os.sep)[-2:]
      fields = cxr_targets.parse_pneumonia_file(folder, name)
      relative = os.path.join(folder.lower(), name)
      os.makedirs(os.path.join(images, folder.lower()), exist_ok=True)
      shutil.copy(path, os.path.join(images, relative))
      rows.append({"path": relative, "patient_id": fields["patient_id"],
                   "label": fields["label"], "split": split_of[split]})
  # Its label is arbitrary: pydicom's sample comes without a diagnosis.
  os.makedirs(os.path.join(images, "dicom"))
  shutil.copy(get_testdata_file("RG1_J2KR.dcm"),
              os.path.join(images, "dicom", "rg1.dcm"))
  rows.append({"path": "dicom/rg1.dcm", "patient_id": "RG1",
               "label": "normal", "split": "test"})
  with open(os.path.join(images, "dicom", "garbage.dcm"), "wb") as f:
    f.write(b"not a dicom" * 20)
  good = list(rows)
  rows += [{"path": "dicom/garbage.dcm", "patient_id": "G1",
            "label": "normal", "split": "train"},
           {"path": "normal/missing.jpeg", "patient_id": "M1",
            "label": "normal", "split": "train"},
           dict(good[1])]  # Listed twice.
  for i, (field, value) in enumerate((("label", ""), ("patient_id", ""),
                                      ("split", "tran"))):
    copy = good[i]["path"].replace(".jpeg", f"_copy{i}.jpeg")
    shutil.copy(os.path.join(images, good[i]["path"]),
                os.path.join(images, copy))
    rows.append(dict(good[i], path=copy, **{field: value}))
  labels = os.path.join(root, "labels.csv")
  with open(labels, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["path", "patient_id", "label",
                                           "split"])
    writer.writeheader()
    writer.writerows(rows)
  return {"images": images, "labels": labels, "good": good}


@pytest.mark.slow
@pytest.mark.usefixtures("compilation_cache_for_commands")
def test_your_folder_to_evaluation_on_real_radiographs(tmp_path):
  """A user's whole path, as typed, on the real images: check, import,
  fine-tune a few steps (HyperRule), predict the test images to a CSV with
  saliency maps, and evaluate the predictions."""
  folder = _hospital_folder(str(tmp_path))
  data_dir = str(tmp_path / "tfds")
  common = ["--name=kermany", f"--images={folder['images']}",
            f"--labels={folder['labels']}", f"--data_dir={data_dir}"]
  report = _command("big_transfer_med.import_folder", *common, "--check_only")
  for kind in ("unreadable image", "missing file", "blank label",
               "duplicate path", "missing patient id", "unknown split"):
    assert f"1 row: {kind}" in report, report
  assert "17 usable images of 16 patients" in report
  _command("big_transfer_med.import_folder", *common)
  with open(tmp_path / "tfds/cxr_folder/kermany/1.0.0/errors.csv") as f:
    assert len(list(csv.DictReader(f))) == 6

  # Evaluation preprocessing of a real image: 32 px, 3 channels, [-1, 1].
  config_arg = (f"--config={TRANSFER}:target=folder:kermany,model=R26x1,"
                f"res=32,resize=40,steps=3,batch=4,data_dir={data_dir}")
  config = test_main._parse(config_arg)
  data = pipeline.Pipeline(config.data)
  assert data.label_names == ["normal", "pneumonia"] and len(data.train) == 8
  image = np.asarray(Image.open(os.path.join(
      folder["images"], folder["good"][0]["path"])).convert("L"))
  resolved = train.resolve_config(config, data)  # HyperRule: 32 px crops.
  assert resolved.loss == "softmax_xent"
  out = preprocessing.preprocess(tf.constant(image[..., None]), resolved.data,
                                 train=False, rng=tf.zeros([2], tf.int64))
  assert out.shape == (32, 32, 3) and -1 <= float(tf.reduce_min(out))
  assert float(tf.reduce_max(out)) <= 1

  workdir = str(tmp_path / "run")
  _command("big_transfer_med.main", config_arg, f"--workdir={workdir}")
  with open(os.path.join(workdir, "results.json")) as f:
    summary = json.load(f)
  assert summary["primary_metric"] == "accuracy"
  assert summary["train_examples"] == 8 and summary["step"] == 3

  test_rows = [r for r in folder["good"] if r["split"] == "test"]
  listed = tmp_path / "test_images.txt"
  listed.write_text("\n".join(os.path.join(folder["images"], r["path"])
                              for r in test_rows + [{"path": "dicom/garbage.dcm"}]))
  _command("big_transfer_med.predict", f"--workdir={workdir}",
           f"--images={listed}", f"--out_csv={tmp_path}/preds.csv",
           f"--saliency_dir={tmp_path}/cams")
  with open(tmp_path / "preds.csv") as f:
    predictions = {r["path"]: r for r in csv.DictReader(f)}
  assert "not a readable DICOM" in predictions.pop(
      os.path.join(folder["images"], "dicom/garbage.dcm"))["error"]
  for row in test_rows:
    predicted = predictions[os.path.join(folder["images"], row["path"])]
    assert not predicted["error"]
    assert float(predicted["normal"]) + float(predicted["pneumonia"]) == (
        pytest.approx(1.0, abs=1e-4))
    stem = os.path.splitext(os.path.basename(row["path"]))[0]
    top = max(("normal", "pneumonia"), key=lambda c: float(predicted[c]))
    cam = np.load(tmp_path / "cams" / f"{stem}_{top}_cam.npy",
                  allow_pickle=False)
    size = xray_io.read_xray(os.path.join(folder["images"], row["path"])).shape
    assert cam.shape == size and np.isfinite(cam).any()
    assert Image.open(tmp_path / "cams" / f"{stem}_{top}_cam.png").size == (
        size[1], size[0])

  with open(tmp_path / "test_labels.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["path", "patient_id", "label"],
                            extrasaction="ignore")
    writer.writeheader()
    writer.writerows(dict(r, path=os.path.join(folder["images"], r["path"]))
                     for r in test_rows)
  _command("big_transfer_med.evaluate", f"--predictions={tmp_path}/preds.csv",
           f"--labels={tmp_path}/test_labels.csv",
           f"--out_dir={tmp_path}/report", "--bootstrap=200")
  with open(tmp_path / "report" / "metrics.csv") as f:
    metrics = {r["class"]: r for r in csv.DictReader(f)}
  assert set(metrics) >= {"normal", "pneumonia"}
  assert int(metrics["pneumonia"]["images"]) == len(test_rows) == 5
  summary_text = (tmp_path / "report" / "summary.txt").read_text()
  assert "     1  failed predictions (left out)" in summary_text
