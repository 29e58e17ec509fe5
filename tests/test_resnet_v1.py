"""torchvision's ResNet (models.ResNetV1, BatchNorm) against PyTorch: the
committed MoCo-wrapped file written by real torch.save (no PyTorch needed),
and, where PyTorch is installed, random torchvision models written in the
test."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from big_transfer_med import config_lib
from big_transfer_med import fewshot
from big_transfer_med import models
from big_transfer_med import parallel
from big_transfer_med import predict
from big_transfer_med import pretrained_weights
from big_transfer_med import torch_format
from big_transfer_med import train
from big_transfer_med import train_state
from input_pipeline import errors
from tests import fmnist_fixtures

TORCH_DIR = os.path.join(os.path.dirname(__file__), "testdata", "torch")
MOCO_FILE = os.path.join(TORCH_DIR, "moco_tiny_resnet.pth.tar")


def _rel_error(ours, theirs):
  return float(np.max(np.abs(np.asarray(ours) - theirs)) /
               np.max(np.abs(theirs)))


def _template(model, image_size=32):
  return jax.tree.map(
      lambda s: np.zeros(s.shape, s.dtype),
      dict(jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, image_size, image_size, 3)))))


def _tiny(num_classes=None, **kwargs):
  settings = dict(depths=(2, 1, 1, 1), base_width=4, num_classes=num_classes,
                  conv_lowering="native")
  return models.ResNetV1(**{**settings, **kwargs})


def test_released_moco_file_gives_torchvision_features_in_eval_and_train():
  """The committed MoCo-style release (real torch.save): the backbone under
  module.encoder_q. loads, heads and the momentum copy are skipped, and the
  features equal torchvision's in eval mode (running averages) and in train
  mode (batch statistics), whose running averages update as PyTorch's."""
  expected = np.load(os.path.join(TORCH_DIR, "moco_tiny_resnet_expected.npz"))
  model = _tiny()
  variables, report = pretrained_weights.load_pretrained(
      MOCO_FILE, _template(model))
  assert not report["initialised"]
  assert {"module.encoder_q.fc.0.weight", "module.encoder_q.fc.2.bias",
          "module.queue", "module.encoder_k.conv1.weight",
          "module.encoder_q.bn1.num_batches_tracked"} <= set(report["skipped"])
  assert not any(name.startswith("module.encoder_q.layer")
                 and not name.endswith("num_batches_tracked")
                 for name in report["skipped"])
  assert len(report["loaded"]) == sum(
      x.size > 0 for x in jax.tree.leaves(variables))
  images = expected["images"]
  assert _rel_error(model.apply(variables, images),
                    expected["eval_features"]) < 1e-4
  features, updated = model.apply(variables, images, train=True,
                                  mutable=["batch_stats"])
  assert _rel_error(features, expected["train_features"]) < 1e-4
  stats = updated["batch_stats"]
  for torch_name, ours in (("bn1.running_mean", stats["bn1"]["mean"]),
                           ("bn1.running_var", stats["bn1"]["var"]),
                           ("layer1.0.downsample.1.running_var",
                            stats["layer1_0"]["downsample_bn"]["var"]),
                           ("layer4.0.bn3.running_mean",
                            stats["layer4_0"]["bn3"]["mean"]),
                           ("layer4.0.bn3.running_var",
                            stats["layer4_0"]["bn3"]["var"])):
    np.testing.assert_allclose(ours, expected[f"after_train/{torch_name}"],
                               rtol=1e-4, atol=1e-5, err_msg=torch_name)


def _wrapped(tmp_path, state, **wrapper):
  path = str(tmp_path / "ssl.pth")
  torch_format.save(dict(wrapper, state_dict=state) if wrapper else state, path)
  return path


def _backbone_state():
  arrays = pretrained_weights.read_pretrained(MOCO_FILE)
  return {name[len("module.encoder_q."):]: arrays.arrays[ours]
          for ours, name in arrays.file_names.items()
          if name.startswith("module.encoder_q.")}, arrays


@pytest.mark.parametrize("prefix", ["", "module.", "backbone.",
                                    "online_network.", "module.encoder."])
