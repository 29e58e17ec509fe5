"""Pre-trained weights to start from: BiT .npz files, PyTorch BiT models,
and runs of ours (their latest checkpoint; see run_dir).

BiT .npz files use flat TF variable names; our parameter tree mirrors them
one-to-one (PyTorch names map likewise, see _from_torch_name):

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
import pickle
import re
import zipfile
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from big_transfer_med import atomic_files
from big_transfer_med import models
from big_transfer_med import run_dir
from big_transfer_med import torch_format
from input_pipeline import errors

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
  with atomic_files.open_atomically(path, "wb") as f:
    np.savez(f, **arrays)


def read_bit_npz(path: str) -> Dict[str, np.ndarray]:
  """Reads a BiT .npz into {normalised name: array} (never unpickles)."""
  with np.load(path, allow_pickle=False) as data:
    return {_NUMBERED_CONV_RE.sub("/standardized_conv2d/", k): data[k]
            for k in data.files}


_BIT_UNIT_RE = re.compile(r"^resnet/block(\d+)/unit(\d+)/(.+)/(\w+)$")
_BIT_TO_LAYER = {v: k for k, v in _LAYER_TO_BIT.items()}
_BIT_TO_PARAM = {v: k for k, v in _PARAM_TO_BIT.items()}


def _from_bit_name(name: str) -> Optional[str]:
  """Our flat name ('block1_unit01/conv1/kernel') of a BiT .npz name."""
  if name == "resnet/root_block/standardized_conv2d/kernel":
    return "root_block/kernel"
  if name.startswith("resnet/group_norm/"):
    param = _BIT_TO_PARAM.get(name.rsplit("/", 1)[1])
    return f"norm_pre_head/{param}" if param else None
  if name in ("resnet/head/conv2d/kernel", "resnet/head/conv2d/bias"):
    return "head/" + name.rsplit("/", 1)[1]
  match = _BIT_UNIT_RE.match(name)
  if not match or match.group(3) not in _BIT_TO_LAYER:
    return None
  block, unit, layer, param = match.groups()
  return (f"block{int(block)}_unit{int(unit):02d}/{_BIT_TO_LAYER[layer]}/"
          f"{_BIT_TO_PARAM.get(param, param)}")


# PyTorch names, OIHW kernels, the head a 1x1 convolution, in two families:
#   'seed': Google's bit_pytorch model (and the seed paper's model.pth.tar):
#     root.conv, body.blockN.unitXX.{gn1,conv1,gn2,conv2,gn3,conv3,downsample},
#     head.gn (before_head.gn in some copies), head.conv;
#   'timm': timm's resnetv2_<depth>x<width>_bit: stem.conv,
#     stages.I.blocks.J.{norm1,conv1,norm2,conv2,norm3,conv3,downsample.conv},
#     norm, head.fc.
# 'module.' prefixes (DataParallel) are dropped when reading.
TORCH_STYLES = ("seed", "timm")
_TORCH_LAYERS = {  # Our layer -> its name in each style.
    "gn1": ("gn1", "norm1"), "conv1": ("conv1", "conv1"),
    "gn2": ("gn2", "norm2"), "conv2": ("conv2", "conv2"),
    "gn3": ("gn3", "norm3"), "conv3": ("conv3", "conv3"),
    "conv_proj": ("downsample", "downsample.conv"),
}
_TORCH_TOP = {  # Our top-level layer -> (seed, timm) prefix.
    "root_block": ("root.conv", "stem.conv"),
    "norm_pre_head": ("head.gn", "norm"),
    "head": ("head.conv", "head.fc"),
}
_TORCH_PARAM_NAME = {"scale": "weight", "bias": "bias", "kernel": "weight"}


def _torch_name(path, style: str) -> str:
  """PyTorch name (TORCH_STYLES) of a flattened path of our params."""
  i = TORCH_STYLES.index(style)
  param = _TORCH_PARAM_NAME[path[-1]]
  if path[0] in _TORCH_TOP:
    return f"{_TORCH_TOP[path[0]][i]}.{param}"
  block, unit = (int(g) for g in _UNIT_RE.match(path[0]).groups())
  layer = _TORCH_LAYERS[path[1]][i]
  if style == "seed":
    return f"body.block{block}.unit{unit:02d}.{layer}.{param}"
  return f"stages.{block - 1}.blocks.{unit - 1}.{layer}.{param}"


def torch_state_dict(params: Dict[str, Any], style: str
                     ) -> Dict[str, np.ndarray]:
  """`params` as a float32 PyTorch state dict of `style` (TORCH_STYLES)."""
  if style not in TORCH_STYLES:
    raise errors.ConfigError(f"PyTorch style {style!r}: expected one of "
                             f"{TORCH_STYLES}.")
  out = {}
  for path, value in traverse_util.flatten_dict(jax.device_get(params)).items():
    value = np.asarray(value, np.float32)
    if path == ("head", "kernel"):
      value = value.T[:, :, None, None]  # Dense [C, N] -> 1x1 conv [N, C, 1, 1].
    elif value.ndim == 4:
      value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW.
    out[_torch_name(path, style)] = np.ascontiguousarray(value)
  return out


# Any style's top-level prefix -> our layer ('before_head.gn' in some copies).
_TORCH_TOP_TO_OURS = {name: ours for ours, names in _TORCH_TOP.items()
                      for name in names}
_TORCH_TOP_TO_OURS["before_head.gn"] = "norm_pre_head"
_TORCH_UNIT_RE = re.compile(
    r"^(?:body\.block(\d+)\.unit(\d+)|stages\.(\d+)\.blocks\.(\d+))\."
    r"(gn[123]|norm[123]|conv[123]|downsample(?:\.conv)?)\.(weight|bias)$")
_TORCH_LAYER_TO_OURS = {name: ours for ours, names in _TORCH_LAYERS.items()
                        for name in names}
_TORCH_LAYER_TO_OURS["downsample.conv"] = "conv_proj"  # Also in seed copies.


def _from_bit_torch_name(name: str) -> Optional[str]:
  """Our flat name of a PyTorch BiT name of either style (None if unknown)."""
  prefix, _, param = name.rpartition(".")
  if prefix in _TORCH_TOP_TO_OURS:
    ours = _TORCH_TOP_TO_OURS[prefix]
    if ours == "root_block":
      return "root_block/kernel" if param == "weight" else None
    if ours == "head":
      return f"head/{'kernel' if param == 'weight' else param}"
    return f"norm_pre_head/{'scale' if param == 'weight' else param}"
  match = _TORCH_UNIT_RE.match(name)
  if not match:
    return None
  seed_block, seed_unit, timm_stage, timm_block, layer, param = match.groups()
  block, unit = ((int(seed_block), int(seed_unit)) if seed_block else
                 (int(timm_stage) + 1, int(timm_block) + 1))
  ours = _TORCH_LAYER_TO_OURS[layer]
  kind = ("kernel" if param == "weight" else "bias") if ours.startswith(
      "conv") else ("scale" if param == "weight" else "bias")
  return f"block{block}_unit{unit:02d}/{ours}/{kind}"


# torchvision's ResNet (models.ResNetV1): conv1, bn1, layerI.J.{convK, bnK,
# downsample.0 (conv), downsample.1 (BatchNorm)}, fc. BatchNorm's running
# averages go to the batch_stats collection (mean, var).
_TORCHVISION_RE = re.compile(
    r"^(?:(conv1|bn1|fc)|layer(\d+)\.(\d+)\.(conv\d|bn\d|downsample\.[01]))"
    r"\.(weight|bias|running_mean|running_var)$")
_TORCHVISION_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean",
                   "running_var": "var"}
_TORCHVISION_DOWNSAMPLE = {"downsample.0": "downsample_conv",
                           "downsample.1": "downsample_bn"}


def _from_torchvision_name(name: str) -> Optional[str]:
  """Our flat name of a torchvision ResNet name (None if unknown)."""
  match = _TORCHVISION_RE.match(name)
  if not match:
    return None
  top, stage, unit, layer, param = match.groups()
  if top == "fc":
    return {"weight": "head/kernel", "bias": "head/bias"}.get(param)
  module = top or (f"layer{stage}_{unit}/"
                   f"{_TORCHVISION_DOWNSAMPLE.get(layer, layer)}")
  if module.endswith(("conv1", "conv2", "conv3", "_conv")):
    return f"{module}/kernel" if param == "weight" else None
  return f"{module}/{_TORCHVISION_BN[param]}"


def _from_torch_name(name: str) -> Optional[str]:
  """Our flat name of a PyTorch name (BiT styles or torchvision's ResNet;
  DataParallel's 'module.' dropped), None if it is none of them."""
  name = name[len("module."):] if name.startswith("module.") else name
  return _from_bit_torch_name(name) or _from_torchvision_name(name)


def _from_torch_array(name: str, value: np.ndarray) -> np.ndarray:
  value = np.asarray(value, np.float32)
  if name == "head/kernel":  # A 1x1 conv [N, C, 1, 1] or a Linear [N, C].
    return value.reshape(value.shape[:2]).T
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO.
  return value


# The first parameter of each known backbone layout: where it sits in a
# file gives the prefix the file's wrapper put before the backbone's names.
_FIRST_BACKBONE_NAMES = ("layer1.0.conv1.weight",
                         "body.block1.unit01.conv1.weight",
                         "stages.0.blocks.0.conv1.weight")
# A second backbone in one file is a training-time copy (MoCo's momentum
# encoder_k, BYOL's target network): never the one to load.
_COPY_BACKBONES = ("encoder_k.", "target_network.", "momentum", "teacher.")


def backbone_prefix(names: Sequence[str], path: str) -> str:
  """The prefix before the backbone's names in a PyTorch file: '' for a
  plain state dict, e.g. 'module.encoder_q.' for MoCo, 'module.' for SwAV
  or DataParallel, 'backbone.' / 'online_network.' / 'encoder.' for others.
  Fails naming the candidates if a file holds two backbones neither of
  which is a known training-time copy."""
  candidates = sorted({n[:-len(first)] for n in names
                       for first in _FIRST_BACKBONE_NAMES
                       if n.endswith(first) and (
                           n == first or n[-len(first) - 1] == ".")})
  chosen = [c for c in candidates
            if not any(copy in c for copy in _COPY_BACKBONES)]
  if len(chosen) > 1:
    raise errors.CheckpointMismatchError(
        f"{path} holds several backbones (prefixes {chosen}): save the one "
        "to start from alone, e.g. {k[len(PREFIX):]: v for k, v in "
        "state_dict.items() if k.startswith(PREFIX)}.")
  return chosen[0] if chosen else ""


class Checkpoint(NamedTuple):
  """What read_pretrained read."""
  arrays: Dict[str, np.ndarray]  # Our flat name -> array.
  file_names: Dict[str, str]  # Our flat name -> its name in the file.
  source: str  # What was read (a workdir's chosen step, or the file).
  # Tensors in the file that no known layout names, or outside the
  # backbone: projection and prediction heads, momentum encoders, counters.
  unknown: Tuple[str, ...] = ()
  # Our flat name -> its shape as stored in the file (before conversion to
  # our layout; None: the same as in `arrays`).
  file_shapes: Optional[Dict[str, Tuple[int, ...]]] = None


def read_pretrained(spec: str) -> Checkpoint:
  """Reads any supported checkpoint.

  Formats: a workdir of ours (orbax; RUN = its best checkpoint if it kept
  one, else its latest; RUN:best, RUN:latest), a BiT .npz, a PyTorch state
  dict (.pth/.pt/.tar/.bin) of a BiT model (bit_pytorch or timm names) or
  a torchvision ResNet, plain or as released by self-supervised methods
  (under 'state_dict' / 'model' / 'network', the backbone under a prefix:
  backbone_prefix).
  """
  path, choice = run_dir.split_choice(spec)
  if not os.path.exists(path) or (choice and not os.path.isdir(path)):
    raise errors.CheckpointMismatchError(
        f"config.init.checkpoint={spec!r}: {path!r} does not exist" +
        (" as a run directory" if os.path.exists(path) else "") + ".")
  try:
    return _read_pretrained(path, choice)
  except errors.UserError:
    raise
  except _UNREADABLE as e:
    raise errors.CheckpointMismatchError(
        f"{path} cannot be read as a checkpoint ({type(e).__name__}: "
        f"{' '.join(str(e).split())[:200]}): it is empty, truncated, holds "
        "pickled objects, or is no checkpoint at all. Copy or download it "
        "again, or give another config.init.checkpoint.") from e


# What reading a damaged or foreign file raises.
_UNREADABLE = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile,
               pickle.UnpicklingError)


