"""Imports run one way: parallel / utilities <- models <- sampling, tasks <- allocation <- rl.

Parsed from the source (every `import`, at module level or inside a function), so an upward
import or a cycle fails here with the file that makes it, not at some later import order.
"""

import ast
import collections
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "adaptive_rl")

# Package -> layer. A package may import only packages of a lower layer (and itself).
LAYERS = {
    "parallel": 0, "checkpoint": 0, "metrics": 0, "plots": 0,
    "models": 1,
    "sampling": 2, "tasks": 2,
    "allocation": 3,
    "rl": 4, "flows": 4,
}


def _modules():
  """{dotted module name: (path, [imported adaptive_rl modules])}."""
  out = {}
  for root, _, files in os.walk(ROOT):
    for name in files:
      if not name.endswith(".py"):
        continue
      path = os.path.join(root, name)
      rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
      module = rel[:-len(".__init__")] if rel.endswith(".__init__") else rel
      imports = []
      for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
          imports += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
          imports.append(node.module)
          imports += [f"{node.module}.{a.name}" for a in node.names]
      out[module] = (path, [m for m in imports if m.startswith("adaptive_rl.")])
  return out


def _package(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else ""


def test_every_package_has_a_layer():
  packages = {_package(m) for m in _modules()} - {""}
  assert packages <= set(LAYERS), sorted(packages - set(LAYERS))


# The last known violation: parallel/memory.py imports models (the memory estimate is moving to
# adaptive_rl/rl/memory.py). Strict: the test fails as soon as the move lands, so this goes.
_MEMORY_MOVE = pytest.mark.xfail(
    os.path.exists(os.path.join(ROOT, "parallel", "memory.py")), strict=True,
    reason="parallel/memory.py -> rl/memory.py not landed yet")


@_MEMORY_MOVE
def test_no_upward_import():
  bad = []
  for module, (path, imports) in _modules().items():
    src = _package(module)
    for target in imports:
      dst = _package(target)
      if src and dst and dst != src and LAYERS[dst] >= LAYERS[src]:
        bad.append(f"{os.path.relpath(path, ROOT)} imports {target} ({src} is layer "
                   f"{LAYERS[src]}, {dst} layer {LAYERS[dst]})")
  assert not bad, "\n".join(bad)


@_MEMORY_MOVE
def test_no_import_cycle_between_modules():
  mods = _modules()
  graph = collections.defaultdict(set)
  for module, (_, imports) in mods.items():
    for target in imports:
      # `from pkg import name` names a module when pkg/name.py exists, else an attribute.
      while target not in mods and "." in target:
        target = target.rsplit(".", 1)[0]
      if target in mods and target != module and not module.startswith(target + "."):
        graph[module].add(target)
  state, stack = {}, []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for n in sorted(graph[m]):
      if state.get(n) == "open":
        cycle = stack[stack.index(n):] + [n]
        pytest.fail("import cycle: " + " -> ".join(cycle))
      if n not in state:
        visit(n)
    stack.pop()
    state[m] = "done"

  for m in sorted(mods):
    if m not in state:
      visit(m)
