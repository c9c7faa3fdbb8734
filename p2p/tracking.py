"""MLflow layout of the pipeline: experiments per (preset, split), a parent run per pipeline run, child runs.

- Experiment `<tracking.experiment>/<preset>`: per pipeline run one parent run (`pipeline-<key>`) whose children
  are the stage runs (fetch ... report), each with the whole resolved config as params.
- Experiment `<tracking.experiment>/<preset>/<split>` (random_test, ood_test): per pipeline run one parent run whose
  children are the method x task results of that split (`<method>/<task>`, stage evaluate or judge) with the same
  metric keys, so MLflow's compare view lines methods up.

A pipeline run is named by `P2P_PIPELINE_RUN` when set (the Prefect pipeline flow sets it to its flow-run id);
otherwise by a hash of the resolved config and git commit, so the stages of one `dvc repro` share a parent. Every
run is tagged with the git commit, the DVC stage (and experiment) it ran under and the Prefect flow-run id.
The store is `tracking.uri` (a relative sqlite path is resolved against the project root, so every stage writes to
the same file wherever it runs from); MLFLOW_TRACKING_URI overrides it, e.g. to log to a shared server.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from p2p.config import Config
from p2p.report.runs import ABLATION_PARAMS, EvalRow

_SQLITE = "sqlite:///"
PIPELINE_RUN_ENV = "P2P_PIPELINE_RUN"
PARENT_TAG = "mlflow.parentRunId"


def resolve_uri(uri: str, root: Path) -> str:
    """Make a relative `sqlite:///file.db` absolute under `root`; leave other URIs alone."""
    if uri.startswith(_SQLITE) and not uri[len(_SQLITE):].startswith("/"):
        return _SQLITE + str((root / uri[len(_SQLITE):]).resolve())
    return uri


def tracking_uri(config: Config, root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or resolve_uri(config.tracking.uri, root)


def experiment_name(config: Config, split: str | None = None) -> str:
    """`p2p/<preset>` for stage runs, `p2p/<preset>/<split>` for the method x task results of one split."""
    return f"{config.tracking.experiment}/{config.preset}" + (f"/{split}" if split else "")


def _git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def pipeline_key(config: Config, commit: str | None) -> str:
    """The pipeline run a stage belongs to: `P2P_PIPELINE_RUN`, else a hash of the resolved config and commit."""
    explicit = os.environ.get(PIPELINE_RUN_ENV)
    if explicit:
        return explicit
    blob = json.dumps(config.flat(), sort_keys=True, default=str) + (commit or "")
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _prefect_flow_run_id() -> str | None:
    try:
        from prefect.runtime import flow_run
    except ImportError:
        return None
    run_id = flow_run.id
    return str(run_id) if run_id else None


def context_tags(stage: str, config: Config, root: Path) -> dict[str, str]:
    """Tags every run of this stage execution carries: what ran, where it came from, which pipeline run."""
    commit = _git_commit(root)
    tags = {"stage": stage, "preset": config.preset, "pipeline_run": pipeline_key(config, commit),
            "dvc_stage": os.environ.get("DVC_STAGE", "")}
    optional = {"git_commit": commit, "dvc_experiment": os.environ.get("DVC_EXP_NAME"),
                "prefect_flow_run_id": _prefect_flow_run_id()}
    tags.update({k: v for k, v in optional.items() if v})
    return tags


def _experiment_id(client: Any, name: str, root: Path, uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # Artifacts beside the database, not in whatever directory the stage happened to run from.
    location = (root / "mlartifacts").as_uri() if uri.startswith(_SQLITE) else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by a concurrent stage
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _parent_run_id(client: Any, experiment_id: str, tags: Mapping[str, str]) -> str:
    """The pipeline run's parent in this experiment, created by the first stage that needs it."""
    key = tags["pipeline_run"]
    found = client.search_runs([experiment_id], f"tags.kind = 'pipeline' and tags.pipeline_run = '{key}'",
                               max_results=1)
    if found:
        return found[0].info.run_id
    keep = ("preset", "pipeline_run", "git_commit", "dvc_experiment")
    run = client.create_run(experiment_id, run_name=f"pipeline-{key}",
                            tags={"kind": "pipeline", **{k: tags[k] for k in keep if k in tags}})
    return run.info.run_id


