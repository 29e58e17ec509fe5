r"""BiT-HyperRule fine-tuning (full or few-shot) of any pre-trained model.

  python -m big_transfer_med.main --workdir=DIR \
      --config=configs/transfer.py:target=cifar10,init=BiT-M-R50x1.npz
  python -m big_transfer_med.main --workdir=DIR --config=configs/transfer.py:\
target=padchest_cl,init=UPSTREAM_WORKDIR,model=R152x4,shots=5,seed=2

Arguments (comma-separated key=value):
  target  one of TARGETS below, or folder:NAME for a dataset built by
          big_transfer_med.import_folder --name=NAME (required; single-label
          folders train a softmax scored by accuracy, multi-label ones a
          masked sigmoid scored by mean AUROC over the findings whose test
          images hold both positives and negatives);
  init    a workdir of ours, a BiT .npz or a PyTorch .pth.tar (BiT, or a
          torchvision / self-supervised ResNet-50 as released; '' = scratch);
  model   R50x1 (default) ... R152x4, or resnet50 (torchvision's family:
          ImageNet normalisation); must match init;
  shots   examples per class (0 = the full training set; segmentation:
          k images showing each class and k without any); seed (default 0)
          seeds the run and the few-shot draw;
  steps, batch, eval_batch, lr, res, resize: override the rule (e.g. for
  CPU demos);
  eval_split: e.g. 'test[:20%]'; data_dir: the TFDS data_dir.
  recipe  'bit' (default), 'seed' or 'benchmark' (below);
  norm    the input normalisation the init checkpoint expects
          (config.data.normalization: minus_one_one (default) or imagenet).
The rule (hyperrule.py): schedule and MixUp from the training-set size,
resize/crop from the image size; lr 0.003 per 512 images, SGD momentum 0.9,
no weight decay, zero-initialised new head. recipe=seed is the seed paper's
finetune.py: the same step counts and MixUp, lr 0.001 per 128 images at
batch 128, Nesterov momentum + AGC, no weight decay, and a new head as
PyTorch initialises a fresh Conv2d (random, not zero); padchest_cl on the
seed's PadChest (cxr_padchest_seed: its views, substring findings and
90/10 split by image) at 224 px with the CXR augmentation, tuberculosis on
its 85/15 split per set (cxr_tuberculosis/seed), Flowers trained on the
official test split and tested on train+validation, full-shot COVIDx and
Flowers with class-balanced sampling. recipe=benchmark is the fine-tuning
of Hosseinzadeh Taher et al. 2021 (main_classification.py): no HyperRule;
Adam (lr 2e-4, batch 32, no weight decay, no AGC), a new N(0, 0.01) head,
224 px RandomResizedCrop + flip + rotation up to 7 degrees, evaluation
resized to 256 and centre-cropped to 224, CheXpert's uncertain labels as
positives (U-Ones), 40 epochs keeping the checkpoint with the best
validation loss, validated every 2000 steps (the paper validates every
epoch, stops after 10 without improvement and halves the rate after 5;
here the rate is constant). For the segmentation targets it is
main_segmentation.py: a U-Net, soft Dice loss (smooth 1; per image here,
over the whole batch there), Adam lr 1e-3 with cosine decay, batch 32,
200 epochs keeping the best validation loss (no early stopping here),
224 px, no augmentation (the paper's albumentations brightness / gamma /
elastic / crop set is not reproduced). Inputs are
normalised as the model's checkpoint expects: --config.data.normalization=
imagenet for the seed's ImageNet-1k/21k models. Any key can still be
overridden with --config.key=value.
"""
from big_transfer_med import config_lib
from big_transfer_med import losses
from input_pipeline import choices
from input_pipeline import errors

