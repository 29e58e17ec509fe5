"""Transfer targets: the Tuberculosis and COVIDx builders, PadChest-Cl,
the transfer config, and predict on the real RG1 radiograph."""
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from pydicom.data import get_testdata_file

from big_transfer_med import predict
from big_transfer_med import train
from input_pipeline import errors
from input_pipeline import labels as labels_lib
from input_pipeline import pipeline
from input_pipeline import xray_io
from input_pipeline.datasets import cxr_targets
from input_pipeline.datasets import fashion_mnist_local
from tests import fmnist_fixtures
from tests import test_main
from tests import tfds_testing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTDATA = os.path.join(REPO, "tests", "testdata")
TRANSFER = os.path.join(REPO, "configs", "transfer.py")


class CxrTuberculosisTest(tfds_testing.TfrecordFiles,
                          tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = cxr_targets.CxrTuberculosis
  BUILDER_CONFIG_NAMES_TO_TEST = ["default", "original"]
  EXAMPLE_DIR = os.path.join(TESTDATA, "cxr_tuberculosis")
  SPLITS = {"train": 7, "test": 3}  # 11 images, one truncated.


class CxrTuberculosisSeedSplitTest(CxrTuberculosisTest):
  # Per set int(0.85 N) train: Shenzhen 5 of 7, Montgomery 3 of 4; the
  # truncated Shenzhen image is skipped from its split.
  BUILDER_CONFIG_NAMES_TO_TEST = ["seed"]
  SPLITS = {"train": 8, "test": 2}


class CxrCovidxTest(tfds_testing.TfrecordFiles,
                    tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = cxr_targets.CxrCovidx
  EXAMPLE_DIR = os.path.join(TESTDATA, "cxr_covidx")
  SPLITS = {"train": 5, "test": 3}


def test_tuberculosis_labels_patients_and_grey_images(tiny_cxr_data_dir):
  builder = tfds.builder("cxr_tuberculosis", data_dir=tiny_cxr_data_dir)
  examples = [ex for split in ("train", "test")
              for ex in builder.as_data_source(split)]
  paths = [ex["source_path"].decode() for ex in examples]
  assert not any("CHNCXR_0004_0" in p for p in paths)  # Truncated: skipped.
  for ex, path in zip(examples, paths):
    assert ex["label"] == int(path[-5])  # _0 normal, _1 tuberculosis.
    assert ex["image"].shape[-1] == 1  # The RGB Shenzhen file too.
  assert {ex["source"] for ex in examples} == {b"shenzhen", b"montgomery"}
  train_ids = {ex["patient_id"] for ex in builder.as_data_source("train")}
  test_ids = {ex["patient_id"] for ex in builder.as_data_source("test")}
  assert not train_ids & test_ids


def test_covidx_bad_class_names_file_and_line(tmp_path):
  manual = tmp_path / "covidx"
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(os.path.join(TESTDATA, "cxr_covidx"), manual)
  with open(manual / "test.txt", "a") as f:
    f.write("p9 x.png COVID-19 sirm\n")
  builder = tfds.builder("cxr_covidx", data_dir=str(tmp_path / "tfds"))
  with pytest.raises(errors.DataError,
                     match=r"test.txt row 4: class 'COVID-19' is not one of"):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual)))


def test_padchest_cl_keeps_single_finding_images_as_softmax_classes(
    tiny_cxr_data_dir):
  config = test_main._parse(f"--config={TRANSFER}:target=padchest_cl,res=32",
                            f"--config.data.data_dir={tiny_cxr_data_dir}",
                            "--config.data.eval_split=train")
  data = pipeline.Pipeline(config.data)
  assert not data.multi_label and data.num_classes == 27
  assert config.loss == "softmax_xent" and config.primary_metric == "mean_auc"
  builder = tfds.builder("cxr_padchest", data_dir=tiny_cxr_data_dir)
  harmonizer = labels_lib.Harmonizer(builder.info.metadata["label_names"],
                                     "padchest27")
  frontal = [ex for ex in builder.as_data_source("train")
             if ex["view"] in (0, 1, 2)]
  single = [ex for ex in frontal
            if np.sum(harmonizer(ex["labels"])[0].numpy() > 0.5) == 1]
  assert 0 < len(single) < len(frontal)
  assert len(data.train) == len(single)
  batch = next(data.train_batches(config, 0))
  assert np.all(batch["labels"].sum(-1) == 1)  # One-hot.
  assert "label_mask" not in batch


