"""XLA:CPU's kernel options, by name: what `benchmark --xla_cpu=...` compares.

XLA reads XLA_FLAGS once, when a process starts its first computation, so
each option is measured in a process of its own. The flags configure only
the CPU backend's kernels (GPU and TPU compilation ignores them).
"""
import os
from typing import Dict, Optional

OPTIONS: Dict[str, str] = {
    # XLA's own loops and Eigen kernels.
    "default": "",
    # oneDNN matmul and convolution thunks.
    "onednn": "--xla_cpu_use_onednn=true",
    # oneDNN fusions of dots and element-wise ops around them (in the pinned
    # jaxlib they fail to compile on this project's step).
    "onednn_fusion": ("--xla_cpu_use_onednn=true "
                      "--xla_cpu_experimental_onednn_fusion_type="
                      "dot,eltwise,reduce"),
    # XNNPACK for the operations it supports.
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "xnnpack_fusion": ("--xla_cpu_use_xnnpack=true "
                       "--xla_cpu_experimental_xnn_fusion_type="
                       "dot,eltwise,reduce"),
    "xnnpack_graph": ("--xla_cpu_experimental_xnn_graph_fusion_mode="
                      "XNN_GRAPH_FUSION_MODE_GREEDY"),
    # YNNPACK (XNNPACK's successor) fusions.
    "ynnpack_fusion": ("--xla_cpu_experimental_ynn_fusion_type="
                       "dot,eltwise,reduce"),
    # Intra-op threads: one (Eigen single-threaded) instead of one per core.
    "one_thread": "--xla_cpu_multi_thread_eigen=false",
}


def xla_flags(option: str, user_flags: Optional[str] = None) -> str:
  """XLA_FLAGS with `option`'s flags added to `user_flags` (default: the
  environment's), which win where both set a flag."""
  if option not in OPTIONS:
    raise ValueError(f"XLA:CPU option {option!r}: expected one of "
                     f"{', '.join(OPTIONS)}.")
  user_flags = os.environ.get("XLA_FLAGS", "") if user_flags is None else (
      user_flags)
  user_names = {f.split("=")[0] for f in user_flags.split()}
  added = [f for f in OPTIONS[option].split()
           if f.split("=")[0] not in user_names]
  return " ".join(added + user_flags.split())
