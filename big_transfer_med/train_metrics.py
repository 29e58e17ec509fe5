"""The train step's metrics on the host: the non-finite guard, and the means
and speed written every config.log_every_steps."""
import time
from typing import Dict, List

import jax
import numpy as np
from absl import logging

from input_pipeline import errors


class NonFiniteGuard:
  """Applies config.on_nonfinite to the per-step `finite` flags."""

  def __init__(self, config):
    self._skip = config.on_nonfinite == "skip"
    self._max_consecutive = config.max_consecutive_nonfinite
    self._consecutive = 0

  def check(self, first_step: int, flags: List[float], losses: List[float],
            last_checkpoint) -> None:
    """`flags[i]` is 1 where step first_step + i was finite; raises
    TrainingDivergedError when the run must stop."""
    for i, (finite, loss) in enumerate(zip(flags, losses)):
      if finite:
        self._consecutive = 0
        continue
      step = first_step + i
      self._consecutive += 1
      kept = (f"Parameters were left unchanged by that step and the last "
              f"checkpoint (step {last_checkpoint}) is intact.")
      if not self._skip:
        raise errors.TrainingDivergedError(
            f"Loss or gradient became non-finite (loss {loss}) at step "
            f"{step}. {kept} Lower config.optim.base_lr, check the data, or "
            "set config.on_nonfinite='skip' to skip such steps.")
      if self._consecutive > self._max_consecutive:
        raise errors.TrainingDivergedError(
            f"{self._consecutive} consecutive non-finite steps up to step "
            f"{step} (config.max_consecutive_nonfinite="
            f"{self._max_consecutive}): the run has diverged. {kept}")
      logging.warning("Step %d: non-finite loss %s, step skipped.", step, loss)


def _format_duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


class TrainLog:
  """Collects the per-step metrics (left on the devices between log steps).

  Before a log step or a checkpoint, the steps not yet checked go through
  the NonFiniteGuard (so no state after a non-finite step is saved under
  'stop'); at a log step, their means over the finite steps, the count of
  non-finite steps and the speed (evaluation time excluded) are written.
  """

  def __init__(self, config, total_steps: int, writer, start_step: int):
    self._every = config.log_every_steps
    self._images_per_step = config.batch_size
    self._total_steps, self._writer = total_steps, writer
    self._guard = NonFiniteGuard(config)
    self._logged, self._unchecked = [], []
    self._last_step = start_step
    self.restart_clock()

  def restart_clock(self) -> None:
    """Time from now on counts as training time."""
    self._last_time = time.time()

  def add(self, step: int, metrics: Dict[str, jax.Array], check: bool,
          last_checkpoint) -> None:
    """Adds step `step`'s metrics; with `check` (or at a log step) applies
    the guard to every step not yet checked."""
    self._logged.append(metrics)
    self._unchecked.append(metrics)
    log_now = step % self._every == 0 or step == self._total_steps
    if log_now or check:
      fetched = jax.device_get([(m["finite"], m["train_loss"])
                                for m in self._unchecked])  # One transfer.
      self._guard.check(step - len(self._unchecked) + 1,
                        [f[0] for f, _ in fetched],
                        [loss[0] for _, loss in fetched], last_checkpoint)
      self._unchecked = []
    if log_now:
      self._write(step)

  def _write(self, step: int) -> None:
    rows = [{k: float(v[0]) for k, v in m.items()}
            for m in jax.device_get(self._logged)]
    self._logged = []
    finite_rows = [r for r in rows if r["finite"]] or rows
    means = {k: float(np.mean([r[k] for r in finite_rows]))
             for k in rows[0] if k != "finite"}
    means["nonfinite_steps"] = float(len(rows) - sum(r["finite"]
                                                     for r in rows))
    now = time.time()
    steps_per_sec = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    means["steps_per_sec"] = steps_per_sec
    means["images_per_sec"] = steps_per_sec * self._images_per_step
    self._writer.write_scalars(step, means)
    logging.info(
        "step %d/%d: loss %.4f, lr %.5f | %.2f steps/s, %.1f images/s, "
        "ETA %s", step, self._total_steps, means["train_loss"],
        means["learning_rate"], steps_per_sec, means["images_per_sec"],
        _format_duration((self._total_steps - step)
                         / max(steps_per_sec, 1e-9)))