def test_transfer_config_targets():
  for target in ("cifar10", "oxford_iiit_pet", "tuberculosis", "covidx",
                 "padchest_cl", "nih14", "chexpert5", "fmnist_5to9"):
    c = test_main._parse(f"--config={TRANSFER}:target={target},shots=5,seed=2")
    assert c.hyperrule and c.data.resolution is None  # The rule decides.
    assert c.data.examples_per_class == 5 and c.data.fewshot_seed == 2
    assert tuple(c.init.dont_load) == ("head/.*",)
    assert c.optim.weight_decay == 0 and c.optim.reference_batch_size == 512
  nih = test_main._parse(f"--config={TRANSFER}:target=nih14")
  assert nih.loss == "sigmoid_xent" and nih.data.label_set == "nih14"
  chexpert = test_main._parse(f"--config={TRANSFER}:target=chexpert5")
  assert labels_lib.label_set(chexpert.data.label_set) == (
      "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion")
  # config_flags re-raises get_config's ValueError as an absl flag error.
  with pytest.raises(Exception, match="target='imagenet' is not a valid choice"):
    test_main._parse(f"--config={TRANSFER}:target=imagenet")


def test_tfrecord_dataset_says_how_to_rebuild(tiny_fmnist_manual_dir, tmp_path):
  builder = tfds.builder("fashion_mnist_local", data_dir=str(tmp_path),
                         file_format="tfrecord")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=tiny_fmnist_manual_dir))
  config = fmnist_fixtures.tiny_config(str(tmp_path))
  with pytest.raises(pipeline.DatasetNotFoundError,
                     match="fashion_mnist_local --file_format=array_record"):
    pipeline.Pipeline(config.data)


@pytest.fixture(scope="module")
def chest_run(tiny_cxr_data_dir, tmp_path_factory):
  """A tiny multi-label fine-tuning run (CheXpert 5 findings, HyperRule)."""
  workdir = str(tmp_path_factory.mktemp("chexpert5") / "run")
  config = test_main._parse(
      f"--config={TRANSFER}:target=chexpert5,model=R26x1,res=32,resize=40,"
      f"steps=2,batch=2,data_dir={tiny_cxr_data_dir}")
  summary = train.train_and_evaluate(config, workdir)
  return workdir, summary


@pytest.mark.slow
def test_multi_label_fine_tuning_reports_auc(chest_run):
  workdir, summary = chest_run
  assert summary["primary_metric"] == "mean_auc"
  assert set(summary["metrics"]["per_class_auc"]) == set(
      labels_lib.label_set("chexpert5"))
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  # HyperRule: < 20k examples -> the 500-step schedule scaled to 2 steps.
  assert config["mixup_alpha"] == 0.0 and config["data"]["resize"] == 40


@pytest.mark.slow
def test_predict_on_real_rg1_dicom_and_its_png(chest_run, tmp_path):
  workdir, _ = chest_run
  dicom = get_testdata_file("RG1_UNCR.dcm")
  png = str(tmp_path / "rg1.png")
  Image.fromarray(np.round(xray_io.read_xray(dicom) * 65535).astype(
      np.uint16)).save(png)
  result = predict.predict(workdir, [dicom, png])
  names = list(labels_lib.label_set("chexpert5"))
  assert list(result[dicom]) == names
  assert all(0.0 < p < 1.0 for p in result[dicom].values())
  np.testing.assert_allclose([result[png][n] for n in names],
                             [result[dicom][n] for n in names], atol=1e-3)
  cli = subprocess.run(
      [sys.executable, "-m", "big_transfer_med.predict",
       f"--workdir={workdir}", dicom], cwd=REPO, capture_output=True,
      text=True, timeout=300)
  assert cli.returncode == 0, cli.stderr[-2000:]
  assert json.loads(cli.stdout) == {dicom: result[dicom]}