# name -> (data settings, loss, primary metric).
TARGETS = {
    "cifar10": ({"name": "cifar10"}, "softmax_xent", "accuracy"),
    "cifar100": ({"name": "cifar100"}, "softmax_xent", "accuracy"),
    "oxford_flowers102": ({"name": "oxford_flowers102"}, "softmax_xent",
                          "accuracy"),
    "oxford_iiit_pet": ({"name": "oxford_iiit_pet"}, "softmax_xent",
                        "accuracy"),
    # The demo's target: real Fashion-MNIST classes 5-9 (grey, 28x28).
    "fmnist_5to9": ({"name": "fashion_mnist_local", "classes": (5, 6, 7, 8, 9),
                     "channels": 1}, "softmax_xent", "accuracy"),
    "tuberculosis": ({"name": "cxr_tuberculosis", "crop_to_square": True},
                     "softmax_xent", "accuracy"),
    "covidx": ({"name": "cxr_covidx", "crop_to_square": True},
               "softmax_xent", "accuracy"),
    # Kermany et al. 2018 paediatric pneumonia (normal vs pneumonia).
    "pneumonia": ({"name": "cxr_pneumonia", "crop_to_square": True},
                  "softmax_xent", "accuracy"),
    # Images with exactly one of the 27 PadChest findings; 27-way softmax.
    "padchest_cl": ({"sources": ("padchest",), "label_set": "padchest27",
                     "exclusive": True, "crop_to_square": True,
                     "eval_split": "test"}, "softmax_xent", "mean_auc"),
    "nih14": ({"sources": ("nih14",), "label_set": "nih14",
               "crop_to_square": True, "eval_split": "test"},
              "sigmoid_xent", "mean_auc"),
    "chexpert5": ({"sources": ("chexpert",), "label_set": "chexpert5",
                   "crop_to_square": True, "eval_split": "validation"},
                  "sigmoid_xent", "mean_auc"),
    # Segmentation (config.task='segmentation': a U-Net on the model's
    # encoder): lungs of the Montgomery County set, SIIM-ACR pneumothorax.
    "montgomery_lungs": ({"name": "cxr_montgomery_lungs"},
                         "dice_sigmoid_xent", "dice"),
    "siim_pneumothorax": ({"name": "cxr_siim_pneumothorax"},
                          "dice_sigmoid_xent", "dice"),
}
SEGMENTATION_TARGETS = ("montgomery_lungs", "siim_pneumothorax")



def _target(value: str) -> str:
  if value not in TARGETS and not choices.folder_name(value):
    raise ValueError(value)
  return value


_target.__name__ = (f"choice among {', '.join(sorted(TARGETS))} or "
                    f"{choices.FOLDER_PREFIX}NAME")


def _folder_target(target: str):
  """A folder dataset's data settings: its own findings (or classes); the
  loss and metric follow its labels (train.resolve_config)."""
  return ({"sources": (target,), "label_set": target, "crop_to_square": True,
           "eval_split": "test"}, losses.BY_LABELS, "")


ARGUMENTS = {"target": _target, "init": str,
             "model": str, "shots": int, "seed": int, "steps": int,
             "batch": int, "eval_batch": int, "lr": float, "res": int,
             "resize": int, "eval_split": str, "data_dir": str,
             "recipe": config_lib.one_of("bit", "seed", "benchmark"),
             "norm": config_lib.one_of("minus_one_one", "imagenet")}


def _apply_seed_data(c, target: str) -> None:
  """The seed's per-target data (its finetune.py and configs/finetune/)."""
  if target == "padchest_cl":  # The seed's PadChest, 224 px, CXR affine.
    c.data.sources, c.data.eval_split = ("padchest_seed",), "validation"
    c.data.views = ("PA", "AP", "AP_SUPINE", "LATERAL", "OTHER")
    c.data.augment, c.data.affine_fill = "cxr", "reflect_101"
    c.data.resolution = 224
  elif target == "tuberculosis":  # 85/15 per set, RandomState(42).
    c.data.builder_config = "seed"
  elif target == "oxford_flowers102":  # Its 6,149 test images train.
    c.data.train_split, c.data.eval_split = "test", "train+validation"
  # Full-shot COVIDx and Flowers: its WeightedRandomSampler (oversampling).
  if target in ("covidx", "oxford_flowers102") and not c.data.examples_per_class:
    c.data.class_balanced = True


