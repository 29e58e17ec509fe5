"""Reading back a run directory (config.json, labels.json, checkpoints/)."""
import json
import os
from typing import Any, Dict

import ml_collections
from flax import traverse_util

from big_transfer_med import checkpoints
from big_transfer_med import config_lib
from big_transfer_med import errors


def _read_json(workdir: str, name: str) -> Dict[str, Any]:
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    raise errors.ConfigError(
        f"{path} not found: --workdir must be a run directory written by "
        "python -m big_transfer_med.main.")
  with open(path) as f:
    return json.load(f)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config (config.json over the base config, so new keys exist)."""
  config = config_lib.base_config()
  with config.unlocked():
    config.update_from_flattened_dict(
        {k: tuple(v) if isinstance(v, list) else v for k, v in
         traverse_util.flatten_dict(_read_json(workdir, "config.json"),
                                    sep=".").items()})
  return config


def load_labels(workdir: str) -> Dict[str, Any]:
  """{'label_names': [...], 'multi_label': bool} of the run."""
  return _read_json(workdir, "labels.json")


def load_params(workdir: str) -> Dict[str, Any]:
  """Params of the run's latest checkpoint."""
  arrays, _ = checkpoints.read_pretrained(workdir)
  return traverse_util.unflatten_dict(
      {tuple(k.split("/")): v for k, v in arrays.items()})


def load_checkpoint_params(path: str, model_name: str,
                           channels: int = 3) -> Dict[str, Any]:
  """Body params of `model_name` from any supported checkpoint (head dropped)."""
  params, _ = checkpoints.load_pretrained(
      path, checkpoints.params_template(model_name, None, channels))
  return params
