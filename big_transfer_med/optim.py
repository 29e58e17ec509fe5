"""SGD + momentum with Adaptive Gradient Clipping, weight decay and BiT schedules."""
import functools
from typing import Any, Optional, Sequence

import ml_collections
import optax
from flax import traverse_util

from input_pipeline import errors

HEAD = "head"
WARMUP_STARTS = ("zero", "lr_over_k")  # config.schedule.warmup_start.
OPTIMIZERS = ("sgd", "adam")  # config.optim.name.
WEIGHT_DECAY_ON = ("kernels", "all")  # config.optim.weight_decay_on.
AGC_EXCLUDE = ("head", "seed")  # config.optim.agc_exclude.


def check_steps_or_epochs(steps_key: str, steps, epochs_key: str,
                          epochs) -> None:
  """A duration is given in steps or in epochs, never both."""
  if steps and epochs:
    raise errors.ConfigError(
        f"Set only one of config.{steps_key} ({steps}) and "
        f"config.{epochs_key} ({epochs}); set the other to 0.")


def steps_from(config: ml_collections.ConfigDict, name: str,
               steps_per_epoch: float, default: Optional[Any] = None):
  """Reads a duration given as `<name>_steps` or `<name>_epochs` (not both).

  Works for scalars and for sequences (decay boundaries); epochs are converted
  with `steps_per_epoch` and rounded to whole steps. As in big_vision, None, 0
  and () count as unset, so that a command line can switch a config file's
  epochs to steps: --config.total_steps=100 --config.total_epochs=0.
  """
  steps = config.get(f"{name}_steps")
  epochs = config.get(f"{name}_epochs")
  check_steps_or_epochs(f"{name}_steps", steps, f"{name}_epochs", epochs)
  if steps:
    return steps
  if not epochs:
    return default
  if isinstance(epochs, (list, tuple)):
    return tuple(int(round(e * steps_per_epoch)) for e in epochs)
  return int(round(epochs * steps_per_epoch))


def scaled_learning_rate(base_lr: float, batch_size: int,
                         reference_batch: int = 256) -> float:
  """Linear scaling rule: `base_lr` is the rate for `reference_batch` images."""
  return base_lr * batch_size / reference_batch


def create_schedule(peak_lr: float, total_steps: int, warmup_steps: int = 0,
                    decay_type: str = "step",
                    decay_boundaries: Sequence[int] = (),
                    decay_factor: float = 0.1,
                    warmup_start_lr: float = 0.0) -> optax.Schedule:
  """Linear warmup from `warmup_start_lr` (the seed: peak / K), then step
  decay (x`decay_factor` at boundaries), cosine or constant."""
  warmup = optax.linear_schedule(warmup_start_lr, peak_lr,
                                 max(warmup_steps, 1))
  if decay_type == "step":
    bad = [b for b in decay_boundaries if not warmup_steps <= b <= total_steps]
    if bad:
      raise errors.ConfigError(
          f"Decay boundaries {bad} lie outside [warmup {warmup_steps}, "
          f"total {total_steps}] steps.")
    scales = {}  # Repeated boundaries (a scaled-down schedule) multiply.
    for b in decay_boundaries:
      step = int(b) - warmup_steps
      scales[step] = scales.get(step, 1.0) * decay_factor
    decay = optax.piecewise_constant_schedule(peak_lr, scales)
  elif decay_type == "cosine":
    decay = optax.cosine_decay_schedule(peak_lr,
                                        max(total_steps - warmup_steps, 1))
  elif decay_type == "constant":
    decay = optax.constant_schedule(peak_lr)
  else:
    raise errors.ConfigError(
        f"config.schedule.decay_type={decay_type!r}: expected 'step', "
        "'cosine' or 'constant'.")
  if warmup_steps <= 0:
    return decay
  return optax.join_schedules([warmup, decay], [warmup_steps])


def _mask(params, predicate):
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({k: predicate(k) for k in flat})


def not_head_mask(params):
  """True for every parameter outside the classifier head."""
  return _mask(params, lambda path: path[0] != HEAD)


def seed_agc_mask(params):
  """The seed code's AGC rule (its optim/sgd_agc.py): every tensor is
  clipped except 2-D / 4-D ones with as many output units as the model has
  classes (PyTorch's shape[0]; our kernels keep output units last). So the
  head's kernel is not clipped, its bias is, and so would be a body kernel
  that happens to have num_classes output channels."""
  num_classes = params[HEAD]["kernel"].shape[-1]
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({
      k: not (v.ndim in (2, 4) and v.shape[-1] == num_classes)
      for k, v in flat.items()})