def _apply_benchmark_recipe(c, args) -> None:
  """Hosseinzadeh Taher et al.'s fine-tuning (see the module doc)."""
  c.hyperrule = False
  c.model.head_init = "normal"
  c.batch_size = args.get("batch", 32)
  c.data.eval_batch_size = args.get("eval_batch", c.batch_size)
  c.optim.name, c.optim.base_lr = "adam", args.get("lr", 2e-4)
  c.optim.reference_batch_size = 32
  c.optim.agc_clipping = None
  c.schedule.decay_type, c.schedule.warmup_epochs = "constant", 0.0
  c.total_epochs = 40.0
  c.data.resolution, c.data.resize = 224, 256
  c.data.augment, c.data.rotation = "resized_crop", 7.0
  c.mixup_alpha = 0.0
  if c.data.sources == ("chexpert",):
    c.data.uncertain = "ones"
  # Validation (and the best checkpoint) every 2000 steps: about an epoch
  # of ChestX-ray14 or a tenth of CheXpert at batch 32.
  c.evals.val.every_steps = 2000
  c.checkpoint.best_metric = "val/loss"
  if c.task == "segmentation":  # main_segmentation.py.
    c.loss = "dice"  # Soft Dice, smooth 1 (per image here).
    c.primary_metric = "dice_pooled"  # Over all test pixels, as its code.
    c.optim.base_lr = args.get("lr", 1e-3)
    c.schedule.decay_type = "cosine"
    c.total_epochs = 200.0
    c.data.resolution = c.data.resize = 224
    c.data.augment = "none"
    # About every 5 epochs of Montgomery (110 images), or 1.5 of SIIM.
    c.evals.val.every_steps = (20 if c.data.name == "cxr_montgomery_lungs"
                               else 500)


def get_config(arg: str = ""):
  args = config_lib.parse_arguments(arg, ARGUMENTS, __file__)
  target = args.get("target")
  if target is None:
    raise errors.ConfigError(f"configs/transfer.py needs target=<one of "
                             f"{sorted(TARGETS)}>.")
  data, loss, metric = (_folder_target(target) if choices.folder_name(target)
                        else TARGETS[target])
  c = config_lib.base_config()
  config_lib.set_model(c, args.get("model", "R50x1"))
  c.init.checkpoint = args.get("init", "")
  c.init.dont_load = ("head/.*",)  # A new task gets a new, zero head.
  c.seed = args.get("seed", 0)
  c.loss, c.primary_metric = loss, metric
  c.data.channels = 3
  c.data.augment = "bit"
  for key, value in data.items():
    c.data[key] = value
  c.data.examples_per_class = args.get("shots", 0)
  c.data.fewshot_seed = c.seed
  if target in SEGMENTATION_TARGETS:
    c.task = "segmentation"
    c.evals.val = config_lib.segmentation_eval()
    c.mixup_alpha = 0.0  # HyperRule would mix masks.

  c.hyperrule = True  # Fills steps, warmup, decays, resolution, MixUp.
  c.batch_size = args.get("batch", 512)
  c.data.eval_batch_size = args.get("eval_batch", c.batch_size)
  c.optim.base_lr = args.get("lr", 0.003)
  c.optim.reference_batch_size = 512
  c.optim.weight_decay = 0.0
  c.schedule.decay_type = "step"
  c.log_every_steps = 50
  c.evals.val.every_steps = 0  # Once, at the end (recipes may change it).
  c.checkpoint.every_steps = 1000
  c.checkpoint.keep = 1
  c.recipe = args.get("recipe", "bit")
  if c.recipe == "seed":
    c.model.head_init = "pytorch"
    c.batch_size = args.get("batch", 128)
    c.data.eval_batch_size = args.get("eval_batch", c.batch_size)
    c.optim.base_lr = args.get("lr", 0.001)
    c.optim.reference_batch_size = 128
    _apply_seed_data(c, target)
  elif c.recipe == "benchmark":
    _apply_benchmark_recipe(c, args)
  if "steps" in args:
    c.total_steps = args["steps"]
  if "norm" in args:
    c.data.normalization = args["norm"]
  if "data_dir" in args:
    c.data.data_dir = args["data_dir"]
  if "eval_split" in args:
    c.data.eval_split = args["eval_split"]
  if "res" in args:
    c.data.resolution = args["res"]
    c.data.resize = args.get("resize", args["res"])

  return c
