"""BiT .npz interchange: exact round trip, real naming, clear mismatch errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from big_transfer_med import models
from big_transfer_med import pretrained_weights
from input_pipeline import errors


def _params(name="R26x1", num_classes=10, seed=0):
  model = models.get_model(name, num_classes)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(seed),
                          jnp.zeros((1, 32, 32, 3)))["params"]
  leaves, tree = jax.tree.flatten(shapes)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  return jax.tree.unflatten(
      tree, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def _zeros(name="R26x1", num_classes=10, channels=3):
  return pretrained_weights.params_template(name, num_classes, channels)


def _load(path, name="R26x1", num_classes=10, **kwargs):
  """(params, report) of load_pretrained on a template of `name`."""
  variables, report = pretrained_weights.load_pretrained(
      path, {"params": _zeros(name, num_classes)}, **kwargs)
  return variables["params"], report


def test_round_trip_is_exact_and_uses_bit_names(tmp_path):
  params = _params()
  path = str(tmp_path / "r26.npz")
  pretrained_weights.save_bit_npz(params, path)
  with np.load(path, allow_pickle=False) as f:
    names = set(f.files)
    assert f["resnet/head/conv2d/kernel"].shape == (1, 1, 2048, 10)
  for expected in ["resnet/root_block/standardized_conv2d/kernel",
                   "resnet/block1/unit01/a/group_norm/gamma",
                   "resnet/block1/unit01/a/proj/standardized_conv2d/kernel",
                   "resnet/block4/unit02/c/standardized_conv2d/kernel",
                   "resnet/group_norm/beta", "resnet/head/conv2d/bias"]:
    assert expected in names
  loaded, report = _load(path)
  assert not report["initialised"] and not report["skipped"]
  flat_in = traverse_util.flatten_dict(jax.device_get(params))
  flat_out = traverse_util.flatten_dict(loaded)
  assert flat_in.keys() == flat_out.keys()
  for key in flat_in:
    np.testing.assert_array_equal(flat_in[key], flat_out[key])
  apply = jax.jit(models.get_model("R26x1", 10).apply)
  x = jax.random.uniform(jax.random.PRNGKey(2), (2, 32, 32, 3), minval=-1)
  np.testing.assert_array_equal(apply({"params": params}, x),
                                apply({"params": loaded}, x))


def test_numbered_conv_names_and_headless_files_load(tmp_path):
  params = _params()
  path = str(tmp_path / "r26.npz")
  pretrained_weights.save_bit_npz(params, path)
  with np.load(path) as f:
    arrays = {k.replace("c/standardized_conv2d/", "c/standardized_conv2d_2/"): f[k]
              for k in f.files if not k.startswith("resnet/head/")}
  odd = str(tmp_path / "odd.npz")
  np.savez(odd, **arrays)
  loaded, report = _load(odd)
  assert sorted(report["initialised"]) == ["head/bias", "head/kernel"]
  assert not loaded["head"]["kernel"].any()
  np.testing.assert_array_equal(loaded["block2_unit01"]["conv3"]["kernel"],
                                params["block2_unit01"]["conv3"]["kernel"])


def test_wrong_depth_names_missing_and_unexpected_tensors(tmp_path):
  path = str(tmp_path / "r26.npz")
  pretrained_weights.save_bit_npz(_params("R26x1"), path)
  with pytest.raises(errors.CheckpointMismatchError) as e:
    _load(path, "R50x1")
  message = str(e.value)
  assert path in message and "config.model.name" in message
  assert "block1_unit03/gn1/scale" in message  # Missing.


def test_wrong_width_names_offending_shapes(tmp_path):
  path = str(tmp_path / "r26x1.npz")
  pretrained_weights.save_bit_npz(_params("R26x1"), path)
  with pytest.raises(errors.CheckpointMismatchError,
                     match=r"79 wrong shapes.*resnet/block1/unit01/a/"
                           r"standardized_conv2d/kernel: file \(1, 1, 64, 64\), "
                           r"model \(1, 1, 128, 128\)"):
    _load(path, "R26x2")


def test_wrong_width_in_a_torch_file_gives_the_shape_the_file_holds(tmp_path):
  """PyTorch stores kernels as OIHW: the message shows the file's own shape,
  then the same tensor in the model's HWIO layout."""
  from big_transfer_med import torch_format  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "r26x1.pth")
  torch_format.save(pretrained_weights.torch_state_dict(_params("R26x1"),
                                                        "timm"), path)
  with pytest.raises(errors.CheckpointMismatchError,
                     match=r"stages\.0\.blocks\.0\.conv3\.weight: file "
                           r"\(256, 64, 1, 1\) \(\(1, 1, 64, 256\) in the "
                           r"model's layout\), model \(1, 1, 128, 512\)"):
    _load(path, "R26x2")


