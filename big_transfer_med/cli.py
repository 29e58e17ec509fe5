"""What every command-line entry point shares: flag parsing and user errors.

A user's mistake ends the program with one line `ERROR: ...` on stderr and
exit code 2, without a traceback: a flag that is unknown or has a bad value,
a config file that is missing or does not load, a bad config argument, an
unknown `--config.key`, and any errors.UserError raised while running.
A preempted run ends with one line and preemption.EXIT_PREEMPTED; so does
Ctrl-C during training (a second Ctrl-C, or one outside training, ends at
once with one line saying where the run will resume).

Quiet by default: TensorFlow's and XLA's C++ start-up messages are off
(TF_CPP_MIN_LOG_LEVEL=2 unless set, in __init__.py), and the log shows this project's lines
plus other libraries' errors only; --verbosity=0 (or any --verbosity) shows
every library's INFO and WARNING lines again.
"""
import difflib
import logging
import os
import sys
from typing import Callable, List, Optional, Sequence

import ml_collections
from absl import app
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from big_transfer_med import preemption
from input_pipeline import errors

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # The shell's code for a program ended by SIGINT.
# Log records from files under these folders are ours.
_OUR_FOLDERS = tuple(os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), name) + os.sep
                     for name in ("big_transfer_med", "input_pipeline"))


