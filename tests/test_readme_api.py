"""Every Python name README.md gives in backticks exists, with the parameters
it shows: `models.get_model(name, num_classes)`, `run_dir.RUN_NEUTRAL_KEYS`,
`big_transfer_med/config_lib.py:base_config()`, ..."""
import importlib
import inspect
import os
import re

import pytest
from flax import traverse_util

from big_transfer_med import config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("big_transfer_med", "input_pipeline")
# `a.b.c`, `a.b(x, y)` or `pkg/module.py:func()`.
TOKEN = re.compile(r"`((?:[\w/]+\.py:)?[A-Za-z_][\w.]*)(?:\(([^`()]*)\))?`")
FILE_NAME = re.compile(r"\.(py|jsonl?|txt|csv|md|png|npz|pth|tar|gz|sh)$")
CONFIG_KEYS = set(traverse_util.flatten_dict(
    config_lib.base_config().to_dict(), sep="."))


def _module(name: str):
  """Our module called `name` ('models', 'input_pipeline.xray_io'), or None."""
  for candidate in [name] + [f"{p}.{name}" for p in PACKAGES]:
    if not candidate.startswith(PACKAGES):
      continue
    try:
      return importlib.import_module(candidate)
    except ImportError:
      continue
  return None


def resolve(dotted: str):
  """(object, how it was found) for a README name, or (None, why not ours)."""
  if ".py:" in dotted:
    path, attribute = dotted.split(":")
    module = _module(path[:-3].replace("/", "."))
    return (getattr(module, attribute, None) if module else None), path
  parts = dotted.split(".")
  for i in range(len(parts) - 1, 0, -1):
    module = _module(".".join(parts[:i]))
    if module is not None:
      obj = module
      for attribute in parts[i:]:
        obj = getattr(obj, attribute, None)
      return obj, module.__name__
  return None, None


def readme_names():
  """(line, name, arguments or None) of each backticked name of ours."""
  found = []
  with open(os.path.join(REPO, "README.md")) as f:
    for lineno, line in enumerate(f, 1):
      for match in TOKEN.finditer(line):
        name, args = match.group(1), match.group(2)
        if "." not in name or name in CONFIG_KEYS:
          continue  # A config key (`optim.base_lr`), not an attribute.
        if ".py:" not in name and FILE_NAME.search(name):
          continue  # A file name (`metrics.jsonl`).
        if name.split(".")[0].split("/")[0] in PACKAGES or _module(
            name.split(".")[0]) is not None:
          found.append((lineno, name, args))
  return found


NAMES = readme_names()


def test_the_readme_names_our_apis():
  names = {name for _, name, _ in NAMES}
  for expected in ("models.get_model", "pretrained_weights.load_bit_npz",
                   "input_pipeline.xray_io.read_xray"):
    assert expected in names


@pytest.mark.parametrize("lineno,name,args", NAMES,
                         ids=[f"L{l}:{n}" for l, n, _ in NAMES])
def test_readme_name_exists_with_its_parameters(lineno, name, args):
  obj, where = resolve(name)
  assert obj is not None, f"README line {lineno}: `{name}` not found in {where}"
  if args is None:
    return
  shown = [a.split("=")[0].strip() for a in args.split(",") if a.strip()]
  shown = [a for a in shown if a != "..."]
  parameters = list(inspect.signature(obj).parameters)
  assert parameters[:len(shown)] == shown, (
      f"README line {lineno}: `{name}({args})` but the signature is "
      f"{name}{inspect.signature(obj)}")
