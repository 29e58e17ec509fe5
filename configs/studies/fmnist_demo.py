r"""The README's mini-study: transfer from Fashion-MNIST classes 0-4 to 5-9.

Sources: the upstream run of configs/fashion_mnist_upstream.py (run it first,
into workdirs/fmnist_upstream; workdirs are relative to the current
directory) and the same R26x1 from scratch. Target: real
Fashion-MNIST classes 5-9, 1/5/10-shot with 3 seeds each, and full-shot.
Sized for 2 CPU cores: 28 px inputs (HyperRule's random crop from 32 px),
short schedules (HyperRule's shape, scaled to 20 / 50 steps, with a larger
learning rate to match) and the 980 test images of classes 5-9 in the first
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
  s.args = "res=28,resize=32,eval_split=test[:20%],eval_batch=196"
  s.fewshot_args = "steps=20,batch=16,lr=0.5"
  s.full_args = "steps=50,batch=32,lr=0.5"
  return s
