"""The complete, locked set of config keys; every config file starts from it.

Locking makes a typo in a config file or a `--config.key=value` override fail
at once with the key's name instead of being silently ignored.
"""
import ml_collections
from ml_collections import config_dict


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by all runs (the seed paper's upstream recipe)."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = "R50x1"

  c.data = ml_collections.ConfigDict()
  c.data.name = "fashion_mnist_local"  # Single-label TFDS data (no sources).
  c.data.data_dir = config_dict.placeholder(str)  # None: the TFDS default.
  c.data.train_split = "train"
  c.data.eval_split = "test"
  c.data.classes = ()  # Class subset, relabelled 0..k-1; () keeps all.
  # Chest X-rays: any of chexpert, mimic, nih14, padchest (overrides name).
  c.data.sources = ()
  c.data.builder_config = "default"  # 'default' (<= 512 px) or 'original'.
  c.data.label_set = "common7"  # common7, chexpert13, nih14, padchest27, union.
  c.data.uncertain = "ignore"  # ignore, zeros, ones, lsr_zeros, lsr_ones.
  c.data.missing = "mask"  # Not-mentioned labels: 'mask' or 'zeros'.
  c.data.views = ("PA", "AP", "AP_SUPINE")  # Frontal views.
  c.data.weights = ()  # Mixing weights per source; () concatenates.
  c.data.crop_to_square = False
  c.data.resolution = 224
  c.data.channels = 3
  c.data.augment = "crop_flip"
  c.data.crop_padding = 4  # crop_flip: zero padding before the random crop.
  c.data.shift = 0.25  # cxr: random shift (fraction), scale, rotation (deg).
  c.data.scale = 0.1
  c.data.rotation = 45.0
  c.data.eval_batch_size = config_dict.placeholder(int)  # None: batch_size.
  c.data.prefetch = 2
  c.data.num_threads = config_dict.placeholder(int)  # None: TF decides.

  c.loss = "softmax_xent"
  c.batch_size = 256  # Global, over all devices and hosts.
  c.total_steps = config_dict.placeholder(int)
  c.total_epochs = config_dict.placeholder(float)

  c.schedule = ml_collections.ConfigDict()
  c.schedule.decay_type = "step"  # 'step', 'cosine' or 'constant'.
  c.schedule.warmup_steps = config_dict.placeholder(int)
  c.schedule.warmup_epochs = config_dict.placeholder(float)
  c.schedule.decay_steps = config_dict.placeholder(tuple)
  c.schedule.decay_epochs = config_dict.placeholder(tuple)
  c.schedule.decay_factor = 0.1

  c.optim = ml_collections.ConfigDict()
  c.optim.base_lr = 0.01  # For reference_batch_size images; scaled linearly.
  c.optim.reference_batch_size = 256
  c.optim.momentum = 0.9
  c.optim.nesterov = True
  c.optim.weight_decay = 1e-4
  c.optim.agc_clipping = 0.01  # 0 or None disables AGC.
  c.optim.agc_eps = 1e-3

  c.log_every_steps = 50
  c.eval_every_steps = 1000  # 0: evaluate only at the end.
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 1000
  c.checkpoint.keep = 3
  c.lock()
  return c