def _flatten(variables) -> Tuple[Dict[str, Any], Dict[str, str]]:
  """Model variables {collection: tree} -> ({flat name: value}, {flat name:
  collection}). Collections' leaf names differ (params: kernel, scale,
  bias; batch_stats: mean, var), so one flat namespace holds them all."""
  flat, collection_of = {}, {}
  for collection, tree in variables.items():
    for path, value in traverse_util.flatten_dict(tree).items():
      flat["/".join(path)] = value
      collection_of["/".join(path)] = collection
  return flat, collection_of


def _read_pretrained(path: str, choice: str):
  if os.path.isdir(path):
    variables, source = run_dir.read_checkpoint(path, choice)
    arrays = _flatten(variables)[0]
    return Checkpoint(arrays, {k: k for k in arrays}, source)
  if path.endswith(".npz"):
    raw, convert, prefix = read_bit_npz(path), _from_bit_name, ""
    to_array = lambda ours, v: _from_bit_array(  # noqa: E731
        tuple(ours.split("/")), v)
  elif path.endswith((".pth", ".pt", ".tar", ".bin")):
    raw, convert = torch_format.load_state_dict(path), _from_torch_name
    to_array, prefix = _from_torch_array, backbone_prefix(list(raw), path)
  else:
    raise errors.CheckpointMismatchError(
        f"config.init.checkpoint={path!r}: unknown format; expected a workdir, "
        "a .npz (BiT) or a .pth/.pth.tar (PyTorch: BiT, torchvision ResNet, "
        "self-supervised ResNet-50).")
  arrays, file_names, file_shapes, unknown = {}, {}, {}, []
  for name, value in raw.items():
    ours = convert(name[len(prefix):] if name.startswith(prefix) else name)
    if ours:
      arrays[ours], file_names[ours] = to_array(ours, value), name
      file_shapes[ours] = tuple(np.shape(value))
    else:
      unknown.append(name)
  return Checkpoint(arrays, file_names, path, tuple(unknown), file_shapes)


