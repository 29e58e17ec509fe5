"""Files written whole or not at all: a crash never leaves half a file."""
import contextlib
import os
import tempfile


@contextlib.contextmanager
def open_atomically(path: str, mode: str = "w", **kwargs):
  """`open(path, mode)` for writing, through a temporary file in the same
  directory that replaces `path` only when the block completes (removed if
  it fails)."""
  fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".",
                             suffix=".tmp", dir=os.path.dirname(path) or ".")
  try:
    with os.fdopen(fd, mode, **kwargs) as f:
      yield f
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