def test_extra_tensor_is_named(tmp_path):
  path = str(tmp_path / "r26.npz")
  pretrained_weights.save_bit_npz(_params("R26x1"), path)
  with np.load(path) as f:
    arrays = dict(f)
  arrays["resnet/block5/unit01/a/group_norm/gamma"] = np.ones(4, np.float32)
  np.savez(path, **arrays)
  with pytest.raises(errors.CheckpointMismatchError,
                     match="not in the model: resnet/block5/unit01"):
    _load(path)


def test_pickled_npz_is_refused(tmp_path):
  path = str(tmp_path / "evil.npz")
  np.savez(path, **{"resnet/group_norm/gamma": np.array([object()], dtype=object)})
  with pytest.raises(ValueError, match="allow_pickle"):
    _load(path)


def test_load_bit_npz_builds_the_model_the_file_holds(tmp_path):
  """The README's `pretrained_weights.load_bit_npz(path, model_name)`: the head's
  class count and the input channels come from the file's tensors."""
  path = str(tmp_path / "r26_grey.npz")
  pretrained_weights.save_bit_npz(_params(num_classes=7), path)
  with np.load(path, allow_pickle=False) as f:
    head = f["resnet/head/conv2d/kernel"]
    gamma = f["resnet/block2/unit01/b/group_norm/gamma"]
  params = pretrained_weights.load_bit_npz(path, "R26x1")
  np.testing.assert_array_equal(params["head"]["kernel"], head[0, 0])
  np.testing.assert_array_equal(params["block2_unit01"]["gn2"]["scale"], gamma)
  with pytest.raises(errors.CheckpointMismatchError, match="R50x1|missing"):
    pretrained_weights.load_bit_npz(path, "R50x1")


def _bit_pytorch_state_dict(block_units, wf, head_size, rng):
  """Random tensors under the keys and OIHW shapes of Google's BiT PyTorch
  model (bit_pytorch/models.py: ResNetV2 with root.conv, body.blockN.unitXX
  PreActBottleneck(cin, cout, cmid, stride) holding gn1, conv1, gn2, conv2,
  gn3, conv3 and, where stride != 1 or cin != cout, downsample; head.gn and
  head.conv), written down from its source, not from our mapping."""
  out = {"root.conv.weight": (64 * wf, 3, 7, 7)}
  cin = 64 * wf
  for b, units in enumerate(block_units, 1):
    cmid, cout = 64 * wf * 2 ** (b - 1), 256 * wf * 2 ** (b - 1)
    for u in range(1, units + 1):
      p = f"body.block{b}.unit{u:02d}."
      out.update({p + "gn1.weight": (cin,), p + "gn1.bias": (cin,),
                  p + "conv1.weight": (cmid, cin, 1, 1),
                  p + "gn2.weight": (cmid,), p + "gn2.bias": (cmid,),
                  p + "conv2.weight": (cmid, cmid, 3, 3),
                  p + "gn3.weight": (cmid,), p + "gn3.bias": (cmid,),
                  p + "conv3.weight": (cout, cmid, 1, 1)})
      if u == 1:  # stride 2 (blocks 2-4) or cin != cout (block 1).
        out[p + "downsample.weight"] = (cout, cin, 1, 1)
      cin = cout
  out.update({"head.gn.weight": (cin,), "head.gn.bias": (cin,),
              "head.conv.weight": (head_size, cin, 1, 1),
              "head.conv.bias": (head_size,)})
  return {k: rng.standard_normal(s).astype(np.float32) for k, s in out.items()}


