"""Stage `prepare`: convert each task's raw files into canonical per-user JSONL under data/prepared."""

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from flows import ROOT, run_name, run_stage
from p2p.config import Config, load_config
from p2p.stages import prepare
from p2p.tracking import stage_run


@task(name="prepare-task", cache_policy=NONE, task_run_name="prepare {dataset}/{task_id}")
def prepare_task(dataset: str, task_id: str, cfg: Config) -> dict:
    stats = prepare.prepare_task(dataset, task_id, cfg, ROOT)
    used = ", ".join(f"{key.removeprefix('queries_')} {n}" for key, n in stats.items()
                     if key.startswith("queries_") and key != "queries_without_gold")
    get_run_logger().info("%s/%s: %d users, %d queries (%s; %d without a gold, left out)", dataset, task_id,
                          stats["users"], stats["queries"], used or "one split", stats["queries_without_gold"])
    return stats


@flow(name="prepare", flow_run_name=run_name("prepare"))
def prepare_flow(preset: str | None = None) -> None:
    cfg = load_config(ROOT / "params.yaml", preset)
    with stage_run("prepare", cfg, root=ROOT) as run:
        for dataset, task_id in cfg.data.tasks():
            run.log_metrics(prepare_task(dataset, task_id, cfg), prefix=f"{dataset}/{task_id}/")


if __name__ == "__main__":
    run_stage(prepare_flow)
