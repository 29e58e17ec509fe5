"""The two recipes of the shipped configs: ours (default) and the seed code's
as released (recipe=seed), each rule pinned against the seed's own."""
import json
import os

import pytest
from absl import flags
from ml_collections import config_flags

from big_transfer_med import config_validation
from big_transfer_med import optim
from big_transfer_med import train
from tests import fmnist_fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(spec):
  """The config a user gets from --config=configs/SPEC (as main.py parses it)."""
  flag_values = flags.FlagValues()
  spec = os.path.join(REPO, "configs", spec)
  config_flags.DEFINE_config_file("config", None, flag_values=flag_values,
                                  sys_argv=["", f"--config={spec}"])
  flag_values(["", f"--config={spec}"])
  config_validation.validate(flag_values.config)
  return flag_values.config


# The seed's label sets: CheXpert and/or MIMIC 13 findings, NIH its 14,
# PadChest its 27, the 7 common findings once NIH or PadChest join a mix.
@pytest.mark.parametrize("sources,label_set", [
    ("chexpert", "chexpert13"), ("mimic", "chexpert13"),
    ("chexpert+mimic", "chexpert13"), ("nih14", "nih14"),
    ("padchest", "padchest27"), ("chexpert+nih14", "common7"),
    ("chexpert+mimic+nih14+padchest", "common7"),
])
def test_seed_upstream_label_sets_and_views(sources, label_set):
  c = _config(f"r50x1_chest.py:recipe=seed,sources={sources}")
  assert c.recipe == "seed" and c.data.label_set == label_set
  # PadChest as the seed formed it, and then every view its builder kept
  # (COSTAL in, UNK out); else PA and AP.
  assert tuple(c.data.sources) == tuple(
      s.replace("padchest", "padchest_seed") for s in sources.split("+"))
  expected_views = (("PA", "AP", "AP_SUPINE", "LATERAL", "OTHER")
                    if "padchest" in sources else ("PA", "AP"))
  assert tuple(c.data.views) == expected_views


def test_seed_upstream_recipe_keys():
  """configs/*_bit50x1.yaml and pretrain.py: 15-epoch warmup from lr/K,
  weight decay 1e-4 on every parameter, its AGC rule, BORDER_REFLECT_101,
  'No Finding' negating everything, seed 42, NIH on all of train_val_list
  validated on test_list; the 90-epoch step schedule and lr 0.01 per 256
  as in our recipe; the best validation loss kept."""
  for spec in ("r50x1_chest.py:recipe=seed", "r152x4_chest.py:recipe=seed"):
    c = _config(spec)
    assert (c.schedule.warmup_epochs, c.schedule.warmup_start,
            c.schedule.warmup_k) == (15.0, "lr_over_k", None)
    assert (c.optim.weight_decay, c.optim.weight_decay_on,
            c.optim.agc_exclude, c.optim.nesterov) == (1e-4, "all", "seed",
                                                       True)
    assert (c.total_epochs, tuple(c.schedule.decay_epochs)) == (90.0,
                                                                (30, 60, 80))
    assert (c.optim.base_lr, c.optim.reference_batch_size) == (0.01, 256)
    assert (c.data.affine_fill, c.data.no_finding, c.seed) == (
        "reflect_101", "all", 42)
    assert c.data.normalization == "minus_one_one"  # mean = std = 0.5.
    assert c.checkpoint.best_metric == "val/loss"
  assert _config("r152x4_chest.py:recipe=seed").model.name == "R152x4"
  nih = _config("r50x1_chest.py:recipe=seed,sources=nih14")
  assert (nih.data.train_split, nih.data.eval_split) == ("train+validation",
                                                         "test")


def test_our_upstream_recipe_is_the_default():
  c = _config("r50x1_chest.py")
  assert c.recipe == "ours" and c.seed == 0
  assert (c.schedule.warmup_epochs, c.schedule.warmup_start) == (1.0, "zero")
  assert (c.optim.weight_decay_on, c.optim.agc_exclude) == ("kernels", "head")
  assert (c.data.affine_fill, c.data.no_finding) == ("zeros", "unmentioned")
  assert tuple(c.data.views) == ("PA", "AP", "AP_SUPINE")
  assert c.checkpoint.best_metric == "val/loss"


def test_seed_fine_tune_recipe_keys():
  """finetune.py / configs/finetune/*.yaml: lr 0.001 at batch 128, SGD +
  AGC with Nesterov, no weight decay, a fresh PyTorch-initialised head, the
  HyperRule's step counts and MixUp."""
  seed = _config("transfer.py:target=cifar10,recipe=seed")
  bit = _config("transfer.py:target=cifar10")
  assert seed.recipe == "seed" and bit.recipe == "bit"
  assert optim.scaled_learning_rate(
      seed.optim.base_lr, seed.batch_size,
      seed.optim.reference_batch_size) == pytest.approx(0.001)
  assert seed.batch_size == 128 and seed.optim.weight_decay == 0.0
  assert seed.optim.nesterov and seed.optim.agc_clipping == 0.01
  assert seed.model.head_init == "pytorch" and seed.hyperrule
  assert bit.model.head_init == "zeros" and bit.batch_size == 512
  tb = _config("transfer.py:target=tuberculosis,recipe=seed")
  assert tb.data.builder_config == "seed"  # 85/15 per set, RandomState(42).
  flowers = _config("transfer.py:target=oxford_flowers102,recipe=seed")
  assert (flowers.data.train_split, flowers.data.eval_split) == (
      "test", "train+validation")
  assert _config("transfer.py:target=covidx,recipe=seed").data.class_balanced
  assert not _config(
      "transfer.py:target=covidx,recipe=seed,shots=5").data.class_balanced
  assert not _config("transfer.py:target=covidx").data.class_balanced
  padchest = _config("transfer.py:target=padchest_cl,recipe=seed")
  assert tuple(padchest.data.sources) == ("padchest_seed",)
  assert padchest.data.exclusive and padchest.data.eval_split == "validation"
  assert (padchest.data.resolution, padchest.data.augment,
          padchest.data.affine_fill) == (224, "cxr", "reflect_101")
  assert optim.scaled_learning_rate(
      bit.optim.base_lr, bit.batch_size,
      bit.optim.reference_batch_size) == pytest.approx(0.003)


@pytest.mark.slow
def test_seed_optimiser_pieces_train_and_record_k(tiny_fmnist_data_dir,
                                                  tmp_path):
  """The seed's warmup (K filled in from the device count and recorded),
  decay on every parameter, its AGC rule and a PyTorch-initialised head run
  through the one trainer."""
  config = fmnist_fixtures.tiny_config(tiny_fmnist_data_dir, total_steps=3, **{
      "schedule.warmup_steps": 2, "schedule.warmup_start": "lr_over_k",
      "optim.weight_decay_on": "all", "optim.agc_exclude": "seed",
      "optim.weight_decay": 1e-4, "model.head_init": "pytorch",
      "recipe": "seed"})
  workdir = str(tmp_path / "run")
  summary = train.train_and_evaluate(config, workdir)
  assert summary["recipe"] == "seed"
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  import jax  # pylint: disable=g-import-not-at-top
  assert saved["schedule"]["warmup_k"] == jax.device_count()
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    first = json.loads(f.readline())
  # Step 1 runs at lr / K (the optimiser sees step 0 of the schedule).
  peak = optim.scaled_learning_rate(0.1, 8, 256)
  assert first["learning_rate"] == pytest.approx(peak / jax.device_count())
