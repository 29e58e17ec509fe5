r"""Upstream BiT-R50x1 pre-training on chest X-rays (the seed paper's recipe).

  python -m big_transfer_med.main --config=configs/r50x1_chest.py --workdir=DIR
  python -m big_transfer_med.main \
      --config=configs/r50x1_chest.py:sources=chexpert+mimic,label_set=union ...

Arguments (comma-separated key=value): sources (joined by '+'; default all
four; folder:NAME is a dataset built by big_transfer_med.import_folder, whose
findings map onto the label set by name, or alone its own), label_set (default: see the recipe), model (default R50x1; also
torchvision's resnet50 family, with ImageNet normalisation), res (default
224), views ('frontal' or 'all'; default: see the recipe), init (a
checkpoint to start from: continual pre-training, e.g. model=resnet50,
init=pretrained/resnet50_imagenet.pth; its head is not loaded), recipe:

  ours (default)  the seed's hyper-parameters (SGD momentum 0.9, Nesterov,
      AGC, lr 0.01 per 256, weight decay 1e-4 on kernels, 90 epochs, x0.1 at
      epochs 30/60/80, masked sigmoid cross-entropy) with a 1-epoch warmup
      from 0, AGC off the head, black borders in the affine augmentation,
      frontal views (PA, AP, AP supine), one source's own label set or
      common7 for several, and 'No Finding' negating only unmentioned findings.
  seed  the seed code as released (configs/*_bit50x1.yaml, pretrain.py): a
      15-epoch warmup from lr/K (K: config.schedule.warmup_k, default the
      device count), weight decay on every parameter, its AGC exclusion rule
      (the head bias is clipped), mirrored borders (BORDER_REFLECT_101),
      chexpert13 for CheXpert and/or MIMIC and common7 once NIH or PadChest
      join, views PA and AP (its PadChest and four-source runs keep all
      views), 'No Finding' = 1 negating every finding, NIH trained on all of
      train_val_list and validated on test_list, PadChest as the seed formed
      it (source padchest_seed: builder cxr_padchest_seed), seed 42.
Both keep the checkpoint with the best validation loss in WORKDIR/best/
(what a transfer from this run starts from).
"""
from big_transfer_med import config_lib

ALL_SOURCES = ("chexpert", "mimic", "nih14", "padchest")
ARGUMENTS = {"sources": str, "label_set": str, "model": str, "res": int,
             "init": str,
             "views": config_lib.one_of("frontal", "all"),
             "recipe": config_lib.one_of("ours", "seed")}
ALL_VIEWS = ("PA", "AP", "AP_SUPINE", "LATERAL", "OTHER")


def _seed_label_set(sources) -> str:
  if set(sources) <= {"chexpert", "mimic"}:
    return "chexpert13"
  return _own_label_set(sources[0]) if len(sources) == 1 else "common7"


def _apply_seed_recipe(c, sources, args) -> None:
  """What the seed code did differently from ours (see the module doc)."""
  c.recipe = "seed"
  c.seed = 42
  sources = tuple("padchest_seed" if s == "padchest" else s for s in sources)
  c.data.sources = sources
  c.data.label_set = args.get("label_set", _seed_label_set(sources))
  if "views" not in args:
    c.data.views = ALL_VIEWS if "padchest_seed" in sources else ("PA", "AP")
  c.data.no_finding = "all"
  c.data.affine_fill = "reflect_101"
  if sources == ("nih14",):
    c.data.train_split, c.data.eval_split = "train+validation", "test"
  c.schedule.warmup_epochs = 15.0
  c.schedule.warmup_start = "lr_over_k"
  c.optim.weight_decay_on = "all"
  c.optim.agc_exclude = "seed"
OWN_LABEL_SET = {"chexpert": "chexpert13", "mimic": "chexpert13",
                 "nih14": "nih14", "padchest": "padchest27",
                 "padchest_seed": "padchest27"}


def _own_label_set(source: str) -> str:
  """A public source's label set; a folder dataset ('folder:NAME') is its
  own (its findings, its own head)."""
  return OWN_LABEL_SET.get(source, source)


def get_config(arg: str = ""):
  args = config_lib.parse_arguments(arg, ARGUMENTS, __file__)
  sources = tuple(args["sources"].split("+")) if "sources" in args else (
      ALL_SOURCES)
  c = config_lib.base_config()
  config_lib.set_model(c, args.get("model", "R50x1"))
  c.init.checkpoint = args.get("init", "")
  c.init.dont_load = ("head/.*",)  # The upstream task has its own labels.
  c.loss = "sigmoid_xent"
  c.data.sources = sources
  c.data.label_set = args.get(
      "label_set", _own_label_set(sources[0]) if len(sources) == 1 else "common7")
  c.data.uncertain = "ignore"
  c.data.missing = "mask"
  if args.get("views", "frontal") == "all":
    c.data.views = ALL_VIEWS
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.resolution = args.get("res", 224)
  c.data.crop_to_square = True
  c.data.channels = 3
  c.data.augment = "cxr"

  c.batch_size = 512
  c.total_epochs = 90.0
  c.schedule.decay_type = "step"
  c.schedule.warmup_epochs = 1.0
  c.schedule.decay_epochs = (30, 60, 80)
  c.optim.base_lr = 0.01
  c.optim.weight_decay = 1e-4

  c.log_every_steps = 100
  c.evals.val.every_steps = 5000
  c.checkpoint.every_steps = 2000
  c.checkpoint.best_metric = "val/loss"  # The seed transfers from the best.
  if args.get("recipe", "ours") == "seed":
    _apply_seed_recipe(c, sources, args)
  return c