@pytest.mark.slow
def test_predict_a_folder_to_csv_naming_each_bad_file(chest_run, tmp_path):
  """--images=DIR --out_csv: every image under the folder, one row each; a
  missing, garbage, truncated or MR file gets its error on its row and the
  rest go on; --checkpoint picks a step; a step the run lacks, and a
  labels.json that does not fit the checkpoint, stop with one line before
  any image is read, leaving the CSV already written alone."""
  import pydicom  # pylint: disable=g-import-not-at-top
  workdir, _ = chest_run
  images = tmp_path / "images"
  (images / "sub").mkdir(parents=True)
  dicom = get_testdata_file("RG1_UNCR.dcm")
  shutil.copy(dicom, images / "sub" / "rg1.dcm")
  mr = pydicom.dcmread(dicom)
  mr.Modality = "MR"
  mr.save_as(images / "mr.dcm")
  (images / "garbage.dcm").write_bytes(b"not a DICOM file" * 10)
  png = xray_io.read_xray(dicom)
  Image.fromarray(np.round(png * 255).astype(np.uint8)).save(images / "a.png")
  (images / "cut.png").write_bytes((images / "a.png").read_bytes()[:200])
  (images / "notes.txt").write_text("not an image")
  command = [sys.executable, "-m", "big_transfer_med.predict",
             f"--workdir={workdir}", "--images=images", "--out_csv=preds.csv",
             "--checkpoint=2", "--batch_size=2"]
  result = subprocess.run(command, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=dict(
                              os.environ, PYTHONPATH=REPO))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "2 predicted, 3 with an error" in result.stdout
  with open(tmp_path / "preds.csv") as f:
    rows = {r["path"]: r for r in csv.DictReader(f)}
  names = list(labels_lib.label_set("chexpert5"))
  assert sorted(rows) == ["a.png", "cut.png", "garbage.dcm", "mr.dcm",
                          "sub/rg1.dcm"]
  assert "not a readable DICOM file" in rows["garbage.dcm"]["error"]
  assert "cannot decode image" in rows["cut.png"]["error"]
  assert ("not a radiograph (DICOM Modality MR; expected one of CR, DX, RG)"
          in rows["mr.dcm"]["error"])
  expected = predict.predict(workdir, [dicom], checkpoint="2")[dicom]
  for name in names:
    assert float(rows["sub/rg1.dcm"][name]) == pytest.approx(
        expected[name], abs=1e-6)
    assert rows["garbage.dcm"][name] == ""
  assert rows["sub/rg1.dcm"]["error"] == rows["a.png"]["error"] == ""
  assert float(rows["a.png"][names[0]]) == pytest.approx(
      expected[names[0]], abs=2e-3)  # The same image, 8 bits.
  written = (tmp_path / "preds.csv").read_bytes()

  result = subprocess.run(command[:-2] + ["--checkpoint=7"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=REPO))
  checkpoints = os.path.join(workdir, "checkpoints")
  steps = sorted(int(d) for d in os.listdir(checkpoints) if d.isdigit())
  assert 2 in steps and 7 not in steps
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"ERROR: {workdir}:7: no checkpoint of step 7 in {checkpoints}; it "
      f"holds steps {steps}."]
  other = tmp_path / "other_run"
  shutil.copytree(workdir, other)
  with open(other / "labels.json") as f:
    labels = json.load(f)
  labels["label_names"].append("Pneumothorax")
  with open(other / "labels.json", "w") as f:
    json.dump(labels, f)
  result = subprocess.run(command[:3] + [
      f"--workdir={other}", "--images=images", "--out_csv=preds.csv"],
      cwd=tmp_path, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=REPO))
  assert result.returncode == 2
  line = result.stderr.strip().splitlines()[-1]  # After "Read the ...".
  assert result.stderr.count("ERROR") == 1 and line.startswith("ERROR: ")
  assert "labels.json and the checkpoint are not of the same run" in line
  assert "['params']['head']['bias'] is (5,)" in line
  assert "(6 classes)" in line
  assert (tmp_path / "preds.csv").read_bytes() == written
  result = subprocess.run(command[:4] + [str(tmp_path / "nope.dcm")],
                          cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=REPO))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "nope.dcm: no such file" in json.loads(result.stdout)[
      str(tmp_path / "nope.dcm")]["error"]