def _as_bit_npz_names(state):
  """The same tensors under BiT .npz names and HWIO layout, by the table in
  bit_pytorch's load_from (each torch tensor is tf2th of a TF variable)."""
  tf_layer = {"gn1": "a/group_norm", "conv1": "a/standardized_conv2d",
              "gn2": "b/group_norm", "conv2": "b/standardized_conv2d",
              "gn3": "c/group_norm", "conv3": "c/standardized_conv2d",
              "downsample": "a/proj/standardized_conv2d"}
  out = {}
  for name, value in state.items():
    value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
    parts = name.split(".")
    if name == "root.conv.weight":
      out["resnet/root_block/standardized_conv2d/kernel"] = value
    elif parts[:2] == ["head", "gn"]:
      out[f"resnet/group_norm/{ {'weight': 'gamma', 'bias': 'beta'}[parts[2]] }"] = value
    elif parts[:2] == ["head", "conv"]:
      out[f"resnet/head/conv2d/{ {'weight': 'kernel', 'bias': 'bias'}[parts[2]] }"] = value
    else:
      _, block, unit, layer, param = parts
      kind = "kernel" if layer.startswith(("conv", "down")) else {
          "weight": "gamma", "bias": "beta"}[param]
      out[f"resnet/{block}/{unit}/{tf_layer[layer]}/{kind}"] = value
  return out


def test_real_bit_pytorch_key_list_loads_as_its_npz_twin(tmp_path):
  """Every tensor of a BiT PyTorch R26x1 state dict is loaded (nothing
  skipped, nothing left fresh), to the same place as the same tensors read
  from a BiT .npz named as bit_pytorch's load_from names them."""
  from big_transfer_med import torch_format  # pylint: disable=g-import-not-at-top
  state = _bit_pytorch_state_dict((2, 2, 2, 2), 1, 10, np.random.default_rng(0))
  assert len(state) == 1 + 8 * 9 + 4 + 4
  torch_path, npz_path = str(tmp_path / "bit.pth"), str(tmp_path / "bit.npz")
  torch_format.save(state, torch_path)
  np.savez(npz_path, **_as_bit_npz_names(state))
  from_torch, report = _load(torch_path)
  from_npz, _ = _load(npz_path)
  assert report["skipped"] == [] and report["initialised"] == []
  assert len(report["loaded"]) == len(state)
  flat_torch = traverse_util.flatten_dict(from_torch)
  flat_npz = traverse_util.flatten_dict(from_npz)
  assert flat_torch.keys() == flat_npz.keys()
  for key in flat_torch:
    np.testing.assert_array_equal(flat_torch[key], flat_npz[key], err_msg=str(key))
  # Spot checks of the layouts: OIHW -> HWIO, the 1x1 head conv -> dense.
  np.testing.assert_array_equal(
      flat_torch[("block2_unit01", "conv_proj", "kernel")][0, 0],
      state["body.block2.unit01.downsample.weight"][:, :, 0, 0].T)
  np.testing.assert_array_equal(flat_torch[("head", "kernel")],
                                state["head.conv.weight"][:, :, 0, 0].T)


def _timm_bit_state_dict_shapes(block_units, wf, num_classes):
  """{name: shape} of timm's ResNetV2 BiT model (timm/models/resnetv2.py:
  stem.conv, stages.I.blocks.J PreActBottleneck with norm1, conv1, norm2,
  conv2, norm3, conv3 and, in each stage's first block, downsample.conv
  (DownsampleConv); norm; ClassifierHead(use_conv=True).fc), written down
  from its source, not from our mapping."""
  out = {"stem.conv.weight": (64 * wf, 3, 7, 7)}
  cin = 64 * wf
  for stage, units in enumerate(block_units):
    cmid, cout = 64 * wf * 2 ** stage, 256 * wf * 2 ** stage
    for block in range(units):
      p = f"stages.{stage}.blocks.{block}."
      out.update({p + "norm1.weight": (cin,), p + "norm1.bias": (cin,),
                  p + "conv1.weight": (cmid, cin, 1, 1),
                  p + "norm2.weight": (cmid,), p + "norm2.bias": (cmid,),
                  p + "conv2.weight": (cmid, cmid, 3, 3),
                  p + "norm3.weight": (cmid,), p + "norm3.bias": (cmid,),
                  p + "conv3.weight": (cout, cmid, 1, 1)})
      if block == 0:
        out[p + "downsample.conv.weight"] = (cout, cin, 1, 1)
      cin = cout
  out.update({"norm.weight": (cin,), "norm.bias": (cin,),
              "head.fc.weight": (num_classes, cin, 1, 1),
              "head.fc.bias": (num_classes,)})
  return out


