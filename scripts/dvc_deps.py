"""Every DVC stage depends on exactly the project code its command imports: check it, or rewrite dvc.yaml's lists.

    python scripts/dvc_deps.py           # per stage, the code deps dvc.yaml misses and those it lists in vain
    python scripts/dvc_deps.py --write   # rewrite each stage's code deps from the import graph
    python scripts/dvc_deps.py --why embed p2p/tasks/prompts.py   # the import chain that makes it a dep

A stage's modules are those its `cmd` runs with `-m` (`python -m flows.stage NAME`, several commands may be joined
with `&&` or `;`), and for the stage shell `flows.stage` the recipe module that p2p/stages/__init__.py names for
NAME (imported by name at run time, so the import graph alone cannot see it). From each, the tool follows every
import statement anywhere in the source (top level, in functions, in `try`) to the project's modules, files under
p2p/ and flows/, transitively:
`import a.b.c` runs a/__init__.py, a/b/__init__.py and a/b/c.py; `from a.b import c` also a/b/c.py when c is a
submodule. Third-party modules and bench/, tests/, scripts/ are never deps.
Imports under `if TYPE_CHECKING:` do not count: a name imported there does not exist when the stage runs, so its
module cannot change a result (were it ever evaluated, the stage would fail with a NameError).

Code deps are the dvc.yaml `deps` entries under p2p/ or flows/: a sorted list of files (no directories, which could
hide modules the stage never imports), plus the data directories that a module reads from its own package
(PACKAGE_DATA), which hold no code. `--write` puts them first in each stage's `deps`, keeps every other entry (data
folders, reports files) in its order, and leaves the rest of dvc.yaml (comments, layout) as it is.
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
#: The project's top-level packages; everything else is third-party, the standard library, or not stage code.
PACKAGES = ("p2p", "flows")


@dataclass(frozen=True)
class Exempt:
    """Plumbing a stage may import without depending on it. `readers` are names that do change a result: a stage
    that imports one of them (or the whole module) depends on the module after all."""

    reason: str
    readers: tuple[str, ...] = ()


#: Modules that cannot change a stage's outputs. Where one is exempt its own imports are not followed either: what
#: only plumbing imports serves the plumbing (exception classes; p2p/report/runs.py's names for MLflow params), and
#: a stage that uses such a module itself imports it. p2p/io.py is not here: its readers parse every input and its
#: writers format every output file.
EXEMPT: dict[str, Exempt] = {
    "flows/__init__.py": Exempt("Prefect/MLflow/HF environment defaults, the log level, and `run_stage`, which only "
                                "prints an expected failure as one line"),
    "flows/stage.py": Exempt("the stage shell: it runs the recipe that the stage list (p2p/stages/__init__.py, a dep) "
                             "names, with params.yaml's config, under Prefect and MLflow, and computes nothing"),
    "p2p/failures.py": Exempt("which exceptions get a one-line message, and its wording"),
    "p2p/lock.py": Exempt("the project's writer lock: it refuses a second writer, it never changes what is written"),
    "p2p/tracking.py": Exempt("MLflow logging of a stage run (params, metrics, artifacts, tags)",
                              readers=("collect_rows",)),  # the report stage's ablation rows come from MLflow
}

#: Non-Python files a module reads from its own package (importlib.resources or Path(__file__)): deps wherever the
#: module is. Every non-Python file under p2p/ and flows/ must be named here (tests/test_dvc_deps.py checks).
PACKAGE_DATA: dict[str, tuple[str, ...]] = {
    "p2p/models/loading.py": ("p2p/models/configs",),  # architecture configs of the large models
    "p2p/report/paper.py": ("p2p/report/paper",),  # the paper's numbers beside ours in the report
    "p2p/server/app.py": ("p2p/server/playground.html",),
}


class DepsError(ValueError):
    """dvc.yaml names a module that is not there, or cannot be read."""


def is_code_dep(path: str) -> bool:
    """Whether a dvc.yaml dep is one this tool owns (it is under a project package)."""
    return path.strip("/").split("/")[0] in PACKAGES


def module_file(name: str, root: Path) -> Path | None:
    """The file of a dotted project module (a module wins over a package of the same name), or None."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


