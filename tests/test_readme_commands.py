"""Every command in README.md and docs/*.md is valid as typed (checked
without running it).

Commands come from the ```bash blocks (continuations joined, comments dropped,
split on `&&`, `||`, `;`, `|`; env-var prefixes, `srun ...`, `bash -c "..."` and
`gcloud ... --command="..."` unwrapped) and from inline `python ...` spans in
the prose. For each command:
* `python -m MODULE` / `python scripts/x.py`: the module or file exists, and
  every `--flag`, `--noflag` and `[--flag=...]` is defined, enum values among
  the choices (absl: the flags listed by `--helpxml`; otherwise those named in
  `--help` output; both run once per tool, see prefetch_flags);
* `--config=FILE[:ARG]` (any ml_collections config flag, e.g. `--spec`): FILE
  exists and its `get_config(ARG)` returns a ConfigDict in which every
  `--config.a.b=...` override names an existing key;
* `bash scripts/x.sh`: the script exists;
* `tfds build`: its flags exist, `--imports` modules import, each dataset is a
  registered builder with the given `/config`, a JSON `--config` parses.
Placeholders (`...`, `DIR`, `NAME`, `configs/X.py`) skip only what needs a
real value. Anything else (gcloud, pip, sed, cd, ...) is not checked.
"""
import collections
import functools
import glob
import importlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET

import ml_collections
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
PYTHON = re.compile(r"python(\d+(\.\d+)*)?")
WRAPPERS = {"srun", "env", "nohup", "time", "timeout", "exec", "mpirun"}
TFDS_BUILD = ("-m", "tensorflow_datasets.scripts.cli.main", "build")
Flag = collections.namedtuple("Flag", "type choices")  # absl type, enum values


# ----------------------------------------------------------------- parsing


def shell_lines(text, lineno=1):
  """(line number, text) of each logical line of a shell script.

  Backslash-newline is joined (also inside double quotes), `#` comments are
  dropped unless quoted or inside a word; quoted newlines stay in the line.
  """
  lines, cur, start, quote, i = [], [], None, None, 0
  while i < len(text):
    c = text[i]
    if c == "\\" and quote != "'":
      if text[i + 1:i + 2] == "\n":
        i, lineno = i + 2, lineno + 1
        continue
      c = text[i:i + 2]
    elif quote:
      quote = None if c == quote else quote
    elif c in "'\"":
      quote = c
    elif c == "#" and (not cur or cur[-1] in " \t;&|("):
      i = text.find("\n", i) if "\n" in text[i:] else len(text)
      continue
    elif c == "\n":
      if start is not None:
        lines.append((start, "".join(cur)))
      cur, start, lineno, i = [], None, lineno + 1, i + 1
      continue
    if start is None and not c.isspace():
      start = lineno
    lineno += c.count("\n")
    cur.append(c)
    i += len(c)
  if start is not None:
    lines.append((start, "".join(cur)))
  return lines


def simple_commands(line):
  """Token lists of the commands in one logical line (split on ; & |)."""
  lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
  lex.whitespace_split, lex.commenters = True, ""
  commands, cur = [], []
  for tok in lex:
    if tok and set(tok) <= set(";&|"):
      commands.append(cur)
      cur = []
    else:
      cur.append(tok)
  return [c for c in commands + [cur] if c]


def unwrap(argv):
  """The commands an argv runs: env prefixes and wrappers removed."""
  while argv and re.match(r"[A-Za-z_]\w*=", argv[0]):
    argv = argv[1:]
  if not argv:
    return []
  head = os.path.basename(argv[0])
  inner = None
  if head in ("bash", "sh") and argv[1:2] == ["-c"] and len(argv) > 2:
    inner = argv[2]
  for j, tok in enumerate(argv):
    if tok.startswith("--command="):
      inner = tok[len("--command="):]
    elif tok == "--command" and j + 1 < len(argv):
      inner = argv[j + 1]
  if inner is not None:
    return [c for _, line in shell_lines(inner)
            for cmd in simple_commands(line) for c in unwrap(cmd)]
  if head in WRAPPERS:
    for j in range(1, len(argv)):
      if PYTHON.fullmatch(os.path.basename(argv[j])) or argv[j] in ("bash",
                                                                      "tfds"):
        return unwrap(argv[j:])
    return []
  return [argv]


def kind(argv):
  """'python', 'bash', 'tfds' for the commands checked, else None."""
  head = os.path.basename(argv[0])
  if PYTHON.fullmatch(head) and len(argv) > 1:
    return "python"
  if head in ("bash", "sh") and len(argv) > 1 and argv[1].endswith(".sh"):
    return "bash"
  if head == "tfds" and argv[1:2] == ["build"]:
    return "tfds"
  return None