def test_self_supervised_wrappers_load_the_same_backbone(tmp_path, prefix):
  """The prefixes and wrapper keys self-supervised releases use all give
  the backbone MoCo's file gives; a torchvision fc there is a head."""
  state, _ = _backbone_state()
  state = {name: (value.transpose(3, 2, 0, 1) if value.ndim == 4 else value)
           for name, value in state.items()}  # HWIO -> OIHW, as in the file.
  state["projection_head.0.weight"] = np.ones((3, 128), np.float32)
  model = _tiny()
  reference, _ = pretrained_weights.load_pretrained(MOCO_FILE, _template(model))
  path = _wrapped(tmp_path, {prefix + k: v for k, v in state.items()},
                  **({"epoch": 3} if prefix else {}))
  variables, report = pretrained_weights.load_pretrained(path, _template(model))
  jax.tree.map(np.testing.assert_array_equal, variables, reference)
  assert prefix + "projection_head.0.weight" in report["skipped"]


def test_foreign_and_ambiguous_files_fail_naming_keys(tmp_path):
  model = _tiny()
  foreign = _wrapped(tmp_path, {"encoder.blocks.0.attn.weight":
                                np.zeros((4, 4), np.float32)})
  with pytest.raises(errors.CheckpointMismatchError,
                     match=r"named by no known layout: "
                     r"encoder\.blocks\.0\.attn\.weight"):
    pretrained_weights.load_pretrained(foreign, _template(model))
  state, _ = _backbone_state()
  two = {**{"student." + k: v for k, v in state.items()},
         **{"online." + k: v for k, v in state.items()}}
  with pytest.raises(errors.CheckpointMismatchError,
                     match=r"several backbones \(prefixes \['online\.', "
                     r"'student\.'\]\)"):
    pretrained_weights.load_pretrained(_wrapped(tmp_path, two),
                                       _template(model))
  # A BiT model cannot take a ResNet-50 file: every tensor named.
  with pytest.raises(errors.CheckpointMismatchError,
                     match=r"not in the model: .*module\.encoder_q\.bn1"):
    pretrained_weights.load_pretrained(
        MOCO_FILE, {"params": pretrained_weights.params_template("R26x1")})


def test_batch_statistics_are_those_of_the_global_batch():
  """Under the device axis, BatchNorm normalises with the statistics of all
  devices' examples together: 2 devices x 3 images give what 6 images on one
  device give, outputs and running averages alike."""
  model = _tiny(bn_axis_name=parallel.AXIS)
  single = _tiny()
  variables, _ = pretrained_weights.load_pretrained(MOCO_FILE, _template(model))
  images = np.random.default_rng(1).normal(size=(6, 32, 32, 3)).astype(
      np.float32)
  whole, whole_state = single.apply(variables, images, train=True,
                                    mutable=["batch_stats"])
  def per_device_run(model):
    return jax.device_get(parallel.per_device(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]),
        devices=jax.local_devices()[:2])(parallel.replicate(variables),
                                         images.reshape(2, 3, 32, 32, 3)))
  split, split_state = per_device_run(model)
  # float32 summation orders differ (sums of 3 + 3 against 6 images).
  assert _rel_error(split.reshape(6, -1), whole) < 1e-4
  for ours, theirs in zip(jax.tree.leaves(split_state),
                          jax.tree.leaves(whole_state)):
    assert _rel_error(ours[0], theirs) < 1e-4
    assert _rel_error(ours[1], theirs) < 1e-4
  # Each device's own statistics would give other outputs.
  unsynchronised, _ = per_device_run(single)
  assert _rel_error(unsynchronised.reshape(6, -1), whole) > 1e-2


