"""A run's own directory: its checkpoints (save, restore, resume), its
config.json (checked on resume), and reading a finished run back.

  WORKDIR/config.json   the resolved config (HyperRule applied)
  WORKDIR/labels.json   {'label_names': [...], 'multi_label': bool}
  WORKDIR/results.json  the final summary
  WORKDIR/checkpoints/  orbax CheckpointManager of the train state
  WORKDIR/best/         the variables at the best config.checkpoint.best_metric
"""
import json
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

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
BEST = "best"
# How a run is named as a checkpoint to read: RUN (its best checkpoint if it
# kept one, else its latest), RUN:best or RUN:latest.
CHOICES = ("best", "latest")


def write_json(path: str, obj) -> None:
  """Writes JSON atomically (a crash never leaves half a file)."""
  with atomic_files.open_atomically(path) as f:
    json.dump(obj, f, indent=2, sort_keys=True)


class CheckpointStore:
  """orbax CheckpointManager of a run's (unreplicated) train state, as
  config.checkpoint (`settings`) asks: every_steps, keep, async_save."""

  def __init__(self, workdir: str, settings):
    self._every = settings.every_steps
    self.wait_seconds = 0.0
    self._manager = ocp.CheckpointManager(
        os.path.join(workdir, CHECKPOINTS),
        # A save is written to a temporary directory and renamed when
        # complete, so a crash mid-save leaves the previous checkpoints as
        # they were; the leftover is removed on the next start.
        options=ocp.CheckpointManagerOptions(
            max_to_keep=settings.keep, create=True,
            cleanup_tmp_directories=True,
            enable_async_checkpointing=settings.async_save))

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

  def save(self, step: int, get_state: Callable[[], Any],
           force: bool = False) -> Optional[float]:
    """Saves get_state() (unreplicated, on the host) at `step`, unless orbax
    finds it not due. Returns the seconds the caller waited (with async
    saves: for the state's copy, not the write), or None if not saved.
    Their sum is `wait_seconds`."""
    started = time.perf_counter()
    tree = flax.serialization.to_state_dict(get_state())
    if not self._manager.save(step, args=ocp.args.StandardSave(tree),
                              force=force):
      return None
    waited = time.perf_counter() - started
    self.wait_seconds += waited
    return waited

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


class BestCheckpoint:
  """orbax CheckpointManager (WORKDIR/best/) of the variables at the step
  where `metric` ('<evaluator>/<metric>') was best: lowest for a loss,
  highest otherwise. The best value so far is read back from orbax's own
  metrics record, so a resumed run keeps comparing against it."""

  def __init__(self, workdir: str, metric: str):
    self.metric = metric
    self._evaluator, self._key = metric.split("/")
    self._lower_is_better = self._key == "loss"
    self._manager = ocp.CheckpointManager(
        os.path.join(workdir, BEST),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda m: m[metric],
            best_mode="min" if self._lower_is_better else "max",
            create=True, cleanup_tmp_directories=True))

  def best(self) -> Tuple[Any, Any]:
    """(step, value) of the kept checkpoint, or (None, None)."""
    step = self._manager.best_step()
    if step is None:
      return None, None
    return step, self._manager.metrics(step)[self.metric]

  def offer(self, step: int, results: Dict[str, Dict[str, Any]],
            get_state: Callable[[], Any]) -> bool:
    """Keeps the variables of `get_state()` (called only then) if `results`
    (by evaluator) hold a finite value of the metric better than the kept
    one. A step at or before the kept one (a resumed run evaluating again)
    never replaces it."""
    if self._key not in results.get(self._evaluator, {}):
      return False
    value = float(results[self._evaluator][self._key])
    best_step, best_value = self.best()
    if not math.isfinite(value) or (best_step is not None and (
        step <= best_step or (value >= best_value if self._lower_is_better
                              else value <= best_value))):
      return False
    state = jax.device_get(get_state())
    tree = {"step": state.step, "params": state.params,
            "model_state": state.model_state}
    self._manager.save(step, args=ocp.args.StandardSave(tree),
                       metrics={self.metric: value}, force=True)
    # Rare (improvements only): wait, so the metrics record the next
    # comparison reads is on disk.
    self._manager.wait_until_finished()
    return True

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def has_checkpoints(workdir: str) -> bool:
  return os.path.isdir(os.path.join(workdir, CHECKPOINTS))


def latest_checkpoint_step(workdir: str) -> Optional[int]:
  """The step of the run's latest complete checkpoint, or None. (orbax
  writes a step under a temporary name and renames it to the bare step
  number once complete.)"""
  folder = os.path.join(workdir, CHECKPOINTS)
  steps = [int(name) for name in (os.listdir(folder) if os.path.isdir(folder)
                                  else ()) if name.isdigit()]
  return max(steps, default=None)