@pytest.mark.slow
def test_predict_tells_apart_the_classes_a_run_learned(tiny_fmnist_data_dir,
                                                       tmp_path):
  """A model trained on two clearly different image classes (a bright square
  at the top or in the middle; flips keep the row) scores fresh PNGs of each
  class clearly apart."""
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(fmnist_fixtures.tiny_config(
      tiny_fmnist_data_dir, total_steps=12, batch_size=16,
      **{"data.classes": (0, 4)}), workdir)
  labels = np.array([0, 4, 0, 4])
  paths = []
  for i, image in enumerate(fmnist_fixtures.make_images(labels, seed=7)):
    paths.append(str(tmp_path / f"image{i}.png"))
    Image.fromarray(image).save(paths[-1])
  result = predict.predict(workdir, paths)
  first = fashion_mnist_local.CLASS_NAMES[0]
  p_first = np.array([result[p][first] for p in paths])
  assert all(set(result[p]) == {first, fashion_mnist_local.CLASS_NAMES[4]}
             for p in paths)
  assert np.all(p_first[labels == 0] > 0.75), p_first
  assert np.all(p_first[labels == 4] < 0.25), p_first


def _tb_examples(manual_dir, data_dir):
  builder = tfds.builder("cxr_tuberculosis", data_dir=str(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir)))
  return {split: sorted((ex["patient_id"], ex["label"], ex["image"].tobytes())
                        for ex in builder.as_data_source(split))
          for split in builder.info.splits}


def test_tuberculosis_kaggle_layout_and_a_missing_set(tmp_path, caplog):
  """Kaggle's copy (ChinaSet_AllFiles/ChinaSet_AllFiles/CXR_png,
  Montgomery/MontgomerySet/CXR_png; the seed's) builds the same dataset as
  the NLM layout; a manual_dir holding one set says the other is missing."""
  import shutil  # pylint: disable=g-import-not-at-top
  source = os.path.join(TESTDATA, "cxr_tuberculosis")
  kaggle = tmp_path / "kaggle"
  shutil.copytree(os.path.join(source, "ChinaSet_AllFiles"),
                  kaggle / "ChinaSet_AllFiles" / "ChinaSet_AllFiles")
  shutil.copytree(os.path.join(source, "MontgomerySet"),
                  kaggle / "Montgomery" / "MontgomerySet")
  assert (_tb_examples(kaggle, tmp_path / "a") ==
          _tb_examples(source, tmp_path / "b"))
  only_montgomery = tmp_path / "montgomery"
  shutil.copytree(os.path.join(source, "MontgomerySet"),
                  only_montgomery / "MontgomerySet")
  with caplog.at_level("WARNING"):
    examples = _tb_examples(only_montgomery, tmp_path / "c")
  assert all(p.startswith(b"MCUCXR") for rows in examples.values()
             for p, _, _ in rows)
  assert any("only montgomery found; shenzhen (ChinaSet_AllFiles/CXR_png or "
             "ChinaSet_AllFiles/ChinaSet_AllFiles/CXR_png) is not there"
             in r.getMessage() for r in caplog.records), caplog.text


def test_tuberculosis_seed_split_is_the_seed_codes(tmp_path):
  """cxr_tuberculosis/seed: per set, the seed's tuberculosis.py split
  (sorted(glob('*.png')), RandomState(42).shuffle of the list, the first
  int(0.85 N) train), recomputed here as the seed code does it."""
  import glob  # pylint: disable=g-import-not-at-top
  source = os.path.join(TESTDATA, "cxr_tuberculosis")
  builder = tfds.builder("cxr_tuberculosis/seed", data_dir=str(tmp_path))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=source))
  expected = {"train": set(), "test": set()}
  for folder in ("ChinaSet_AllFiles/CXR_png", "MontgomerySet/CXR_png"):
    files = sorted(glob.glob(os.path.join(source, folder, "*.png")))
    np.random.RandomState(42).shuffle(files)
    cut = int(len(files) * 0.85)
    expected["train"] |= {os.path.basename(f) for f in files[:cut]}
    expected["test"] |= {os.path.basename(f) for f in files[cut:]}
  for split in ("train", "test"):
    built = {os.path.basename(ex["source_path"].decode())
             for ex in builder.as_data_source(split)}
    # The truncated CHNCXR_0004_0.png is split like the others, then skipped.
    assert built == expected[split] - {"CHNCXR_0004_0.png"}, split
