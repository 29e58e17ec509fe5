"""Multi-source chest X-ray pipeline: harmonised labels, masks, views, mixing."""
import json
import os

import numpy as np
import pytest

from input_pipeline import errors
from input_pipeline import labels as labels_lib
from input_pipeline import pipeline
from tests import test_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHEST = os.path.join(REPO, "configs", "r50x1_chest.py")


def _config(data_dir, arg):
  c = test_main._parse(f"--config={CHEST}:{arg}")
  c.data.data_dir = data_dir
  c.data.resolution = 32
  c.batch_size = 4
  return c


def test_two_source_union_shapes_and_masks(tiny_cxr_data_dir):
  config = _config(tiny_cxr_data_dir, "sources=chexpert+nih14,label_set=union")
  data = pipeline.Pipeline(config.data, num_local_devices=2)
  assert data.multi_label and data.label_names == list(labels_lib.CANONICAL)
  # Frontal only: CheXpert train has 4 frontal of 5, NIH train 5 of 5.
  assert list(data.train.sizes) == [4, 5]
  union = labels_lib.CANONICAL
  batches = [next(data.train_batches(config, step)) for step in range(3)]
  for batch in batches:
    assert batch["image"].shape == (2, 2, 32, 32, 3)
    assert batch["labels"].shape == batch["label_mask"].shape == (2, 2, len(union))
    assert np.all(np.isfinite(batch["labels"]))
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
  masks = np.concatenate([b["label_mask"].reshape(-1, len(union))
                          for b in batches])
  annotated = masks.sum(0) > 0
  # Nobody annotates PadChest-only findings; NIH's Emphysema only NIH.
  assert not annotated[union.index("Scoliosis")]
  nih_only = union.index("Emphysema")
  chexpert_only = union.index("Lung Opacity")
  for row in masks:
    # A row is either from CheXpert (no Emphysema) or NIH (no Lung Opacity).
    assert not (row[nih_only] and row[chexpert_only])
  # Every NIH row has all 14 of its findings unmasked (0/1, never missing).
  nih_rows = masks[masks[:, nih_only] > 0]
  assert len(nih_rows) and np.all(nih_rows.sum(1) == 14)


def test_eval_counts_each_example_once_and_views_filter(tiny_cxr_data_dir):
  config = _config(tiny_cxr_data_dir, "sources=chexpert+mimic+nih14+padchest")
  data = pipeline.Pipeline(config.data, num_local_devices=2)
  # Validation frontal views: CheXpert 1 (one lateral), MIMIC 1, NIH 1, PadChest 1.
  assert len(data.eval) == 4
  seen = sum(b["mask"].sum() for b in data.ordered_batches(config))
  assert seen == 4
  config.data.views = ("PA", "AP", "AP_SUPINE", "LATERAL", "OTHER")
  assert len(pipeline.Pipeline(config.data).eval) == 5


def test_weighted_mixing_is_deterministic_and_follows_weights():
  sizes = np.array([10, 1000])
  positions = np.arange(4000)
  a = pipeline.weighted_indices(positions, sizes, (3, 1), seed=0)
  b = pipeline.weighted_indices(positions[2000:], sizes, (3, 1), seed=0)
  np.testing.assert_array_equal(a[2000:], b)  # Resumable anywhere.
  share = np.mean(a < 10)
  assert abs(share - 0.75) < 0.03


def test_cxr_augmentation_is_seeded(tiny_cxr_data_dir):
  config = _config(tiny_cxr_data_dir, "sources=nih14")
  data = pipeline.Pipeline(config.data)
  first = next(data.train_batches(config, 0))["image"]
  again = next(data.train_batches(config, 0))["image"]
  np.testing.assert_array_equal(first, again)
  config.seed = 1
  other = next(pipeline.Pipeline(config.data).train_batches(config, 0))["image"]
  assert not np.array_equal(first, other)


@pytest.mark.slow
def test_main_runs_chest_config_on_dummy_data(tiny_cxr_data_dir, tmp_path):
  workdir = tmp_path / "run"
  result = test_main._run_main(
      f"--config={CHEST}:model=R26x1,res=32", f"--workdir={workdir}",
      f"--config.data.data_dir={tiny_cxr_data_dir}",
      "--config.batch_size=4", "--config.total_epochs=0",
      "--config.total_steps=3", "--config.schedule.warmup_epochs=0",
      "--config.schedule.decay_epochs=()", "--config.log_every_steps=1")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "step 3/3" in result.stderr
  assert (workdir / "results.json").exists()


def test_chest_config_arguments():
  default = test_main._parse(f"--config={CHEST}")
  assert default.data.sources == ("chexpert", "mimic", "nih14", "padchest")
  assert default.data.label_set == "common7" and default.loss == "sigmoid_xent"
  assert default.model.name == "R50x1" and default.total_epochs == 90
  assert tuple(default.schedule.decay_epochs) == (30, 60, 80)
  one = test_main._parse(f"--config={CHEST}:sources=nih14")
  assert one.data.label_set == "nih14"
  big = test_main._parse(
      f"--config={os.path.join(REPO, 'configs', 'r152x4_chest.py')}:"
      "sources=chexpert+mimic,label_set=union,views=all")
  assert big.model.name == "R152x4"
  assert big.data.sources == ("chexpert", "mimic")
  assert big.data.label_set == "union" and "LATERAL" in big.data.views


@pytest.mark.slow
def test_main_runs_the_seed_recipe_on_four_sources(tiny_cxr_data_dir,
                                                   tmp_path):
  """recipe=seed end to end: the seed's PadChest builder in the mix, all its
  views, 'No Finding' negating everything, mirrored borders, warmup from
  lr/K, decay on every parameter, its AGC rule; the best validation loss
  kept in best/."""
  workdir = tmp_path / "run"
  result = test_main._run_main(
      f"--config={CHEST}:recipe=seed,model=R26x1,res=32",
      f"--workdir={workdir}", f"--config.data.data_dir={tiny_cxr_data_dir}",
      "--config.batch_size=4", "--config.total_epochs=0",
      "--config.total_steps=2", "--config.schedule.warmup_epochs=0",
      "--config.schedule.warmup_steps=1", "--config.schedule.decay_epochs=()",
      "--config.log_every_steps=1")
  assert result.returncode == 0, result.stderr[-3000:]
  with open(workdir / "results.json") as f:
    results = json.load(f)
  assert results["recipe"] == "seed"
  assert results["data"] == "chexpert+mimic+nih14+padchest_seed"
  assert results["label_set"] == "common7"
  assert results["best_checkpoint"]["step"] == 2
  assert os.listdir(workdir / "best") == ["2"]


def test_class_balanced_sampling_needs_single_label_data(tiny_cxr_data_dir):
  config = _config(tiny_cxr_data_dir, "sources=nih14")
  config.data.class_balanced = True
  data = pipeline.Pipeline(config.data)
  with pytest.raises(errors.ConfigError, match="class_balanced=True needs "
                                               "single-label data"):
    data.train_batches(config, 0)
