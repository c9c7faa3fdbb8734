"""Real data kept the DVC way (issue 19), on official-format LaMP files this test builds (tests/lamp_files.py).

- Files a user put under data/raw/<dataset> are a DVC-tracked input (`dvc add`): `dvc repro`, a param change and a
  failed `p2p data fetch` leave them as they were (the fetch stage used to own data/raw, so DVC deleted them).
- A task runs on whichever splits it has: dev alone works, test questions (golds withheld) are left out and
  counted, and a task without any gold is one clear error.
- A stage that fails prints its cause once, with what to do next (it used to appear five times, with tracebacks).

The DVC tests run a real `dvc repro` in a fresh git repository, against the session's real Prefect server
(conftest.prefect_api).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import free_port, git_commit, project_copy
from lamp_files import write_lamp_split

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _params(repo: Path, sources: list[dict], **smoke: dict) -> None:
    """params.yaml of `repo`: the smoke preset on `sources`, with `smoke` overrides merged into its sections."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["preset"] = "smoke"
    params["model"]["cache_dir"] = str(ROOT / ".cache" / "models")
    preset = params["presets"]["smoke"]
    preset["data"]["sources"] = sources
    for section, values in smoke.items():
        preset.setdefault(section, {}).update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _run(cmd: list, cwd: Path, env: dict, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if ok:
        assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


# --- partial splits, through `p2p prepare` (no DVC) ------------------------------------------------------------------


def _prepare(project: Path, splits: dict[str, tuple[str, ...]]) -> subprocess.CompletedProcess:
    """`p2p prepare` on LaMP files of `splits` (task -> splits present), 12 users per split."""
    for task, present in splits.items():
        for split in present:
            write_lamp_split(project / "data/raw/lamp" / task, task, split, users=12)
    _params(project, [{"dataset": "lamp", "tasks": sorted(splits)}])
    return subprocess.run([sys.executable, "-m", "p2p.cli", "prepare", "--params", str(project / "params.yaml")],
                          cwd=project, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def _stats(done: subprocess.CompletedProcess) -> dict[str, dict]:
    assert done.returncode == 0, done.stderr[-2000:]
    return {line.split(": ", 1)[0]: json.loads(line.split(": ", 1)[1]) for line in done.stdout.splitlines()}


def test_prepare_runs_on_the_splits_there_are_and_reports_them(tmp_path):
    stats = _stats(_prepare(tmp_path, {"LaMP-4": ("dev",), "LaMP-5": ("train", "dev", "test")}))
    dev_only, every = stats["lamp/LaMP-4"], stats["lamp/LaMP-5"]
    assert dev_only["users"] == 12 and dev_only["queries"] == dev_only["queries_dev"] >= 12
    assert dev_only["queries_without_gold"] == 0 and "queries_train" not in dev_only
    # test questions come without golds: their users are left out, and counted
    assert every["users"] == 24 and every["queries"] == every["queries_train"] + every["queries_dev"]
    assert every["queries_without_gold"] >= 12 and "queries_test" not in every
    rows = [json.loads(line) for line in (tmp_path / "data/prepared/lamp/LaMP-5.jsonl").open()]
    assert {split for row in rows for split in row["meta"]["query_splits"].values()} == {"train", "dev"}


def test_a_task_without_any_gold_is_one_clear_line(tmp_path):
    done = _prepare(tmp_path, {"LaMP-4": ("test",)})
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: {tmp_path / 'data/raw/lamp/LaMP-4'}: no query has a gold output")
    assert "needs the dev or the train split's questions with their outputs" in lines[0]
    assert not (tmp_path / "data/prepared").exists()


def test_a_task_without_files_says_how_to_get_and_keep_them(tmp_path):
    done = _prepare(tmp_path, {"LaMP-4": ("dev",), "LaMP-5": ()})
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: {tmp_path / 'data/raw/lamp/LaMP-5'}: no LaMP-5 data here; get it with "
                               f"`p2p data fetch lamp --task LaMP-5`")
    assert "Then run `dvc add data/raw/lamp`" in lines[0]  # relative to the project, where dvc runs


# --- a real DVC repository --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory, prefect_api: str) -> tuple[Path, dict]:
    """A copy of the project in a fresh git repo: the smoke preset on LaMP-4, whose dev files (150 users) a user
    saved by hand where the offline message says. Downloads go to a port where nothing listens (offline); the
    session's Prefect server serves every stage."""
    if shutil.which("dvc", path=str(BIN)) is None:
        pytest.skip("dvc is not installed in this environment")
    repo = tmp_path_factory.mktemp("raw-data")
    env = project_copy(repo, P2P_MIRROR=f"http://127.0.0.1:{free_port()}")
    _params(repo, [{"dataset": "lamp", "tasks": ["LaMP-4"]}])
    write_lamp_split(repo / "data/raw/lamp/LaMP-4", "LaMP-4", "dev")
    git_commit(repo, env, "the project, smoke preset on LaMP-4")
    return repo, env | {"PREFECT_API_URL": prefect_api}


@pytest.mark.slow
def test_hand_placed_files_survive_repro_a_param_change_and_a_failed_fetch(dvc_repo):
    repo, env = dvc_repo
    raw = repo / "data/raw/lamp"
    before = _hashes(raw)

    first = _run(["dvc", "repro", "prepare"], repo, env, ok=False)  # the files as saved by hand, before `dvc add`
    assert _hashes(raw) == before
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "Running stage 'fetch'" in first.stdout and "Running stage 'prepare'" in first.stdout
    assert len((repo / "data/prepared/lamp/LaMP-4.jsonl").read_text().splitlines()) == 150
    assert not any((repo / "data/raw/synth").iterdir())  # the stage's own output: nothing generated

    _run(["dvc", "add", "-q", "data/raw/lamp"], repo, env)  # as docs/data.md says: DVC now tracks the input
    assert _run(["git", "status", "--porcelain", "--untracked-files=all", "data"], repo, env).stdout.split() == [
        "??", "data/raw/lamp.dvc"]

    _params(repo, [{"dataset": "lamp", "tasks": ["LaMP-4"]}], split={"test_users": 10})  # `presets` changed
    again = _run(["dvc", "repro", "prepare"], repo, env)
    assert "Running stage 'fetch'" in again.stdout and "Running stage 'prepare'" in again.stdout
    assert _hashes(raw) == before

    failed = _run([BIN / "p2p", "data", "fetch", "lamp", "--task", "LaMP-4"], repo, env, ok=False)
    assert failed.returncode == 2 and failed.stderr.startswith("error: cannot reach"), failed.stderr
    assert failed.stderr.count("\n    -> ") == 3 and "Then run `dvc add data/raw/lamp`" in failed.stderr
    assert _hashes(raw) == before
    assert _run(["dvc", "status", "prepare"], repo, env).stdout.strip() == "Data and pipelines are up to date."

    write_lamp_split(raw / "LaMP-4", "LaMP-4", "test")  # a split added by hand: DVC records it, prepare reruns
    added = _run(["dvc", "repro", "prepare"], repo, env)
    assert "Running stage 'prepare'" in added.stdout
    assert "nfiles: 3" in (repo / "data/raw/lamp.dvc").read_text()
    assert _hashes(raw) == {**before, "LaMP-4/test_questions.json": _hashes(raw)["LaMP-4/test_questions.json"]}


@pytest.mark.slow
def test_a_failing_stage_prints_its_cause_once_with_what_to_do(dvc_repo):
    repo, env = dvc_repo
    _params(repo, [{"dataset": "lamp", "tasks": ["LaMP-4", "LaMP-5"]}])  # no LaMP-5 files
    done = _run(["dvc", "repro", "prepare"], repo, env, ok=False)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert output.count("no LaMP-5 data here") == 1, output[-6000:]
    assert "Traceback" not in output
    [line] = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert line.startswith(f"error: stage 'prepare': {repo / 'data/raw/lamp/LaMP-5'}: no LaMP-5 data here; get it "
                           f"with `p2p data fetch lamp --task LaMP-5`")
    assert "`dvc add" in line and "`dvc repro`" in line