def _numeric(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


class StageRun:
    """The active MLflow run of one stage; thin wrappers that keep metric names flat and values numeric."""

    def __init__(self, mlflow_module: Any, run: Any, config: Config, root: Path, uri: str, tags: dict[str, str]):
        self._mlflow, self.run = mlflow_module, run
        self._config, self._root, self._uri, self._tags = config, root, uri, tags
        self._client = mlflow_module.MlflowClient(tracking_uri=uri)

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def log_metrics(self, metrics: Mapping[str, Any], prefix: str = "", step: int | None = None) -> None:
        numeric = _numeric(metrics, prefix)
        if numeric:
            self._mlflow.log_metrics(numeric, step=step)

    def run_tag(self, key: str, value: str) -> None:
        self._mlflow.set_tag(key, value[:5000])

    def log_result(self, split: str, name: str, metrics: Mapping[str, Any], params: Mapping[str, Any]) -> str:
        """One method x task result as a child of this pipeline run's parent in the `<preset>/<split>` experiment.
        Metric keys are the same for every method of a task, so MLflow's compare view lines them up."""
        from mlflow.entities import Metric, Param

        experiment_id = _experiment_id(self._client, experiment_name(self._config, split), self._root, self._uri)
        parent = _parent_run_id(self._client, experiment_id, self._tags)
        child = self._client.create_run(experiment_id, run_name=name,
                                        tags={**self._tags, PARENT_TAG: parent, "split": split,
                                              "stage_run_id": self.run_id})
        millis = child.info.start_time
        self._client.log_batch(
            child.info.run_id,
            metrics=[Metric(k, v, millis, 0) for k, v in _numeric(metrics).items()],
            params=[Param(k, str(v)[:500]) for k, v in params.items()])
        self._client.set_terminated(child.info.run_id, "FINISHED")
        return child.info.run_id

    def log_torch_model(self, model: Any, name: str, code_dir: Path) -> None:
        """An MLflow model (pytorch flavor) of `model`, with the package that defines its class, so
        `mlflow.pytorch.load_model("runs:/<id>/<name>")` works in a checkout that lacks it. Requirements are given,
        not inferred (inference imports the model in a subprocess: slow, and it may look for a network)."""
        import torch

        self._mlflow.pytorch.log_model(model, name=name, code_paths=[str(code_dir)], serialization_format="pickle",
                                       pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path)
        elif path.is_file():
            self._mlflow.log_artifact(str(path), artifact_path)


@contextlib.contextmanager
def stage_run(stage: str, config: Config, root: str | os.PathLike = ".", **tags: str) -> Iterator[StageRun]:
    """Open the stage's MLflow run as a child of its pipeline run, log the whole resolved config as params, and tag
    it (preset, git commit, DVC stage, Prefect flow run) so runs of different presets and versions stay comparable."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    root = Path(root).resolve()
    uri = tracking_uri(config, root)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    run_tags = {**context_tags(stage, config, root), **tags}
    experiment_id = _experiment_id(client, experiment_name(config), root, uri)
    parent = _parent_run_id(client, experiment_id, run_tags)
    with mlflow.start_run(experiment_id=experiment_id, run_name=stage, parent_run_id=parent, tags=run_tags) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in config.flat().items()})
        yield StageRun(mlflow, run, config, root, uri, run_tags)
    client.set_terminated(parent, "FINISHED")


# --- evaluate results, as the report stage reads them back -----------------------------------------------------


def _data_id(config: Config) -> str:
    """What a result's numbers are comparable on: the data settings and the base model."""
    flat = config.flat()
    keys = sorted(k for k in flat if k.startswith("data.") and not k.endswith("_dir")) + ["model.base_llm"]
    return json.dumps({k: flat[k] for k in keys}, sort_keys=True, default=str)


def result_params(config: Config) -> dict[str, str]:
    """Params of every evaluate result run: the ablation params and what makes two runs comparable."""
    flat = config.flat()
    return {**{name: str(flat[name]) for name in ABLATION_PARAMS}, "comparable_on": _data_id(config)}


def collect_rows(config: Config, root: Path) -> list[EvalRow]:
    """Every evaluate result of this preset in the MLflow store that ran on the same data and base model."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(config, root))
    wanted = _data_id(config)
    rows = []
    for split in config.evaluate.splits:
        experiment = client.get_experiment_by_name(experiment_name(config, split))
        if experiment is None:
            continue
        for run in client.search_runs([experiment.experiment_id], "tags.stage = 'evaluate'", max_results=50000):
            params = run.data.params
            if params.get("comparable_on") != wanted or "method" not in params:
                continue
            rows.append(EvalRow(method=params["method"], task=params["task"], split=split,
                                params={name: params.get(name, "") for name in ABLATION_PARAMS},
                                metrics=dict(run.data.metrics), run_id=run.info.run_id,
                                start_time=run.info.start_time or 0))
    return rows