def fail(message: str) -> None:
  """Prints `ERROR: message` and exits with EXIT_USER_ERROR."""
  print(f"ERROR: {message}", file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def _chain(error: BaseException) -> List[BaseException]:
  """`error` and the exceptions it was raised from, outermost first."""
  chain = []
  while error is not None and all(error is not e for e in chain):
    chain.append(error)
    error = error.__cause__ or error.__context__
  return chain


def _describe(error: BaseException) -> str:
  """One line for an exception raised while loading a user's file."""
  if isinstance(error, SyntaxError):
    return (f"{type(error).__name__} in {error.filename}, line {error.lineno}: "
            f"{error.msg}")
  lines = [l.strip() for l in str(error).strip().splitlines() if l.strip()]
  return f"{type(error).__name__}: {lines[-1] if lines else ''}"


def _config_flag_names(flag_values) -> List[str]:
  """Names of the ml_collections config-file flags."""
  return [name for name in flag_values
          if hasattr(type(flag_values[name]), "override_values")]


def _config_arg(name: str, argv: Sequence[str]) -> Optional[str]:
  """The --name=FILE[:ARG] argument in `argv`, if any."""
  return next((a for a in argv if a.startswith(f"--{name}=")), None)


def _config_file_problem(name: str, argv: Sequence[str]) -> Optional[str]:
  """What is wrong with the config file given to --name, if anything."""
  arg = _config_arg(name, argv)
  path = arg and arg.split("=", 1)[1].split(":", 1)[0]
  if path and not os.path.isfile(path):
    return (f"--{name}={path}: no such config file (relative paths are "
            f"taken from the working directory, {os.getcwd()}).")
  return None


def _load_config(name: str, argv: Sequence[str]):
  """The config of --name=FILE[:ARG] without overrides, or None."""
  arg = _config_arg(name, argv)
  if arg is None:
    return None
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file(name, None, flag_values=flag_values,
                                  sys_argv=["", arg])
  try:
    flag_values(["", arg])
    return flag_values[name].value
  except Exception:  # pylint: disable=broad-except
    return None  # The file itself is at fault; reported as such.


def _unknown_override(name: str, argv: Sequence[str]) -> Optional[str]:
  """The first --name.a.b=... in `argv` naming a key the config lacks."""
  config = None
  for arg in argv:
    if not arg.startswith(f"--{name}."):
      continue
    config = config or _load_config(name, argv)
    if not isinstance(config, ml_collections.ConfigDict):
      return None
    keys = arg.split("=", 1)[0][len(name) + 3:].split(".")
    node = config
    for depth, key in enumerate(keys):
      where = ".".join([name] + keys[:depth])
      if not isinstance(node, ml_collections.ConfigDict):
        return f"{arg}: --{where} is a value, not a group of keys."
      if key not in node:
        close = difflib.get_close_matches(key, list(node.keys()), n=1)
        hint = f" Did you mean --{where}.{close[0]}?" if close else ""
        return (f"{arg}: {where} has no key {key!r}.{hint} Every key, with "
                "its default, is in big_transfer_med/config_lib.py:"
                "base_config().")
      node = node[key]
  return None


def parse_flags(argv: List[str]) -> List[str]:
  """absl's flag parsing, with every failure reported as one line."""
  flag_values = flags.FLAGS
  config_names = _config_flag_names(flag_values)
  for name in config_names:
    problem = _config_file_problem(name, argv)
    if problem:
      fail(problem)
  try:
    return flag_values(argv)
  except Exception as e:  # pylint: disable=broad-except
    for name in config_names:
      problem = _unknown_override(name, argv)
      if problem:
        fail(problem)
    chain = _chain(e)
    user_errors = [x for x in chain if isinstance(x, errors.UserError)]
    if user_errors:  # Raised by a config file's get_config: says what to do.
      fail(str(user_errors[-1]))
    loading = "Error whilst parsing config file" in str(e)
    if isinstance(e, flags.Error) and not loading:
      fail(str(e))  # absl's message names the flag and the value.
    culprit = next((a for a in map(lambda n: _config_arg(n, argv),
                                   config_names) if a), None)
    fail((f"{culprit} does not load: " if culprit else "")
         + _describe(chain[-1]))


def hide_accelerators_from_tensorflow() -> None:
  """TF only feeds data: keep it off the accelerators JAX uses."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")


# A bound turns on JAX's file lock around persistent-cache reads and writes.
# Unbounded (JAX's default) the cache writes entries in place, so a process
# can read another's half-written executable and crash: study jobs and test
# workers share one cache directory.
_SHARED_CACHE_MAX_BYTES = 16 << 30


def lock_shared_compilation_cache() -> None:
  """Bounds JAX's persistent compilation cache (if one is set), which makes
  JAX lock it for every read and write."""
  import jax  # pylint: disable=g-import-not-at-top
  if (jax.config.jax_compilation_cache_dir
      and jax.config.jax_compilation_cache_max_size == -1):
    jax.config.update("jax_compilation_cache_max_size",
                      _SHARED_CACHE_MAX_BYTES)


class _OursAndErrors(logging.Filter):
  """Passes this project's records, and other libraries' errors."""

  def filter(self, record: logging.LogRecord) -> bool:
    return (record.levelno >= logging.ERROR
            or record.pathname.startswith(_OUR_FOLDERS))


def quiet_other_libraries() -> None:
  """Unless --verbosity was given: other libraries' INFO and WARNING lines
  (orbax logs hundreds per run) leave the log."""
  if "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present:
    return
  absl_logging.get_absl_handler().addFilter(_OursAndErrors())


def _interrupted() -> str:
  """One line for Ctrl-C outside the step loop: where the run resumes."""
  workdir = (flags.FLAGS["workdir"].value if "workdir" in flags.FLAGS
             else None)
  if not workdir:
    return "Interrupted (Ctrl-C)."
  from big_transfer_med import run_dir  # pylint: disable=g-import-not-at-top
  step = run_dir.latest_checkpoint_step(workdir)
  return ("Interrupted (Ctrl-C): " +
          (f"run the same command to continue from the checkpoint at step "
           f"{step} in {workdir}." if step is not None else
           f"no checkpoint in {workdir} yet; the same command starts afresh."))


def run(main: Callable[[List[str]], None]) -> None:
  """app.run(main) with one-line user errors (see the module docstring)."""
  def guarded(argv):
    quiet_other_libraries()
    try:
      main(argv)
    except app.UsageError as e:
      fail(f"{e} (--help lists the flags).")
    except errors.UserError as e:
      fail(str(e))
    except preemption.Preempted as e:
      print(e, file=sys.stderr, flush=True)
      sys.exit(preemption.EXIT_PREEMPTED)
    except KeyboardInterrupt:
      print(_interrupted(), file=sys.stderr, flush=True)
      sys.exit(EXIT_INTERRUPTED)
  app.run(guarded, flags_parser=parse_flags)
