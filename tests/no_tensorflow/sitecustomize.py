"""Put this folder on PYTHONPATH to run a process as on a machine without
TensorFlow: importing tensorflow or tensorflow_datasets raises ImportError
(as an accelerator machine with only JAX installed would)."""
import sys

BLOCKED = ("tensorflow", "tensorflow_datasets")


class _NoTensorFlow:
  """A meta-path finder that refuses the blocked packages."""

  def find_spec(self, name, path=None, target=None):
    del path, target
    if name.split(".")[0] in BLOCKED:
      raise ImportError(f"No module named {name!r} (blocked by "
                        "tests/no_tensorflow)")
    return None


sys.meta_path.insert(0, _NoTensorFlow())