@pytest.mark.parametrize("style", ["seed", "timm"])
def test_torch_export_has_the_names_and_shapes_of_the_pytorch_model(style):
  """Our params as a seed (bit_pytorch) or timm state dict: exactly the
  other model's tensor names and OIHW shapes, and the values in place."""
  params = _params(num_classes=10)
  state = pretrained_weights.torch_state_dict(params, style)
  expected = ({k: v.shape for k, v in _bit_pytorch_state_dict(
      (2, 2, 2, 2), 1, 10, np.random.default_rng(0)).items()}
              if style == "seed" else _timm_bit_state_dict_shapes(
                  (2, 2, 2, 2), 1, 10))
  assert {k: v.shape for k, v in state.items()} == expected
  conv = {"seed": "body.block3.unit01.conv2.weight",
          "timm": "stages.2.blocks.0.conv2.weight"}[style]
  np.testing.assert_array_equal(
      state[conv], np.transpose(params["block3_unit01"]["conv2"]["kernel"],
                                (3, 2, 0, 1)))
  head = {"seed": "head.conv.weight", "timm": "head.fc.weight"}[style]
  np.testing.assert_array_equal(state[head][:, :, 0, 0],
                                np.asarray(params["head"]["kernel"]).T)


@pytest.mark.slow
def test_export_names_the_timm_model_that_loads_it():
  """timm registers six BiT sizes; for the others export gives the ResNetV2
  arguments the test below builds (depth 26: layers [2, 2, 2, 2])."""
  from big_transfer_med import export  # pylint: disable=g-import-not-at-top
  assert export.timm_model("R101x3") == (
      "timm.create_model('resnetv2_101x3_bit', num_classes=N)")
  hint = export.timm_model("R26x1")
  assert hint.startswith("timm registers no resnetv2_26x1_bit")
  assert "ResNetV2(layers=[2, 2, 2, 2], width_factor=1," in hint
  assert "stem_type='fixed'" in hint and "eps=1e-8" in hint


def test_timm_loads_the_export_strictly_and_gives_our_logits(tmp_path):
  """Where PyTorch + timm are installed (requirements-peers.txt): timm's
  BiT ResNet-v2 loads our timm export with strict=True through
  torch.load(weights_only=True) and computes our logits (float32)."""
  torch = pytest.importorskip("torch")
  pytest.importorskip("timm")
  import functools  # pylint: disable=g-import-not-at-top
  from timm.layers import StdConv2d  # pylint: disable=g-import-not-at-top
  from timm.models import resnetv2  # pylint: disable=g-import-not-at-top
  from big_transfer_med import torch_format  # pylint: disable=g-import-not-at-top
  params = jax.tree.map(lambda x: x * 0.1, _params(num_classes=10))
  path = str(tmp_path / "timm.pth")
  torch_format.save(pretrained_weights.torch_state_dict(params, "timm"), path)
  model = resnetv2.ResNetV2(  # timm's _create_resnetv2_bit at depth 26.
      layers=[2, 2, 2, 2], num_classes=10, stem_type="fixed",
      conv_layer=functools.partial(StdConv2d, eps=1e-8)).eval()
  model.load_state_dict(torch.load(path, weights_only=True), strict=True)
  images = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(
      np.float32)
  ours = np.asarray(models.get_model("R26x1", 10).apply(
      {"params": params}, jnp.asarray(images)))
  with torch.no_grad():
    theirs = model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  assert np.abs(theirs - ours).max() <= 1e-4 * np.abs(ours).max()