def test_registry_builds_torchvision_shapes():
  """resnet50: 25,557,032 parameters as torchvision's (with 1000 classes);
  wide_resnet50_2: 68,883,240; resnet18: 11,689,512; resnet50x2's first
  stage is twice as wide; the U-Nets have smp's counts."""
  counts = {}
  for name in ("resnet18", "resnet50", "wide_resnet50_2", "resnet50x2"):
    shapes = jax.eval_shape(models.get_model(name, 1000).init,
                            jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    counts[name] = sum(x.size for x in jax.tree.leaves(shapes["params"]))
    if name == "resnet50x2":
      assert shapes["params"]["layer1_0"]["conv3"]["kernel"].shape == (
          1, 1, 128, 512)
  assert counts["resnet18"] == 11_689_512
  assert counts["resnet50"] == 25_557_032
  assert counts["wide_resnet50_2"] == 68_883_240
  # The U-Nets: segmentation_models_pytorch 0.6.0's Unet(encoder,
  # classes=1) has 14,328,209 (resnet18) and 32,521,105 (resnet50)
  # parameters (BatchNorm's running averages not counted).
  for name, smp_count in (("resnet18", 14_328_209), ("resnet50", 32_521_105)):
    shapes = jax.eval_shape(models.get_model(name, 1, task="segmentation").init,
                            jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    assert sum(x.size for x in jax.tree.leaves(shapes["params"])) == smp_count
  assert models.uses_batch_norm("resnet50")
  assert not models.uses_batch_norm("R50x1")
  with pytest.raises(errors.ConfigError, match="resnet50"):
    models.get_model("resnet51", 10)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "wide_resnet50_2"])
def test_torchvision_model_written_by_pytorch_gives_its_logits(tmp_path, name):
  """A random torchvision model (with random BatchNorm statistics), saved
  by torch.save: loaded into get_model(name), eval-mode logits and one
  train-mode forward pass (batch statistics) match PyTorch's (float32)."""
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  from tests import make_torchvision_testdata  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  theirs = getattr(torchvision.models, name)(num_classes=7)
  make_torchvision_testdata.randomize_batch_norm(theirs)
  path = str(tmp_path / f"{name}.pth")
  torch.save(theirs.state_dict(), path)
  model = models.get_model(name, 7, conv_lowering="native")
  variables, report = pretrained_weights.load_pretrained(path, _template(model))
  assert not report["initialised"]
  images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(
      np.float32)
  inputs = torch.from_numpy(images.transpose(0, 3, 1, 2))
  theirs.eval()
  with torch.no_grad():
    eval_logits = theirs(inputs).numpy()
  theirs.train()
  with torch.no_grad():
    train_logits = theirs(inputs).numpy()
  assert _rel_error(model.apply(variables, images), eval_logits) < 1e-4
  logits, state = model.apply(variables, images, train=True,
                              mutable=["batch_stats"])
  assert _rel_error(logits, train_logits) < 1e-4
  np.testing.assert_allclose(state["batch_stats"]["layer4_1"]["bn2"]["var"],
                             theirs.layer4[1].bn2.running_var.numpy(),
                             rtol=1e-4)


def _checkpoint(workdir):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  return manager.latest_step(), manager.restore(manager.latest_step())


@pytest.mark.slow
def test_batch_norm_model_trains_resumes_and_evaluates(tiny_fmnist_data_dir,
                                                       tmp_path,
                                                       preempt_after_step_1):
  """resnet18 through the trainer on 2 devices: the running averages move,
  are checkpointed, and a run resumed after step 1 ends bit for bit where
  the uninterrupted run ends (parameters and running averages); evaluation
  uses the running averages (eval mode), as predict and the few-shot probe
  do."""
  def config(steps):
    return fmnist_fixtures.tiny_config(
        tiny_fmnist_data_dir, total_steps=steps, **{"model.name": "resnet18",
                                                    "optim.base_lr": 0.02})
  whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
  summary = train.train_and_evaluate(config(3), whole)
  preempt_after_step_1(lambda: train.train_and_evaluate(config(3), parts))
  train.train_and_evaluate(config(3), parts)
  (step_a, a), (step_b, b) = _checkpoint(whole), _checkpoint(parts)
  assert step_a == step_b == 3
  jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])
  jax.tree.map(np.testing.assert_array_equal, a["model_state"],
               b["model_state"])
  stats = a["model_state"]["batch_stats"]
  # Fresh running averages are 0 / 1; three steps of momentum 0.1 move them.
  assert np.abs(stats["bn1"]["mean"]).max() > 1e-3
  assert np.abs(stats["layer4_1"]["bn2"]["var"] - 1).max() > 1e-3
  variables = {"params": a["params"], **a["model_state"]}
  model = models.get_model("resnet18", 5)
  images = np.random.default_rng(0).normal(size=(4, 32, 32, 1)).astype(
      np.float32)
  # Eval mode depends on the running averages, not on the batch.
  np.testing.assert_allclose(model.apply(variables, images)[:2],
                             model.apply(variables, images[:2]), rtol=1e-5,
                             atol=1e-6)
  assert np.isfinite(summary["metrics"]["loss"])
  # predict and the few-shot probe read the running averages too.
  png = str(tmp_path / "image.png")
  Image.fromarray(np.random.default_rng(3).integers(
      0, 256, (40, 36), dtype=np.uint8)).save(png)
  probabilities = predict.predict(whole, [png])[png]
  assert len(probabilities) == 5
  assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-4)
  probe = fewshot.FewShotEvaluator(
      config_lib.fewshot_eval(dataset="fashion_mnist_local",
                              classes=(5, 6, 7, 8, 9), shots=(1,), seeds=(0,)),
      config=config(3), model=models.get_model("resnet18", None))
  accuracy = probe.run(parallel.replicate(variables))
  assert 0.0 <= accuracy["fashion_mnist_local_1shot"] <= 1.0