#: Source text -> its import statements (a cache for one run of the tool).
_IMPORTS: dict[str, list[ast.Import | ast.ImportFrom]] = {}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: anywhere, except in the body of `if TYPE_CHECKING:`."""
    found: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))
    return found


def imports_of(path: Path, name: str, root: Path) -> dict[str, set[str] | None]:
    """The project modules `path` (module `name`) imports -> the names imported from each; None for a whole-module
    import (`import a.b`, or the submodule itself in `from a import b`). Parent packages are added by the caller."""
    try:
        text = path.read_text(encoding="utf-8")
        if text not in _IMPORTS:  # every stage reads the same modules: parse each text once
            _IMPORTS[text] = _import_nodes(ast.parse(text, str(path)))
    except (OSError, SyntaxError, UnicodeDecodeError) as err:
        raise DepsError(f"cannot read {path.relative_to(root)}: {err}") from None
    edges: dict[str, set[str] | None] = {}

    def add(module: str, names: set[str] | None) -> None:
        if module_file(module, root) is None:
            return
        if names is None or edges.get(module, set()) is None:
            edges[module] = None
        else:
            edges[module] = edges.get(module, set()) | names

    for node in _IMPORTS[text]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, None)
            continue
        base = node.module or ""
        if node.level:  # relative: resolve against this module's package
            anchor = name.split(".")
            anchor = anchor[:len(anchor) - node.level + (1 if path.name == "__init__.py" else 0)]
            base = ".".join([*anchor, *([base] if base else [])])
        for alias in node.names:
            if module_file(f"{base}.{alias.name}", root) is not None:
                add(f"{base}.{alias.name}", None)
            add(base, {alias.name})
    edges.pop(name, None)
    return edges


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _exempt(path: str, names: set[str] | None) -> bool:
    rule = EXEMPT.get(path)
    return rule is not None and names is not None and not names & {*rule.readers, "*"}


def closure(modules: list[str], root: Path) -> dict[str, str | None]:
    """The files (relative to `root`) of `modules`, their parent packages and everything they import, transitively,
    less the exempt plumbing: file -> the file that first imported it (None for `modules`)."""
    seen: dict[str, str | None] = {}
    todo: list[tuple[str, set[str] | None, str | None]] = [(m, None, None) for m in reversed(modules)]
    while todo:
        name, names, via = todo.pop()
        file = module_file(name, root)
        if file is None:
            continue
        rel = file.relative_to(root).as_posix()
        if rel in seen or _exempt(rel, names) or (via is None and rel in EXEMPT):  # a reader may still reach one
            continue
        seen[rel] = via
        todo.extend((parent, set(), rel) for parent in _parents(name))  # importing a.b runs a/__init__.py
        todo.extend((module, imported, rel) for module, imported in imports_of(file, name, root).items())
    return seen


def why(cmd: str | list[str], path: str, root: Path) -> list[str]:
    """The import chain from the stage's module to `path` ([] when the stage does not import it)."""
    seen = closure(stage_modules(cmd, root), root)
    chain = []
    at: str | None = path if path in seen else None
    while at is not None:
        chain.append(at)
        at = seen[at]
    return chain[::-1]


def stage_modules(cmd: str | list[str], root: Path = ROOT) -> list[str]:
    """The project modules a stage's command runs with `-m` (several commands: `&&`, `;` or a list); for the stage
    shell, `-m flows.stage NAME`, also the stage's recipe module (`recipe_module`)."""
    commands = cmd if isinstance(cmd, list) else [cmd]
    modules = []
    for command in commands:
        words = shlex.split(command.replace("&&", " ; "))
        for i, (flag, module) in enumerate(zip(words, words[1:])):
            if flag == "-m" and module.split(".")[0] in PACKAGES:
                modules.append(module)
                if module == STAGE_SHELL and i + 2 < len(words):
                    modules.append(recipe_module(words[i + 2], root))
    return modules


#: The module that runs any stage by name; it imports the stage's recipe module only at run time.
STAGE_SHELL = "flows.stage"
STAGE_LIST = "p2p/stages/__init__.py"


