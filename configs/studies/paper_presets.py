"""What the two paper presets share: the grid, the paper's numbers as
spec.paper and the fine-tuning config next to this folder."""
import os

from big_transfer_med import config_lib
from big_transfer_med import study

TRANSFER = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "transfer.py")
# Upstream images per source (the released datasets' image counts).
IMAGES = {"chexpert": 223_414, "mimic": 377_110, "nih": 112_120,
          "padchest": 160_861}


def spec(name, workdir, sources, targets, shots, target_shots=None):
  """A study spec of the seed paper's grid: R50x1 and R152x4, seeds 0-4,
  recipe=seed; `sources` name -> checkpoint ('{model}' is replaced by
  the job's model)."""
  s = study.default_spec()
  s.name = name
  s.config = TRANSFER
  s.workdir = workdir
  s.sources = sources
  s.models = ("R50x1", "R152x4")
  s.targets = targets
  s.shots = shots
  s.target_shots = target_shots or {}
  s.seeds = (0, 1, 2, 3, 4)
  s.args = "recipe=seed"
  s.source_sizes = {n: sum(IMAGES[p] for p in n.split("_") if p in IMAGES)
                    for n in sources if any(p in IMAGES for p in n.split("_"))}
  s.source_sizes.update({n: size for n, size in
                         (("imagenet1k", 1_281_167), ("imagenet21k", 14_197_122))
                         if n in sources})
  s.paper = {study.paper_key(t, src, m, k): v
             for (t, src, m, k), v in config_lib.load_sibling(
                 __file__, "paper_numbers.py").PAPER.items()
             if t in targets and src in sources}
  return s
