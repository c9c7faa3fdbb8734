"""Any stage under Prefect and MLflow: `python -m flows.stage NAME`, dvc.yaml's command of every stage.

The stage's recipe (p2p.stages, `run(cfg, root, rec)`) does the work; this shell gives it a flow run named
`<stage> <preset> <pipeline run>`, an MLflow stage run (p2p.tracking) and a recorder that sends what the recipe
reports to both: metrics and artifacts to MLflow, each step as a Prefect task run, summaries as markdown artifacts,
progress as a progress artifact. A stage that trains on several processes (`processes(cfg) > 1`) starts itself
again under torchrun; rank 0 runs the flow, the other ranks only the recipe.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from prefect import Flow, flow, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NONE

from flows import ROOT, publish, run_name, run_stage
from p2p.config import load_config
from p2p.failures import EXPECTED, message
from p2p.stages import recipe as stage_recipe
from p2p.stages.recorder import Recorder
from p2p.tracking import StageRun, stage_run

T = TypeVar("T")


class FlowRecorder(Recorder):
    """Sends a recipe's reports to its MLflow stage run and its Prefect flow run."""

    def __init__(self, run: StageRun, stage: str):
        self.run, self.stage = run, stage
        self._progress: Any = None

    def log_metrics(self, metrics: Mapping[str, Any], prefix: str = "", step: int | None = None) -> None:
        self.run.log_metrics(metrics, prefix=prefix, step=step)

    def log_result(self, split: str, name: str, metrics: Mapping[str, Any], params: Mapping[str, Any]) -> None:
        self.run.log_result(split, name, metrics, params)

    def run_tag(self, key: str, value: str) -> None:
        self.run.run_tag(key, value)

    def log_artifact(self, path: Path, name: str | None = None) -> None:
        self.run.log_artifact(path, name)

    def log_torch_model(self, model: Any, name: str, code_dir: Path) -> None:
        self.run.log_torch_model(model, name, code_dir)

    def publish(self, report: Path, key: str) -> None:
        publish(report, key)

    def progress(self, percent: float) -> None:
        if self._progress is None:
            self._progress = create_progress_artifact(0.0, key=f"{self.stage.replace('_', '-')}-progress",
                                                      description="share of the stage's work done, %")
        update_progress_artifact(self._progress, percent)

    def step(self, fn: Callable[..., T], name: str, label: str, *args: Any, **kwargs: Any) -> T:
        return task(fn, name=name, cache_policy=NONE, task_run_name=lambda: label)(*args, **kwargs)


@cache
def stage_flow(name: str) -> Flow:
    """Stage `name` as a Prefect flow of one parameter, `preset` (default: params.yaml's)."""
    recipe, args, _ = stage_recipe(name)

    def run(preset: str | None = None) -> None:
        cfg = load_config(ROOT / "params.yaml", preset)
        with stage_run(name, cfg, root=ROOT) as mlflow_run:
            recipe(cfg, ROOT, FlowRecorder(mlflow_run, name), **args)

    return flow(run, name=name, flow_run_name=run_name(name))


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit("usage: python -m flows.stage STAGE")
    name = argv[0]
    try:  # what fails here fails before the flow: one line too, as `run_stage` says a failure inside it
        recipe, args, module = stage_recipe(name)
        cfg = load_config(ROOT / "params.yaml")
    except EXPECTED as err:
        print(f"error: stage '{name}': {message(err)}", file=sys.stderr)
        raise SystemExit(2) from None
    processes = getattr(module, "processes", lambda cfg: 1)(cfg)
    if processes > 1 and "WORLD_SIZE" not in os.environ:
        os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                  f"--nproc_per_node={processes}", "-m", "flows.stage", name])
    if os.environ.get("RANK", "0") != "0":  # a helper rank: the recipe's work, no flow run, nothing reported
        recipe(cfg, ROOT, Recorder(), **args)
        return
    run_stage(stage_flow(name))


if __name__ == "__main__":
    main(sys.argv[1:])
