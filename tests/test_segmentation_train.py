"""Segmentation through the one trainer: U-Nets on a BiT and a torchvision
encoder train on the Montgomery and SIIM-ACR layouts (built by our TFDS
builders), report Dice, resume bit for bit, draw few-shot images by seed,
and predict writes masks and an overlay."""
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from big_transfer_med import config_lib
from big_transfer_med import predict
from big_transfer_med import run_dir
from big_transfer_med import train
from input_pipeline import errors
from input_pipeline import pipeline
from tests import fmnist_fixtures

TRANSFER = os.path.join(os.path.dirname(__file__), "..", "configs",
                        "transfer.py")


def _config(arg: str, **overrides):
  return fmnist_fixtures.override(
      config_lib.load_config_file(f"{TRANSFER}:{arg}"), **overrides)


def _dice(a, b):
  return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.slow
def test_bit_unet_learns_lungs_and_predict_draws_them(montgomery_data_dir,
                                                      tmp_path):
  """R26x1 U-Net, BiT-HyperRule recipe, 30 steps on 32 generated
  radiographs with real lung masks: Dice on the 4 test images well above
  what predicting the whole image would give (~0.5), metrics per class in
  results.json; predict writes each mask at the file's size, close to the
  true one, and an RGB overlay."""
  data_dir, manual = montgomery_data_dir
  config = _config(f"target=montgomery_lungs,model=R26x1,res=64,batch=8,"
                   f"steps=30,lr=1.0,data_dir={data_dir},eval_split=test")
  workdir = str(tmp_path / "run")
  summary = train.train_and_evaluate(config, workdir)
  assert summary["task"] == "segmentation"
  assert summary["primary_metric"] == "dice"
  metrics = summary["metrics"]
  assert metrics["images"] == 4 and metrics["dice"] == metrics["dice/lung"]
  assert metrics["dice"] > 0.7 and metrics["iou"] > 0.5
  assert metrics["iou"] < metrics["dice"]
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["metrics"]["dice"] == metrics["dice"]

  name = "MCUCXR_0001_0.png"
  png = os.path.join(manual, "MontgomerySet", "CXR_png", name)
  out = predict.predict(workdir, [png], str(tmp_path / "predictions"))[png]
  mask = np.asarray(Image.open(out["masks"]["lung"]))
  assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
  truth = sum(np.asarray(Image.open(os.path.join(
      manual, "MontgomerySet", "ManualMask", side, name))) > 0
              for side in ("leftMask", "rightMask")) > 0
  assert _dice(mask > 0, truth) > 0.6
  assert out["area"]["lung"] == pytest.approx((mask > 0).mean(), abs=1e-6)
  overlay = np.asarray(Image.open(out["overlay"]))
  assert overlay.shape == (64, 64, 3)
  # Tinted where the mask is, grey elsewhere.
  assert np.all(overlay[mask == 0][:, 0] == overlay[mask == 0][:, 1])
  assert np.any(overlay[mask > 0][:, 0] != overlay[mask > 0][:, 1])


def _checkpoint(workdir):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  return manager.restore(manager.latest_step())


@pytest.mark.slow
def test_resnet_unet_few_shot_siim_resumes_bit_for_bit(siim_data_dir,
                                                       tmp_path,
                                                       preempt_after_step_1):
  """resnet18 U-Net (BatchNorm) on SIIM-ACR's layout, 2 images with a
  pneumothorax and 2 without (shots=2, drawn by the seed and written to the
  workdir); resumed after step 1 it ends where the uninterrupted run ends,
  parameters and running averages alike; Dice is reported."""
  def config(steps):
    return _config(f"target=siim_pneumothorax,model=resnet18,res=32,batch=4,"
                   f"steps={steps},shots=2,seed=1,data_dir={siim_data_dir},"
                   "eval_split=validation", **{"optim.base_lr": 0.5})
  whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
  summary = train.train_and_evaluate(config(3), whole)
  preempt_after_step_1(lambda: train.train_and_evaluate(config(3), parts))
  train.train_and_evaluate(config(3), parts)
  a, b = _checkpoint(whole), _checkpoint(parts)
  jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])
  jax.tree.map(np.testing.assert_array_equal, a["model_state"],
               b["model_state"])
  assert summary["train_examples"] == 4
  with open(os.path.join(whole, run_dir.FEWSHOT_FILE)) as f:
    chosen = json.load(f)
  assert chosen["positives_per_label"] == {"pneumothorax": 2}
  assert len(chosen["ids"]) == 4
  assert 0.0 <= summary["metrics"]["dice"] <= 1.0
  assert summary["metrics"]["images"] == 2


def test_segmentation_settings_that_do_not_fit_fail_in_one_line(
    montgomery_data_dir, tiny_fmnist_data_dir, tmp_path):
  data_dir, _ = montgomery_data_dir
  base = (f"target=montgomery_lungs,model=R26x1,res=64,batch=8,steps=1,"
          f"data_dir={data_dir}")
  with pytest.raises(errors.ConfigError, match=r"config.loss='softmax_xent' "
                     r"does not fit segmentation"):
    train.train_and_evaluate(_config(base, loss="softmax_xent"),
                             str(tmp_path / "a"))
  with pytest.raises(errors.ConfigError, match=r"config.task='classification' "
                     r"but cxr_montgomery_lungs is segmentation data"):
    c = _config(base, task="classification")
    c.evals.val = config_lib.classification_eval()
    train.train_and_evaluate(c, str(tmp_path / "b"))
  with pytest.raises(errors.ConfigError, match=r"config.evals.val.type="
                     r"'classification': expected one of \['segmentation'\]"):
    c = _config(base)
    c.evals.val = config_lib.classification_eval()
    train.train_and_evaluate(c, str(tmp_path / "c"))
  with pytest.raises(errors.ConfigError, match=r"config.data.resolution=48"):
    train.train_and_evaluate(_config(base.replace("res=64", "res=48")),
                             str(tmp_path / "d"))
  assert not any(os.listdir(tmp_path))  # Nothing written.


def test_image_and_mask_move_together(montgomery_data_dir):
  """Every augmentation moves the mask with its image: the dark pixels of
  a generated radiograph stay where its augmented (nearest-neighbour,
  still 0/1) mask is."""
  data_dir, _ = montgomery_data_dir
  for augment in ("bit", "cxr", "resized_crop", "crop_flip"):
    config = _config(f"target=montgomery_lungs,model=R26x1,res=64,batch=8,"
                     f"steps=1,data_dir={data_dir}")
    config = train.resolve_config(config, pipeline.Pipeline(config.data))
    config.data.augment, config.data.resize = augment, 80
    data = pipeline.Pipeline(config.data)
    batch = next(data.train_batches(config, 0))
    images, masks = batch["image"][0, ..., 0], batch["labels"][0, ..., 0]
    assert set(np.unique(masks)) <= {0.0, 1.0}
    # Lungs (70 of 255 before noise) are dark: [-1, 1] inputs below -0.2
    # against tissue (170) above.
    # The affine's black fill (exactly -1) has no lungs: left out.
    inside = images > -1.0
    agree = np.mean((images < -0.15)[inside] == (masks > 0)[inside])
    assert agree > 0.85, (augment, agree)