def _name_pattern(node: ast.expr) -> str | None:
    """A regex for a stage name written as a string or an f-string (its fields match any text)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.escape(node.value)
    if isinstance(node, ast.JoinedStr):
        return "".join(re.escape(part.value) if isinstance(part, ast.Constant) else ".+" for part in node.values)
    return None


def recipe_module(stage: str, root: Path) -> str:
    """The recipe module of stage `stage`, read from the stage list (`Stage(name, module, ...)` in p2p/stages):
    what `flows.stage` imports by name, which the import graph cannot see."""
    path = root / STAGE_LIST
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    except (OSError, SyntaxError) as err:
        raise DepsError(f"cannot read the stage list {STAGE_LIST}: {err}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Stage" and len(node.args) >= 2:
            pattern, module = _name_pattern(node.args[0]), node.args[1]
            if pattern and re.fullmatch(pattern, stage) and isinstance(module, ast.Constant):
                return f"p2p.stages.{module.value}"
    raise DepsError(f"`{STAGE_SHELL} {stage}`: {STAGE_LIST} lists no stage {stage!r}")


def expected_deps(cmd: str | list[str], root: Path) -> list[str]:
    """The sorted code deps of a stage with command `cmd`: its modules' closure and their package data."""
    modules = stage_modules(cmd, root)
    for module in modules:
        if "${" in module or module_file(module, root) is None:
            raise DepsError(f"`{cmd}` runs {module}, which is no file under {'/, '.join(PACKAGES)}/")
    files = set(closure(modules, root))
    data = {d for f in files for d in PACKAGE_DATA.get(f, ())}
    return sorted(files | data)


def _yaml() -> YAML:
    yaml = YAML()  # round-trip: comments, order and quoting stay
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    yaml.preserve_quotes = True
    return yaml


def _bodies(doc: dict) -> dict[str, dict]:
    """Stage name -> the mapping holding its cmd and deps (a `foreach` stage keeps them under `do`)."""
    stages = doc.get("stages") or {}
    return {name: (stage["do"] if "do" in stage else stage) for name, stage in stages.items()}


@dataclass
class Drift:
    stage: str
    missing: list[str]
    extra: list[str]


def check(root: Path = ROOT) -> list[Drift]:
    """Every stage's code deps against its import graph (only stages that drifted are returned)."""
    doc = _yaml().load(root / "dvc.yaml")
    drifts = []
    for name, body in _bodies(doc).items():
        listed = [d for d in body.get("deps") or [] if isinstance(d, str) and is_code_dep(d)]
        expected = expected_deps(body.get("cmd", ""), root)
        missing = sorted(set(expected) - set(listed))
        extra = sorted(set(listed) - set(expected))
        if missing or extra:
            drifts.append(Drift(name, missing, extra))
    return drifts


def write(root: Path = ROOT) -> list[str]:
    """Rewrite every stage's code deps in dvc.yaml (other deps keep their order, after the code). Returns the
    stages that changed."""
    yaml = _yaml()
    path = root / "dvc.yaml"
    doc = yaml.load(path)
    changed = []
    for name, body in _bodies(doc).items():
        deps = body.get("deps")
        code = expected_deps(body.get("cmd", ""), root)
        if deps is None:
            if code:
                body["deps"] = code
                changed.append(name)
            continue
        comments = deps.ca.items
        keep = [(d, comments.get(i)) for i, d in enumerate(deps) if not (isinstance(d, str) and is_code_dep(d))]
        new = code + [d for d, _ in keep]
        if list(deps) == new:
            continue
        changed.append(name)
        notes = {len(code) + i: c for i, (_, c) in enumerate(keep) if c is not None}
        del deps[:]
        deps.extend(new)
        comments.clear()
        comments.update(notes)
    if changed:
        yaml.dump(doc, path)
    return changed


def report(drifts: list[Drift]) -> str:
    lines = []
    for d in drifts:
        lines.append(f"stage {d.stage}:")
        lines += [f"  missing {p}" for p in d.missing] + [f"  extra   {p}" for p in d.extra]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the code deps of every stage in dvc.yaml")
    parser.add_argument("--why", nargs=2, metavar=("STAGE", "FILE"), help="print how STAGE's command imports FILE")
    parser.add_argument("--root", type=Path, default=ROOT, help="the project root (default: this checkout)")
    args = parser.parse_args(argv)
    try:
        if args.why:
            stage, path = args.why
            bodies = _bodies(_yaml().load(args.root / "dvc.yaml"))
            if stage not in bodies:
                raise DepsError(f"no stage {stage!r} in dvc.yaml; stages: {', '.join(bodies)}")
            chain = why(bodies[stage].get("cmd", ""), path, args.root)
            print(" -> ".join(chain) if chain else f"stage {stage} does not import {path} (or it is exempt)")
            return 0
        if args.write:
            changed = write(args.root)
            print(f"dvc.yaml: code deps rewritten for {', '.join(changed)}" if changed else "dvc.yaml: up to date")
            return 0
        drifts = check(args.root)
    except (DepsError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not drifts:
        print("dvc.yaml: every stage's code deps match its imports")
        return 0
    print(report(drifts) + "\nfix: python scripts/dvc_deps.py --write")
    return 1


if __name__ == "__main__":
    sys.exit(main())
