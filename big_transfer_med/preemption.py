"""Preemption: on SIGTERM every host saves a checkpoint at one agreed step,
then the program exits with EXIT_PREEMPTED; the same command resumes.

A multi-host run uses JAX's preemption service (started by
jax.distributed.initialize): a SIGTERM to any host is passed to all of them,
and every host reaches the same sync step (the largest step any host had
reached, plus one). A single process catches SIGTERM itself, and Ctrl-C
(SIGINT) the same way; a second Ctrl-C stops at once (KeyboardInterrupt).
"""
import signal
import threading

# sysexits.h EX_TEMPFAIL: a temporary failure, run the same command again.
EXIT_PREEMPTED = 75


class Preempted(Exception):
  """Raised by the trainer after the checkpoint at `step` is written."""

  def __init__(self, step: int, signal_name: str = "SIGTERM"):
    super().__init__(f"Preempted ({signal_name}): saved a checkpoint at step "
                     f"{step}; run the same command to continue from it.")
    self.step = step


class Notice:
  """Whether a preemption notice has reached this run, as of a given step.

  Use as a context manager around the step loop and call `reached(step)` at
  every step, on every host (the multi-host sync needs each step).
  """

  def __init__(self):
    import jax  # pylint: disable=g-import-not-at-top
    self._multi_host = jax.process_count() > 1
    self.signal_name = "SIGTERM"  # Of the notice; multi-host: always SIGTERM.
    self._signalled = False
    self._previous_handlers = {}

  def __enter__(self):
    # Signal handlers can only be set from the main thread; elsewhere (a
    # study's worker thread) the signals keep their meaning.
    if (not self._multi_host
        and threading.current_thread() is threading.main_thread()):
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous_handlers[signum] = signal.signal(signum, self._on_signal)
    return self

  def __exit__(self, *exc_info):
    for signum, handler in self._previous_handlers.items():
      signal.signal(signum, handler)
    self._previous_handlers = {}

  def _on_signal(self, signum, frame):
    del frame
    if self._signalled and signum == signal.SIGINT:
      raise KeyboardInterrupt  # A second Ctrl-C: stop now.
    if not self._signalled:
      self.signal_name = signal.Signals(signum).name
    self._signalled = True

  def reached(self, step: int) -> bool:
    """True at the step where every host saves and stops."""
    if self._multi_host:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled
