"""Chest X-ray TFDS builders on tiny folders in the publishers' exact layouts."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath

from input_pipeline import errors
from input_pipeline import labels as labels_lib
from input_pipeline import pipeline
from input_pipeline.datasets import cxr_chexpert
from input_pipeline.datasets import cxr_common
from input_pipeline.datasets import cxr_mimic
from input_pipeline.datasets import cxr_nih14
from input_pipeline.datasets import cxr_padchest
from tests import tfds_testing
from tests.test_main import REPO

TESTDATA = os.path.join(os.path.dirname(__file__), "testdata")


class CxrChexpertTest(tfds_testing.TfrecordFiles,
                      tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = cxr_chexpert.CxrChexpert
  EXAMPLE_DIR = os.path.join(TESTDATA, "cxr_chexpert")
  SPLITS = {"train": 5, "validation": 2}  # 6 rows, one image missing.


class CxrNih14Test(tfds_testing.TfrecordFiles,
                   tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = cxr_nih14.CxrNih14
  EXAMPLE_DIR = os.path.join(TESTDATA, "cxr_nih14")
  SPLITS = {"train": 5, "validation": 1, "test": 2}


class CxrMimicTest(tfds_testing.TfrecordFiles,
                   tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = cxr_mimic.CxrMimic
  EXAMPLE_DIR = os.path.join(TESTDATA, "cxr_mimic")
  SPLITS = {"train": 4, "validation": 1, "test": 2}


class CxrPadchestTest(tfds_testing.TfrecordFiles,
                      tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = cxr_padchest.CxrPadchest
  EXAMPLE_DIR = os.path.join(TESTDATA, "cxr_padchest")
  # 10 rows: one null-label row and one EXCLUDE row dropped, one file missing.
  SPLITS = {"train": 5, "validation": 1, "test": 1}


def _build(name, manual_dir, data_dir):
  builder = tfds.builder(name, data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


@pytest.mark.parametrize(
    "name", ["cxr_chexpert", "cxr_nih14", "cxr_mimic", "cxr_padchest"])
def test_splits_are_patient_disjoint(name, tmp_path):
  builder = _build(name, os.path.join(TESTDATA, name), tmp_path)
  patients = {split: {ex["patient_id"] for ex in builder.as_data_source(split)}
              for split in builder.info.splits}
  splits = list(patients)
  for i, a in enumerate(splits):
    for b in splits[i + 1:]:
      assert not patients[a] & patients[b], (a, b)
  assert builder.info.metadata["label_names"] == list(builder.LABEL_NAMES)


def test_default_config_downscales_original_keeps_bytes(tmp_path):
  manual = os.path.join(TESTDATA, "cxr_chexpert")
  big = "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"
  shapes = {}
  for config in ("default", "original"):
    builder = _build(f"cxr_chexpert/{config}", manual, tmp_path / config)
    decoded = {ex["source_path"].decode(): ex
               for ex in builder.as_data_source("train")}
    shapes[config] = decoded[big]["image"].shape
    raw = builder.as_data_source(
        "train", decoders={"image": tfds.decode.SkipDecoding()})
    stored = {ex["source_path"].decode(): ex["image"] for ex in raw}[big]
    if config == "original":
      with open(os.path.join(manual, big), "rb") as f:
        assert stored == f.read()
  assert shapes == {"default": (541, 512, 1), "original": (560, 530, 1)}
  first = decoded[big]
  assert first["view"] == 1 and first["sex"].decode() == "Female"  # AP.
  np.testing.assert_array_equal(
      np.isnan(first["labels"]),
      [False] + [True] * 8 + [False] + [True] * 3 + [False])


def test_jpeg_config_stores_the_default_images_as_jpeg(tmp_path):
  manual = os.path.join(TESTDATA, "cxr_chexpert")
  images = {}
  for config in ("default", "jpeg"):
    builder = _build(f"cxr_chexpert/{config}", manual, tmp_path)
    raw = builder.as_data_source(
        "train", decoders={"image": tfds.decode.SkipDecoding()})
    stored = {ex["source_path"]: ex["image"] for ex in raw}
    magic = b"\xff\xd8\xff" if config == "jpeg" else b"\x89PNG"
    assert all(b.startswith(magic) for b in stored.values()), config
    images[config] = {ex["source_path"]: ex["image"].astype(np.float32)
                      for ex in builder.as_data_source("train")}
  assert images["jpeg"].keys() == images["default"].keys()
  for path, image in images["default"].items():
    assert images["jpeg"][path].shape == image.shape
    # Quality 95 on these noisy synthetic images: a few grey levels.
    assert np.abs(images["jpeg"][path] - image).mean() < 3, path
  with pytest.raises(pipeline.DatasetNotFoundError,
                     match=r"cxr_padchest has no builder config 'jpeg'.*"
                           r"\['default', 'original'\]"):
    pipeline.load_builder("cxr_padchest/jpeg", str(tmp_path))


def _copy(name, tmp_path):
  target = tmp_path / "manual"
  shutil.copytree(os.path.join(TESTDATA, name), target)
  return target


def test_corrupt_image_is_skipped_or_fatal_when_strict(tmp_path):
  manual = _copy("cxr_nih14", tmp_path)
  victim = manual / "images_002" / "images" / "00000005_000.png"
  victim.write_bytes(victim.read_bytes()[:60])  # Truncated PNG.
  builder = _build("cxr_nih14", manual, tmp_path / "lenient")
  assert sum(s.num_examples for s in builder.info.splits.values()) == 7
  strict = tfds.builder(
      "cxr_nih14", data_dir=str(tmp_path / "strict"),
      config=cxr_common.CxrConfig(name="strict", strict_images=True))
  with pytest.raises(errors.DataError, match="00000005_000.png: cannot decode"):
    strict.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual)))
  assert not os.path.exists(tmp_path / "strict" / "cxr_nih14" / "default" / "1.0.0")


def test_missing_column_names_the_file(tmp_path):
  manual = _copy("cxr_chexpert", tmp_path)
  csv_path = manual / "CheXpert-v1.0-small" / "valid.csv"
  lines = csv_path.read_text().splitlines()
  csv_path.write_text("\n".join([lines[0].replace(",Edema,", ",Oedema,")] +
                                lines[1:]) + "\n")
  with pytest.raises(errors.DataError,
                     match=r"valid.csv: missing columns \['Edema'\]"):
    _build("cxr_chexpert", manual, tmp_path / "tfds")


def test_wrong_manual_dir_says_what_to_put_where(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(errors.DataError) as e:
    _build("cxr_nih14", tmp_path / "empty", tmp_path / "tfds")
  message = str(e.value)
  assert f"{tmp_path / 'empty'} does not exist or is empty" in message
  assert "Data_Entry_2017_v2020.csv" in message
  assert "images_001/images/00000001_000.png" in message
  (tmp_path / "empty" / "test_list.txt").write_text("x.png\n")
  with pytest.raises(errors.DataError,
                     match="missing Data_Entry_2017_v2020.csv"):
    _build("cxr_nih14", tmp_path / "empty", tmp_path / "tfds")


def test_tfds_build_without_the_files_is_an_error_line_and_leaves_nothing(
    tmp_path):
  """As typed: TFDS's own command line, our builder, a wrong manual_dir."""
  data_dir = tmp_path / "tfds"
  data_dir.mkdir()
  (data_dir / "cxr_nih14_kept.txt").write_text("a user's file")
  result = subprocess.run(
      [sys.executable, "-m", "tensorflow_datasets.scripts.cli.main", "build",
       "--imports=input_pipeline.datasets", "cxr_chexpert",
       f"--manual_dir={tmp_path / 'nowhere'}", f"--data_dir={data_dir}"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=REPO))
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  errors_lines = [l for l in result.stderr.splitlines()
                  if l.startswith("ERROR: ")]
  assert len(errors_lines) == 1 and "nowhere" in errors_lines[0]
  assert "CheXpert-v1.0-small/train.csv" in result.stderr  # What to put.
  assert sorted(os.listdir(data_dir)) == ["cxr_nih14_kept.txt"]


