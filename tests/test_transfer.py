"""Fine-tuning in the one trainer: checkpoint import (ours, BiT .npz, PyTorch),
few-shot subsets, MixUp, evaluation counts, linear few-shot, continual
pre-training."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import jax_utils
from flax import traverse_util

import scipy.stats

from big_transfer_med import config_lib
from big_transfer_med import evaluators
from big_transfer_med import export
from big_transfer_med import fewshot
from big_transfer_med import losses
from big_transfer_med import models
from big_transfer_med import parallel
from big_transfer_med import pretrained_weights
from big_transfer_med import run_dir
from big_transfer_med import torch_format
from big_transfer_med import train
from big_transfer_med import train_state
from input_pipeline import errors
from input_pipeline import pipeline
from tests import fmnist_fixtures


TESTDATA = os.path.join(os.path.dirname(__file__), "testdata")


def _random_params(num_classes, channels=1, seed=0):
  model = models.get_model("R26x1", num_classes)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 32, 32, channels)))["params"]
  leaves, tree = jax.tree.flatten(shapes)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(tree, [
      np.asarray(0.1 * jax.random.normal(k, x.shape))
      for k, x in zip(keys, leaves)])


def _final_params(workdir):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  return manager.restore(manager.latest_step())["params"]


def _flat(tree):
  return {"/".join(k): np.asarray(v)
          for k, v in traverse_util.flatten_dict(tree).items()}


def _to_torch_state_dict(params):
  """Our params under the BiT PyTorch names and layouts (OIHW kernels)."""
  out = {}
  for name, value in _flat(params).items():
    parts = name.split("/")
    if parts[0] == "root_block":
      out["root.conv.weight"] = value.transpose(3, 2, 0, 1)
    elif parts[0] == "norm_pre_head":
      out[f"before_head.gn.{ {'scale': 'weight', 'bias': 'bias'}[parts[1]] }"] = value
    elif parts[0] == "head":
      out[f"head.conv.{ {'kernel': 'weight', 'bias': 'bias'}[parts[1]] }"] = (
          value.T[:, :, None, None] if parts[1] == "kernel" else value)
    else:
      block, unit = parts[0].split("_")
      layer = "downsample" if parts[1] == "conv_proj" else parts[1]
      param = {"scale": "weight", "bias": "bias", "kernel": "weight"}[parts[2]]
      out[f"module.body.{block}.{unit}.{layer}.{param}"] = (
          value.transpose(3, 2, 0, 1) if value.ndim == 4 else value)
  return out


def test_real_torch_file_is_read_exactly():
  """A file written by torch.save (PyTorch 2.13): strided views, bfloat16,
  int64, scalars and a training-checkpoint wrapper."""
  state = pretrained_weights.torch_format.load_state_dict(
      os.path.join(TESTDATA, "torch", "real_checkpoint.pth.tar"))
  with np.load(os.path.join(TESTDATA, "torch",
                            "real_checkpoint_expected.npz")) as expected:
    assert sorted(state) == sorted(expected.files)
    for name in expected.files:
      np.testing.assert_array_equal(state[name].astype(expected[name].dtype),
                                    expected[name])


def test_torch_file_with_foreign_objects_is_refused(tmp_path):
  import pickle  # pylint: disable=g-import-not-at-top
  import zipfile  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "evil.pth")
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pickle.dumps({"x": os.system}, protocol=2))
  with pytest.raises(errors.CheckpointMismatchError,
                     match=r"refusing to unpickle posix.system"):
    pretrained_weights.read_pretrained(path)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["npz", "torch"])
def test_pretrained_file_loads_exactly_and_fine_tunes(fmt, tiny_fmnist_data_dir,
                                                       tmp_path):
  source = _random_params(num_classes=10)  # Another task's 10-class head.
  if fmt == "npz":
    path = str(tmp_path / "BiT-S-R26x1.npz")
    pretrained_weights.save_bit_npz(source, path)
  else:
    path = str(tmp_path / "model.pth.tar")
    torch_format.save({"model": _to_torch_state_dict(source), "epoch": 3,
                       "optimizer": {"lr": 0.1}}, path)
  # Learning rate 0: the run must end with exactly the file's weights.
  frozen = str(tmp_path / "frozen")
  config = fmnist_fixtures.tiny_config(
      tiny_fmnist_data_dir, total_steps=2, **{"optim.base_lr": 0.0,
                                              "init.checkpoint": path})
  summary = train.train_and_evaluate(config, frozen)
  loaded = _flat(_final_params(frozen))
  expected = _flat(source)
  for name, value in loaded.items():
    if name.startswith("head/"):
      assert not value.any()  # 5 classes here, 10 in the file: a new head.
    else:
      np.testing.assert_array_equal(value, expected[name], err_msg=name)
  assert summary["init"]["loaded"] == len(expected) - 2
  assert summary["init"]["initialised_names"] == ["head/bias", "head/kernel"]
  assert summary["init_checkpoint"] == path
  # And it fine-tunes from there: zero head first (loss log 5), then every
  # tensor moves away from the file's values.
  tuned = str(tmp_path / "tuned")
  config = fmnist_fixtures.tiny_config(
      tiny_fmnist_data_dir, total_steps=3, **{"init.checkpoint": path})
  train.train_and_evaluate(config, tuned)
  with open(os.path.join(tuned, "metrics.jsonl")) as f:
    losses_ = [json.loads(l)["train_loss"] for l in f if "train_loss" in l]
  np.testing.assert_allclose(losses_[0], math.log(5), rtol=1e-4)
  assert len(losses_) == 3 and all(map(math.isfinite, losses_))
  moved = _flat(_final_params(tuned))
  assert not np.allclose(moved["block4_unit02/conv3/kernel"],
                         expected["block4_unit02/conv3/kernel"])
  assert moved["head/kernel"].any()


def test_checkpoint_that_does_not_fit_writes_nothing(tiny_fmnist_data_dir,
                                                    tmp_path):
  path = str(tmp_path / "rgb.npz")
  pretrained_weights.save_bit_npz(_random_params(10, channels=3), path)
  workdir = str(tmp_path / "run")
  config = fmnist_fixtures.tiny_config(tiny_fmnist_data_dir,
                                       **{"init.checkpoint": path})
  with pytest.raises(errors.CheckpointMismatchError,
                     match=r"root_block/standardized_conv2d/kernel: file "
                           r"\(7, 7, 3, 64\), model \(7, 7, 1, 64\).*"
                           r"config.data.channels"):
    train.train_and_evaluate(config, workdir)
  assert not os.path.exists(workdir)


@pytest.mark.slow
def test_continual_pretraining_keeps_a_matching_head(tiny_fmnist_data_dir,
                                                     tmp_path):
  first = str(tmp_path / "first")
  train.train_and_evaluate(
      fmnist_fixtures.tiny_config(tiny_fmnist_data_dir, total_steps=3), first)
  # Every run of this test has 3 steps: one compiled step serves them all.
  second = str(tmp_path / "second")
  config = fmnist_fixtures.tiny_config(
      tiny_fmnist_data_dir, total_steps=3, **{"init.checkpoint": first})
  summary = train.train_and_evaluate(config, second)
  assert summary["init"]["initialised"] == 0  # Head included: same task.
  # No best checkpoint was kept: the latest is what was read, and recorded.
  assert summary["init"]["checkpoint"].endswith("(latest, step 3)")
  # Exported in each format, the run reads back exactly, head included.
  template = pretrained_weights.variables_template("R26x1", 5, channels=1)
  for fmt, name in (("npz", "first.npz"), ("seed", "model.pth.tar"),
                    ("timm", "timm.pth")):
    exported = str(tmp_path / name)
    assert export.export(first, exported, fmt).endswith("(latest, step 3)")
    read, report = pretrained_weights.load_pretrained(exported, template)
    assert report["initialised"] == [] and report["skipped"] == [], fmt
    jax.tree.map(np.testing.assert_array_equal, read,
                 run_dir.load_variables(first))
  with open(os.path.join(second, "metrics.jsonl")) as f:
    first_loss = json.loads(f.readline())["train_loss"]
  assert first_loss < math.log(5)  # Starts from the trained head.
  # dont_load: the head starts again from zero.
  third = str(tmp_path / "third")
  config = fmnist_fixtures.tiny_config(
      tiny_fmnist_data_dir, total_steps=3,
      **{"init.checkpoint": first, "init.dont_load": ("head/.*",)})
  summary = train.train_and_evaluate(config, third)
  assert summary["init"]["initialised_names"] == ["head/bias", "head/kernel"]


@pytest.mark.slow
def test_best_validation_checkpoint_is_kept_and_named(tiny_fmnist_data_dir,
                                                     tmp_path):
  """checkpoint.best_metric='val/loss': WORKDIR/best/ holds the variables of
  the step with the lowest logged validation loss (checked against the
  regular checkpoint of that step); RUN reads it, RUN:latest the last step;
  a run on other inputs' normalisation is refused before anything is
  written."""
  run = str(tmp_path / "upstream")
  config = fmnist_fixtures.tiny_config(
      tiny_fmnist_data_dir, total_steps=5, **{
          "evals.val.every_steps": 1, "checkpoint.every_steps": 1,
          "checkpoint.keep": 10, "checkpoint.best_metric": "val/loss"})
  summary = train.train_and_evaluate(config, run)
  with open(os.path.join(run, "metrics.jsonl")) as f:
    losses = {r["step"]: r["val/loss"] for r in map(json.loads, f)
              if "val/loss" in r}
  assert sorted(losses) == [1, 2, 3, 4, 5]
  best_step = min(losses, key=losses.get)
  assert summary["best_checkpoint"] == {
      "metric": "val/loss", "step": best_step,
      "value": pytest.approx(losses[best_step])}
  assert os.listdir(os.path.join(run, "best")) == [str(best_step)]
  best, source = run_dir.read_checkpoint(run, "")
  assert source.endswith(f"(best, step {best_step})")
  at_that_step = ocp.CheckpointManager(
      os.path.join(run, "checkpoints")).restore(best_step)["params"]
  jax.tree.map(np.testing.assert_array_equal, best["params"], at_that_step)
  latest = pretrained_weights.read_pretrained(run + ":latest").source
  assert latest.endswith("(latest, step 5)")
  chosen = pretrained_weights.read_pretrained(run).source
  assert chosen == source
  with pytest.raises(errors.CheckpointMismatchError, match="kept no best"):
    run_dir.read_checkpoint(str(tmp_path), "best")
  # A model trained on [-1, 1] inputs is not fine-tuned on ImageNet-normalised
  # ones unless asked.
  other = str(tmp_path / "imagenet_inputs")
  config = fmnist_fixtures.tiny_config(tiny_fmnist_data_dir, **{
      "init.checkpoint": run, "data.normalization": "imagenet",
      "data.channels": 3})
  with pytest.raises(errors.ConfigError,
                     match=r"'minus_one_one'.*'imagenet'.*"
                           r"allow_normalization_change=True"):
    train.train_and_evaluate(config, other)
  assert not os.path.exists(other)


@pytest.mark.slow
def test_fewshot_subset_is_balanced_deterministic_and_recorded(
    tiny_fmnist_data_dir, tmp_path):
  config = fmnist_fixtures.tiny_config(
      tiny_fmnist_data_dir, total_steps=2,
      **{"data.examples_per_class": 3, "data.fewshot_seed": 7})
  data = pipeline.Pipeline(config.data)
  assert len(data.train) == 15
  labels, _ = data.train.sources[0].label_matrix()
  assert labels.sum(0).tolist() == [3] * 5
  again = pipeline.Pipeline(config.data)
  assert again.fewshot_ids == data.fewshot_ids
  config.data.fewshot_seed = 8
  assert pipeline.Pipeline(config.data).fewshot_ids != data.fewshot_ids
  config.data.fewshot_seed = 7
  workdir = str(tmp_path / "run")
  summary = train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "fewshot_examples.json")) as f:
    record = json.load(f)
  assert record["ids"] == data.fewshot_ids
  assert record["positives_per_label"] == {n: 3 for n in data.label_names}
  assert summary["examples_per_class"] == 3 and summary["fewshot_seed"] == 7


def test_select_fewshot_multi_label_rule():
  rng = np.random.default_rng(0)
  labels = (rng.random((500, 4)) < [0.5, 0.2, 0.05, 0.01]).astype(np.float32)
  mask = np.ones_like(labels)
  mask[:, 3] = 0  # Never annotated: never counted.
  chosen = pipeline.select_fewshot(labels, mask, 5, seed=3)
  np.testing.assert_array_equal(chosen,
                                pipeline.select_fewshot(labels, mask, 5, 3))
  positives = (labels[chosen] > 0.5) & (mask[chosen] > 0)
  assert np.all(positives[:, :3].sum(0) >= 5)
  assert positives[:, 3].sum() == 0
  assert (positives.sum(1) == 0).sum() == 5  # k examples without findings.
  # Minimal: dropping any chosen example leaves some label short of k...
  # ...except those taken for a label that co-occurred; at least the last one
  # taken was needed.
  assert len(chosen) < 40


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_mixup_lambda_is_a_beta_draw(alpha):
  images = jnp.arange(4.0).reshape(4, 1, 1, 1)
  labels = jnp.eye(4)
  mask = jnp.array([1.0, 1.0, 1.0, 0.0])
  keys = jax.random.split(jax.random.PRNGKey(0), 4000)
  mixed_images, mixed_labels, mixed_mask, lam = jax.vmap(
      lambda k: train_state.mixup(k, alpha, images, labels, mask))(keys)
  # Lambda follows Beta(alpha, alpha) (Kolmogorov-Smirnov against scipy).
  assert scipy.stats.kstest(np.asarray(lam), "beta", (alpha, alpha)).pvalue > 0.01
  lam = np.asarray(lam)[:, None]
  np.testing.assert_allclose(mixed_images[:, :, 0, 0, 0],
                             lam * np.arange(4) + (1 - lam) * np.arange(3, -1, -1),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mixed_labels[:, 0, 0], lam[:, 0], rtol=1e-6)
  np.testing.assert_allclose(mixed_labels.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(mixed_mask[0], [0.0, 1.0, 1.0, 0.0])


@pytest.mark.slow
def test_mixup_step_is_the_plain_step_on_the_mixed_batch():
  """On 2 devices: every device draws the same lambda, mixes within its
  share of the batch, and the update is that of the plain step on the batch
  mixed that way."""
  import functools  # pylint: disable=g-import-not-at-top
  from big_transfer_med import config_lib, optim, parallel  # pylint: disable=g-import-not-at-top
  model = models.get_model("R26x1", 3)
  schedule = optim.create_schedule(0.1, 10)
  optimizer = optim.create_optimizer(schedule)
  state = train_state.create_train_state(config_lib.base_config(), model, optimizer,
                                   (16, 16, 1))
  # A non-zero head, so that the labels change the gradient.
  state = state.replace(params=dict(state.params, head=dict(
      state.params["head"], kernel=jnp.full_like(
          state.params["head"]["kernel"], 0.05))))
  step = lambda alpha: parallel.per_device(functools.partial(  # noqa: E731
      train_state.train_step, model=model, loss_fn=losses.softmax_xent,
      optimizer=optimizer, schedule=schedule, mixup_alpha=alpha))
  rng = np.random.default_rng(0)
  batch = {"image": rng.standard_normal((2, 4, 16, 16, 1), np.float32),
           "labels": np.eye(3, dtype=np.float32)[rng.integers(0, 3, (2, 4))],
           "mask": np.ones((2, 4), np.float32)}
  mixed_state, metrics = step(0.4)(parallel.replicate(state), batch)
  lam = np.asarray(metrics["mixup_lambda"])
  assert lam[0] == lam[1] and 0.0 < lam[0] < 1.0
  mix = lambda x: lam[0] * x + (1 - lam[0]) * x[:, ::-1]  # noqa: E731
  mixed_batch = {"image": mix(batch["image"]), "labels": mix(batch["labels"]),
                 "mask": batch["mask"]}
  plain_state, _ = step(0.0)(parallel.replicate(state), mixed_batch)
  for a, b in zip(jax.tree.leaves(parallel.unreplicate(mixed_state.params)),
                  jax.tree.leaves(parallel.unreplicate(plain_state.params))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  before = jax.tree.leaves(state.params)
  assert any(not np.allclose(a, b) for a, b in zip(
      before, jax.tree.leaves(parallel.unreplicate(mixed_state.params))))


def _evaluate(config, num_devices):
  """The classification evaluator, with random parameters, on the first
  `num_devices` of the 2 devices (batches are laid out for that many)."""
  data = pipeline.Pipeline(config.data, num_local_devices=num_devices)
  evaluator = evaluators.ClassificationEvaluator(
      config.evals.val, config=config, model=models.get_model("R26x1", 5),
      data=data)
  # A per-device function runs on the devices its arguments are on.
  return evaluator.run(jax_utils.replicate(
      {"params": _random_params(5)}, jax.local_devices()[:num_devices]))


@pytest.mark.slow
def test_evaluation_counts_each_example_once_on_1_and_2_devices(
    tiny_fmnist_data_dir):
  # 20 test examples of classes 0-4; batches of 6 leave a padded last batch.
  config = fmnist_fixtures.tiny_config(tiny_fmnist_data_dir,
                                       **{"data.eval_batch_size": 6})
  one, two = _evaluate(config, 1), _evaluate(config, 2)
  assert one["examples"] == two["examples"] == 20
  for key in ("loss", "accuracy", "mean_auc", "map"):
    np.testing.assert_allclose(one[key], two[key], rtol=1e-5, err_msg=key)


def test_ridge_accuracy_separates_separable_classes():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(3, 64)) * 5
  train_y = np.repeat(np.arange(3), 2)
  test_y = np.repeat(np.arange(3), 50)
  train_x = centres[train_y] + rng.normal(size=(6, 64))
  test_x = centres[test_y] + rng.normal(size=(150, 64))
  assert fewshot.ridge_accuracy(train_x, train_y, test_x, test_y, 3, 0.1) == 1.0
  shuffled = rng.permutation(test_y)
  assert fewshot.ridge_accuracy(train_x, train_y, test_x, shuffled, 3,
                                0.1) < 0.6


def test_linear_fewshot_evaluator_on_tiny_data(tiny_fmnist_data_dir):
  config = fmnist_fixtures.tiny_config(tiny_fmnist_data_dir)
  config_lib.add_eval(config, "probe", config_lib.fewshot_eval(
      dataset="fashion_mnist_local", classes=(5, 6, 7, 8, 9), shots=(1, 2),
      seeds=(0, 1)))
  model = models.get_model("R26x1", 5)
  evaluator = evaluators.from_config(config, model,
                                     pipeline.Pipeline(config.data))["probe"]
  variables = parallel.replicate({"params": _random_params(5)})
  results = evaluator.run(variables)
  assert set(results) == {
      f"fashion_mnist_local_{k}shot{s}" for k in (1, 2) for s in ("", "_std")}
  assert all(0.0 <= v <= 1.0 for v in results.values())
  assert results == evaluator.run(variables)  # Deterministic.
  # The classes are learnable from the pixels: random features beat chance
  # once a few shots are given.
  assert results["fashion_mnist_local_2shot"] > 0.2
