"""End to end on real data's shape: the smoke preset through `dvc repro` to the report, on official-format LaMP-4
and LaMP-5 dev files built here (tests/lamp_files.py; never ../shared), `dvc add`-ed as a user would.

The shape of a researcher's LaMP subset: dev only, most users with a single query and one or two profile items.
Every stage must cope: splits where most users have one query, OPPU on one history item, P2P training without
padding, retrieval asking for more items than a history holds, and ROUGE-1 / ROUGE-L in Table 1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import git_commit, project_copy
from lamp_files import write_lamp_split

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TASKS = ("LaMP-4", "LaMP-5")
USERS = 40
METHODS = ("base", "rag", "pag", "full_history", "mt_lora", "oppu", "p2p", "p2p_shuffled")

pytestmark = pytest.mark.slow


def _run(cmd: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def repro(tmp_path_factory, prefect_api: str) -> tuple[Path, subprocess.CompletedProcess, dict]:
    """A fresh git repo of the project with the LaMP-4/5 dev files dvc add-ed, after one `dvc repro`."""
    if shutil.which("dvc", path=str(BIN)) is None:
        pytest.skip("dvc is not installed in this environment")
    repo = tmp_path_factory.mktemp("real-shape")
    env = project_copy(repo, [{"dataset": "lamp", "tasks": list(TASKS)}])
    for task in TASKS:
        write_lamp_split(repo / "data/raw/lamp" / task, task, "dev", users=USERS)
    _run(["git", "init", "-q"], repo, env)
    _run(["dvc", "add", "-q", "data/raw/lamp"], repo, env)
    git_commit(repo, env, "LaMP-4/5 dev files")
    env["PREFECT_API_URL"] = prefect_api
    return repo, _run(["dvc", "repro"], repo, env), env


def _json(path: Path):
    return json.loads(path.read_text())


def test_every_stage_runs_on_the_real_shape_and_the_raw_files_stay(repro):
    repo, first, env = repro
    for stage in ("fetch", "prepare", "summarize", "embed", "split", "train", "mt_lora", "oppu", "evaluate",
                  "judge", "report"):
        assert f"Running stage '{stage}'" in first.stdout
    assert sorted(p.name for p in (repo / "data/raw/lamp/LaMP-4").iterdir()) == ["dev_outputs.json",
                                                                                 "dev_questions.json"]
    assert "Running stage" not in _run(["dvc", "repro"], repo, env).stdout


def test_the_stages_cope_with_one_query_users_and_one_item_histories(repro):
    repo, first, _ = repro
    said = first.stdout + first.stderr  # the library's INFO records reach the stage's console (flows/__init__.py)
    for task in TASKS:
        assert f"{task}: {USERS} users," in said and f"| p2p.stages.train - {task}: " in said, said[-3000:]
    for task in TASKS:
        rows = [json.loads(line) for line in (repo / f"data/prepared/lamp/{task}.jsonl").open()]
        assert len(rows) == USERS and {len(r["history"]) for r in rows} == {1, 2}
        one_query = {r["user_id"] for r in rows if len(r["queries"]) == 1}
        assert len(one_query) > USERS / 2
        split = _json(repo / f"data/splits/lamp/{task}.json")
        tested = split["random_test"] + split["ood_test"]
        assert tested and set(tested) & one_query and not set(split["train"]) & set(tested)
        single_item = {r["user_id"] for r in rows if len(r["history"]) == 1}
        oppu = _json(repo / f"data/oppu/lamp/{task}.json")
        assert oppu["rows"] == list(dict.fromkeys(tested)) and set(oppu["rows"]) & single_item


def test_evaluation_and_table_1_report_rouge_on_both_tasks(repro):
    repo, _, _ = repro
    metrics = _json(repo / "reports/eval/metrics.json")
    for split in ("random_test", "ood_test"):
        for task in TASKS:
            for method in METHODS:
                scores = metrics[split][task][method]
                assert 0 <= scores["official/rouge1"] <= 1 and 0 <= scores["official/rougeL"] <= 1, (task, method)
                predictions = _json(repo / f"data/eval/{method}/{split}/lamp/{task}.json")
                golds = _json(repo / f"data/eval/reference/golds/{split}/lamp/{task}.json")
                assert [p["id"] for p in predictions["golds"]] == [g["id"] for g in golds["golds"]]
    table = (repo / "reports/tables/table1.md").read_text()
    for task in TASKS:
        rows = [line.split(" | ") for line in table.splitlines() if line.startswith(f"| {task} |")]
        assert [row[2] for row in rows] == ["R-1 ↑", "R-L ↑"], table  # ROUGE-1, ROUGE-L
        assert all(row[1].startswith(f"lamp/{task} (") for row in rows)
        assert all(cell[0].isdigit() for row in rows for cell in row[3:]), table  # every method has a value