def test_labels_match_rows(tmp_path):
  builder = _build("cxr_nih14", os.path.join(TESTDATA, "cxr_nih14"), tmp_path)
  test = {ex["source_path"].decode(): ex["labels"]
          for ex in builder.as_data_source("test")}
  expected = np.zeros(14, np.float32)
  expected[labels_lib.NIH_LABELS.index("Hernia")] = 1
  expected[labels_lib.NIH_LABELS.index("Pleural_Thickening")] = 1
  np.testing.assert_array_equal(test["00000003_001.png"], expected)


def test_padchest_keeps_16_bits_and_mimic_study_labels(tmp_path):
  padchest = _build("cxr_padchest", os.path.join(TESTDATA, "cxr_padchest"),
                    tmp_path / "padchest")
  raw = padchest.as_data_source(
      "train", decoders={"image": tfds.decode.SkipDecoding()})
  image_feature = padchest.info.features["image"]
  decoded = image_feature.decode_example(next(iter(raw))["image"]).numpy()
  assert decoded.dtype == np.uint16 and decoded.max() > 255
  mimic = _build("cxr_mimic", os.path.join(TESTDATA, "cxr_mimic"),
                 tmp_path / "mimic")
  train = {ex["source_path"].decode(): ex for ex in mimic.as_data_source("train")}
  pa = train["files/p10/p10000032/s50414267/"
             "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg"]
  lateral = train["files/p10/p10000032/s50414267/"
                  "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962.jpg"]
  np.testing.assert_array_equal(pa["labels"], lateral["labels"])  # Per study.
  assert pa["view"] == 0 and lateral["view"] == 3  # PA, LATERAL.
  test = list(mimic.as_data_source("test"))
  unlabeled = [ex for ex in test if ex["study_id"] == b"54684191"]
  assert np.all(np.isnan(unlabeled[0]["labels"]))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cxr_padchest", "cxr_mimic"])
