"""Errors caused by the user's config, data or checkpoints.

Their messages name the key, file or tensor at fault and what to do; the
entry point prints them without a traceback.
"""


class UserError(Exception):
  """Base class: a problem the user fixes (not a bug in this codebase)."""


class ConfigError(UserError, ValueError):
  """A config value is invalid or inconsistent."""


class DataError(UserError):
  """A dataset is missing, not built, or malformed."""


class CheckpointMismatchError(UserError, ValueError):
  """A checkpoint does not fit the model it is loaded into."""


class TrainingDivergedError(UserError, FloatingPointError):
  """The loss became NaN or Inf."""
