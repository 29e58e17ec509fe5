"""Interchange with the public BiT checkpoints (.npz, flat TF variable names).

Our parameter tree mirrors the BiT layout one-to-one:

  root_block/kernel                  <-> resnet/root_block/standardized_conv2d/kernel
  blockN_unitXX/gn1/{scale,bias}     <-> resnet/blockN/unitXX/a/group_norm/{gamma,beta}
  blockN_unitXX/conv1/kernel         <-> resnet/blockN/unitXX/a/standardized_conv2d/kernel
  blockN_unitXX/conv_proj/kernel     <-> resnet/blockN/unitXX/a/proj/standardized_conv2d/kernel
  blockN_unitXX/{gn2,conv2}          <-> .../b/{group_norm,standardized_conv2d}
  blockN_unitXX/{gn3,conv3}          <-> .../c/{group_norm,standardized_conv2d}
  norm_pre_head/{scale,bias}         <-> resnet/group_norm/{gamma,beta}
  head/{kernel,bias}                 <-> resnet/head/conv2d/{kernel,bias}  (1x1 conv)
"""
import os
import re
import tempfile
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from big_transfer_med import errors
from big_transfer_med import models

_UNIT_RE = re.compile(r"^block(\d+)_unit(\d+)$")
_LAYER_TO_BIT = {
    "gn1": "a/group_norm", "conv1": "a/standardized_conv2d",
    "conv_proj": "a/proj/standardized_conv2d",
    "gn2": "b/group_norm", "conv2": "b/standardized_conv2d",
    "gn3": "c/group_norm", "conv3": "c/standardized_conv2d",
}
_PARAM_TO_BIT = {"scale": "gamma", "bias": "beta", "kernel": "kernel"}
# Some released files number their convolutions (standardized_conv2d_3).
_NUMBERED_CONV_RE = re.compile(r"/standardized_conv2d_\d+/")


def _bit_name(path) -> str:
  """Maps a flattened path of our params to its BiT .npz name."""
  top = path[0]
  if top == "root_block":
    return "resnet/root_block/standardized_conv2d/kernel"
  if top == "norm_pre_head":
    return f"resnet/group_norm/{_PARAM_TO_BIT[path[1]]}"
  if top == "head":
    return f"resnet/head/conv2d/{path[1]}"
  match = _UNIT_RE.match(top)
  if not match or len(path) != 3 or path[1] not in _LAYER_TO_BIT:
    raise KeyError(f"Parameter {'/'.join(path)} has no BiT .npz name.")
  block, unit = int(match.group(1)), int(match.group(2))
  return (f"resnet/block{block}/unit{unit:02d}/{_LAYER_TO_BIT[path[1]]}/"
          f"{_PARAM_TO_BIT[path[2]]}")


def _to_bit_array(path, value):
  value = np.asarray(value, np.float32)
  if path == ("head", "kernel"):
    return value[None, None]  # Dense [C, N] -> 1x1 conv [1, 1, C, N].
  return value


def _from_bit_array(path, value):
  if path == ("head", "kernel") and value.ndim == 4:
    return value[0, 0]
  return value


def save_bit_npz(params: Dict[str, Any], path: str) -> None:
  """Writes `params` as a BiT .npz (atomically: a reader never sees half a file)."""
  flat = traverse_util.flatten_dict(jax.device_get(params))
  arrays = {_bit_name(k): _to_bit_array(k, v) for k, v in flat.items()}
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(suffix=".npz", dir=directory)
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def read_bit_npz(path: str) -> Dict[str, np.ndarray]:
  """Reads a BiT .npz into {normalised name: array} (never unpickles)."""
  with np.load(path, allow_pickle=False) as data:
    return {_NUMBERED_CONV_RE.sub("/standardized_conv2d/", k): data[k]
            for k in data.files}


def load_bit_npz(path: str, model_name: str) -> Dict[str, Any]:
  """Returns params of `model_name` from a BiT .npz (head included if present).

  Raises CheckpointMismatchError naming every missing, unexpected or
  wrongly-shaped tensor.
  """
  arrays = read_bit_npz(path)
  head_kernel = arrays.get("resnet/head/conv2d/kernel")
  num_classes = int(head_kernel.shape[-1]) if head_kernel is not None else None
  in_channels = int(arrays["resnet/root_block/standardized_conv2d/kernel"]
                    .shape[2]) if (
                        "resnet/root_block/standardized_conv2d/kernel"
                        in arrays) else 3
  model = models.get_model(model_name, num_classes)
  expected = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, 32, 32, in_channels)))["params"]
  expected = traverse_util.flatten_dict(expected)

  params, missing, wrong_shape = {}, [], []
  for key, spec in expected.items():
    name = _bit_name(key)
    if name not in arrays:
      missing.append(name)
      continue
    value = _from_bit_array(key, arrays[name])
    if value.shape != spec.shape:
      wrong_shape.append(f"{name}: file {value.shape}, {model_name} {spec.shape}")
      continue
    params[key] = value.astype(np.float32)
  unexpected = sorted(set(arrays) - {_bit_name(k) for k in expected})
  problems = []
  if wrong_shape:
    problems.append("wrong shape: " + "; ".join(wrong_shape[:10]))
  if missing:
    problems.append("missing: " + ", ".join(missing[:10]))
  if unexpected:
    problems.append("not in the model: " + ", ".join(unexpected[:10]))
  if problems:
    raise errors.CheckpointMismatchError(
        f"{path} does not fit model {model_name} "
        f"({len(wrong_shape)} wrong shapes, {len(missing)} missing, "
        f"{len(unexpected)} unexpected tensors). " + " | ".join(problems) +
        ". Check that the file is a BiT checkpoint of the same depth and width.")
  return traverse_util.unflatten_dict(params)
