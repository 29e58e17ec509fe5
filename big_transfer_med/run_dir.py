"""A run's own directory: its checkpoints (save, restore, resume), its
config.json (checked on resume), and reading a finished run back.

  WORKDIR/config.json   the resolved config (HyperRule applied)
  WORKDIR/labels.json   {'label_names': [...], 'multi_label': bool}
  WORKDIR/results.json  the final summary
  WORKDIR/checkpoints/  orbax CheckpointManager of the train state
"""
import json
import os
import time
from typing import Any, Dict, List

import flax
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

from big_transfer_med import atomic_files
from big_transfer_med import config_lib
from input_pipeline import errors

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
LABELS_FILE = "labels.json"
FEWSHOT_FILE = "fewshot_examples.json"
CHECKPOINTS = "checkpoints"


def write_json(path: str, obj) -> None:
  """Writes JSON atomically (a crash never leaves half a file)."""
  with atomic_files.open_atomically(path) as f:
    json.dump(obj, f, indent=2, sort_keys=True)


class CheckpointStore:
  """orbax CheckpointManager of a run's (unreplicated) train state."""

  def __init__(self, workdir: str, every_steps: int, keep: int):
    self._every = every_steps
    self._manager = ocp.CheckpointManager(
        os.path.join(workdir, CHECKPOINTS),
        # A save is written to a temporary directory and renamed when
        # complete, so a crash mid-save leaves the previous checkpoints as
        # they were; the leftover is removed on the next start.
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True))

  def latest_step(self):
    return self._manager.latest_step()

  def restore(self, template):
    """The latest checkpoint, in the structure of `template`."""
    step = self._manager.latest_step()
    target = flax.serialization.to_state_dict(jax.device_get(template))
    restored = self._manager.restore(step, args=ocp.args.StandardRestore(target))
    return flax.serialization.from_state_dict(template, restored)

  def due(self, step: int) -> bool:
    """Whether `step` is a multiple of checkpoint.every_steps."""
    return bool(self._every and step % self._every == 0)

  def save(self, step: int, state, force: bool = False) -> bool:
    """Saves `state` (unreplicated, on the host) at `step`."""
    tree = flax.serialization.to_state_dict(state)
    return self._manager.save(step, args=ocp.args.StandardSave(tree),
                              force=force)

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def has_checkpoints(workdir: str) -> bool:
  return os.path.isdir(os.path.join(workdir, CHECKPOINTS))


# Keys that change how a run is watched, not what it computes: a resumed run
# may change them freely.
RUN_NEUTRAL_KEYS = (
    "log_every_steps", "profile_steps", "evals.", "primary_metric", "checkpoint.",
    "on_nonfinite", "max_consecutive_nonfinite", "data.data_dir",
    "data.prefetch", "data.num_threads", "data.eval_batch_size",
    "data.eval_split")


def changed_keys(saved: Dict[str, Any], config) -> List[str]:
  """Keys whose value differs between a saved config.json and `config`,
  except RUN_NEUTRAL_KEYS, as 'key: old -> new'."""
  old = traverse_util.flatten_dict(saved, sep=".")
  new = traverse_util.flatten_dict(  # Through JSON: tuples become lists.
      json.loads(json.dumps(config.to_dict())), sep=".")
  return [f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}"
          for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k) and not any(
              k == n or (n.endswith(".") and k.startswith(n))
              for n in RUN_NEUTRAL_KEYS)]


def check_saved_config(workdir: str, config, allow_change: bool) -> None:
  """Refuses to continue a workdir whose run was configured differently;
  with `allow_change`, keeps the old config.json under a dated name."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  changed = changed_keys(saved, config)
  if not changed:
    return
  if not allow_change:
    raise errors.ConfigError(
        f"{workdir} holds a run with another config ({path}); continuing it "
        "with this one would not be the same run:\n  " + "\n  ".join(changed)
        + "\nUse another --workdir, or pass --allow_config_change to "
        "continue this run with the new values.")
  if jax.process_index() == 0:
    kept = os.path.join(
        workdir, f"config.before_{time.strftime('%Y%m%d-%H%M%S')}.json")
    os.replace(path, kept)
    logging.warning("Config changed on resume (the old one is kept as %s): "
                    "%s", kept, "; ".join(changed))


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
  saved = _read_json(workdir, CONFIG_FILE)
  config = config_lib.base_config()
  with config.unlocked():
    # Evaluators are a mapping by name: the run's own replace the defaults.
    config.evals = ml_collections.ConfigDict(saved.pop("evals", {}))
    config.update_from_flattened_dict(
        {k: tuple(v) if isinstance(v, list) else v for k, v in
         traverse_util.flatten_dict(saved, sep=".").items()})
  return config


def load_labels(workdir: str) -> Dict[str, Any]:
  """{'label_names': [...], 'multi_label': bool} of the run."""
  return _read_json(workdir, LABELS_FILE)


def _read_latest(path: str) -> Dict[str, Any]:
  """The raw state dict of the latest checkpoint of a run of ours (`path` is
  its workdir or checkpoints/ folder)."""
  directory = os.path.join(path, CHECKPOINTS)
  directory = directory if os.path.isdir(directory) else path
  manager = ocp.CheckpointManager(os.path.abspath(directory))
  step = manager.latest_step()
  if step is None:
    raise errors.CheckpointMismatchError(
        f"{path!r} holds no checkpoint: give a workdir of a finished run (or "
        "its checkpoints/ folder), a .npz or a .pth.tar.")
  restored = manager.restore(step)
  manager.close()
  logging.info("Read the checkpoint of %s at step %d.", directory, step)
  return restored


def load_variables(workdir: str) -> Dict[str, Any]:
  """The model variables ({'params': ..., other collections}) of the run's
  latest checkpoint (`workdir` or its checkpoints/ folder), as numpy arrays."""
  restored = _read_latest(workdir)
  variables = {"params": restored["params"],
               **(restored.get("model_state") or {})}
  return jax.tree.map(np.asarray, variables)
