r"""The benchmark paper's classification grid (Hosseinzadeh Taher et al.
2021): ResNet-50 from scratch, from supervised ImageNet, from
self-supervised ImageNet releases and continually pre-trained (ImageNet ->
ChestX-ray14 or CheXpert), fine-tuned on ChestX-ray14 (14 labels, official
split) and CheXpert (5 labels, U-Ones) with its recipe
(configs/transfer.py recipe=benchmark), mean AUC, seeds 0-4. summary.md
shows the paper's number beside each of ours where it reports one.

Sources, as released (the loader takes their wrappers and prefixes and
skips their projection heads):
  pretrained/resnet50_imagenet.pth   torchvision's ImageNet ResNet-50
  pretrained/<method>.pth.tar        each self-supervised release below,
                                     e.g. moco_v2.pth.tar (MoCo v2, 800
                                     epochs), swav.pth.tar, barlow_twins.pth
  workdirs/benchmark_imagenet_<cxr>  continual pre-training, one per CXR
                                     source: configs/r50x1_chest.py:
                                     model=resnet50,sources=nih14 (or
                                     chexpert),init=pretrained/resnet50_imagenet.pth

  python -m big_transfer_med.study --spec=configs/studies/benchmark_classification.py --mode=commands
"""
from big_transfer_med import config_lib
from big_transfer_med import study

# Self-supervised ImageNet ResNet-50 releases in the paper (file names are
# ours to choose; put each release there as downloaded).
SELF_SUPERVISED = {
    "moco_v1": "pretrained/moco_v1.pth.tar",
    "moco_v2": "pretrained/moco_v2.pth.tar",
    "pcl_v2": "pretrained/pcl_v2.pth.tar",
    "swav": "pretrained/swav.pth.tar",
    "deepcluster_v2": "pretrained/deepcluster_v2.pth.tar",
    "sela_v2": "pretrained/sela_v2.pth.tar",
    "barlow_twins": "pretrained/barlow_twins.pth",
    "byol": "pretrained/byol.pth.tar",
    "simclr_v1": "pretrained/simclr_v1.pth.tar",
    "simclr_v2": "pretrained/simclr_v2.pth.tar",
    "infomin": "pretrained/infomin.pth",
    "insdis": "pretrained/insdis.pth",
    "pirl": "pretrained/pirl.pth",
}
# The paper's mean AUC (%) for ResNet-50, full training sets.
PAPER = {
    ("nih14", "scratch"): 80.31,
    ("nih14", "imagenet"): 81.70,
    ("nih14", "imagenet_chexpert"): 82.25,
    ("chexpert5", "imagenet"): 87.10,
    ("chexpert5", "imagenet_nih"): 87.40,
}


def get_config():
  s = study.default_spec()
  s.name = "Benchmark paper, ResNet-50 sources (recipe=benchmark)"
  s.config = config_lib.load_sibling(__file__, "paper_presets.py").TRANSFER
  s.workdir = "workdirs/benchmark_classification"
  s.sources = {"scratch": "", "imagenet": "pretrained/resnet50_imagenet.pth",
               **SELF_SUPERVISED,
               "imagenet_nih": "workdirs/benchmark_imagenet_nih",
               "imagenet_chexpert": "workdirs/benchmark_imagenet_chexpert"}
  s.models = ("resnet50",)
  s.targets = ("nih14", "chexpert5")
  s.shots = (0,)
  s.seeds = (0, 1, 2, 3, 4)
  s.args = "recipe=benchmark"
  s.paper = {study.paper_key(target, source, "resnet50", 0): value
             for (target, source), value in PAPER.items()}
  return s