def _shape_mismatch(checkpoint: Checkpoint, name: str, model_shape) -> str:
  """'<name in the file>: file <shape as stored>, model <shape>', adding the
  file's tensor in the model's layout where the file stores it transposed
  (PyTorch's OIHW kernels, BiT's squeezed ones)."""
  ours = checkpoint.arrays[name].shape
  stored = (checkpoint.file_shapes or {}).get(name, ours)
  layout = f" ({ours} in the model's layout)" if stored != ours else ""
  return (f"{checkpoint.file_names[name]}: file {stored}{layout}, "
          f"model {model_shape}")


def load_pretrained(path: str, variables: Dict[str, Any],
                    dont_load: Sequence[str] = ()
                    ) -> Tuple[Dict[str, Any], Dict[str, List[str]]]:
  """Returns the model `variables` ({'params': ..., 'batch_stats': ...})
  with every tensor taken from the checkpoint at `path`, and a report
  {loaded, skipped (in the file, unused), initialised: names; checkpoint:
  what was read}.

  The head keeps its fresh initialisation when its shape differs (a new
  class count) or the file has none, a U-Net's decoder when the file (a
  classifier's) has none; names matching a `dont_load` regex
  stay fresh too. Any other missing, unexpected or wrongly-shaped tensor is
  an error naming them. A PyTorch file may wrap its backbone (see
  backbone_prefix); what lies outside it is skipped.
  """
  checkpoint = read_pretrained(path)
  variables, report = _fit(path, checkpoint, variables, dont_load)
  return variables, dict(report, checkpoint=checkpoint.source)


