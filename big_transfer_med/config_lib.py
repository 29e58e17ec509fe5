"""The complete, locked set of config keys; every config file starts from it.

Locking makes a typo in a config file or a `--config.key=value` override fail
at once with the key's name instead of being silently ignored.
"""
import importlib.util
import os
from typing import Any, Callable, Dict

import ml_collections
from ml_collections import config_dict

from input_pipeline import errors


def load_sibling(config_file: str, name: str):
  """The module in file `name` next to `config_file` (config files are
  loaded by path, not imported as a package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name)
  spec = importlib.util.spec_from_file_location(name[:-len(".py")], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config_file(file_and_arg: str) -> ml_collections.ConfigDict:
  """The locked config of 'FILE.py[:ARG]', as --config=FILE.py[:ARG] gives
  it: get_config(ARG), or get_config() without ':ARG'."""
  head, colon, arg = file_and_arg.partition(".py:")
  path = head + ".py" if colon else file_and_arg
  module = load_sibling(path, os.path.basename(path))
  config = module.get_config(arg) if colon else module.get_config()
  config.lock()
  return config


def one_of(*options: str) -> Callable[[str], str]:
  """A parse_arguments type accepting only `options`."""
  def convert(value: str) -> str:
    if value not in options:
      raise ValueError(value)
    return value
  convert.__name__ = f"choice among {', '.join(options)}"
  return convert


def parse_arguments(arg: str, types: Dict[str, Callable[[str], Any]],
                    config_file: str) -> Dict[str, Any]:
  """Parses a config file's argument 'key=value,key=value' (the part after
  ':' in --config=FILE:ARG) into {key: types[key](value)} for the keys given.

  An unknown key, a part without '=' or a value of the wrong type raises
  errors.ConfigError naming `config_file` and the accepted keys.
  """
  accepted = ", ".join(types)
  values = {}
  for part in (p for p in arg.split(",") if p):
    key, sep, value = part.partition("=")
    if not sep:
      raise errors.ConfigError(
          f"{config_file}: argument {part!r} is not of the form key=value (keys: "
          f"{accepted}).")
    if key not in types:
      raise errors.ConfigError(
          f"{config_file}: unknown argument {key!r} in {part!r} (keys: {accepted}).")
    kind = types[key]
    try:
      values[key] = kind(value)
    except ValueError:
      raise errors.ConfigError(
          f"{config_file}: argument {key}={value!r} is not a valid "
          f"{getattr(kind, '__name__', kind)}.") from None
  return values


def classification_eval(**settings) -> ml_collections.ConfigDict:
  """Settings of a 'classification' evaluator over config.data.eval_split."""
  c = ml_collections.ConfigDict({
      "type": "classification",
      "every_steps": 1000,  # 0: only at the end of the run.
      # Per-class ROC-AUC / average precision need every prediction on the
      # host: switch off for huge label spaces (e.g. ImageNet-21k).
      "per_class": True})
  c.update(settings)
  return c


def segmentation_eval(**settings) -> ml_collections.ConfigDict:
  """Settings of a 'segmentation' evaluator: loss, Dice and IoU over
  config.data.eval_split."""
  c = ml_collections.ConfigDict({"type": "segmentation", "every_steps": 1000})
  c.update(settings)
  return c


def fewshot_eval(**settings) -> ml_collections.ConfigDict:
  """Settings of a 'fewshot_linear' evaluator: the linear few-shot probe of
  frozen pre-logits on a single-label TFDS dataset (fewshot.py)."""
  c = ml_collections.ConfigDict({
      "type": "fewshot_linear",
      "every_steps": 0,  # 0: only at the end of the run.
      "dataset": "",
      "classes": (),  # Class subset, relabelled 0..k-1; () keeps all.
      "train_split": "train", "eval_split": "test",
      "shots": (1, 5, 10, 25), "seeds": (0, 1, 2), "l2_reg": 0.1})
  c.update(settings)
  return c


def add_eval(config: ml_collections.ConfigDict, name: str,
             settings: ml_collections.ConfigDict) -> None:
  """Adds (or replaces) evaluator `name` of a locked config."""
  with config.evals.unlocked():
    config.evals[name] = settings


def _data_defaults() -> ml_collections.ConfigDict:
  """config.data: which data, and how it is read and augmented."""
  d = ml_collections.ConfigDict()
  d.name = "fashion_mnist_local"  # Single-label TFDS data (no sources).
  d.data_dir = config_dict.placeholder(str)  # None: the TFDS default.
  d.train_split = "train"
  d.eval_split = "test"
  d.classes = ()  # Class subset, relabelled 0..k-1; () keeps all.
  # Chest X-rays: any of chexpert, mimic, nih14, padchest (overrides name).
  d.sources = ()
  d.builder_config = "default"  # 'default' (<= 512 px) or 'original'.
  d.label_set = "common7"  # common7, chexpert13, nih14, padchest27, union.
  d.uncertain = "ignore"  # ignore, zeros, ones, lsr_zeros, lsr_ones.
  d.missing = "mask"  # Not-mentioned labels: 'mask' or 'zeros'.
  # CheXpert / MIMIC 'No Finding' = 1: 'unmentioned' makes the findings the
  # report did not mention negative (a positive Support Devices stays); 'all'
  # makes every finding negative (the seed code).
  d.no_finding = "unmentioned"
  d.views = ("PA", "AP", "AP_SUPINE")  # Frontal views.
  d.weights = ()  # Mixing weights per source; () concatenates.
  # Single-label data: each training position draws a class uniformly, then
  # one of its examples (the seed's class-balanced oversampling, COVIDx).
  d.class_balanced = False
  d.crop_to_square = False
  d.resolution = config_dict.placeholder(int)  # Input (crop) size.
  d.resize = config_dict.placeholder(int)  # 'bit' augment: resize first.
  d.channels = 3
  # How pixels reach the model: 'minus_one_one' ([-1, 1]: Google's BiT
  # weights, the seed's CXR models) or 'imagenet' (ImageNet mean/std: the
  # seed's ImageNet-1k/21k models). Checked against the run a model starts from.
  d.normalization = "minus_one_one"
  d.augment = "crop_flip"
  d.crop_padding = 4  # crop_flip: zero padding before the random crop.
  d.shift = 0.25  # cxr: random shift (fraction), scale, rotation (deg).
  d.scale = 0.1
  d.rotation = 45.0
  d.affine_fill = "zeros"  # cxr: outside pixels 'zeros' or 'reflect_101'.
  d.eval_batch_size = config_dict.placeholder(int)  # None: batch_size.
  d.prefetch = 2
  d.num_threads = config_dict.placeholder(int)  # None: TF decides.
  # Few-shot: k training examples per class (0: all), chosen by fewshot_seed
  # (rule in pipeline.select_fewshot); the chosen ids go to the workdir.
  d.examples_per_class = 0
  d.fewshot_seed = 0
  # Keep only images with exactly one positive label of label_set and train
  # a softmax over it (PadChest-Cl).
  d.exclusive = False
  return d


def set_model(config: ml_collections.ConfigDict, name: str) -> None:
  """config.model.name = `name`; torchvision's ResNets (models.RESNET_V1),
  whose released checkpoints (supervised and self-supervised) were all
  trained on ImageNet-normalised inputs, also get
  config.data.normalization = 'imagenet'."""
  from big_transfer_med import models  # pylint: disable=g-import-not-at-top
  config.model.name = name
  if name in models.RESNET_V1:
    config.data.normalization = "imagenet"


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by all runs (the seed paper's upstream recipe)."""
  c = ml_collections.ConfigDict()
  # Which recipe a config file applied: 'ours', 'bit' (BiT-HyperRule
  # fine-tuning) or 'seed' (the seed paper's code as released); recorded so
  # that results say how they were made.
  c.recipe = "ours"
  c.seed = 0
  # 'classification' (labels per image) or 'segmentation' (masks per
  # pixel: a U-Net on the model's encoder, a segmentation evaluator and
  # loss, data with a 'mask' feature).
  c.task = "classification"

  c.model = ml_collections.ConfigDict()
  c.model.name = "R50x1"
  # 'bfloat16': mixed precision (activations, convolutions and matrix products
  # in bfloat16; parameters, optimiser state, normalisation statistics and the
  # loss in float32). 'float32': everything in float32.
  c.model.precision = "float32"
  # A new classifier starts at 'zeros' (BiT) or as PyTorch initialises a new
  # layer ('pytorch': the seed's fine-tuning).
  c.model.head_init = "zeros"
  # How convolutions are computed (same parameters and values): 'native'
  # (XLA's convolution), 'matmul' (matrix products over im2col patches,
  # much faster on XLA:CPU) or 'auto' (matmul on the CPU, native on GPU/TPU).
  c.model.conv_lowering = "auto"
  # Rematerialisation: 'unit' keeps only each residual unit's input for the
  # backward pass and recomputes the rest (more compute; less activation
  # memory where XLA schedules for it, GPU/TPU: not on XLA:CPU); 'none'
  # keeps every activation. Same numbers either way.
  c.model.remat = "none"

  # Start from a pre-trained model (fine-tuning or continual pre-training):
  # a workdir of ours (orbax), a BiT .npz or a PyTorch BiT model.pth.tar.
  # A checkpoint in the run's own workdir (resume) always wins.
  c.init = ml_collections.ConfigDict()
  c.init.checkpoint = ""
  c.init.dont_load = ()  # Regexes over names like 'head/kernel'.
  # BatchNorm models: replace the checkpoint's running averages by those of
  # this many training batches before the first step (0: keep them).
  c.init.reestimate_batch_stats = 0
  # A run of ours as init.checkpoint: its best-validation checkpoint if it
  # kept one, else its latest (RUN:latest / RUN:best choose). Its inputs'
  # config.data.normalization must be this run's unless this is True.
  c.init.allow_normalization_change = False
  # BiT-HyperRule fills every schedule, resolution and MixUp key left unset
  # (None) from the training-set size and image size (see hyperrule.py).
  c.hyperrule = False
  c.mixup_alpha = config_dict.placeholder(float)  # None/0: no MixUp.

  c.data = _data_defaults()

  # Evaluators by name (evaluators.py): each runs every `every_steps` (0:
  # only at the end) and at the end of the run. Add one with add_eval.
  c.evals = ml_collections.ConfigDict()
  c.evals.val = classification_eval()

  c.loss = "softmax_xent"
  c.batch_size = 256  # Global, over all devices and hosts.
  # Gradient accumulation: each device's share of the batch is split into
  # this many micro-batches inside the compiled step (one optimiser update
  # per global batch): the same update in less device memory.
  c.accum_steps = 1
  c.total_steps = config_dict.placeholder(int)
  c.total_epochs = config_dict.placeholder(float)

  c.schedule = ml_collections.ConfigDict()
  c.schedule.decay_type = "step"  # 'step', 'cosine' or 'constant'.
  c.schedule.warmup_steps = config_dict.placeholder(int)
  c.schedule.warmup_epochs = config_dict.placeholder(float)
  # Warmup ramps linearly from 0 ('zero', BiT) or from peak/K ('lr_over_k':
  # the seed's Horovod scheduler, K = its number of workers; None = this
  # run's device count, recorded in config.json) up to the peak.
  c.schedule.warmup_start = "zero"
  c.schedule.warmup_k = config_dict.placeholder(int)
  c.schedule.decay_steps = config_dict.placeholder(tuple)
  c.schedule.decay_epochs = config_dict.placeholder(tuple)
  c.schedule.decay_factor = 0.1

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "sgd"  # optim.OPTIMIZERS: sgd (momentum, AGC) or adam.
  c.optim.base_lr = 0.01  # For reference_batch_size images; scaled linearly.
  c.optim.reference_batch_size = 256
  c.optim.momentum = 0.9
  c.optim.nesterov = True
  c.optim.weight_decay = 1e-4
  # 'kernels' (convolution and dense kernels) or 'all' (every parameter,
  # GroupNorm and biases included: PyTorch SGD's weight_decay, the seed).
  c.optim.weight_decay_on = "kernels"
  c.optim.agc_clipping = 0.01  # 0 or None disables AGC.
  c.optim.agc_eps = 1e-3
  # Not clipped: 'head' (the classifier; NFNets, BiT) or 'seed' (every 2-D /
  # 4-D tensor with as many output units as classes: the seed's rule, which
  # clips the head's bias).
  c.optim.agc_exclude = "head"

  # Reported first in results.json and used by the study tables: a metric of
  # the 'classification' evaluator (accuracy, mean_auc, map or loss) or of
  # the 'segmentation' one (dice, iou or loss); '' = accuracy for
  # single-label data, mean_auc for multi-label data (loss without
  # per-class metrics), dice for segmentation.
  c.primary_metric = ""

  # A step whose loss or gradient is NaN/Inf never changes the parameters.
  # 'stop': the run then ends with an error at the next log step or
  # checkpoint (the last checkpoint predates the bad step); 'skip': it goes
  # on, unless max_consecutive_nonfinite steps in a row were bad.
  c.on_nonfinite = "stop"
  c.max_consecutive_nonfinite = 10

  c.log_every_steps = 50
  # > 0: a TensorBoard profile of this many steps (clu periodic_actions.Profile).
  c.profile_steps = 0
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 1000
  c.checkpoint.keep = 3
  # Write checkpoints in the background (orbax async): the step loop waits
  # only for the copy off the devices. The log gives each save's wait.
  c.checkpoint.async_save = True
  # '<eval>/<metric>' (e.g. 'val/loss'): also keep the checkpoint with the
  # best value (lowest for losses, else highest) in WORKDIR/best/; '' = off.
  c.checkpoint.best_metric = ""
  c.lock()
  return c
