"""The one check of a trainer config: type, range or choices of every key.

`validate` runs before anything is read or written: on the config as given
(after the config file, its arguments and --config.key overrides), and again
with `resolved=True` once BiT-HyperRule has filled its keys. A bad value
raises errors.ConfigError naming the key, the value and what is allowed.
`RULES` has one entry per key of config_lib.base_config(), `EVAL_RULES` one
per setting of each evaluator type (a test keeps them so).
"""
import dataclasses
import re
from typing import Any, Callable, Dict, Sequence

import ml_collections
from flax import traverse_util

from big_transfer_med import evaluators
from big_transfer_med import losses
from big_transfer_med import models
from big_transfer_med import optim
from input_pipeline import choices
from input_pipeline import errors
from input_pipeline import labels

PRIMARY_METRICS = ("", "accuracy", "mean_auc", "map", "loss", "dice", "iou",
                   "dice_pooled")


@dataclasses.dataclass(frozen=True)
class Rule:
  """What a key accepts: `allowed` describes it, `ok(value)` checks it."""
  allowed: str
  ok: Callable[[Any], bool]
  optional: bool = False  # None (unset) is accepted.

  def check(self, value) -> bool:
    return (self.optional and value is None) or (
        value is not None and self.ok(value))


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer(low: int = None, optional: bool = False) -> Rule:
  text = "an integer" + (f" >= {low}" if low is not None else "")
  return Rule(text + (" or None" if optional else ""),
              lambda v: _is_int(v) and (low is None or v >= low), optional)


def number(low: float = None, high: float = None, low_open: bool = False,
           high_open: bool = False, optional: bool = False) -> Rule:
  """A float in [low, high] (open ends where asked)."""
  bounds = []
  if low is not None:
    bounds.append(f"{'>' if low_open else '>='} {low}")
  if high is not None:
    bounds.append(f"{'<' if high_open else '<='} {high}")
  def ok(v):
    return _is_number(v) and (
        low is None or (v > low if low_open else v >= low)) and (
            high is None or (v < high if high_open else v <= high))
  return Rule("a number " + " and ".join(bounds)
              + (" or None" if optional else ""), ok, optional)


def choice(options: Sequence[str]) -> Rule:
  options = tuple(options)
  return Rule(f"one of {list(options)}", lambda v: v in options)


def choice_or_folder(options: Sequence[str]) -> Rule:
  """One of `options`, or a folder dataset 'folder:NAME'."""
  options = tuple(options)
  return Rule(f"one of {list(options)} or {choices.FOLDER_PREFIX}NAME",
              lambda v: v in options or bool(choices.folder_name(v)))


def boolean() -> Rule:
  return Rule("True or False", lambda v: isinstance(v, bool))


def string(nonempty: bool = False, optional: bool = False) -> Rule:
  return Rule(("a non-empty string" if nonempty else "a string")
              + (" or None" if optional else ""),
              lambda v: isinstance(v, str) and (bool(v) or not nonempty),
              optional)


def sequence(item: Rule, unique: bool = False, increasing: bool = False,
             nonempty: bool = False, optional: bool = False) -> Rule:
  """A tuple (or list) whose every item satisfies `item`."""
  words = [w for w, on in (("non-empty", nonempty), ("unique", unique),
                           ("non-decreasing", increasing)) if on]
  def ok(v):
    if not isinstance(v, (tuple, list)) or (nonempty and not v):
      return False
    if not all(item.check(x) for x in v):
      return False
    if unique and len(set(v)) != len(v):
      return False
    return not increasing or list(v) == sorted(v)
  return Rule(" ".join(["a"] + words + ["tuple, each item", item.allowed])
              + (", or None" if optional else ""), ok, optional)


def _parses(parse: Callable[[Any], Any], failures) -> Callable[[Any], bool]:
  """A check: whether `parse(value)` succeeds (raises none of `failures`)."""
  def ok(value) -> bool:
    try:
      parse(value)
    except failures:
      return False
    return True
  return ok


