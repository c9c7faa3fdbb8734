"""dvc.yaml's code deps are exactly what each stage's command imports (scripts/dvc_deps.py), so no import escapes DVC
and no unused module reruns a stage; the tool itself sees a planted import and a removed one."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("dvc_deps", ROOT / "scripts" / "dvc_deps.py")
dvc_deps = sys.modules["dvc_deps"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dvc_deps)


def stages(root: Path = ROOT) -> dict[str, dict]:
    return dvc_deps._bodies(dvc_deps._yaml().load(root / "dvc.yaml"))


def code_deps(root: Path, stage: str) -> list[str]:
    return [d for d in stages(root)[stage]["deps"] if isinstance(d, str) and dvc_deps.is_code_dep(d)]


def test_every_stage_depends_on_exactly_the_modules_it_imports():
    drifts = dvc_deps.check(ROOT)
    assert not drifts, ("dvc.yaml's code deps differ from the stages' imports:\n" + dvc_deps.report(drifts)
                        + "\nfix: python scripts/dvc_deps.py --write")


def test_no_code_dep_is_a_directory_of_code():
    """A directory dep would rerun its stage for a module the stage never imports; only package data may be one."""
    data = {d for dirs in dvc_deps.PACKAGE_DATA.values() for d in dirs}
    for name in stages():
        for dep in code_deps(ROOT, name):
            path = ROOT / dep
            assert path.is_file() or dep in data, f"stage {name}: {dep} is not a file"
            if path.is_dir():
                assert not list(path.rglob("*.py")), f"{dep} is package data but holds code"


def test_every_non_python_file_in_the_packages_is_someones_package_data():
    data = [ROOT / d for dirs in dvc_deps.PACKAGE_DATA.values() for d in dirs]
    files = [p for package in dvc_deps.PACKAGES for p in (ROOT / package).rglob("*")
             if p.is_file() and p.suffix not in (".py", ".pyc")]
    unclaimed = [p.relative_to(ROOT).as_posix() for p in files if not any(p == d or d in p.parents for d in data)]
    assert unclaimed == [], f"name the module that reads these in PACKAGE_DATA of scripts/dvc_deps.py: {unclaimed}"
    for module, dirs in dvc_deps.PACKAGE_DATA.items():
        assert (ROOT / module).is_file() and all((ROOT / d).exists() for d in dirs), module


def test_the_exempt_modules_exist_and_say_why():
    for path, rule in dvc_deps.EXEMPT.items():
        assert (ROOT / path).is_file() and rule.reason, path


def test_the_stage_modules_of_a_command():
    assert dvc_deps.stage_modules("python -m flows.stage evaluate_p2p") == ["flows.stage", "p2p.stages.evaluate"]
    assert dvc_deps.stage_modules(
        "torchrun --standalone --nproc_per_node 2 -m flows.stage train && python -m flows.pipeline --x 'a b'; "
        "python -m json.tool x") == ["flows.stage", "p2p.stages.train", "flows.pipeline"]
    assert dvc_deps.stage_modules(["python -m flows.stage fetch", "cp a b"]) == ["flows.stage", "p2p.stages.fetch"]
    with pytest.raises(dvc_deps.DepsError, match="lists no stage 'tune'"):
        dvc_deps.stage_modules("python -m flows.stage tune")
    with pytest.raises(dvc_deps.DepsError, match="flows.nope"):
        dvc_deps.expected_deps("python -m flows.nope", ROOT)


PLUMBING = "(exempt plumbing)"


def test_the_static_graph_covers_what_the_stages_import_when_they_run():
    """Import each stage's module for real: every project module it loads is in the static graph, or is exempt, or
    is loaded by exempt plumbing alone (p2p/report/runs.py via p2p/tracking.py; what flows/stage.py and
    p2p/failures.py import)."""
    script = """
import importlib, json, sys
from pathlib import Path
root = Path.cwd().resolve()
out = {}
for stage, modules in json.loads(sys.argv[1]).items():
    for name in [n for n in sys.modules if n.split(".")[0] in ("p2p", "flows")]:
        del sys.modules[name]
    for module in modules:
        importlib.import_module(module)
    out[stage] = sorted(Path(m.__file__).resolve().relative_to(root).as_posix() for n, m in list(sys.modules.items())
                        if n.split(".")[0] in ("p2p", "flows") and getattr(m, "__file__", None))
print(json.dumps(out))
"""
    modules = {}
    for name, body in stages().items():
        assert (found := dvc_deps.stage_modules(body["cmd"])), f"stage {name} runs no project module"
        modules[name] = found
    # what the exempt plumbing loads when imported alone (the shell, MLflow logging, failure messages)
    modules[PLUMBING] = [path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
                         for path in dvc_deps.EXEMPT]
    run = subprocess.run([sys.executable, "-c", script, json.dumps(modules)], cwd=ROOT, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    loaded = json.loads(run.stdout.splitlines()[-1])
    plumbing = set(dvc_deps.EXEMPT) | set(loaded.pop(PLUMBING))
    for name, files in loaded.items():
        static = set(dvc_deps.expected_deps(stages()[name]["cmd"], ROOT))
        assert sorted(set(files) - static - plumbing) == [], f"stage {name} loads modules the graph misses"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of what the tool reads: dvc.yaml, the tool, and the packages' source and package data."""
    ignore = shutil.ignore_patterns("__pycache__")
    for package in dvc_deps.PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=ignore)
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "dvc_deps.py", tmp_path / "scripts")
    shutil.copy(ROOT / "dvc.yaml", tmp_path)
    return tmp_path


