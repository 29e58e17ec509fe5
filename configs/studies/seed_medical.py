r"""The seed paper's chest X-ray grid: ImageNet-1k / -21k and the CXR
upstream sources, R50x1 and R152x4, PadChest-Cl and Tuberculosis
(1/5/10/100-shot and full) and COVIDx (+500-shot), seeds 0-4, the seed's
fine-tuning recipe. summary.md shows the paper's number beside each of ours.

Sources: Google's BiT .npz for ImageNet (pretrained/BiT-S-R50x1.npz, ...);
for chest X-rays our upstream runs of configs/r50x1_chest.py /
r152x4_chest.py with recipe=seed (workdirs/seed_<sources>_<model>, e.g.
workdirs/seed_chexpert_mimic_R50x1; each transfers from its best
checkpoint), or the seed's released model.pth.tar files put there instead.

  python -m big_transfer_med.study --spec=configs/studies/seed_medical.py --mode=commands
"""
from big_transfer_med import config_lib

CXR_SOURCES = ("chexpert", "mimic", "padchest", "chexpert_mimic",
               "chexpert_mimic_nih", "chexpert_mimic_nih_padchest")


def get_config():
  presets = config_lib.load_sibling(__file__, "paper_presets.py")
  sources = {"imagenet1k": "pretrained/BiT-S-{model}.npz",
             "imagenet21k": "pretrained/BiT-M-{model}.npz"}
  sources.update({name: f"workdirs/seed_{name}_{{model}}"
                  for name in CXR_SOURCES})
  return presets.spec(
      "Seed paper, chest X-ray targets (recipe=seed)", "workdirs/seed_medical",
      sources=sources, targets=("padchest_cl", "tuberculosis", "covidx"),
      shots=(1, 5, 10, 100, 0), target_shots={"covidx": (1, 5, 10, 100, 500, 0)})