def readme_commands(path=README):
  """(line, argv) of every checked command in the README."""
  with open(path) as f:
    text = f.read()
  found = []
  fence = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
  for m in fence.finditer(text):
    if m.group(1) == "bash":
      first = text.count("\n", 0, m.start(2)) + 1
      for line, cmd_text in shell_lines(m.group(2), first):
        found += [(line, c) for cmd in simple_commands(cmd_text)
                  for c in unwrap(cmd)]
  # Inline `python ...` spans in the prose (fences blanked, lines kept).
  prose = fence.sub(lambda m: "\n" * m.group(0).count("\n"), text)
  for m in re.finditer(r"`(python [^`]+)`", prose):
    line = prose.count("\n", 0, m.start()) + 1
    text = m.group(1).replace("\n", " ")
    found += [(line, c) for cmd in simple_commands(text) for c in unwrap(cmd)]
  return sorted(((line, c) for line, c in found if kind(c)), key=lambda x: x[0])


# ------------------------------------------------------------ flag sources


# Runs `python -m MODULE --helpxml` (or `python script.py --help`, ...) for a
# list of targets: TensorFlow, which most of them import (~12 s), is imported
# once and each target then runs in a fork of that process, as `-m` would run
# it (run_name "__main__", so flags defined under `if __name__ == ...` count).
# The absl flags TensorFlow itself defines (absltest's, TPU's) are removed.
_FLAGS = {}


def _uses_absl(target):
  if target == TFDS_BUILD:
    return False
  if target[0] == "-m":
    path = importlib.util.find_spec(target[1]).origin
  else:
    path = os.path.join(REPO, target[0])
  with open(path) as f:
    return bool(re.search(r"\bapp\.run\(|\bflags\.DEFINE", f.read()))


def _parse_help(target, out, err):
  """{flag name: Flag} from --helpxml (absl) or --help (argparse) output."""
  if not _uses_absl(target):
    return {name: Flag("", ()) for name in re.findall(r"--(\w[\w-]*)",
                                                      out + err)}
  if "</AllFlags>" not in out:
    raise RuntimeError(f"{' '.join(target)} --helpxml printed no XML: {err}")
  xml = out[out.index("<?xml"):out.index("</AllFlags>") + len("</AllFlags>")]
  return {f.findtext("name"): Flag(f.findtext("type"), tuple(
      e.text for e in f.iter("enum_value"))) for f in ET.fromstring(xml).iter(
          "flag")}