def tool(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(root / "scripts" / "dvc_deps.py"), "--root", str(root), *args],
                          capture_output=True, text=True)


def drift(root: Path, stage: str) -> tuple[list[str], list[str]]:
    found = {d.stage: d for d in dvc_deps.check(root)}
    return (found[stage].missing, found[stage].extra) if stage in found else ([], [])


def test_a_planted_function_local_import_is_missing_until_written(project):
    embed = project / "p2p" / "stages" / "embed.py"
    assert "p2p/judge/judge.py" not in code_deps(project, "embed")
    embed.write_text(embed.read_text() + "\n\ndef _planted():\n    from p2p.judge import judge  # noqa\n")
    missing, extra = drift(project, "embed")
    assert {"p2p/judge/__init__.py", "p2p/judge/judge.py"} <= set(missing) and extra == []
    run = tool(project)
    assert run.returncode == 1 and "stage embed:" in run.stdout and "missing p2p/judge/judge.py" in run.stdout
    assert "python scripts/dvc_deps.py --write" in run.stdout

    before = stages(project)["embed"]
    data_deps = [d for d in before["deps"] if not dvc_deps.is_code_dep(d)]
    assert tool(project, "--write").returncode == 0
    assert tool(project).returncode == 0 and dvc_deps.check(project) == []
    after = stages(project)["embed"]["deps"]
    assert "p2p/judge/judge.py" in after and [d for d in after if not dvc_deps.is_code_dep(d)] == data_deps
    chain = dvc_deps.why("python -m flows.stage embed", "p2p/judge/judge.py", project)
    assert chain[0] == "p2p/stages/embed.py" and chain[-1] == "p2p/judge/judge.py"


def test_a_removed_import_leaves_its_module_extra(project):
    stage_module = project / "p2p" / "stages" / "fetch.py"
    text = stage_module.read_text()
    line = next(li for li in text.splitlines() if li == "from p2p.data import synth")
    stage_module.write_text(text.replace(line + "\n", ""))
    missing, extra = drift(project, "fetch")
    assert missing == [] and "p2p/data/synth.py" in extra


def test_type_checking_imports_do_not_count_but_their_else_branch_does(project):
    fetch = project / "p2p" / "stages" / "fetch.py"
    fetch.write_text(fetch.read_text() + "\nimport typing\n\nif typing.TYPE_CHECKING:\n"
                     "    from p2p.judge import judge\nelse:\n    from p2p.server import app\n")
    missing, _ = drift(project, "fetch")
    assert "p2p/server/app.py" in missing and "p2p/server/playground.html" in missing
    assert not [m for m in missing if m.startswith("p2p/judge")]


def test_an_exempt_module_counts_where_a_stage_imports_its_reader(project):
    assert "p2p/tracking.py" not in code_deps(project, "train")
    assert "p2p/tracking.py" in code_deps(project, "report")  # collect_rows: the ablation rows of the report
    train = project / "p2p" / "stages" / "train.py"
    train.write_text(train.read_text() + "\n\ndef _planted():\n    from p2p.tracking import collect_rows  # noqa\n")
    assert "p2p/tracking.py" in drift(project, "train")[0]


def test_write_keeps_comments_and_layout(project):
    text = (project / "dvc.yaml").read_text()
    stage_module = project / "p2p" / "stages" / "report.py"
    stage_module.write_text(stage_module.read_text() + "\n\ndef _planted():\n    import p2p.cli  # noqa\n")
    assert tool(project, "--write").returncode == 0
    new = (project / "dvc.yaml").read_text()
    assert new != text and "      - p2p/cli.py\n" in new
    strip = [li for li in text.splitlines() if not li.startswith("      - ") or not dvc_deps.is_code_dep(li[8:])]
    assert strip == [li for li in new.splitlines() if not li.startswith("      - ") or not dvc_deps.is_code_dep(li[8:])]


def test_docs_pipeline_draws_the_stage_graph_dvc_has():
    """docs/pipeline.md's Mermaid picture is scripts/dvc_dag.py's output for today's dvc.yaml (a new or moved stage
    shows up there, or this fails)."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    drawn = subprocess.run([sys.executable, str(ROOT / "scripts" / "dvc_dag.py")], cwd=ROOT, capture_output=True,
                           text=True, env={**env, "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"})
    assert drawn.returncode == 0, drawn.stderr
    assert drawn.stdout.strip() in (ROOT / "docs" / "pipeline.md").read_text(encoding="utf-8")
