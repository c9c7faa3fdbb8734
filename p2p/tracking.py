"""MLflow helpers shared by every stage: one run per stage execution, with params, metrics and artifacts.

The store is the SQLite database named by `tracking.uri` in params.yaml (a relative sqlite path is resolved
against the project root, so every stage writes to the same file wherever it runs from); the standard
MLFLOW_TRACKING_URI environment variable overrides it, e.g. to log to a shared server.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from p2p.config import Config

_SQLITE = "sqlite:///"


def resolve_uri(uri: str, root: Path) -> str:
    """Make a relative `sqlite:///file.db` absolute under `root`; leave other URIs alone."""
    if uri.startswith(_SQLITE) and not uri[len(_SQLITE):].startswith("/"):
        return _SQLITE + str((root / uri[len(_SQLITE):]).resolve())
    return uri


def _git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


class StageRun:
    """The active MLflow run of one stage; thin wrappers that keep metric names flat and values numeric."""

    def __init__(self, mlflow_module: Any, run: Any):
        self._mlflow, self.run = mlflow_module, run

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def log_metrics(self, metrics: Mapping[str, Any], prefix: str = "", step: int | None = None) -> None:
        numeric = {f"{prefix}{k}": float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numeric:
            self._mlflow.log_metrics(numeric, step=step)

    def run_tag(self, key: str, value: str) -> None:
        self._mlflow.set_tag(key, value[:5000])

    def log_child(self, name: str, metrics: Mapping[str, Any], params: Mapping[str, Any],
                  tags: Mapping[str, str] | None = None) -> None:
        """One nested run (e.g. one method x task x split of the evaluate stage) with its own params and metrics,
        so MLflow's compare view lines such runs up by the same metric keys."""
        inherited = {k: v for k, v in self.run.data.tags.items() if not k.startswith("mlflow.")}
        with self._mlflow.start_run(run_name=name, nested=True, tags={**inherited, **(tags or {})}):
            self._mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            self.log_metrics(metrics)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path)
        elif path.is_file():
            self._mlflow.log_artifact(str(path), artifact_path)


@contextlib.contextmanager
def stage_run(stage: str, config: Config, root: str | os.PathLike = ".", **tags: str) -> Iterator[StageRun]:
    """Open an MLflow run named after the stage, log the whole resolved config as params, and tag it with the
    preset and git commit so runs of different presets and versions stay comparable."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    root = Path(root).resolve()
    uri = os.environ.get("MLFLOW_TRACKING_URI") or resolve_uri(config.tracking.uri, root)
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(config.tracking.experiment) is None:
        # Artifacts beside the database, not in whatever directory the stage happened to run from.
        location = (root / "mlartifacts").as_uri() if uri.startswith(_SQLITE) else None
        mlflow.create_experiment(config.tracking.experiment, artifact_location=location)
    mlflow.set_experiment(config.tracking.experiment)
    run_tags = {"stage": stage, "preset": config.preset, **tags}
    commit = _git_commit(root)
    if commit:
        run_tags["git_commit"] = commit
    with mlflow.start_run(run_name=stage, tags=run_tags) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in config.flat().items()})
        yield StageRun(mlflow, run)
