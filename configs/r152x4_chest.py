r"""Upstream BiT-R152x4 pre-training on chest X-rays: r50x1_chest with the
seed paper's largest model. Same arguments as configs/r50x1_chest.py."""
import importlib.util
import os


def get_config(arg: str = ""):
  # Config files are loaded by path, not as a package: load the sibling.
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "r50x1_chest.py")
  spec = importlib.util.spec_from_file_location("r50x1_chest", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  args = dict(kv.split("=", 1) for kv in arg.split(",") if kv)
  args.setdefault("model", "R152x4")
  c = module.get_config(",".join(f"{k}={v}" for k, v in args.items()))
  c.batch_size = 512
  return c
