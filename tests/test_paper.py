"""`make paper` (scripts/paper.sh, p2p/experiments.py) on a copy of the shared smoke build: the grid's DVC
experiments fill their rows of Tables 4-5 and their points of Figs. 3 and 6 with finite numbers and intervals, each
reruns only the stages its params reach, a second run runs nothing, and MLflow's REST API lines up Table 5's runs by
the tags the report's compare link uses.

The test runs one point of each kind (`TEST_GRID`: a Table 5 row, a Table 4 embedder, a Fig. 3 diversity point, a
Fig. 6 k for P2P and for RAG, a seed): the smoke preset's whole grid (12 experiments) took 30 minutes on 2 busy
cores, more than the suite's budget; the rows it leaves out are the same code with another value, and the report
names them as not run."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml
from conftest import free_port, running_server
from smoke import api_json

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("random", "shuffled", "summary_only", "retrieved_only", "full_history_only")
#: The smoke grid this test runs: one point of each kind (merged over `grid.default` like the preset's own entry).
TEST_GRID = {"variants": ["random"], "clusters": [0.5], "matched_users": 8, "users": [], "retrieval_k": [1],
             "seeds": [1], "embedders": [{"kind": "last_layer"},
                                         {"kind": "sentence", "name": "Qwen/Qwen3-Embedding-4B", "hub": True}],
             "workers": 2}
EXPERIMENTS = {"smoke-table5-random", "smoke-fig3-diversity-0.5", "smoke-fig6-p2p-k1", "smoke-fig6-rag-k1",
               "smoke-seeds-seed1", "smoke-table4-last_layer"}

pytestmark = pytest.mark.slow


def paper(repo: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(repo / "scripts" / "paper.sh"), "--preset", "smoke"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=1800)


def rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def finite(value: str) -> bool:
    return value not in ("", None) and math.isfinite(float(value))


def ran_stages(repo: Path, env: dict[str, str], name: str) -> set[str]:
    """The stages an experiment of the queue ran (its `dvc queue logs`)."""
    logs = subprocess.run([str(BIN / "dvc"), "queue", "logs", name], cwd=repo, env=env, capture_output=True,
                          text=True, check=True).stdout
    return {line.split("'")[1] for line in logs.splitlines() if line.startswith("Running stage '")}


def experiments(repo: Path, env: dict[str, str]) -> set[str]:
    done = subprocess.run([str(BIN / "dvc"), "exp", "list", "--name-only"], cwd=repo, env=env, capture_output=True,
                          text=True, check=True)
    return set(done.stdout.split())


def use_test_grid(repo: Path, env: dict[str, str]) -> None:
    """The copy's params.yaml with TEST_GRID as the smoke grid, committed (experiments belong to a commit)."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["grid"]["smoke"] = TEST_GRID
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["git", "add", "params.yaml"], ["git", "commit", "-qm", "the test's smoke grid"]):
        subprocess.run(command, cwd=repo, env=env, check=True, capture_output=True)