def prefetch_flags(targets):
  """Lists the flags of all targets (tuples of `python` arguments) at once:
  one `--helpxml` (absl) or `--help` process per target, run concurrently
  (each imports TensorFlow; flags defined under `__main__` count)."""
  todo = sorted(set(targets) - set(_FLAGS))
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  running = [(t, subprocess.Popen(
      [sys.executable, *t, "--helpxml" if _uses_absl(t) else "--help"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)) for t in todo]
  for target, process in running:
    out, err = process.communicate(timeout=300)  # absl's --helpxml exits 1.
    _FLAGS[target] = _parse_help(target, out, err)


def defined_flags(target):
  """{flag name: Flag} of `python *target`."""
  prefetch_flags([target])
  return _FLAGS[target]


def flag_target(argv):
  """The `python` arguments that list argv's flags, or None."""
  k = kind(argv)
  if k == "tfds":
    return TFDS_BUILD
  if k != "python":
    return None
  args = argv[1:]
  while args and args[0].startswith("-") and args[0] != "-m":
    args = args[1:]  # Interpreter options such as -u.
  if args[:1] == ["-m"] and len(args) > 1:
    spec = _find_spec(args[1])
    return ("-m", args[1]) if spec else None
  if args and args[0].endswith(".py") and os.path.isfile(
      os.path.join(REPO, args[0])):
    return (args[0],)
  return None


def _find_spec(module):
  try:
    return importlib.util.find_spec(module)
  except (ImportError, ValueError):
    return None


# --------------------------------------------------------------- checking


def _is_placeholder(text):
  return "..." in text or bool(re.search(r"(^|[/:=])[A-Z][A-Z_0-9]*\b", text))


def _loadable(value):
  """False for a placeholder config FILE (or ARG): skip loading it."""
  path, _, arg = value.partition(":")
  if os.path.isfile(os.path.join(REPO, path)):
    return "..." not in arg
  return not _is_placeholder(path)


@functools.lru_cache(maxsize=None)
def load_config(value):
  """ConfigDict of `--config=value` (FILE[:ARG]), or a problem string."""
  path, colon, arg = value.partition(":")
  full = os.path.join(REPO, path)
  if not os.path.isfile(full):
    return f"config file {path} does not exist"
  try:
    spec = importlib.util.spec_from_file_location(
        "readme_config_" + re.sub(r"\W", "_", path), full)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if colon else module.get_config()
  except Exception as e:  # pylint: disable=broad-except
    return f"{value}: get_config failed: {type(e).__name__}: {e}"
  if not isinstance(config, ml_collections.ConfigDict):
    return f"{value}: get_config() returned {type(config).__name__}"
  return config


def _has_key(config, dotted):
  node = config
  for part in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


def _flag_tokens(args):
  """(name, value or None, position) of each flag; `[--f=...]` unbracketed."""
  out, bracket = [], False
  for j, tok in enumerate(args):
    if tok == "--":
      break
    if tok.startswith("[-"):
      tok, bracket = tok[1:], True
    if bracket and tok.endswith("]"):
      tok, bracket = tok[:-1], False
    if tok.startswith("-") and tok != "-":
      name, eq, value = tok.lstrip("-").partition("=")
      out.append((name, value if eq else None, j))
  return out


def _type(flags, name):
  return flags[name].type if name in flags else None


def _check_flags(args, flags, where):
  """(problems, {flag: value}) of args' flags checked against {name: Flag}."""
  problems, values = [], {}
  for name, value, j in _flag_tokens(args):
    base = name.split(".", 1)[0]
    if name in flags:
      pass
    elif name.startswith("no") and _type(flags, name[2:]) == "bool":
      continue
    elif "." in name and base in flags:
      if _type(flags, base) != "config object":
        problems.append(f"{where}: --{name}: --{base} is not a config flag")
      continue
    else:
      shown = base if "." in name else name
      problems.append(f"{where}: unknown flag --{shown}")
      continue
    is_bool = _type(flags, name) == "bool" or "no" + name in flags
    if value is None and not is_bool and j + 1 < len(args) and not (
        args[j + 1].startswith("-")):
      value = args[j + 1]  # `--flag value`.
    choices = flags[name].choices
    if choices and value is not None and value not in choices and not (
        _is_placeholder(value)):
      problems.append(f"{where}: --{name}={value}: not one of {choices}")
    values[name] = value
  return problems, values


def _check_config_overrides(args, flags, values, where):
  problems = []
  for name, _, _ in _flag_tokens(args):
    base, _, key = name.partition(".")
    if not key or _type(flags, base) != "config object":
      continue
    value = values.get(base)
    if value is None:
      problems.append(f"{where}: --{name} without --{base}=FILE")
      continue
    if not _loadable(value):
      continue
    config = load_config(value)
    if isinstance(config, ml_collections.ConfigDict) and not _has_key(config,
                                                                     key):
      problems.append(f"{where}: --{name}: {key!r} is not a key of {value}")
  for base, value in values.items():
    if _type(flags, base) == "config object" and value is not None:
      config = load_config(value) if _loadable(value) else None
      if isinstance(config, str):
        problems.append(f"{where}: --{base}: {config}")
  return problems


def _check_python(argv):
  args = argv[1:]
  while args and args[0].startswith("-") and args[0] != "-m":
    args = args[1:]
  if args[:1] == ["-m"]:
    if len(args) < 2 or not _find_spec(args[1]):
      return [f"python -m {' '.join(args[1:2])}: no such module"]
    where, rest = f"python -m {args[1]}", args[2:]
  elif args and args[0].endswith(".py"):
    if not os.path.isfile(os.path.join(REPO, args[0])):
      return [f"{args[0]}: no such file"]
    where, rest = args[0], args[1:]
  else:
    return []  # `python - <<EOF`, `python -c ...`.
  flags = defined_flags(flag_target(argv))
  problems, values = _check_flags(rest, flags, where)
  return problems + _check_config_overrides(rest, flags, values, where)


def _check_tfds_build(argv):
  args = argv[2:]
  problems, values = _check_flags(args, defined_flags(TFDS_BUILD), "tfds build")
  consumed = {j + 1 for name, value, j in _flag_tokens(args)
              if value is None and values.get(name) is not None}
  if (values.get("config") or "").lstrip().startswith("{"):
    try:
      json.loads(values["config"])
    except ValueError as e:
      problems.append(f"tfds build: --config is not valid JSON: {e}")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  imports = [m for m in (values.get("imports") or "").split(",") if m]
  # The registry is per process (our builders are registered here already):
  # a builder must come from TFDS itself or from a package --imports names.
  owners = {"tensorflow_datasets"} | {m.split(".")[0] for m in imports}
  for module in imports:
    try:
      importlib.import_module(module)
    except Exception as e:  # pylint: disable=broad-except
      problems.append(f"tfds build: --imports={module} fails: {e!r}")
  for j, tok in enumerate(args):
    if tok.startswith("-") or j in consumed or _is_placeholder(tok):
      continue
    name, _, config = tok.split(":")[0].partition("/")
    try:
      builder = tfds.builder_cls(name)
    except Exception:  # pylint: disable=broad-except
      builder = None
    if builder is None or builder.__module__.split(".")[0] not in owners:
      problems.append(f"tfds build: {name} is not a builder of TFDS or of "
                      f"--imports={','.join(imports)}")
      continue
    names = [c.name for c in (builder.BUILDER_CONFIGS or [])]
    if config and not _is_placeholder(config) and config not in names:
      problems.append(f"tfds build: {name} has no config {config!r} ({names})")
  return problems


def check_command(argv):
  """Problems (strings) of one shell command given as tokens; [] if valid."""
  problems = []
  for cmd in unwrap(list(argv)):
    k = kind(cmd)
    if k == "python":
      problems += _check_python(cmd)
    elif k == "bash" and not os.path.isfile(os.path.join(REPO, cmd[1])):
      problems.append(f"bash {cmd[1]}: no such script")
    elif k == "tfds":
      problems += _check_tfds_build(cmd)
  return problems


# ------------------------------------------------------------------ tests

README_COMMANDS = readme_commands()
# The docs pages' commands are held to the same rule.
DOCS_COMMANDS = [(f"{os.path.relpath(path, REPO)}:{line}", argv)
                 for path in sorted(glob.glob(os.path.join(REPO, "docs",
                                                           "*.md")))
                 for line, argv in readme_commands(path)]
COMMANDS = README_COMMANDS + DOCS_COMMANDS


def _id(line, argv):
  text = " ".join(argv)
  where = line if isinstance(line, str) else f"L{line}"
  return f"{where}:" + (text if len(text) <= 70 else text[:67] + "...")


@pytest.fixture(scope="module", autouse=True)
def _prefetch_flags():
  prefetch_flags(filter(None, (flag_target(argv) for _, argv in COMMANDS)))


@pytest.mark.slow
def test_readme_has_commands():
  kinds = [kind(argv) for _, argv in README_COMMANDS]
  assert kinds.count("python") >= 10, README_COMMANDS
  assert {"bash", "tfds"} <= set(kinds), README_COMMANDS
  assert len(DOCS_COMMANDS) >= 8, DOCS_COMMANDS


@pytest.mark.parametrize("line,argv", COMMANDS,
                         ids=[_id(line, argv) for line, argv in COMMANDS])
def test_readme_command(line, argv):
  problems = check_command(argv)
  where = line if isinstance(line, str) else f"README.md line {line}"
  assert not problems, f"{where}: " + "; ".join(problems)


def test_parser_handles_quotes_comments_and_wrappers():
  script = ('X=1 srun -N2 python -m a.b --f="x # y" \\\n  --g=1  # note\n'
            'gcloud ssh N --command="\n  cd r && .venv/bin/python -m c \\\n'
            '  --h=2" ; bash s.sh | tee log\n')
  lines = shell_lines(script)
  assert [n for n, _ in lines] == [1, 3]
  cmds = [c for _, text in lines for cmd in simple_commands(text)
          for c in unwrap(cmd)]
  assert cmds == [["python", "-m", "a.b", "--f=x # y", "--g=1"], ["cd", "r"],
                  [".venv/bin/python", "-m", "c", "--h=2"], ["bash", "s.sh"],
                  ["tee", "log"]]


def test_checker_reports_bad_commands():
  main = ("python -m big_transfer_med.main --workdir=w "
          "--config=configs/fashion_mnist_upstream.py ")
  assert check_command(shlex.split(main + "--config.batch_size=64 "
                                   "--noallow_config_change")) == []
  cases = {
      "python -m big_transfer_med.no_such_module": "no such module",
      main + "--no_such_flag=1": "unknown flag --no_such_flag",
      main + "[--no_such_flag2=1]": "unknown flag --no_such_flag2",
      "python -m big_transfer_med.study --spec=FILE --mode=walk": "not one of",
      main + "--config.optim.no_such_key=1": "'optim.no_such_key' is not a key",
      "python -m big_transfer_med.main --config=configs/missing.py":
          "configs/missing.py does not exist",
      'gcloud ssh N --command="cd r && python -m big_transfer_med.main '
      '--bad_inner=1"': "unknown flag --bad_inner",
      "bash scripts/no_such.sh": "no such script",
      "tfds build fashion_mnist_local": "not a builder of TFDS",
      "tfds build --imports=input_pipeline.datasets cxr_nih14/nosuch "
      "--config='{bad'": "no config 'nosuch'",
  }
  for text, expected in cases.items():
    problems = check_command(shlex.split(text))
    assert any(expected in p for p in problems), (text, problems)
