r"""The seed paper's natural-image grid: ImageNet-1k / ImageNet-21k sources,
R50x1 and R152x4, CIFAR-10/100 (1/5/10/100/500-shot and full), Flowers-102
and Pets (1/5/10-shot and full), seeds 0-4, the seed's fine-tuning recipe.
summary.md shows the paper's number beside each of ours.

Sources: Google's BiT-S (ImageNet-1k) and BiT-M (ImageNet-21k) .npz files,
put under pretrained/ as BiT-S-R50x1.npz, BiT-M-R152x4.npz, ... (the seed
trained its own ImageNet models with ImageNet mean/std inputs: to use those
.pth.tar files instead, point the sources at them and add
spec.source_args = {'imagenet21k': 'norm=imagenet', ...}).

  python -m big_transfer_med.study --spec=configs/studies/seed_natural.py --mode=commands
"""
from big_transfer_med import config_lib


def get_config():
  presets = config_lib.load_sibling(__file__, "paper_presets.py")
  return presets.spec(
      "Seed paper, natural targets (recipe=seed)", "workdirs/seed_natural",
      sources={"imagenet1k": "pretrained/BiT-S-{model}.npz",
               "imagenet21k": "pretrained/BiT-M-{model}.npz"},
      targets=("cifar10", "cifar100", "oxford_flowers102", "oxford_iiit_pet"),
      shots=(1, 5, 10, 100, 500, 0),
      target_shots={"oxford_flowers102": (1, 5, 10, 0),
                    "oxford_iiit_pet": (1, 5, 10, 0)})
