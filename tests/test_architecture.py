"""The shape of the house (issue 27), measured on the import graph of ``singe_dist/``.

A module imports only from its own layer or lower ones, there is no import cycle, no module is over
400 lines and no function over 60. Imports under ``if TYPE_CHECKING:`` are annotations, not
dependencies, and are left out; imports inside functions count.

The layers follow the data flow, with two places where the code's real dependencies set the order:
``data`` sits above the job config (a job's streams read its ``data`` section), and ``tracking`` sits
below the engine (the loop calls a tracker; the tracker knows nothing of the loop).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "singe_dist"
LAYERS: list[tuple[str, ...]] = [
    ("singe_dist", "singe_dist.errors", "singe_dist.atomic", "singe_dist.import_spec", "singe_dist.interrupt"),
    ("singe_dist.models",),
    ("singe_dist.relevance",),
    ("singe_dist.plan",),
    ("singe_dist.config", "singe_dist.checkpoint"),
    ("singe_dist.data",),
    ("singe_dist.report", "singe_dist.export"),
    ("singe_dist.tracking",),
    ("singe_dist.engine",),
    ("singe_dist.preflight", "singe_dist.distributed", "singe_dist.launch", "singe_dist.demo"),
    ("singe_dist.cli",),
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _runtime_imports(tree: ast.AST) -> list[ast.AST]:
    """Import nodes, without those under ``if TYPE_CHECKING:``."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            else:
                targets = [a.name for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def layer(module: str) -> int:
    best = (-1, -1)  # (length of the matching prefix, layer)
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best[0]:
                best = (len(prefix), index)
    assert best[1] >= 0, f"{module} is in no layer: add it to LAYERS"
    return best[1]


def test_every_import_goes_to_the_same_layer_or_a_lower_one() -> None:
    upward = [f"{a} -> {b}" for a, targets in sorted(import_graph().items()) for b in sorted(targets)
              if layer(b) > layer(a)]
    assert upward == []


def test_the_import_graph_has_no_cycle() -> None:
    graph, state, cycles = import_graph(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [node, nxt]) if nxt in stack else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert cycles == []


def test_no_module_over_400_lines_and_no_function_over_60() -> None:
    long_modules, long_functions = [], []
    for name, path in sorted(_modules().items()):
        source = path.read_text()
        if len(source.splitlines()) > 400:
            long_modules.append(f"{name}: {len(source.splitlines())}")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long_functions.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1}")
    assert long_modules == [] and long_functions == []


def test_no_two_modules_share_a_name() -> None:
    names = [path.stem for path in PACKAGE.rglob("*.py") if path.stem != "__init__"]
    assert sorted({n for n in names if names.count(n) > 1}) == []