# Keys that change how a run is watched, not what it computes: a resumed run
# may change them freely.
RUN_NEUTRAL_KEYS = (
    "log_every_steps", "profile_steps", "evals.", "primary_metric", "checkpoint.",
    "on_nonfinite", "max_consecutive_nonfinite", "data.data_dir",
    "data.prefetch", "data.num_threads", "data.eval_batch_size",
    "data.eval_split", "accum_steps", "model.remat")


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


def split_choice(spec: str) -> Tuple[str, str]:
  """('RUN', 'best' | 'latest' | 'STEP' | '') of 'RUN:best', 'RUN:latest',
  'RUN:1200' (the checkpoint of that step) or 'RUN'."""
  path, sep, choice = spec.rpartition(":")
  return ((path, choice) if sep and (choice in CHOICES or choice.isdigit())
          else (spec, ""))


def run_of(path: str) -> str:
  """The workdir of `path`, a workdir or its checkpoints/ or best/ folder."""
  path = os.path.normpath(path)
  return (os.path.dirname(path) if os.path.basename(path) in (CHECKPOINTS, BEST)
          else path)


def _checkpoint_folder(path: str, choice: str) -> Tuple[str, str]:
  """(orbax folder, 'best' | 'latest') that `path` and `choice` name; ''
  chooses the best checkpoint when the run kept one."""
  name = os.path.basename(os.path.normpath(path))
  if name in (CHECKPOINTS, BEST):  # A checkpoint folder names itself.
    return path, "best" if name == BEST else "latest"
  best = os.path.join(path, BEST)
  has_best = os.path.isdir(best) and any(n.isdigit() for n in os.listdir(best))
  if choice == "best" and not has_best:
    raise errors.CheckpointMismatchError(
        f"{path}:best: the run kept no best checkpoint (its config.checkpoint."
        "best_metric was ''); name its latest one: RUN:latest.")
  if choice == "best" or (not choice and has_best):
    return best, "best"
  directory = os.path.join(path, CHECKPOINTS)
  return (directory if os.path.isdir(directory) else path), "latest"


def read_checkpoint(path: str, choice: str = "latest"
                    ) -> Tuple[Dict[str, Any], str]:
  """(model variables as numpy arrays, what was read: 'FOLDER (best, step
  N)') of a run of ours: `path` is its workdir or checkpoint folder, `choice`
  'latest', 'best', a step ('1200') or '' (best if the run kept one, else
  latest)."""
  step = int(choice) if choice.isdigit() else None
  directory, kind = _checkpoint_folder(
      path, "latest" if step is not None else choice)
  manager = ocp.CheckpointManager(os.path.abspath(directory))
  if step is not None and step not in manager.all_steps():
    raise errors.CheckpointMismatchError(
        f"{path}:{step}: no checkpoint of step {step} in {directory}; it "
        f"holds steps {sorted(manager.all_steps())}.")
  if step is None:
    step = manager.latest_step()
  else:
    kind = "chosen"
  if step is None:
    raise errors.CheckpointMismatchError(
        f"{path!r} holds no checkpoint: give a workdir of a finished run (or "
        "its checkpoints/ folder), a .npz or a .pth.tar.")
  restored = manager.restore(step)
  manager.close()
  logging.info("Read the %s checkpoint of %s at step %d.", kind, directory,
               step)
  variables = {"params": restored["params"],
               **(restored.get("model_state") or {})}
  return jax.tree.map(np.asarray, variables), f"{directory} ({kind}, step {step})"


def load_variables(workdir: str, choice: str = "latest") -> Dict[str, Any]:
  """The model variables ({'params': ..., other collections}) of a run's
  checkpoint (read_checkpoint), as numpy arrays."""
  return read_checkpoint(workdir, choice)[0]


def check_init_normalization(config) -> None:
  """Refuses to start from a run of ours (config.init.checkpoint) whose
  inputs were normalised otherwise than config.data.normalization."""
  run = run_of(split_choice(config.init.checkpoint)[0])
  if (config.init.allow_normalization_change or not os.path.isfile(
      os.path.join(run, CONFIG_FILE))):
    return
  theirs = load_config(run).data.normalization
  if theirs != config.data.normalization:
    raise errors.ConfigError(
        f"config.init.checkpoint={config.init.checkpoint!r} was trained on "
        f"inputs normalised as {theirs!r} ({os.path.join(run, CONFIG_FILE)}) "
        f"but config.data.normalization={config.data.normalization!r}: set "
        f"--config.data.normalization={theirs}, or pass --config.init."
        "allow_normalization_change=True to fine-tune across the change.")