def test_beam_build_gives_the_plain_build(name, tmp_path):
  """The Beam path (as on Dataflow / Spark / Flink), here on Beam's
  DirectRunner with 2 worker processes: the same examples, in the same order
  (PadChest includes a known-missing file, skipped on a worker)."""
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  plain = _build(name, os.path.join(TESTDATA, name), tmp_path / "plain")
  beam_built = tfds.builder(name, data_dir=str(tmp_path / "beam"))
  beam_built.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=os.path.join(TESTDATA, name),
      # FnApiRunner: Beam's DirectRunner would first try to download Prism.
      beam_options=pipeline_options.PipelineOptions([
          "--runner=FnApiRunner", "--direct_running_mode=multi_processing",
          "--direct_num_workers=2"])))
  assert beam_built.info.file_format.value == "array_record"
  assert ({k: v.num_examples for k, v in beam_built.info.splits.items()} ==
          {k: v.num_examples for k, v in plain.info.splits.items()})
  for split in plain.info.splits:
    a = list(plain.as_data_source(split))
    b = list(beam_built.as_data_source(split))
    assert [r["source_path"] for r in a] == [r["source_path"] for r in b]
    for x, y in zip(a, b):
      assert x.keys() == y.keys()
      for key in x:
        np.testing.assert_array_equal(x[key], y[key], err_msg=f"{split} {key}")


def _all_examples(builder):
  return {split: [(ex["source_path"], ex["image"].tobytes(),
                   ex["labels"].tobytes()) for ex in builder.as_data_source(split)]
          for split in builder.info.splits}


def test_padchest_from_one_flat_folder_is_the_same_dataset(tmp_path):
  """The seed's layout (every archive unzipped into one folder:
  <root>/<ImageID>) builds exactly the dataset of <ImageDir>/<ImageID>."""
  source = os.path.join(TESTDATA, "cxr_padchest")
  flat = tmp_path / "flat"
  flat.mkdir()
  for entry in os.listdir(source):
    path = os.path.join(source, entry)
    if os.path.isdir(path):
      for name in os.listdir(path):
        shutil.copy(os.path.join(path, name), flat / name)
    else:
      shutil.copy(path, flat / entry)
  nested = _build("cxr_padchest", source, tmp_path / "nested")
  from_flat = _build("cxr_padchest", flat, tmp_path / "from_flat")
  assert _all_examples(from_flat) == _all_examples(nested)


def test_a_layout_without_any_listed_image_fails_naming_it(tmp_path):
  """The CSV found but no image where the layout puts them: the build stops
  naming the layout it expected and what it found, writing nothing."""
  manual = tmp_path / "padchest"
  manual.mkdir()
  source = os.path.join(TESTDATA, "cxr_padchest")
  csv_name = next(n for n in os.listdir(source) if n.endswith((".csv", ".gz")))
  shutil.copy(os.path.join(source, csv_name), manual / csv_name)
  (manual / "images").mkdir()  # Unzipped somewhere else.
  with pytest.raises(errors.DataError,
                     match=r"expected <ImageDir>/<ImageID> \(numbered folders\)"
                           r" or <ImageID> \(one flat folder\).*holds \[.*"
                           r"'images'"):
    _build("cxr_padchest", manual, tmp_path / "tfds")
  # No dataset version was written (TFDS leaves only empty folders).
  assert not os.path.exists(tmp_path / "tfds" / "cxr_padchest" / "default" /
                            "1.0.0")


def test_seed_padchest_builder_is_the_seed_selection(tmp_path):
  """cxr_padchest_seed holds exactly the rows cxr_padchest.seed_selection
  keeps of the CSV, in its two splits, with the seed's substring labels
  (the selection itself is checked on the real CSV in test_cxr_labels)."""
  source = os.path.join(TESTDATA, "cxr_padchest")
  builder = _build("cxr_padchest_seed", source, tmp_path)
  csv_path = epath.Path(source, cxr_padchest.CSV_NAME)
  selected = cxr_padchest.seed_selection(
      r for _, r in cxr_padchest.read_csv(csv_path))
  for ours, theirs in (("train", "train"), ("validation", "test")):
    built = {ex["source_path"].decode(): ex["labels"]
             for ex in builder.as_data_source(ours)}
    expected = {f"{int(r['ImageDir'])}/{r['ImageID']}": r["seed_labels"]
                for r in selected[theirs]}
    readable = {k: v for k, v in expected.items()
                if os.path.exists(os.path.join(source, k))
                and os.path.getsize(os.path.join(source, k)) > 100}
    assert set(built) <= set(expected) and set(readable) <= set(built)
    for key, labels in built.items():
      np.testing.assert_array_equal(labels, expected[key])