def test_reestimated_running_averages_are_the_mean_of_batch_statistics():
  """train_state.reestimate_batch_stats over 2 global batches (2 devices x 3
  images): bn1's running mean and variance become the mean over the batches
  of the statistics of conv1's outputs (computed here with lax.conv), the
  unbiased variance as PyTorch's; parameters are untouched."""
  model = _tiny(bn_axis_name=parallel.AXIS)
  variables, _ = pretrained_weights.load_pretrained(MOCO_FILE, _template(model))
  state = train_state.TrainState(
      step=jnp.zeros([], jnp.int32), params=variables["params"],
      model_state={"batch_stats": variables["batch_stats"]}, opt_state=(),
      rng=jax.random.PRNGKey(0))
  rng = np.random.default_rng(2)
  batches = [rng.normal(2.0, 1.5, size=(2, 3, 32, 32, 3)).astype(np.float32)
             for _ in range(2)]
  new = jax.device_get(train_state.reestimate_batch_stats(
      parallel.replicate(state), iter({"image": b} for b in batches), 2,
      model=model))
  kernel = variables["params"]["conv1"]["kernel"]
  means, variances = [], []
  for batch in batches:
    out = np.asarray(jax.lax.conv_general_dilated(
        batch.reshape(6, 32, 32, 3), kernel, (2, 2), ((3, 3), (3, 3)),
        dimension_numbers=("NHWC", "HWIO", "NHWC")))
    means.append(out.mean(axis=(0, 1, 2)))
    variances.append(out.var(axis=(0, 1, 2), ddof=1))
  stats = new.model_state["batch_stats"]["bn1"]
  np.testing.assert_allclose(stats["mean"][0], np.mean(means, axis=0),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats["var"][0], np.mean(variances, axis=0),
                             rtol=1e-4)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(x[0], y),
               new.params, variables["params"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["R26x1", "resnet18"])