def test_make_paper_fills_its_rows_and_points_and_a_second_run_runs_nothing(smoke_copy, tmp_path):
    repo, env = smoke_copy
    use_test_grid(repo, env)
    first = paper(repo, env)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    assert f"grid of preset smoke: {len(EXPERIMENTS)} experiments, {len(EXPERIMENTS)} to run" in first.stdout
    assert f"report refreshed: {len(EXPERIMENTS)} of {len(EXPERIMENTS)} grid experiments" in first.stdout
    names = experiments(repo, env)
    assert names == EXPERIMENTS
    # each experiment reran only what its params reach; the rest came from the base run (DVC's cache)
    p2p = {"embed", "train", "evaluate_p2p", "evaluate_p2p_shuffled", "evaluate"}
    for name, expected in (("smoke-table5-random", p2p), ("smoke-table4-last_layer", p2p),
                           ("smoke-fig6-rag-k1", {"evaluate_rag", "evaluate_pag", "evaluate"}),
                           ("smoke-seeds-seed1", {"train", "mt_lora", "oppu", "evaluate_p2p", "evaluate_p2p_shuffled",
                                                  "evaluate_mt_lora", "evaluate_oppu", "evaluate"})):
        assert ran_stages(repo, env, name) == expected, name

    tables = repo / "reports" / "tables"
    table5 = {r["variant"]: r for r in rows(tables / "table5.csv")}
    assert finite(table5["random"]["ours_class_acc"]) and finite(table5["random"]["ours_rating_mae"])
    assert finite(table5["shuffled"]["ours_class_acc"])  # the base run's p2p_shuffled (the test-time shuffle)
    for variant in VARIANTS[2:]:  # not in the test's grid: named, with the command that fills it
        assert table5[variant]["source"] == "not run", variant
        assert f"-S profile.variant={variant}" in (tables / "table5.md").read_text()
    table4 = {r["embedder_kind"] + r["embedder"]: r for r in rows(tables / "table4.csv")}
    assert finite(table4["last_layer"]["ours_class_acc"])
    assert table4["sentenceQwen/Qwen3-Embedding-4B"]["source"] == "absent"  # not in the local HF cache

    # every point of Figs. 3 and 6 and every bar of Table 5, on every scored task, with a finite 95% interval
    tasks = {r["panel"].split(": ")[0] for r in rows(tables / "fig6_points.csv")}
    assert len(tasks) == 5  # the smoke build's synthetic LaMP-2M/3/7 and LaMP-4/5 dev files
    for name, expected in (("fig3_points", 5 * 2 * (1 + 1)),  # (diversity 0.5; quantity 1.0, the base) x 2 splits
                           ("fig6_points", 5 * 2 * 2 * 2),  # P2P and RAG x k 1, 2 x 2 splits
                           ("table5_by_task", 5 * (2 + 1))):  # full, shuffled at test, random
        points = rows(tables / f"{name}.csv")
        assert len(points) == expected, (name, len(points))
        for p in points:
            assert finite(p["value"]) and finite(p["ci95_lo"]) and finite(p["ci95_hi"]), (name, p)
            assert float(p["ci95_lo"]) <= float(p["value"]) <= float(p["ci95_hi"]), (name, p)
    pooled = [r for r in rows(tables / "table2_seeds.csv") if r["seed"] == "pooled over 2" and r["method"] == "p2p"]
    assert len(pooled) == 5 and all(finite(r["ci95_lo"]) and finite(r["ci95_hi"]) for r in pooled)

    second = paper(repo, env)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    assert f"{len(EXPERIMENTS)} experiments, 0 to run" in second.stdout and "nothing new" in second.stdout
    assert experiments(repo, env) == names

    # MLflow's REST API: Table 5's runs carry their experiment's name and the param it varied
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{repo / 'mlflow.db'}", "--host",
               "127.0.0.1", "--port", str(port), "--workers", "1"]
    with running_server(command, f"{url}/health", tmp_path, env, tmp_path / "mlflow.log", seconds=180):
        experiment = api_json(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name="
                              f"{quote('p2p/smoke/ood_test')}")["experiment"]["experiment_id"]
        found = api_json(f"{url}/api/2.0/mlflow/runs/search", {
            "experiment_ids": [experiment], "max_results": 1000,
            "filter": "tags.stage = 'evaluate' and params.method = 'p2p' and params.task = 'LaMP-2M'"})
    by_experiment = {}
    for run in found["runs"]:
        tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        params = {p["key"]: p["value"] for p in run["data"].get("params", [])}
        by_experiment[tags.get("dvc_experiment")] = (run["info"]["run_id"], tags.get("varied"), params)
    compare = (tables / "table5.md").read_text()
    for variant in ("random",):
        run_id, varied, params = by_experiment[f"smoke-table5-{variant}"]
        assert varied == f"profile.variant={variant}" and params["profile.variant"] == variant
        assert json.dumps(run_id) in compare.replace("%22", '"'), variant  # the compare link holds the row's run
        assert f"/#/experiments/{experiment}/runs/{run_id})" in compare, variant  # and the row links its run
