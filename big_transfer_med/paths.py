"""Paths as users type them: relative to the working directory, or remote.

Every entry point passes the paths it is given (workdirs, data directories,
checkpoints) through `absolute` once, where they come in, because orbax and
subprocesses started elsewhere need absolute paths.
"""
import os
from typing import Optional

import ml_collections

# Keys of the trainer's config that hold paths.
CONFIG_PATH_KEYS = ("init.checkpoint", "data.data_dir")


def is_remote(path: str) -> bool:
  """Whether `path` is a URL such as gs://bucket/dir (passed through as is)."""
  return "://" in path


def absolute(path: Optional[str]) -> Optional[str]:
  """`path` made absolute against the working directory (with ~ expanded);
  remote paths, '' and None unchanged."""
  if not path or is_remote(path):
    return path
  return os.path.abspath(os.path.expanduser(path))


def absolute_config_paths(config: ml_collections.ConfigDict
                          ) -> ml_collections.ConfigDict:
  """A copy of `config` whose CONFIG_PATH_KEYS are absolute."""
  config = config.copy_and_resolve_references()
  for key in CONFIG_PATH_KEYS:
    parent, name = key.split(".")
    config[parent][name] = absolute(config[parent][name])
  return config
