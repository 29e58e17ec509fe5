"""BiT .npz interchange: exact round trip, real naming, clear mismatch errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from big_transfer_med import checkpoints
from big_transfer_med import errors
from big_transfer_med import models


def _params(name="R26x1", num_classes=10, seed=0):
  model = models.get_model(name, num_classes)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(seed),
                          jnp.zeros((1, 32, 32, 3)))["params"]
  leaves, tree = jax.tree.flatten(shapes)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  return jax.tree.unflatten(
      tree, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def _zeros(name="R26x1", num_classes=10, channels=3):
  return checkpoints.params_template(name, num_classes, channels)


def _load(path, name="R26x1", num_classes=10, **kwargs):
  return checkpoints.load_pretrained(path, _zeros(name, num_classes), **kwargs)


def test_round_trip_is_exact_and_uses_bit_names(tmp_path):
  params = _params()
  path = str(tmp_path / "r26.npz")
  checkpoints.save_bit_npz(params, path)
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
  checkpoints.save_bit_npz(params, path)
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
  checkpoints.save_bit_npz(_params("R26x1"), path)
  with pytest.raises(errors.CheckpointMismatchError) as e:
    _load(path, "R50x1")
  message = str(e.value)
  assert path in message and "config.model.name" in message
  assert "block1_unit03/gn1/scale" in message  # Missing.


def test_wrong_width_names_offending_shapes(tmp_path):
  path = str(tmp_path / "r26x1.npz")
  checkpoints.save_bit_npz(_params("R26x1"), path)
  with pytest.raises(errors.CheckpointMismatchError,
                     match=r"79 wrong shapes.*resnet/block1/unit01/a/"
                           r"standardized_conv2d/kernel: file \(1, 1, 64, 64\), "
                           r"model \(1, 1, 128, 128\)"):
    _load(path, "R26x2")


def test_extra_tensor_is_named(tmp_path):
  path = str(tmp_path / "r26.npz")
  checkpoints.save_bit_npz(_params("R26x1"), path)
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
  """The README's `checkpoints.load_bit_npz(path, model_name)`: the head's
  class count and the input channels come from the file's tensors."""
  path = str(tmp_path / "r26_grey.npz")
  checkpoints.save_bit_npz(_params(num_classes=7), path)
  with np.load(path, allow_pickle=False) as f:
    head = f["resnet/head/conv2d/kernel"]
    gamma = f["resnet/block2/unit01/b/group_norm/gamma"]
  params = checkpoints.load_bit_npz(path, "R26x1")
  np.testing.assert_array_equal(params["head"]["kernel"], head[0, 0])
  np.testing.assert_array_equal(params["block2_unit01"]["gn2"]["scale"], gamma)
  with pytest.raises(errors.CheckpointMismatchError, match="R50x1|missing"):
    checkpoints.load_bit_npz(path, "R50x1")
