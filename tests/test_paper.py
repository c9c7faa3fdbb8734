"""`make paper` (scripts/paper.sh, p2p/experiments.py) on a copy of the shared smoke build: the smoke grid's DVC
experiments fill every row of Tables 4-5 and every point of Figs. 3 and 6 with finite numbers and intervals, a second
run runs nothing, and MLflow's REST API lines up Table 5's runs by the tags the report's compare link uses."""

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
from conftest import free_port, running_server
from smoke import api_json

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("random", "shuffled", "summary_only", "retrieved_only", "full_history_only")

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


def test_make_paper_fills_every_row_and_point_and_a_second_run_runs_nothing(smoke_copy, tmp_path):
    repo, env = smoke_copy
    first = paper(repo, env)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    assert "grid of preset smoke: 12 experiments, 12 to run" in first.stdout
    assert "report refreshed: 12 of 12 grid experiments" in first.stdout
    names = experiments(repo, env)
    assert {f"smoke-table5-{v}" for v in VARIANTS} | {"smoke-seeds-seed1", "smoke-table4-last_layer"} <= names
    # each experiment reran only what its params reach; the rest came from the base run (DVC's cache)
    p2p = {"embed", "train", "evaluate_p2p", "evaluate_p2p_shuffled", "evaluate"}
    for name, expected in (("smoke-table5-random", p2p), ("smoke-table4-last_layer", p2p),
                           ("smoke-fig6-rag-k1", {"evaluate_rag", "evaluate_pag", "evaluate"}),
                           ("smoke-seeds-seed1", {"train", "mt_lora", "oppu", "evaluate_p2p", "evaluate_p2p_shuffled",
                                                  "evaluate_mt_lora", "evaluate_oppu", "evaluate"})):
        assert ran_stages(repo, env, name) == expected, name

    tables, index = repo / "reports" / "tables", (repo / "reports" / "README.md").read_text()
    for name in ("table4", "table5"):
        assert "not run" not in (tables / f"{name}.md").read_text(), name
    table5 = {r["variant"]: r for r in rows(tables / "table5.csv")}
    assert all(finite(table5[v]["ours_class_acc"]) and finite(table5[v]["ours_rating_mae"]) for v in VARIANTS)
    table4 = {r["embedder_kind"] + r["embedder"]: r for r in rows(tables / "table4.csv")}
    assert finite(table4["last_layer"]["ours_class_acc"])
    assert table4["sentenceQwen/Qwen3-Embedding-4B"]["source"] == "absent"  # not in the local HF cache
    assert "Not run yet" not in index, index

    # every point of Figs. 3 and 6 and every bar of Table 5, on every scored task, with a finite 95% interval
    tasks = {r["panel"].split(": ")[0] for r in rows(tables / "fig6_points.csv")}
    assert len(tasks) == 5  # the smoke build's synthetic LaMP-2M/3/7 and LaMP-4/5 dev files
    for name, expected in (("fig3_points", 5 * 2 * (2 + 2)),  # (diversity 0.5, 1.0; quantity 0.5, 1.0) x 2 splits
                           ("fig6_points", 5 * 2 * 2 * 2),  # P2P and RAG x k 1, 2 x 2 splits
                           ("table5_by_task", 5 * (2 + len(VARIANTS)))):  # full, shuffled at test, the variants
        points = rows(tables / f"{name}.csv")
        assert len(points) == expected, (name, len(points))
        for p in points:
            assert finite(p["value"]) and finite(p["ci95_lo"]) and finite(p["ci95_hi"]), (name, p)
            assert float(p["ci95_lo"]) <= float(p["value"]) <= float(p["ci95_hi"]), (name, p)
    pooled = [r for r in rows(tables / "table2_seeds.csv") if r["seed"] == "pooled over 2" and r["method"] == "p2p"]
    assert len(pooled) == 5 and all(finite(r["ci95_lo"]) and finite(r["ci95_hi"]) for r in pooled)

    second = paper(repo, env)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    assert "12 experiments, 0 to run" in second.stdout and "nothing new" in second.stdout
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
    for variant in VARIANTS:
        run_id, varied, params = by_experiment[f"smoke-table5-{variant}"]
        assert varied == f"profile.variant={variant}" and params["profile.variant"] == variant
        assert json.dumps(run_id) in compare.replace("%22", '"'), variant  # the compare link holds the row's run
        assert f"/#/experiments/{experiment}/runs/{run_id})" in compare, variant  # and the row links its run
