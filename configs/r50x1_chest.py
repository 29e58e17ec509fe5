r"""Upstream BiT-R50x1 pre-training on chest X-rays (the seed paper's recipe).

  python -m big_transfer_med.main --config=configs/r50x1_chest.py --workdir=DIR
  python -m big_transfer_med.main \
      --config=configs/r50x1_chest.py:sources=chexpert+mimic,label_set=union ...

Arguments (comma-separated key=value): sources (joined by '+'; default all
four), label_set (default common7 for several sources, the dataset's own set
for one), model (default R50x1), res (default 224), views ('frontal' or
'all'; the seed used all views in its four-source runs).
Seed hyper-parameters: SGD momentum 0.9 (Nesterov) + AGC, lr 0.01 per 256,
weight decay 1e-4, 90 epochs, warmup, x0.1 at epochs 30/60/80, masked
sigmoid cross-entropy with uncertain and missing labels masked.
"""
from big_transfer_med import config_lib

ALL_SOURCES = ("chexpert", "mimic", "nih14", "padchest")
ARGUMENTS = {"sources": str, "label_set": str, "model": str, "res": int,
             "views": config_lib.one_of("frontal", "all")}
OWN_LABEL_SET = {"chexpert": "chexpert13", "mimic": "chexpert13",
                 "nih14": "nih14", "padchest": "padchest27"}


def get_config(arg: str = ""):
  args = config_lib.parse_arguments(arg, ARGUMENTS, __file__)
  sources = tuple(args["sources"].split("+")) if "sources" in args else (
      ALL_SOURCES)
  c = config_lib.base_config()
  c.model.name = args.get("model", "R50x1")
  c.loss = "sigmoid_xent"
  c.data.sources = sources
  c.data.label_set = args.get(
      "label_set", OWN_LABEL_SET[sources[0]] if len(sources) == 1 else "common7")
  c.data.uncertain = "ignore"
  c.data.missing = "mask"
  if args.get("views", "frontal") == "all":
    c.data.views = ("PA", "AP", "AP_SUPINE", "LATERAL", "OTHER")
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
  return c
