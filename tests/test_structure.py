"""The house's layout: our modules import one another one way (no circle,
counting imports inside functions)."""
import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("big_transfer_med", "input_pipeline")


def our_modules():
  """{dotted module name: file path} for every module of our packages."""
  modules = {}
  for package in PACKAGES:
    for root, _, files in os.walk(os.path.join(REPO, package)):
      for name in files:
        if name.endswith(".py"):
          path = os.path.join(root, name)
          dotted = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
          modules[dotted.removesuffix(".__init__")] = path
  return modules


def import_graph(modules):
  """{module: the modules of ours it imports anywhere in its file}."""
  def ours(name):
    while name and name not in modules:
      name = name.rpartition(".")[0]
    return name
  graph = {}
  for module, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read())
    targets = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets.update(ours(a.name) for a in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        targets.update(ours(f"{node.module}.{a.name}") for a in node.names)
    graph[module] = targets - {"", module}
  return graph


def find_circle(graph):
  """One import circle as a list of modules (first == last), or None."""
  state = {}  # module -> "open" while on the path, "done" after.
  def visit(module, path):
    state[module] = "open"
    for target in sorted(graph[module]):
      if state.get(target) == "open":
        return path[path.index(target):] + [target]
      if target not in state:
        circle = visit(target, path + [target])
        if circle:
          return circle
    state[module] = "done"
    return None
  for module in sorted(graph):
    if module not in state:
      circle = visit(module, [module])
      if circle:
        return circle
  return None


def test_no_import_circle():
  graph = import_graph(our_modules())
  assert {"input_pipeline.split_index", "input_pipeline.record_index",
          "big_transfer_med.train"} <= set(graph)
  assert "input_pipeline.split_index" in graph["input_pipeline.datasets.base"]
  circle = find_circle(graph)
  assert circle is None, " -> ".join(circle)


def test_the_circle_finder_finds_a_planted_circle():
  graph = import_graph(our_modules())
  graph["input_pipeline.split_index"] = graph["input_pipeline.split_index"] | {
      "input_pipeline.datasets"}  # What record_index's command once did.
  circle = find_circle(graph)
  assert circle and circle[0] == circle[-1]
  assert "input_pipeline.split_index" in circle
