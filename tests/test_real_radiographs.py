"""The chest X-ray path on real radiographs: the 16 Kermany et al. 2018
images from a PyPI wheel (tests/kermany_radiographs.py) in the released
layout, built by `cxr_pneumonia`, preprocessed, fine-tuned on and predicted."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from big_transfer_med import train
from input_pipeline import errors
from input_pipeline import pipeline
from input_pipeline import preprocessing
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


@pytest.mark.slow
@pytest.mark.usefixtures("compilation_cache_for_commands")
def test_fine_tune_and_predict_on_real_radiographs(kermany, tmp_path):
  """Evaluation preprocessing of a real image (32 px, 3 channels, [-1, 1]),
  then, as a user types them, a HyperRule fine-tuning run of the transfer
  config on the real images and predict on the real JPEG files."""
  _, written, data_dir = kermany
  config_arg = (f"--config={TRANSFER}:target=pneumonia,model=R26x1,res=32,"
                f"resize=40,steps=3,batch=4,data_dir={data_dir}")
  config = test_main._parse(config_arg)
  data = pipeline.Pipeline(config.data)
  assert data.label_names == ["normal", "pneumonia"] and len(data.train) == 8
  image = np.asarray(Image.open(written["test"][0]).convert("L"))
  resolved = train.resolve_config(config, data)  # HyperRule: 32 px crops.
  out = preprocessing.preprocess(tf.constant(image[..., None]), resolved.data,
                                 train=False, rng=tf.zeros([2], tf.int64))
  assert out.shape == (32, 32, 3) and -1 <= float(tf.reduce_min(out))
  assert float(tf.reduce_max(out)) <= 1
  # In fresh processes: a test worker that has compiled many programs has
  # crashed inside XLA:CPU compiling this one (alone it never has).
  workdir = str(tmp_path / "run")
  result = test_main._run_main(config_arg, f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, "results.json")) as f:
    summary = json.load(f)
  assert summary["primary_metric"] == "accuracy"
  assert summary["train_examples"] == 8 and summary["step"] == 3
  result = subprocess.run(
      [sys.executable, "-m", "big_transfer_med.predict", f"--workdir={workdir}",
       *written["test"]], cwd=REPO, capture_output=True, text=True,
      env=dict(os.environ, PYTHONPATH=REPO), timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  predictions = json.loads(result.stdout)
  assert sorted(predictions) == sorted(written["test"])
  for probabilities in predictions.values():
    assert set(probabilities) == {"normal", "pneumonia"}
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-4)
