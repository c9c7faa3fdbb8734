"""End to end: `dvc repro` on the smoke preset in a fresh git repo — real DVC, Prefect flows, MLflow SQLite store.

The run is the session's shared smoke build (tests/smoke.py), which this file's first test is the first to ask for.
The tests that change the project (a param of P2P's training, of the split; two training processes; the pipeline
flow) work on copies of it, after the tests that read it. They are in this file so that the worker that built it
runs them while the other worker runs the rest of the suite."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import yaml
from cdp import browse
from conftest import free_port, running_server
from smoke import EVALUATED, LAMP_TASKS, METHODS, OFFICIAL, STAGES, api_json, run_ok
from smoke import SYNTH_TASKS as TASKS

from p2p.tasks import headline_key

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def test_dvc_repro_runs_every_stage_then_nothing(smoke_build):
    repo, output = smoke_build.repo, smoke_build.output
    for stage in STAGES:
        assert f"Running stage '{stage}'" in output

    for task in ("LaMP-2M", "LaMP-3", "LaMP-7"):
        assert (repo / f"data/raw/synth/{task}/preferences.json").is_file()
        assert len((repo / f"data/prepared/synth/{task}.jsonl").read_text().splitlines()) == 40
        assert len((repo / f"data/summaries/synth/{task}.jsonl").read_text().splitlines()) == 40
        with np.load(repo / f"data/embeddings/synth/{task}.npz") as emb:
            assert emb["users"].shape == (40, 384) and emb["queries"].shape == (80, 384)
            assert np.allclose(np.linalg.norm(emb["users"], axis=1), np.sqrt(384), atol=1e-3)
        split = json.loads((repo / f"data/splits/synth/{task}.json").read_text())
        assert not set(split["train"]) & (set(split["random_test"]) | set(split["ood_test"]))
    metrics = json.loads((repo / "reports/splits/metrics.json").read_text())
    assert set(metrics) == {f"synth/{t}" for t in TASKS} | {f"lamp/{t}" for t in LAMP_TASKS}

    hyper = json.loads((repo / "data/p2p/p2p.json").read_text())
    assert hyper["base_llm"] == "tiny-random-qwen2" and hyper["embed_dim"] == 384
    assert (repo / "data/p2p/hypernetwork.safetensors").stat().st_size > 0
    train_metrics = json.loads((repo / "reports/p2p/metrics.json").read_text())
    assert train_metrics["steps"] == 4 and np.isfinite(train_metrics["final_loss"])
    assert "4 optimizer steps; final loss" in (repo / "reports/p2p/summary.md").read_text()
    # a profile text fed to `p2p personalize` is embedded exactly as the embed stage embedded it for training
    from p2p.hyper.personalize import Personalizer

    personalizer = Personalizer.from_checkpoint(repo / "data/p2p", ROOT / ".cache" / "models")
    assert personalizer.meta.embed_pooling == "sections"
    rows = [json.loads(line) for line in (repo / "data/embeddings/synth/LaMP-3.texts.jsonl").open()]
    queried = [row for row in rows if "query_id" in row][:5]
    with np.load(repo / "data/embeddings/synth/LaMP-3.npz") as emb:
        stage = dict(zip(emb["query_ids"], emb["queries"]))
    np.testing.assert_allclose(personalizer.embed([row["text"] for row in queried]),
                               np.stack([stage[row["query_id"]] for row in queried]), atol=1e-4)

    _check_evaluation(repo)

    flow_runs = _check_mlflow(repo)
    _check_prefect(repo, smoke_build.prefect, flow_runs)
    _check_reports(repo)

    assert "Running stage" not in smoke_build.again
    assert smoke_build.again_seconds < 30, "a no-op `dvc repro` should take seconds"
    assert "up to date" in smoke_build.status.lower()


def test_the_prefect_dashboard_shows_the_stages_while_they_run(smoke_build):
    """While the build's `dvc repro` ran, the Prefect dashboard listed its stages' flow runs under their names."""
    if smoke_build.dashboard is None and smoke_build.dashboard_error is None:
        pytest.skip("no Chromium for the browser check (scripts/test_deps.sh installs it)")
    assert smoke_build.dashboard_error is None, smoke_build.dashboard_error
    assert "fetch smoke" in smoke_build.dashboard


def _mlflow_client(repo: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")


def _check_mlflow(repo: Path) -> dict[str, str]:
    """The store holds: in `p2p/smoke` one pipeline parent (`pipeline <commit7> smoke <start>`) with a finished
    child run per stage (the whole config as params, tags naming commit, DVC stage and Prefect flow run; train's
    loss curve, hypernetwork model and one exported adapter); in `p2p/smoke/<split>` a parent of the same name and
    one run per method x task with finite numbers and one metric-key set per task, the headline and P2P's paired
    difference first. No run is left RUNNING, and every experiment says what it holds. Returns each stage's Prefect
    flow-run id."""
    client = _mlflow_client(repo)
    experiments = [client.get_experiment_by_name(f"p2p/smoke{s}") for s in ("", "/random_test", "/ood_test")]
    everything = client.search_runs([e.experiment_id for e in experiments], max_results=10000)
    assert {r.info.status for r in everything} == {"FINISHED"}
    assert all(e.tags["mlflow.note.content"] and e.tags["mlflow.experimentKind"] == "custom_model_development"
               for e in experiments)
    experiment = experiments[0]
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "pipeline"]
    assert len(parents) == 1
    assert parents[0].info.run_name.split()[:3] == ["pipeline", parents[0].data.tags["git_commit"][:7], "smoke"]
    stages = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert set(stages) == set(STAGES)
    for name, run in stages.items():
        assert run.info.status == "FINISHED" and run.data.params["preset"] == "smoke"
        assert run.data.tags["dvc_stage"] == name and len(run.data.tags["git_commit"]) == 40
        assert run.data.tags["prefect_flow_run_id"]
        assert run.data.tags["prefect_flow_run_url"].endswith(f"/runs/flow-run/{run.data.tags['prefect_flow_run_id']}")
    train = stages["train"].info.run_id
    losses = client.get_metric_history(train, "loss")
    assert [m.step for m in sorted(losses, key=lambda m: m.step)] == [1, 2, 3, 4]
    assert all(np.isfinite(m.value) for m in losses)
    artifacts = {a.path for a in client.list_artifacts(train)}
    assert {"hypernetwork", "adapter", "reports"} <= artifacts  # the MLflow model is a logged model, loaded below
    adapter = client.list_artifacts(train, "adapter")[0].path
    assert {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(train, adapter)} >= {
        "adapter_config.json", "adapter_model.safetensors"}
    assert {a.path for a in client.list_artifacts(stages["split"].info.run_id)} == {"splits"}
    assert "predictions" in {a.path for a in client.list_artifacts(stages["evaluate_p2p"].info.run_id)}
    assert "reports" in {a.path for a in client.list_artifacts(stages["evaluate"].info.run_id)}
    import mlflow.pytorch

    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlflow.db")  # `runs:/` URIs resolve against the global store
    hyper = mlflow.pytorch.load_model(f"runs:/{train}/hypernetwork-model")
    assert type(hyper).__name__ == "HyperNetwork"

    for split in ("random_test", "ood_test"):
        experiment = client.get_experiment_by_name(f"p2p/smoke/{split}")
        results = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("stage") == "evaluate"]
        assert sorted(r.info.run_name for r in results) == sorted(
            [f"{m}/{t}" for m in METHODS for t in TASKS] + [f"{m}/{t}" for m in EVALUATED for t in LAMP_TASKS])
        split_parent = next(r for r in client.search_runs([experiment.experiment_id])
                            if r.data.tags.get("kind") == "pipeline")
        assert split_parent.info.run_name == parents[0].info.run_name
        for task in TASKS:
            keys = {frozenset(r.data.metrics) - {"ms_per_instance"} for r in results
                    if r.data.params["task"] == task}
            key = "official/" + OFFICIAL[task][0]
            assert len(keys) == 1 and {key, f"{key}_ci95_lo", f"{key}_ci95_hi", "n_users"} <= next(iter(keys))
            assert not any(k.startswith("p2p/") for k in next(iter(keys)))  # the paper's variant is `paper/`
            headline = "headline/" + headline_key(task)
            for run in (r for r in results if r.data.params["task"] == task):
                assert list(run.data.metrics)[:2] == [headline, f"{headline}_ci95_lo"]
                diff = run.data.metrics["headline/p2p_minus_this"]
                if run.info.run_name.startswith("p2p/"):
                    assert math.isnan(diff)  # P2P minus itself: not logged as a number
                elif run.info.run_name.startswith("base/"):
                    assert math.isfinite(diff)
        assert all(np.isfinite(r.data.metrics["official/" + OFFICIAL[r.data.params["task"]][1]]) for r in results)
    return {name: run.data.tags["prefect_flow_run_id"] for name, run in stages.items()}


def _check_prefect(repo: Path, recorded: dict[str, list[dict]], flow_runs: dict[str, str]) -> None:
    """The Prefect server the stages reported to held (as tests/smoke.py recorded its answers), for the flow run
    each stage's MLflow run links: a completed run named `<stage> smoke`, task runs named after what they do, the
    train flow's progress, a link to its MLflow run, and each report-writing stage's summary.md as a markdown
    artifact."""
    ids = set(flow_runs.values())
    runs = [r for r in recorded["flow_runs"] if r["id"] in ids]
    assert {r["id"]: r["name"].split(" ")[0] for r in runs} == {i: name for name, i in flow_runs.items()}
    assert all(r["name"].split(" ")[1] == "smoke" for r in runs), [r["name"] for r in runs]
    assert {r["state"]["type"] for r in runs} == {"COMPLETED"}
    tasks = {r["name"] for r in recorded["task_runs"] if r["flow_run_id"] in ids}
    assert {f"summarize synth/{t}" for t in TASKS} | {f"summarize lamp/{t}" for t in LAMP_TASKS} <= tasks

    def artifacts(kind: str) -> list[dict]:
        return [a for a in recorded[kind] if a["flow_run_id"] in ids]

    progress = artifacts("train_progress")
    assert [(a["flow_run_id"], a["data"]) for a in progress] == [(flow_runs["train"], 100.0)]  # step by step
    links = artifacts("mlflow_links")  # each flow run links its MLflow run, and back (_check_mlflow)
    assert {a["flow_run_id"] for a in links} == ids
    assert all("/#/experiments/" in a["data"] for a in links)
    published = {a["key"]: a for a in artifacts("markdown")}
    assert {"split-summary", "train-summary", "evaluate-summary", "judge-summary", "report-table2"} <= set(published)
    assert published["evaluate-summary"]["data"] == (repo / "reports/eval/summary.md").read_text(encoding="utf-8")
    assert published["evaluate-summary"]["flow_run_id"] == flow_runs["evaluate"]


def _check_reports(repo: Path) -> None:
    """The report stage wrote the paper's tables (ours beside the paper's) and figures."""
    tables = repo / "reports/tables"
    for stem in ("table1", "table2", "table3", "table4", "table5"):
        assert (tables / f"{stem}.md").read_text().strip(), stem
        assert (tables / f"{stem}.csv").read_text().count("\n") >= 2, stem
    figures = sorted(p.name for p in (repo / "reports/figures").glob("*.png"))
    assert len(figures) >= 4, figures
    for png in (repo / "reports/figures").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (repo / "reports/README.md").is_file()


def _check_evaluation(repo: Path) -> None:
    """Every method x task x split wrote official-format predictions for exactly the gold ids, and its scores."""
    from p2p.tasks.scoring import evaluate_files

    metrics = json.loads((repo / "reports/eval/metrics.json").read_text())
    comparisons = json.loads((repo / "reports/eval/comparisons.json").read_text())
    headline = json.loads((repo / "reports/eval/headline.json").read_text())  # what `dvc metrics show` reads
    assert headline["ood_test"]["LaMP-2M"] == {"p2p choice/accuracy": metrics["ood_test"]["LaMP-2M"]["p2p"][
        "choice/accuracy"], "ci95_lo": metrics["ood_test"]["LaMP-2M"]["p2p"]["choice/accuracy_ci95"][0],
        "ci95_hi": metrics["ood_test"]["LaMP-2M"]["p2p"]["choice/accuracy_ci95"][1]}
    for split in ("random_test", "ood_test"):
        for task in TASKS:
            def answers(method: str) -> Path:
                where = method if method in EVALUATED else f"reference/{method}"
                return repo / "data/eval" / where / split / "synth" / f"{task}.json"

            gold_ids = [g["id"] for g in json.loads(answers("golds").read_text())["golds"]]
            assert gold_ids
            test_users = json.loads((repo / "data/splits/synth" / f"{task}.json").read_text())[split]
            compared = comparisons[split][task]
            assert sorted(compared) == sorted(f"p2p-{m}" for m in METHODS if m != "p2p")
            for method in METHODS:
                predictions = json.loads(answers(method).read_text())
                assert [p["id"] for p in predictions["golds"]] == gold_ids
                scores = metrics[split][task][method]
                recomputed = evaluate_files(task, answers(method), answers("golds"))
                key = OFFICIAL[task][0]
                assert scores[f"official/{key}"] == pytest.approx(recomputed[key])
                assert f"p2p/{key}" in scores  # None when no answer could be scored
                lo, hi = scores[f"official/{key}_ci95"]  # the official metric always has a value, so an interval
                assert lo <= hi
                assert (scores["n_queries"], scores["n_users"]) == (len(gold_ids), len(test_users))
                if method != "p2p":
                    diff = compared[f"p2p-{method}"][f"official/{key}"]
                    ours = metrics[split][task]["p2p"][f"official/{key}"]
                    assert diff["diff"] == pytest.approx(ours - scores[f"official/{key}"])
                    assert diff["ci95"][0] <= diff["ci95"][1]
                assert (method in ("oracle", "query_only")) != ("ms_per_instance" in scores)
            assert metrics[split][task]["oracle"][{"LaMP-2M": "official/accuracy", "LaMP-3": "official/mae",
                                                   "LaMP-7": "official/rouge1"}[task]] == (0.0 if task == "LaMP-3"
                                                                                           else 1.0)
    adapters = json.loads((repo / "data/oppu/synth/LaMP-3.json").read_text())
    split = json.loads((repo / "data/splits/synth/LaMP-3.json").read_text())
    assert adapters["rows"] == list(dict.fromkeys(split["random_test"] + split["ood_test"]))
    assert (repo / "data/mt_lora/adapter_config.json").is_file()
    assert "| LaMP-2M |" in (repo / "reports/eval/summary.md").read_text()


def test_changing_a_split_param_reruns_the_split_on_unchanged_inputs(smoke_copy):
    repo, env = smoke_copy
    prepared = (repo / "data/prepared/synth/LaMP-3.jsonl").read_bytes()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["presets"]["smoke"]["split"]["n_init_final"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run_ok([str(BIN / "dvc"), "repro", "split"], repo, env)  # the stages after it are not what is tested
    # `presets` is tracked whole, so fetch and prepare rerun too; their outputs are unchanged, so DVC restores them
    # from cache and the split reruns on identical inputs.
    assert "Running stage 'split'" in result.stdout
    assert (repo / "data/prepared/synth/LaMP-3.jsonl").read_bytes() == prepared  # deterministic upstream stages


def test_train_processes_2_runs_the_train_stage_as_two_ddp_ranks(smoke_copy):
    """`train.processes: 2` relaunches the stage's command under torchrun (gloo on CPU); rank 0 runs the Prefect flow
    and writes the outputs and the checkpoints, which record the run's size."""
    repo, env = smoke_copy
    original = (repo / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["presets"]["smoke"]["train"]["processes"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.rmtree(repo / ".cache" / "checkpoints")  # or the finished single-process run is resumed at its end
    try:
        run_ok([sys.executable, "-m", "flows.stage", "train"], repo, {**env, "OMP_NUM_THREADS": "1"})
    finally:
        (repo / "params.yaml").write_text(original)
    from p2p.hyper.checkpoint import latest_checkpoint, load_train_state

    [run_dir] = list((repo / ".cache" / "checkpoints").iterdir())
    state = load_train_state(latest_checkpoint(run_dir))
    assert state["world_size"] == 2 and state["step"] == params["presets"]["smoke"]["train"]["steps"]
    history = json.loads((repo / "data/p2p/train_history.json").read_text())
    assert len(history) == state["step"] and all(math.isfinite(h["loss"]) for h in history)


#: What the pipeline flow runs as subflows here: the whole pipeline's stages ran under the build's `dvc repro`;
#: these show the flow nests stages, a stage with arguments (`evaluate_{method}`) among them, at a fraction of the cost.
SUBFLOWS = ("fetch", "prepare", "evaluate_base")


def test_pipeline_flow_runs_stages_as_subflows_and_both_uis_serve_the_runs(smoke_copy, prefect_api, tmp_path):
    """The pipeline flow (`python -m flows.pipeline`) against the session's real `prefect server`: a few stages as
    subflows of one flow run, read back through the REST API, and the cron deployment registers with its schedule.
    Then a real `mlflow server` serves the store: the pipeline's runs are visible through its REST API and its
    compare view. (The stages' own flow runs, task runs and artifacts are checked on the build's `dvc repro`:
    tests/test_pipeline.py.)"""
    repo, env = smoke_copy
    api = prefect_api
    flows = {"flows": {"name": {"any_": ["pipeline"]}}}
    before = {r["id"] for r in api_json(f"{api}/flow_runs/filter", flows)}
    run_ok([str(BIN / "python"), "-m", "flows.pipeline", "--preset", "smoke", "--stages", *SUBFLOWS], repo, env)
    runs = [r for r in api_json(f"{api}/flow_runs/filter", flows) if r["id"] not in before]
    assert len(runs) == 1 and runs[0]["state"]["type"] == "COMPLETED"
    subflows = api_json(f"{api}/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [runs[0]["id"]]}}})
    assert len(subflows) == len(SUBFLOWS) and {r["state"]["type"] for r in subflows} == {"COMPLETED"}
    # runs named after what they are: `<stage> <preset> <pipeline run>`
    assert sorted(r["name"].split(" ")[0] for r in subflows) == sorted(SUBFLOWS)
    assert all(r["name"].split(" ")[1:] == ["smoke", f"prefect-{runs[0]['id']}"] for r in subflows), \
        [r["name"] for r in subflows]

    code = "from flows.serve import deployment; print(deployment('0 3 * * *').apply())"
    run_ok([str(BIN / "python"), "-c", code], repo, env)
    deployed = api_json(f"{api}/deployments/name/pipeline/scheduled-dvc-repro")
    assert [s["schedule"]["cron"] for s in deployed["schedules"]] == ["0 3 * * *"]
    assert deployed["parameters"] == {"via_dvc": True}

    # the MLflow runs of that flow run: one parent named after it, a child per stage
    client = _mlflow_client(repo)
    experiment = client.get_experiment_by_name("p2p/smoke")
    key = f"prefect-{runs[0]['id']}"
    grouped = client.search_runs([experiment.experiment_id], f"tags.pipeline_run = '{key}'")
    parent = next(r for r in grouped if r.data.tags.get("kind") == "pipeline")
    assert sorted(r.info.run_name for r in grouped) == sorted([parent.info.run_name, *SUBFLOWS])
    assert parent.info.run_name.startswith(f"pipeline {parent.data.tags['git_commit'][:7]} smoke ")
    # the build's `dvc repro`: the pipeline run whose methods the compare view below lines up
    [first] = client.search_runs([experiment.experiment_id], "tags.kind = 'pipeline'",
                                 order_by=["attributes.start_time ASC"], max_results=1)
    repro_key = first.data.tags["pipeline_run"]

    port = free_port()
    ui = f"http://127.0.0.1:{port}"
    with running_server([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{repo}/mlflow.db",
                  "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], f"{ui}/health", repo, env,
                 tmp_path / "mlflow.log"):
        found = api_json(f"{ui}/api/2.0/mlflow/experiments/get-by-name?experiment_name=p2p/smoke/ood_test")
        searched = api_json(f"{ui}/api/2.0/mlflow/runs/search",
                        {"experiment_ids": [found["experiment"]["experiment_id"]], "max_results": 1000,
                         "filter": "tags.stage = 'evaluate'"})
        names = {r["info"]["run_name"] for r in searched["runs"]}
        assert {f"p2p/{t}" for t in TASKS} <= names and {f"base/{t}" for t in TASKS} <= names
        # after both pipelines (dvc repro, the Prefect flow) no run of any experiment is left RUNNING
        ids = [api_json(f"{ui}/api/2.0/mlflow/experiments/get-by-name?experiment_name=p2p/smoke{s}")["experiment"]
               ["experiment_id"] for s in ("", "/random_test", "/ood_test")]
        every = api_json(f"{ui}/api/2.0/mlflow/runs/search", {"experiment_ids": ids, "max_results": 10000})["runs"]
        assert len(every) > 2 * len(STAGES) and {r["info"]["status"] for r in every} == {"FINISHED"}
        # MLflow's compare view of one task's methods (one pipeline run) opens on the headline metric, with P2P's
        # paired difference from each method beside it
        lamp2 = [r for r in searched["runs"] if r["info"]["run_name"].endswith("/LaMP-2M")
                 and {t["key"]: t["value"] for t in r["data"]["tags"]}["pipeline_run"] == repro_key]
        assert sorted(r["info"]["run_name"] for r in lamp2) == sorted(f"{m}/LaMP-2M" for m in METHODS)
        compare = (f"{ui}/#/compare-runs?runs={quote(json.dumps([r['info']['run_id'] for r in lamp2]))}"
                   f"&experiments={quote(json.dumps([found['experiment']['experiment_id']]))}")
        text = browse(compare, "Parallel Coordinates Plot", tmp_path / "chromium", "mlflow-compare.png")
        assert "Metrics:\nheadline/choice/accuracy" in text and "headline/p2p_minus_this" in text, text[:3000]