RULES: Dict[str, Rule] = {
    "recipe": choice(("ours", "bit", "seed", "benchmark")),
    "seed": integer(0),
    "task": choice(models.TASKS),
    "model.name": Rule(models.MODEL_NAMES_HELP,
                       _parses(models.check_name, (errors.ConfigError, TypeError))),
    "model.precision": choice(sorted(models.PRECISIONS)),
    "model.head_init": choice(models.HEAD_INITS),
    "model.conv_lowering": choice(models.CONV_LOWERINGS),
    "model.remat": choice(models.REMATS),
    "init.checkpoint": string(),
    "init.reestimate_batch_stats": integer(0),
    "init.allow_normalization_change": boolean(),
    "init.dont_load": sequence(Rule("regular expression",
                                        _parses(re.compile, (re.error, TypeError)))),
    "hyperrule": boolean(),
    "mixup_alpha": number(0, optional=True),
    "data.name": string(nonempty=True),
    "data.data_dir": string(optional=True),
    "data.train_split": string(nonempty=True),
    "data.eval_split": string(nonempty=True),
    "data.classes": sequence(integer(0), unique=True),
    "data.sources": sequence(choice_or_folder(sorted(choices.CXR_SOURCES)),
                             unique=True),
    "data.builder_config": string(nonempty=True),
    "data.label_set": choice_or_folder(sorted(labels.LABEL_SETS)),
    "data.uncertain": choice(labels.UNCERTAIN_POLICIES),
    "data.missing": choice(("mask", "zeros")),
    "data.no_finding": choice(labels.NO_FINDING_RULES),
    "data.views": sequence(choice(choices.VIEWS), unique=True,
                           nonempty=True),
    "data.weights": sequence(number(0, low_open=True)),
    "data.class_balanced": boolean(),
    "data.crop_to_square": boolean(),
    "data.resolution": integer(1, optional=True),
    "data.resize": integer(1, optional=True),
    "data.channels": choice((1, 3)),
    "data.normalization": choice(sorted(choices.NORMALIZATIONS)),
    "data.augment": choice(choices.AUGMENTATIONS),
    "data.crop_padding": integer(0),
    "data.shift": number(0, 1),
    "data.scale": number(0, 1, high_open=True),
    "data.rotation": number(0, 180),
    "data.affine_fill": choice(choices.AFFINE_FILLS),
    "data.eval_batch_size": integer(1, optional=True),
    "data.prefetch": integer(0),
    "data.num_threads": integer(1, optional=True),
    "data.examples_per_class": integer(0),
    "data.fewshot_seed": integer(0),
    "data.exclusive": boolean(),
    "loss": choice(sorted(losses.LOSSES) + [losses.BY_LABELS]),
    "batch_size": integer(1),
    "accum_steps": integer(1),
    "total_steps": integer(0, optional=True),
    "total_epochs": number(0, optional=True),
    "schedule.decay_type": choice(("step", "cosine", "constant")),
    "schedule.warmup_steps": integer(0, optional=True),
    "schedule.warmup_epochs": number(0, optional=True),
    "schedule.warmup_start": choice(optim.WARMUP_STARTS),
    "schedule.warmup_k": integer(1, optional=True),
    "schedule.decay_steps": sequence(integer(0), increasing=True,
                                     optional=True),
    "schedule.decay_epochs": sequence(number(0), increasing=True,
                                      optional=True),
    "schedule.decay_factor": number(0, 1, low_open=True),
    "optim.name": choice(optim.OPTIMIZERS),
    "optim.base_lr": number(0),  # 0: e.g. to check what a checkpoint gives.
    "optim.reference_batch_size": integer(1),
    "optim.momentum": number(0, 1, high_open=True),
    "optim.nesterov": boolean(),
    "optim.weight_decay": number(0),
    "optim.weight_decay_on": choice(optim.WEIGHT_DECAY_ON),
    "optim.agc_clipping": number(0, optional=True),
    "optim.agc_eps": number(0, low_open=True),
    "optim.agc_exclude": choice(optim.AGC_EXCLUDE),
    "primary_metric": choice(PRIMARY_METRICS),
    "on_nonfinite": choice(("stop", "skip")),
    "max_consecutive_nonfinite": integer(0),
    "log_every_steps": integer(1),
    "profile_steps": integer(0),
    "checkpoint.every_steps": integer(0),
    "checkpoint.keep": integer(1),
    "checkpoint.async_save": boolean(),
    "checkpoint.best_metric": Rule(
        "'' or '<evaluator>/<metric>' of a classification or segmentation "
        "evaluator, e.g. "
        "'val/loss'", lambda v: isinstance(v, str) and (
            not v or v.count("/") == 1)),
}

# The settings of each evaluator type (config.evals.NAME.KEY), one rule per
# key of its config_lib settings function.
EVAL_RULES: Dict[str, Dict[str, Rule]] = {
    "classification": {
        "type": string(nonempty=True),
        "every_steps": integer(0),
        "per_class": boolean(),
    },
    "segmentation": {
        "type": string(nonempty=True),
        "every_steps": integer(0),
    },
    "fewshot_linear": {
        "type": string(nonempty=True),
        "every_steps": integer(0),
        "dataset": string(nonempty=True),
        "classes": sequence(integer(0), unique=True),
        "train_split": string(nonempty=True),
        "eval_split": string(nonempty=True),
        "shots": sequence(integer(1), unique=True, nonempty=True),
        "seeds": sequence(integer(0), unique=True, nonempty=True),
        "l2_reg": number(0, low_open=True),
    },
}

# Durations given as steps or epochs (see optim.steps_from).
_DURATIONS = (("total_steps", "total_epochs"),
              ("schedule.warmup_steps", "schedule.warmup_epochs"),
              ("schedule.decay_steps", "schedule.decay_epochs"))


