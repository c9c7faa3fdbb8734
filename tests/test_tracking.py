"""The MLflow helper against a real SQLite store in a temporary directory."""

import json
from pathlib import Path

from p2p.config import load_config
from p2p.tracking import resolve_uri, stage_run

ROOT = Path(__file__).resolve().parents[1]


def test_resolve_uri_anchors_relative_sqlite_paths(tmp_path):
    assert resolve_uri("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert resolve_uri("sqlite:////abs/m.db", tmp_path) == "sqlite:////abs/m.db"
    assert resolve_uri("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"


def test_stage_run_logs_params_metrics_and_artifacts(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(ROOT / "params.yaml", preset="smoke")
    (tmp_path / "report.md").write_text("# report\n")
    with stage_run("split", cfg, root=tmp_path, dataset="synth") as run:
        run.log_metrics({"users": 40, "ratio": 0.5, "name": "ignored", "flag": True}, prefix="LaMP-3/")
        run.log_artifact(tmp_path / "report.md")
        run_id = run.run_id

    assert (tmp_path / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    logged = client.get_run(run_id)
    assert logged.data.metrics == {"LaMP-3/users": 40.0, "LaMP-3/ratio": 0.5}
    assert logged.data.params["data.synth.users"] == "40"
    assert logged.data.tags["stage"] == "split" and logged.data.tags["preset"] == "smoke"
    assert logged.data.tags["dataset"] == "synth"
    assert [a.path for a in client.list_artifacts(run_id)] == ["report.md"]
    assert (tmp_path / "mlartifacts").is_dir()


def test_stages_share_a_pipeline_parent_and_results_go_to_split_experiments(tmp_path, monkeypatch):
    """Two stages of one pipeline run: children of one parent in `p2p/<preset>`; a method x task result lands in
    `p2p/<preset>/<split>` under that split's parent, with the same tags; a new pipeline key makes new parents."""
    from mlflow.tracking import MlflowClient

    from p2p.tracking import PIPELINE_RUN_ENV

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(PIPELINE_RUN_ENV, raising=False)
    monkeypatch.setenv("DVC_STAGE", "evaluate")
    cfg = load_config(ROOT / "params.yaml", preset="smoke")
    with stage_run("train", cfg, root=tmp_path):
        pass
    with stage_run("evaluate", cfg, root=tmp_path) as evaluate:
        child = evaluate.log_result("ood_test", "p2p/LaMP-3", {"official/mae": 0.5, "n": 4, "bad": None},
                                    {"method": "p2p", "task": "LaMP-3"})

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    stages = client.get_experiment_by_name("p2p/smoke")
    split = client.get_experiment_by_name("p2p/smoke/ood_test")
    runs = {r.info.run_name: r for r in client.search_runs([stages.experiment_id])}
    parent = runs.pop(next(name for name in runs if name.startswith("pipeline ")))
    assert parent.info.run_name.split()[1:3] == [parent.data.tags.get("git_commit", "no-git")[:7], "smoke"]
    assert set(runs) == {"train", "evaluate"}
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent.info.run_id}
    assert runs["train"].data.tags["pipeline_run"] == parent.data.tags["pipeline_run"]
    assert runs["evaluate"].data.tags["dvc_stage"] == "evaluate"
    assert parent.info.status == "FINISHED"

    results = client.search_runs([split.experiment_id])
    split_parent = next(r for r in results if r.data.tags.get("kind") == "pipeline")
    logged = client.get_run(child)
    assert logged.info.experiment_id == split.experiment_id and logged.info.run_name == "p2p/LaMP-3"
    assert logged.data.tags["mlflow.parentRunId"] == split_parent.info.run_id
    assert logged.data.tags["stage_run_id"] == evaluate.run_id and logged.data.tags["split"] == "ood_test"
    assert logged.data.metrics == {"official/mae": 0.5, "n": 4.0}
    assert logged.data.params == {"method": "p2p", "task": "LaMP-3"}
    assert len(logged.data.tags["comparable_on"]) == 16  # a digest: the long JSON swamped the params table
    assert split_parent.info.run_name == parent.info.run_name and split_parent.info.status == "FINISHED"
    assert "#/compare-runs?runs=" in split_parent.data.tags["mlflow.note.content"]

    monkeypatch.setenv(PIPELINE_RUN_ENV, "scheduled-run-1")
    with stage_run("train", cfg, root=tmp_path) as again:
        pass
    assert client.get_run(again.run_id).data.tags["pipeline_run"] == "scheduled-run-1"
    assert len([r for r in client.search_runs([stages.experiment_id]) if r.data.tags.get("kind") == "pipeline"]) == 2


def test_a_torch_model_logs_as_an_mlflow_model_that_loads_back(tmp_path, monkeypatch):
    import mlflow.pytorch
    import torch

    from p2p.hyper.hypernet import HyperNetwork, HyperShape
    from p2p.lora.hooks import LoraShape, TargetLayout

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(ROOT / "params.yaml", preset="smoke")
    layout = TargetLayout(names={"q_proj": ("l0.q", "l1.q"), "v_proj": ("l0.v", "l1.v")}, layers=(0, 1),
                          shapes={"q_proj": (8, 8), "v_proj": (8, 4)})
    torch.manual_seed(0)
    hyper = HyperNetwork(6, layout, LoraShape(rank=2, alpha=4.0), HyperShape(latent=8, head_in=8, blocks=1), ("t",))
    with stage_run("train", cfg, root=tmp_path) as run:
        run.log_torch_model(hyper, "hypernetwork-model", ROOT / "p2p")
    loaded = mlflow.pytorch.load_model(f"runs:/{run.run_id}/hypernetwork-model")
    for name, tensor in hyper.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def _store(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from p2p.tracking import PIPELINE_RUN_ENV

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(PIPELINE_RUN_ENV, raising=False)
    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")


def _runs(client, name):
    return {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name(name).experiment_id])}


def test_no_run_stays_running_and_a_parent_ends_with_its_last_child(tmp_path, monkeypatch):
    """While a stage runs its parent is RUNNING (again); a failed stage is FAILED and so is the pipeline; an
    interrupted one KILLED; a rerun that succeeds finishes the parent; a stage run whose process died is KILLED
    when its stage starts again. Afterwards the REST API finds no RUNNING run in any experiment."""
    import pytest

    client = _store(tmp_path, monkeypatch)
    cfg = load_config(ROOT / "params.yaml", preset="smoke")
    with stage_run("prepare", cfg, root=tmp_path):
        pass
    with stage_run("train", cfg, root=tmp_path) as train:
        parent = client.get_run(train.run.data.tags["mlflow.parentRunId"])
        assert parent.info.status == "RUNNING"  # reopened although `prepare` had ended it
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    sibling = client.create_run(parent.info.experiment_id, run_name="mt_lora",  # a stage in another process
                                tags={"mlflow.parentRunId": parent.info.run_id})
    with pytest.raises(ValueError):
        with stage_run("evaluate", cfg, root=tmp_path) as evaluate:
            evaluate.log_result("ood_test", "base/LaMP-3", {"official/mae": 0.5}, {"method": "base"})
            raise ValueError("bad input")
    assert client.get_run(parent.info.run_id).info.status == "RUNNING"  # mt_lora still runs
    client.set_terminated(sibling.info.run_id, "FINISHED")
    runs = _runs(client, "p2p/smoke")
    assert runs["evaluate"].info.status == "FAILED" and runs["train"].info.status == "FINISHED"
    assert _runs(client, "p2p/smoke/ood_test")[parent.info.run_name].info.status == "FAILED"

    with pytest.raises(KeyboardInterrupt):
        with stage_run("evaluate", cfg, root=tmp_path):
            raise KeyboardInterrupt
    assert client.get_run(parent.info.run_id).info.status == "FAILED"
    orphan = client.create_run(runs["train"].info.experiment_id, run_name="evaluate",
                               tags={"mlflow.parentRunId": parent.info.run_id})  # its process was killed
    with stage_run("evaluate", cfg, root=tmp_path) as again:
        pass
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"
    assert client.get_run(again.run_id).info.status == "FINISHED"
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"  # the newest run of every stage finished
    statuses = sorted(r.info.status for r in client.search_runs([e.experiment_id for e in client.search_experiments()]))
    assert "RUNNING" not in statuses and statuses.count("KILLED") == 2


def test_experiments_say_what_they_hold_and_open_in_the_model_training_view(tmp_path, monkeypatch):
    client = _store(tmp_path, monkeypatch)
    cfg = load_config(ROOT / "params.yaml", preset="smoke")
    with stage_run("evaluate", cfg, root=tmp_path) as run:
        run.log_result("random_test", "base/LaMP-3", {"official/mae": 0.5}, {"method": "base", "task": "LaMP-3"})
    for name, phrase in (("p2p/smoke", "one child per stage"), ("p2p/smoke/random_test", "params.task = ")):
        tags = client.get_experiment_by_name(name).tags
        assert phrase in tags["mlflow.note.content"] and tags["mlflow.experimentKind"] == "custom_model_development"


def test_results_lead_with_the_headline_and_p2ps_paired_difference_and_read_back_as_metrics_json(tmp_path,
                                                                                              monkeypatch):
    """What the evaluate stage logs per method x task: the headline and P2P's paired difference first (the compare
    view plots the first shared key), the paper's variant as `paper/`; the report reads the metrics.json keys back."""
    from p2p.evaluation.scores import flat_scores
    from p2p.tracking import collect_rows, result_metrics, result_params

    client = _store(tmp_path, monkeypatch)
    cfg = load_config(ROOT / "params.yaml", preset="smoke")
    scores = {"base": {"n": 4, "choice/accuracy": 0.25, "choice/accuracy_ci95": [0.0, 0.5], "p2p/accuracy": 0.3,
                       "p2p/accuracy_ci95": [0.1, 0.6]},
              "p2p": {"n": 4, "choice/accuracy": 0.75, "choice/accuracy_ci95": [0.5, 1.0], "p2p/accuracy": 0.8,
                      "p2p/accuracy_ci95": [0.5, 1.0]}}
    comparisons = {"p2p-base": {"choice/accuracy": {"diff": 0.5, "ci95": [0.25, 0.75]},
                                "p2p/accuracy": {"diff": 0.5, "ci95": [0.2, 0.7]}}}
    logged = {}
    with stage_run("evaluate", cfg, root=tmp_path) as run:
        for method, found in scores.items():
            metrics = result_metrics("LaMP-2M", method, flat_scores(found), comparisons)
            logged[method] = run.log_result("ood_test", f"{method}/LaMP-2M", metrics,
                                            {"method": method, "task": "LaMP-2M", "split": "ood_test",
                                             **result_params(cfg)})
    base, p2p = (client.get_run(logged[m]).data.metrics for m in ("base", "p2p"))
    assert list(base)[:6] == ["headline/choice/accuracy", "headline/choice/accuracy_ci95_lo",
                              "headline/choice/accuracy_ci95_hi", "headline/p2p_minus_this",
                              "headline/p2p_minus_this_ci95_lo", "headline/p2p_minus_this_ci95_hi"]
    assert (base["headline/p2p_minus_this"], base["headline/p2p_minus_this_ci95_hi"]) == (0.5, 0.75)
    assert list(p2p) == list(base) and p2p["headline/p2p_minus_this"] != p2p["headline/p2p_minus_this"]  # NaN
    assert base["paper/accuracy"] == 0.3 and not any(k.startswith("p2p/") for k in base)

    rows = {r.method: r for r in collect_rows(cfg, tmp_path)}
    assert rows["base"].metrics == {"n": 4.0, "choice/accuracy": 0.25, "choice/accuracy_ci95_lo": 0.0,
                                    "choice/accuracy_ci95_hi": 0.5, "p2p/accuracy": 0.3,
                                    "p2p/accuracy_ci95_lo": 0.1, "p2p/accuracy_ci95_hi": 0.6}
    other = cfg.model_copy(update={"model": cfg.model.model_copy(update={"base_llm": "another-model"})})
    assert collect_rows(other, tmp_path) == []  # not comparable: another base model

    # A run logged before `comparable_on` became a tag holds the whole JSON of the data settings as a param.
    flat = cfg.flat()
    keys = sorted(k for k in flat if k.startswith("data.") and not k.endswith("_dir")) + ["model.base_llm"]
    old = client.create_run(client.get_run(logged["base"]).info.experiment_id, run_name="base/LaMP-2M",
                            tags={"stage": "evaluate"})
    for key, value in {"method": "mt_lora", "task": "LaMP-2M",
                       "comparable_on": json.dumps({k: flat[k] for k in keys}, sort_keys=True, default=str)}.items():
        client.log_param(old.info.run_id, key, value)
    client.log_metric(old.info.run_id, "p2p/accuracy", 0.5)
    assert {r.method: r.metrics for r in collect_rows(cfg, tmp_path)}["mt_lora"] == {"p2p/accuracy": 0.5}
