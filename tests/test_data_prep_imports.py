"""data_prep's import graph: no cycle, and neither runner module imports the other.

Imports are read from the source (module level and inside functions alike), so a deferred
`import` inside a function counts: it is the kind that hid the old beam <-> prepare cycle.
"""

import ast
import pathlib

PACKAGE = "data_prep"
PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1] / PACKAGE


def _imported_modules(path: pathlib.Path) -> set[str]:
  """Names `PACKAGE.x` that the file imports anywhere (import a.b, from a import b, from a.b ...)."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      out.add(node.module)
      out.update(f"{node.module}.{alias.name}" for alias in node.names)
  return {name.split(".")[1] for name in out
          if name.startswith(PACKAGE + ".") and (PACKAGE_DIR / f"{name.split('.')[1]}.py").is_file()}


def import_graph() -> dict[str, set[str]]:
  return {path.stem: _imported_modules(path) - {path.stem}
          for path in sorted(PACKAGE_DIR.glob("*.py")) if path.stem != "__init__"}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """A cycle of the graph as a path [a, b, ..., a], or None (depth-first search)."""
  state: dict[str, str] = {}
  stack: list[str] = []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_find_cycle_sees_a_deferred_cycle():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_data_prep_has_no_import_cycle():
  graph = import_graph()
  assert {"prepare", "beam", "process", "shards", "manifest", "integrity", "layout",
          "estimate"} <= set(graph)
  assert find_cycle(graph) is None, find_cycle(graph)


def test_runners_share_the_per_video_module():
  graph = import_graph()
  assert "prepare" not in graph["beam"] and "prepare" not in graph["process"]
  assert "beam" not in graph["process"]
  assert "process" in graph["beam"] and "process" in graph["prepare"]


def test_output_modules_are_layered():
  """layout <- integrity <- shards <- manifest: each shard-output module imports only those
  below it, and the time estimate does not import the runner it serves."""
  graph = import_graph()
  own = {"layout", "integrity", "shards", "manifest", "prepare", "beam", "process", "estimate"}
  assert graph["layout"] & own == set()
  assert graph["integrity"] & own == {"layout"}
  assert graph["shards"] & own == {"layout", "integrity"}
  assert graph["manifest"] & own == {"layout", "shards"}
  assert graph["estimate"] & own == set()