def flat_items(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """{'a.b': value} for every leaf key of `config`."""
  return traverse_util.flatten_dict(config.to_dict(), sep=".")


def _fail(key: str, value, allowed: str) -> None:
  raise errors.ConfigError(f"config.{key}={value!r}: expected {allowed}.")


def _rule(key: str, values: Dict[str, Any]) -> Rule:
  """The rule of `key`; for evaluator settings, that of the evaluator's type."""
  if not key.startswith("evals."):
    return RULES.get(key)
  _, name, setting = key.split(".", 2)
  kind = values.get(f"evals.{name}.type")
  if not isinstance(kind, str) or kind not in EVAL_RULES:
    _fail(f"evals.{name}.type", kind, f"one of {sorted(EVAL_RULES)}")
  rule = EVAL_RULES[kind].get(setting)
  if rule is None:
    raise errors.ConfigError(
        f"config.{key} is not a setting of a {kind!r} evaluator; its "
        f"settings are {sorted(EVAL_RULES[kind])}.")
  return rule


def _check_keys(values: Dict[str, Any]) -> None:
  for key, value in values.items():
    rule = _rule(key, values)
    if rule is None:
      raise errors.ConfigError(
          f"config.{key} is not a key of config_lib.base_config(); "
          "remove it or add it there (and its rule to config_validation).")
    if not rule.check(value):
      _fail(key, value, rule.allowed)


def _check_together(values: Dict[str, Any], resolved: bool) -> None:
  """Rules across keys."""
  for steps, epochs in _DURATIONS:
    optim.check_steps_or_epochs(steps, values[steps], epochs, values[epochs])
  if values["data.weights"] and (
      len(values["data.weights"]) != len(values["data.sources"])):
    _fail("data.weights", values["data.weights"],
          f"one weight per source of config.data.sources "
          f"({len(values['data.sources'])}), or ()")
  if values["data.exclusive"] and not values["data.sources"]:
    _fail("data.exclusive", True, "False unless config.data.sources names "
          "chest X-ray sources")
  if values["data.normalization"] != "minus_one_one" and (
      values["data.channels"] != 3):
    _fail("data.normalization", values["data.normalization"],
          "'minus_one_one' for config.data.channels=1 (ImageNet statistics "
          "are per RGB channel)")
  if values["checkpoint.best_metric"]:
    name, metric = values["checkpoint.best_metric"].split("/")
    if values.get(f"evals.{name}.type") not in evaluators.MAIN_TYPES or (
        metric not in PRIMARY_METRICS[1:]):
      _fail("checkpoint.best_metric", values["checkpoint.best_metric"],
            f"'<evaluator>/<metric>' with a classification or segmentation "
            f"evaluator of config.evals and a metric in "
            f"{list(PRIMARY_METRICS[1:])}")
  _check_evaluators_fit_task(values)
  if values.get("init.reestimate_batch_stats") and not models.uses_batch_norm(
      values["model.name"]):
    _fail("init.reestimate_batch_stats", values["init.reestimate_batch_stats"],
          f"0: config.model.name={values['model.name']!r} has no BatchNorm")
  if values["hyperrule"] and not resolved:
    return  # BiT-HyperRule fills the keys checked below.
  if not values["data.resolution"]:
    raise errors.ConfigError("config.data.resolution is unset: set it, or "
                             "set config.hyperrule=True to derive it.")
  if not (values["total_steps"] or values["total_epochs"]):
    raise errors.ConfigError("Set config.total_steps or config.total_epochs "
                             "(or config.hyperrule=True to derive them).")
  if values["task"] == "segmentation" and values["data.resolution"] % 32:
    _fail("data.resolution", values["data.resolution"],
          "a multiple of 32 for config.task='segmentation' (the U-Net's "
          "encoder halves the sides five times)")
  if values["data.augment"] == "bit" and not (
      values["data.resize"] and values["data.resize"] >= values[
          "data.resolution"]):
    _fail("data.resize", values["data.resize"],
          f"an integer >= config.data.resolution ({values['data.resolution']})"
          " for config.data.augment='bit' (resize, then random crop)")


# Evaluator types each task can run.
_TASK_EVALUATORS = {"classification": ("classification", "fewshot_linear"),
                    "segmentation": ("segmentation",)}


def _check_evaluators_fit_task(values: Dict[str, Any]) -> None:
  task = values["task"]
  for key, kind in values.items():
    if key.startswith("evals.") and key.endswith(".type") and (
        kind not in _TASK_EVALUATORS[task]):
      _fail(key, kind, f"one of {list(_TASK_EVALUATORS[task])} for "
            f"config.task={task!r}")


def validate(config: ml_collections.ConfigDict,
             resolved: bool = False) -> None:
  """Raises errors.ConfigError for the first invalid key of `config`.

  With `resolved=False` (before BiT-HyperRule) the keys the rule fills may
  be unset when config.hyperrule is on; `resolved=True` checks them too.
  """
  values = flat_items(config)
  _check_keys(values)
  _check_together(values, resolved)