def _fit(path: str, checkpoint: Checkpoint, variables: Dict[str, Any],
         dont_load: Sequence[str] = ()
         ) -> Tuple[Dict[str, Any], Dict[str, List[str]]]:
  """load_pretrained on the checkpoint read from `path`."""
  arrays, file_names = checkpoint.arrays, checkpoint.file_names
  flat, collection_of = _flatten(jax.device_get(variables))
  patterns = [re.compile(p) for p in dont_load]
  report = {"loaded": [], "skipped": [], "initialised": []}
  missing, wrong_shape, out = [], [], {}
  for name, fresh in flat.items():
    out[name] = fresh
    if any(p.fullmatch(name) for p in patterns):
      report["initialised"].append(name)
    elif name.startswith("head/") and (
        name not in arrays or arrays[name].shape != fresh.shape):
      report["initialised"].append(name)  # No head, or another class count.
    elif name.startswith("decoder/") and name not in arrays:
      report["initialised"].append(name)  # A U-Net on a classifier's encoder.
    elif name not in arrays:
      missing.append(name)
    elif arrays[name].shape != fresh.shape:
      wrong_shape.append(_shape_mismatch(checkpoint, name, fresh.shape))
    else:
      out[name] = np.asarray(arrays[name], fresh.dtype)
      report["loaded"].append(name)
  unused = [k for k in arrays if k not in flat]
  report["skipped"] = sorted([file_names[k] for k in unused]
                             + list(checkpoint.unknown))
  # An unused head is a replaced head; other unused model tensors mean
  # another model. Tensors no layout names are skipped (reported).
  unexpected = [file_names[k] for k in unused if not k.startswith("head/")]
  problems = []
  if wrong_shape:
    problems.append("wrong shape: " + "; ".join(wrong_shape[:10]))
  if missing:
    problems.append("missing: " + ", ".join(missing[:10]))
    if checkpoint.unknown:
      problems.append("in the file, named by no known layout: " +
                      ", ".join(checkpoint.unknown[:10]))
  if unexpected:
    problems.append("not in the model: " + ", ".join(sorted(unexpected)[:10]))
  if problems:
    raise errors.CheckpointMismatchError(
        f"{path} does not fit the model ({len(wrong_shape)} wrong shapes, "
        f"{len(missing)} missing, {len(unexpected)} unexpected tensors). " +
        " | ".join(problems) + ". Check config.model.name (family, depth and "
        "width) and config.data.channels; config.init.dont_load lists "
        "tensors to leave freshly initialised.")
  fitted = {}
  for name, value in out.items():
    fitted.setdefault(collection_of[name], {})[tuple(name.split("/"))] = value
  return {c: traverse_util.unflatten_dict(tree)
          for c, tree in fitted.items()}, report


