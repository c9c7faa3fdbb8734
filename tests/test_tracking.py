"""The MLflow helper against a real SQLite store in a temporary directory."""

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
    parent = runs.pop(next(name for name in runs if name.startswith("pipeline-")))
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
