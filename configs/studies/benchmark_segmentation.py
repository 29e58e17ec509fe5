r"""The benchmark paper's segmentation grid (Hosseinzadeh Taher et al.
2021): a U-Net on ResNet-50 from scratch, from supervised ImageNet, from
the self-supervised ImageNet releases, pre-trained on chest X-rays
(ChestX-ray14 or CheXpert, from scratch) and continually pre-trained
(ImageNet -> ChestX-ray14 or CheXpert), fine-tuned with its recipe
(configs/transfer.py recipe=benchmark) on its lung segmentation (LXS: the
Montgomery County set, cxr_montgomery_lungs) and pneumothorax segmentation
(PXS: SIIM-ACR, cxr_siim_pneumothorax), Dice pooled over the test pixels
(%), seeds 0-4. summary.md shows the paper's number beside ours where its
table gives one.

Sources: those of benchmark_classification.py, and
  workdirs/benchmark_<cxr>            in-domain pre-training from scratch:
                                      configs/r50x1_chest.py:
                                      model=resnet50,sources=nih14 (or chexpert)

  python -m big_transfer_med.study --spec=configs/studies/benchmark_segmentation.py --mode=commands
"""
from big_transfer_med import config_lib
from big_transfer_med import study

# The paper's Dice (%), mean over its runs: the table of the repository's
# README (images/domain_adaptive.png). Its self-supervised results exist
# only as bar charts (the README gives them approximately).
PAPER = {
    ("siim_pneumothorax", "scratch"): 67.54,
    ("siim_pneumothorax", "imagenet"): 67.93,
    ("siim_pneumothorax", "nih"): 68.92,
    ("siim_pneumothorax", "chexpert"): 69.30,
    ("siim_pneumothorax", "imagenet_nih"): 69.52,
    ("siim_pneumothorax", "imagenet_chexpert"): 69.36,
    ("montgomery_lungs", "scratch"): 97.55,
    ("montgomery_lungs", "imagenet"): 98.19,
    ("montgomery_lungs", "nih"): 98.18,
    ("montgomery_lungs", "chexpert"): 98.25,
    ("montgomery_lungs", "imagenet_nih"): 98.27,
    ("montgomery_lungs", "imagenet_chexpert"): 98.31,
}


def get_config():
  classification = config_lib.load_sibling(__file__,
                                           "benchmark_classification.py")
  s = classification.get_config()
  s.name = "Benchmark paper, ResNet-50 U-Net sources (recipe=benchmark)"
  s.workdir = "workdirs/benchmark_segmentation"
  s.sources = dict(s.sources, nih="workdirs/benchmark_nih",
                   chexpert="workdirs/benchmark_chexpert")
  s.targets = ("montgomery_lungs", "siim_pneumothorax")
  s.paper = {study.paper_key(target, source, "resnet50", 0): value
             for (target, source), value in PAPER.items()}
  return s
