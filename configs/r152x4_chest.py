r"""Upstream BiT-R152x4 pre-training on chest X-rays: r50x1_chest with the
seed paper's largest model. Same arguments as configs/r50x1_chest.py."""
import importlib.util
import os

from big_transfer_med import config_lib


def get_config(arg: str = ""):
  # Config files are loaded by path, not as a package: load the sibling.
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "r50x1_chest.py")
  spec = importlib.util.spec_from_file_location("r50x1_chest", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config_lib.parse_arguments(arg, module.ARGUMENTS, __file__)  # Named here.
  # A model= in `arg` comes later and wins.
  c = module.get_config(",".join(a for a in ("model=R152x4", arg) if a))
  c.batch_size = 512
  return c
