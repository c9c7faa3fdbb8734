"""Stage `train`: the P2P hypernetwork on every task's train users, then a check on the OOD test users.

Writes data/p2p (hypernetwork.safetensors, p2p.json, train_history.json) and reports/p2p (metrics.json,
summary.md, loss.csv, loss.png; open-ended tasks are left to the judge stage). Every optimizer step's loss goes to
MLflow, and so do the final hypernetwork (files, and as an MLflow pytorch model) and one OOD test user's exported
PEFT adapter.
A killed run resumes from its newest checkpoint (train.checkpoints) when the stage runs again.

Several GPUs: `train.processes: N` (e.g. `dvc exp run -S train.processes=8`) makes this script start itself again
under `torchrun --standalone --nproc_per_node N`; `torchrun ... -m flows.train` or `accelerate launch -m
flows.train` work directly too. Every rank trains (p2p.hyper.distributed); rank 0 runs the Prefect flow, logs to
MLflow and writes the outputs.
"""

import os
import sys
import tempfile
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NONE

from flows import ROOT, publish, run_name, run_stage
from p2p.config import Config, load_config
from p2p.hyper.distributed import from_environment, shutdown
from p2p.hyper.personalize import Personalizer
from p2p.layout import Layout, TaskData
from p2p.stages import train
from p2p.stages.train import CHECK_SPLIT
from p2p.tasks import get_task, headline_metric
from p2p.tracking import StageRun, stage_run


@task(name="evaluate-task", cache_policy=NONE, task_run_name="check {data.task}")
def evaluate_task(personalizer: Personalizer, data: TaskData, cfg: Config) -> dict:
    scores = train.check_task(personalizer, data, cfg, ROOT)
    key = headline_metric(data.task)
    get_run_logger().info("%s (%s, %s): %s", data.task, CHECK_SPLIT, key,
                          ", ".join(f"{name} {s.get(key)}" for name, s in scores.items()))
    return scores


@flow(name="train", flow_run_name=run_name("train"))
def train_flow(preset: str | None = None) -> None:
    cfg = load_config(ROOT / "params.yaml", preset)
    with stage_run("train", cfg, root=ROOT) as run:
        progress = create_progress_artifact(0.0, key="train-progress", description="optimizer steps done, %")

        def on_step(step: int, metrics: dict) -> None:  # the loss to MLflow, the progress to the Prefect dashboard
            run.log_metrics(metrics, step=step)
            update_progress_artifact(progress, 100.0 * step / cfg.train.steps)

        personalizer, result, tasks = train.train_stage(cfg, ROOT, on_step=on_step, dist=from_environment())
        update_progress_artifact(progress, 100.0)  # also when it resumed from its last checkpoint: no step left
        paths = Layout(cfg, ROOT)
        run.log_artifact(paths.hypernetwork, "hypernetwork")
        run.log_torch_model(personalizer.hyper, "hypernetwork-model", ROOT / "p2p")
        _log_example_adapter(run, personalizer, tasks)
        results = {}
        for data in tasks if cfg.train.check else []:
            if get_task(data.task).kind == "open_ended":
                get_run_logger().info("%s is open-ended: the judge stage scores it, not this check", data.task)
            else:
                results[data.task] = evaluate_task(personalizer, data, cfg)
        reports = paths.report("p2p")
        train.write_reports(results, result.history, reports)
        run.log_metrics(train.flat_metrics(results), prefix=f"{CHECK_SPLIT}/")
        run.log_metrics({"train_seconds": result.seconds, "resumed_from_step": result.resumed_from})
        run.log_artifact(reports, "reports")
        publish(reports / "summary.md", "train-summary")


def _log_example_adapter(run: StageRun, personalizer: Personalizer, tasks: list[TaskData]) -> None:
    """One OOD test user's generated adapter as a PEFT directory: what a deployment would ship."""
    data = next((d for d in tasks if d.split.get(CHECK_SPLIT)), None)
    if data is None:
        return
    user = sorted(data.split[CHECK_SPLIT])[0]
    with tempfile.TemporaryDirectory() as tmp:
        out = personalizer.export(Path(tmp) / f"{data.task}-{user}", data.users[user], data.task)
        run.log_artifact(out, f"adapter/{data.task}-{user}")


def main() -> None:
    """The stage's entry point: alone, under a launcher, or relaunching itself under torchrun."""
    cfg = load_config(ROOT / "params.yaml")
    if cfg.train.processes > 1 and "WORLD_SIZE" not in os.environ:
        os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                  f"--nproc_per_node={cfg.train.processes}", "-m", "flows.train"])
    dist = from_environment()
    try:
        if dist.is_main:
            run_stage(train_flow)
        else:
            train.train_stage(cfg, ROOT, dist=dist)
    finally:
        shutdown(dist)


if __name__ == "__main__":
    main()