def test_unet_on_either_encoder_loads_a_classifier_checkpoint(tmp_path, name):
  """task='segmentation': per-pixel logits at the input's size; the encoder
  keeps the classifier's parameter names, so a classifier's checkpoint
  (here a run-like BiT .npz / our params as a torch file) fills it and
  leaves the decoder and the head fresh; sides that are no multiple of 32
  fail naming the config key."""
  unet = models.get_model(name, 3, task="segmentation",
                          conv_lowering="native")
  template = _template(unet, 32)
  images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(
      np.float32)
  logits, state = jax.jit(lambda v, x: unet.apply(
      v, x, train=True, mutable=["batch_stats"]))(
          jax.jit(unet.init)(jax.random.key(1), images), images)
  assert logits.shape == (2, 32, 32, 3) and logits.dtype == jnp.float32
  assert "decoder" in state["batch_stats"]
  classifier = models.get_model(name, 10, conv_lowering="native")
  trained = jax.jit(classifier.init)(jax.random.key(2), images)
  path = str(tmp_path / "classifier.npz")
  if name == "R26x1":
    pretrained_weights.save_bit_npz(trained["params"], path)
  else:  # Our params under torchvision's names, written as torch.save.
    path = str(tmp_path / "classifier.pth")
    flat = pretrained_weights._flatten(trained)[0]  # pylint: disable=protected-access
    state_dict = {}
    for ours, value in flat.items():
      module, leaf = ours.rsplit("/", 1)
      torch_module = module.replace("/downsample_conv", ".downsample.0").replace(
          "/downsample_bn", ".downsample.1").replace("/", ".").replace(
              "_", ".", 1 if module.startswith("layer") else 0)
      value = np.asarray(value)
      if module == "head":
        torch_module, value = "fc", (value.T if leaf == "kernel" else value)
      elif value.ndim == 4:
        value = value.transpose(3, 2, 0, 1)
      torch_leaf = {"kernel": "weight", "scale": "weight", "bias": "bias",
                    "mean": "running_mean", "var": "running_var"}[leaf]
      state_dict[f"{torch_module}.{torch_leaf}"] = value
    torch_format.save(state_dict, path)
  variables, report = pretrained_weights.load_pretrained(path, template)
  assert report["initialised"] and all(
      n.startswith(("decoder/", "head/")) for n in report["initialised"])
  assert any(n.startswith("decoder/") for n in report["initialised"])
  first = "root_block" if name == "R26x1" else "conv1"
  np.testing.assert_array_equal(variables["params"][first]["kernel"],
                                trained["params"][first]["kernel"])
  with pytest.raises(errors.ConfigError, match="multiples of 32"):
    jax.eval_shape(unet.init, jax.random.key(0),
                   np.zeros((1, 48, 48, 3), np.float32))


def _smp_to_ours(state_dict):
  """segmentation_models_pytorch Unet state dict -> our variables (written
  here from smp's module names, independently of our loader)."""
  import re  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  flat = {}
  for key, value in state_dict.items():
    if key.endswith("num_batches_tracked"):
      continue
    value = value.numpy()
    module, leaf = key.rsplit(".", 1)
    decoder = re.match(r"decoder\.blocks\.(\d+)\.conv(\d)\.(\d)$", module)
    if decoder:
      block, conv, part = decoder.groups()
      module = (f"decoder/block{int(block) + 1}_"
                f"{'conv' if part == '0' else 'bn'}{conv}")
    elif module == "segmentation_head.0":
      module = "head"
    else:
      module = re.sub(r"^layer(\d)\.(\d+)\.", r"layer\1_\2/",
                      module.removeprefix("encoder."))
      module = module.replace("downsample.0", "downsample_conv").replace(
          "downsample.1", "downsample_bn")
    if value.ndim == 4:
      flat[("params", *module.split("/"), "kernel")] = value.transpose(
          2, 3, 1, 0)
    elif module == "head":
      flat[("params", "head", leaf)] = value
    else:
      collection, name = {"weight": ("params", "scale"),
                          "bias": ("params", "bias"),
                          "running_mean": ("batch_stats", "mean"),
                          "running_var": ("batch_stats", "var")}[leaf]
      flat[(collection, *module.split("/"), name)] = value
  return traverse_util.unflatten_dict(flat)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_unet_gives_segmentation_models_pytorch_logits(name):
  """Where segmentation_models_pytorch is installed: its Unet(name,
  classes=2) with random weights and BatchNorm statistics, mapped onto our
  U-Net, gives its eval-mode logits (relative error < 1e-4, float32)."""
  torch = pytest.importorskip("torch")
  smp = pytest.importorskip("segmentation_models_pytorch")
  torch.manual_seed(0)
  net = smp.Unet(name, encoder_weights=None, classes=2).eval()
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.uniform_(-0.3, 0.3)
        module.running_var.uniform_(0.5, 1.5)
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.2, 0.2)
  images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(
      np.float32)
  ours = models.get_model(name, 2, task="segmentation",
                          conv_lowering="native")
  variables = _smp_to_ours(net.state_dict())
  template = jax.eval_shape(ours.init, jax.random.key(0), images)
  assert (jax.tree.structure(jax.tree.map(np.shape, variables))
          == jax.tree.structure(jax.tree.map(lambda s: s.shape, template)))
  with torch.no_grad():
    theirs = net(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  logits = np.asarray(ours.apply(variables, images, train=False))
  assert _rel_error(logits, theirs.transpose(0, 2, 3, 1)) < 1e-4
