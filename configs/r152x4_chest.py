r"""Upstream BiT-R152x4 pre-training on chest X-rays: r50x1_chest with the
seed paper's largest model. Same arguments as configs/r50x1_chest.py."""
from big_transfer_med import config_lib


def get_config(arg: str = ""):
  module = config_lib.load_sibling(__file__, "r50x1_chest.py")
  config_lib.parse_arguments(arg, module.ARGUMENTS, __file__)  # Named here.
  # A model= in `arg` comes later and wins.
  c = module.get_config(",".join(a for a in ("model=R152x4", arg) if a))
  c.batch_size = 512
  return c
