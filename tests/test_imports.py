"""The import rules of docs/architecture.md §16: no cycle among p2p's modules (function-local imports included), and
only the stages (and the CLI, tracking, paths over them) read the root Config."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "p2p"
#: The modules that may import the root `Config`: the stages, and the shells and path/tracking helpers over them.
CONFIG_READERS = ("p2p.stages", "p2p.cli", "p2p.tracking", "p2p.paths", "p2p.config", "p2p.grid",
                  "p2p.experiments")


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path) -> dict[str, dict[str, list[str]]]:
    """module -> imported project module -> the names imported from it, for every import statement anywhere in the
    module (top level, function-local, under TYPE_CHECKING). `from pkg import mod` counts as importing `pkg.mod`."""
    files = {module_name(p, package): p for p in sorted(package.rglob("*.py"))}
    graph: dict[str, dict[str, list[str]]] = {}
    for name, path in files.items():
        edges: dict[str, list[str]] = {}
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in files:
                        edges.setdefault(alias.name, [])
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    anchor = name.split(".")
                    anchor = anchor[:len(anchor) - node.level + (1 if is_package else 0)]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    if target in files:
                        edges.setdefault(target, [])
                    elif base in files:
                        edges.setdefault(base, []).append(alias.name)
        edges.pop(name, None)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, white/grey/black)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycle_among_the_projects_modules():
    cycle = find_cycle(import_graph(PACKAGE))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_planted_cycle(tmp_path):
    pkg = tmp_path / "p2p"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from p2p.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from p2p.c import g\n")  # hidden in a function
    (pkg / "c.py").write_text("from . import a\n\ndef g():\n    pass\n")
    assert find_cycle(import_graph(pkg)) == ["p2p.a", "p2p.sub.b", "p2p.c", "p2p.a"]
    (pkg / "c.py").write_text("def g():\n    pass\n")
    assert find_cycle(import_graph(pkg)) is None


def test_only_the_stages_read_the_root_config():
    readers = sorted(module for module, edges in import_graph(PACKAGE).items()
                     if "Config" in edges.get("p2p.config", []) and not module.startswith(CONFIG_READERS))
    assert readers == [], f"these library modules import the root Config; pass them plain arguments: {readers}"


#: The layers of docs/architecture.md §16, lowest first: a module imports only from its own package and from
#: lower layers (p2p/<package>/ or p2p/<module>.py; the package's __init__ counts as the package).
LAYERS = (("io", "cache", "methods"), ("config", "lock"), ("data",), ("paths", "tasks"), ("models",), ("lora",),
          ("vllm_client", "profiles", "training"), ("hyper",), ("baselines", "judge", "server"),
          ("evaluation", "privacy"), ("report",), ("tracking", "failures", "grid"), ("stages", "experiments"), ("cli",))
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def upward_imports(graph: dict[str, dict[str, list[str]]]) -> list[str]:
    def unit(module: str) -> str:
        return module.split(".")[1] if "." in module else module

    found = []
    for module, edges in graph.items():
        for target in edges:
            a, b = unit(module), unit(target)
            if a != b and RANK.get(a, -1) <= RANK.get(b, -1):
                found.append(f"{module} -> {target}")
    return sorted(found)


def test_imports_run_downward_through_the_layers():
    graph = import_graph(PACKAGE)
    units = {m.split(".")[1] for m in graph if "." in m}
    assert units <= RANK.keys(), f"modules in no layer (add them to LAYERS and §16): {sorted(units - RANK.keys())}"
    assert upward_imports(graph) == []


def test_the_layer_check_finds_an_upward_import():
    graph = {"p2p.models.loading": {"p2p.lora.hooks": ["find_targets"]}, "p2p.lora.hooks": {}}
    assert upward_imports(graph) == ["p2p.models.loading -> p2p.lora.hooks"]