def variables_template(model_name: str, num_classes: Optional[int] = None,
                       channels: int = 3) -> Dict[str, Any]:
  """Zero variables of `model_name` (with a `num_classes` head, or none):
  params, and batch_stats for BatchNorm models."""
  model = models.get_model(model_name, num_classes)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, 32, 32, channels)))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                      flax.core.unfreeze(shapes))


def params_template(model_name: str, num_classes: Optional[int] = None,
                    channels: int = 3) -> Dict[str, Any]:
  """Zero params of `model_name` (with a `num_classes` head, or none)."""
  return variables_template(model_name, num_classes, channels)["params"]


def load_bit_npz(path: str, model_name: str) -> Dict[str, Any]:
  """Params of `model_name` from a public BiT .npz file, head included when
  the file has one; a file that does not fit the model fails naming every
  missing, unexpected and wrongly-shaped tensor (see load_pretrained)."""
  if not path.endswith(".npz"):
    raise errors.CheckpointMismatchError(
        f"{path} is not a .npz file; load_pretrained reads every format.")
  checkpoint = read_pretrained(path)  # Read once: files are large.
  head = checkpoint.arrays.get("head/kernel")
  root = checkpoint.arrays.get("root_block/kernel")
  template = variables_template(
      model_name, None if head is None else head.shape[-1],
      3 if root is None else root.shape[2])
  return _fit(path, checkpoint, template)[0]["params"]


def load_body_variables(path: str, model_name: str,
                        channels: int = 3) -> Dict[str, Any]:
  """Variables of `model_name` without a head from any supported checkpoint."""
  return load_pretrained(path, variables_template(model_name, None,
                                                  channels))[0]