def kernel_mask(params):
  """True for convolution and dense kernels (weight decay targets)."""
  return _mask(params, lambda path: path[-1] == "kernel")


def create_optimizer(schedule: optax.Schedule, momentum: float = 0.9,
                     nesterov: bool = True, weight_decay: float = 0.0,
                     agc_clipping: Optional[float] = 0.01,
                     agc_eps: float = 1e-3, weight_decay_on: str = "kernels",
                     agc_exclude: str = "head", name: str = "sgd"
                     ) -> optax.GradientTransformation:
  """SGD(momentum) or Adam (`name`, OPTIMIZERS), with AGC and L2 weight decay.

  Order: AGC on the raw gradient (NFNets), then decay added to the gradient
  (as in the PyTorch SGD / Adam used by the seed codes), then momentum or
  Adam's moments (PyTorch's defaults: betas 0.9, 0.999, eps 1e-8). AGC skips
  the head (`agc_exclude='head'`) or what the seed skipped ('seed');
  decay applies to kernels ('kernels') or to every parameter ('all').
  """
  if name not in OPTIMIZERS:
    raise errors.ConfigError(f"config.optim.name={name!r}: expected one of "
                             f"{OPTIMIZERS}.")
  if weight_decay_on not in WEIGHT_DECAY_ON or agc_exclude not in AGC_EXCLUDE:
    raise errors.ConfigError(
        f"config.optim.weight_decay_on={weight_decay_on!r} / "
        f"config.optim.agc_exclude={agc_exclude!r}: expected one of "
        f"{WEIGHT_DECAY_ON} / {AGC_EXCLUDE}.")
  parts = []
  if agc_clipping:
    parts.append(optax.masked(
        optax.adaptive_grad_clip(agc_clipping, agc_eps),
        not_head_mask if agc_exclude == "head" else seed_agc_mask))
  if weight_decay:
    parts.append(optax.add_decayed_weights(
        weight_decay, mask=kernel_mask if weight_decay_on == "kernels" else None))
  if name == "adam":
    parts.append(optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-8))
  else:
    parts.append(optax.sgd(schedule, momentum=momentum or None,
                           nesterov=nesterov and bool(momentum)))
  # A step with a non-finite gradient leaves parameters and optimiser state
  # unchanged (and is counted in the state); whether the run then stops or
  # goes on is the trainer's policy (config.on_nonfinite), so the guard
  # itself never gives up.
  return optax.apply_if_finite(optax.chain(*parts),
                               max_consecutive_errors=2**30)


@functools.lru_cache(maxsize=16)
def _optimizer_and_schedule(peak_lr, total_steps, warmup_steps, decay_type,
                            decay_boundaries, decay_factor, warmup_start_lr,
                            *optimizer_settings):
  """One (optimizer, schedule) object pair per setting, so that runs in one
  process with equal settings reuse the train step compiled for them."""
  schedule = create_schedule(peak_lr, total_steps, warmup_steps, decay_type,
                             decay_boundaries, decay_factor, warmup_start_lr)
  return create_optimizer(schedule, *optimizer_settings), schedule


def from_config(config: ml_collections.ConfigDict, steps_per_epoch: float):
  """Builds (optimizer, schedule, total_steps) from `config`."""
  total_steps = steps_from(config, "total", steps_per_epoch)
  if not total_steps:
    raise errors.ConfigError("Set config.total_steps or config.total_epochs.")
  s = config.schedule
  peak_lr = scaled_learning_rate(config.optim.base_lr, config.batch_size,
                                 config.optim.reference_batch_size)
  if s.warmup_start not in WARMUP_STARTS:
    raise errors.ConfigError(
        f"config.schedule.warmup_start={s.warmup_start!r}: expected one of "
        f"{WARMUP_STARTS}.")
  if s.warmup_start == "lr_over_k" and not s.warmup_k:
    raise errors.ConfigError(
        "config.schedule.warmup_start='lr_over_k' needs config.schedule."
        "warmup_k (the trainer fills in the device count when it is None).")
  o = config.optim
  optimizer, schedule = _optimizer_and_schedule(
      peak_lr, int(total_steps), steps_from(s, "warmup", steps_per_epoch, 0),
      s.decay_type, tuple(steps_from(s, "decay", steps_per_epoch, ())),
      s.decay_factor,
      peak_lr / s.warmup_k if s.warmup_start == "lr_over_k" else 0.0,
      o.momentum, o.nesterov, o.weight_decay, o.agc_clipping, o.agc_eps,
      o.weight_decay_on, o.agc_exclude, o.name)
  return optimizer, schedule, int(total_steps)
