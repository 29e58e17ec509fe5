"""Where each supported starting point (config.init.checkpoint) is published.

Nothing here downloads: a study names every init file its jobs need that is
not on disk, with where to get it (study --mode=commands / run), and
docs/starting_weights.md lists the same table for people.
"""
import os
import re
from typing import Dict, List, NamedTuple, Sequence


class StartingPoint(NamedTuple):
  pattern: str  # A regular expression matched against the file's base name.
  what: str
  where: str  # Where it is published (the URL, or the page that links it).


_BIT = "https://storage.googleapis.com/bit_models/"
_TORCHVISION = "https://download.pytorch.org/models/"
_SSL_CONVERSIONS = ("PyTorch conversions in "
                    "github.com/linusericsson/ssl-transfer")

STARTING_POINTS: List[StartingPoint] = [
    StartingPoint(r"BiT-S-(R\d+x\d+)\.npz", "Google's BiT-S {0} (ImageNet-1k)",
                  _BIT + "BiT-S-{0}.npz"),
    StartingPoint(r"BiT-M-(R\d+x\d+)\.npz",
                  "Google's BiT-M {0} (ImageNet-21k)", _BIT + "BiT-M-{0}.npz"),
    StartingPoint(r"resnet50_imagenet\.pth|resnet50-0676ba61\.pth",
                  "torchvision's ImageNet ResNet-50 (IMAGENET1K_V1; 97.8 MB; "
                  "sha256 starts 0676ba61)",
                  _TORCHVISION + "resnet50-0676ba61.pth"),
    StartingPoint(r"moco_v[12].*", "MoCo v1 / v2 ResNet-50 (ImageNet)",
                  "github.com/facebookresearch/moco (moco_v1_200ep_pretrain."
                  "pth.tar, moco_v2_800ep_pretrain.pth.tar)"),
    StartingPoint(r"(swav|deepcluster_v2|sela_v2).*",
                  "SwAV / DeepCluster-v2 / SeLa-v2 ResNet-50 (ImageNet)",
                  "github.com/facebookresearch/swav (its model zoo)"),
    StartingPoint(r"barlow_twins.*", "Barlow Twins ResNet-50 (ImageNet)",
                  "github.com/facebookresearch/barlowtwins (resnet50.pth)"),
    StartingPoint(r"pcl_v2.*", "PCL v2 ResNet-50 (ImageNet)",
                  "github.com/salesforce/PCL"),
    StartingPoint(r"(infomin|insdis|pirl).*",
                  "InfoMin / InsDis / PIRL ResNet-50 (ImageNet)",
                  "github.com/HobbitLong/PyContrast (its model zoo)"),
    StartingPoint(r"(simclr_v[12]|byol).*",
                  "SimCLR v1 / v2, BYOL ResNet-50 (ImageNet; released for "
                  "TensorFlow / JAX)", _SSL_CONVERSIONS),
]


def where_to_get(path: str) -> str:
  """What `path` (a missing init checkpoint) is and where to get it."""
  name = os.path.basename(path.rstrip("/"))
  for point in STARTING_POINTS:
    match = re.fullmatch(point.pattern, name)
    if match:
      groups = match.groups() or ("",)
      return (f"{point.what.format(*groups)}: "
              f"{point.where.format(*groups)}")
  if not os.path.splitext(name)[1]:
    return ("a run of ours: train it first (the spec's docstring names its "
            "config), or point the source at a released checkpoint")
  return "not a published file this project knows: check the spec's sources"


def missing(inits: Sequence[str]) -> Dict[str, str]:
  """{init: where to get it} for each init checkpoint that is not on disk
  ('' = from scratch; a run of ours with RUN:best / RUN:latest counts by
  its directory)."""
  from big_transfer_med import run_dir  # pylint: disable=g-import-not-at-top
  out = {}
  for init in dict.fromkeys(inits):
    path = run_dir.split_choice(init)[0] if init else ""
    if path and not path.startswith("gs://") and not os.path.exists(path):
      out[init] = where_to_get(path)
  return out
