"""Preemption: on SIGTERM every host saves a checkpoint at one agreed step,
then the program exits with EXIT_PREEMPTED; the same command resumes.

A multi-host run uses JAX's preemption service (started by
jax.distributed.initialize): a SIGTERM to any host is passed to all of them,
and every host reaches the same sync step (the largest step any host had
reached, plus one). A single process catches SIGTERM itself.
"""
import signal
import threading

# sysexits.h EX_TEMPFAIL: a temporary failure, run the same command again.
EXIT_PREEMPTED = 75


class Preempted(Exception):
  """Raised by the trainer after the checkpoint at `step` is written."""

  def __init__(self, step: int):
    super().__init__(f"Preempted (SIGTERM): saved a checkpoint at step {step}; "
                     f"run the same command to continue from it.")
    self.step = step


class Notice:
  """Whether a preemption notice has reached this run, as of a given step.

  Use as a context manager around the step loop and call `reached(step)` at
  every step, on every host (the multi-host sync needs each step).
  """

  def __init__(self):
    import jax  # pylint: disable=g-import-not-at-top
    self._multi_host = jax.process_count() > 1
    self._signalled = False
    self._previous_handler = None

  def __enter__(self):
    # Signal handlers can only be set from the main thread; elsewhere (a
    # study's worker thread) SIGTERM keeps its meaning.
    if (not self._multi_host
        and threading.current_thread() is threading.main_thread()):
      self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc_info):
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None

  def _on_sigterm(self, signum, frame):
    del signum, frame
    self._signalled = True

  def reached(self, step: int) -> bool:
    """True at the step where every host saves and stops."""
    if self._multi_host:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled
