"""Stage `oppu`: a fresh LoRA per test user, trained on that user's history only (One PEFT Per User).

Each group of `oppu.parallel_users` users (trained together, one LoRA per row) is its own Prefect task
(`train-users`), so the UI shows every group's training and a failure names its users; a user's finished adapter is
kept under train.checkpoints, so a rerun after a failure trains only the rest.
Writes data/oppu/<dataset>/<task>.safetensors (the adapters stacked in user order) and .json (users, seconds and
steps per user); MLflow gets the seconds per user of every task.
"""

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from flows import ROOT, run_name, run_stage
from p2p.config import load_config
from p2p.stages import oppu
from p2p.tracking import stage_run


@flow(name="oppu", flow_run_name=run_name("oppu"))
def oppu_flow(preset: str | None = None) -> None:
    cfg = load_config(ROOT / "params.yaml", preset)
    with stage_run("oppu", cfg, root=ROOT) as run:
        def as_task(train_group):
            return task(train_group, name="train-users", cache_policy=NONE, task_run_name="oppu-{name}")

        def on_task(dataset: str, task_id: str, stats: dict) -> None:
            get_run_logger().info("%s/%s: %d users, %.2f s per user", dataset, task_id, stats["users"],
                                  stats["seconds_per_user"])
            run.log_metrics(stats, prefix=f"{dataset}/{task_id}/")

        oppu.oppu_stage(cfg, ROOT, wrap=as_task, on_task=on_task)


if __name__ == "__main__":
    run_stage(oppu_flow)
