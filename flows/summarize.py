"""Stage `summarize`: LLM profile summaries of every user (cached; a rerun generates only what is missing)."""

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from flows import ROOT, run_name, run_stage
from p2p.config import Config, load_config
from p2p.models.generation import Backend
from p2p.profiles.summaries import CountTokens
from p2p.stages import summarize
from p2p.stages.common import generation_backend
from p2p.tracking import stage_run


@task(name="summarize-task", cache_policy=NONE, task_run_name="summarize {dataset}/{task_id}")
def summarize_task(dataset: str, task_id: str, cfg: Config, backend: Backend, count_tokens: CountTokens) -> dict:
    stats = summarize.summarize_task(dataset, task_id, cfg, ROOT, backend, count_tokens)
    get_run_logger().info(
        "%s/%s: %d users: %d generated, %d from the cache, %d pre-existing profiles; %.0f completion tokens in "
        "%.1f s (%.1f tokens/s)", dataset, task_id, stats["users"], stats["generated"], stats["cache_hits"],
        stats["given_profiles"], stats["completion_tokens"], stats["generation_seconds"],
        stats["completion_tokens_per_second"])
    return stats


@flow(name="summarize", flow_run_name=run_name("summarize"))
def summarize_flow(preset: str | None = None) -> None:
    cfg = load_config(ROOT / "params.yaml", preset)
    with stage_run("summarize", cfg, root=ROOT) as run:
        backend, count_tokens = generation_backend(cfg, ROOT)
        for dataset, task_id in cfg.data.tasks():
            stats = summarize_task(dataset, task_id, cfg, backend, count_tokens)
            run.log_metrics(stats, prefix=f"{dataset}/{task_id}/")


if __name__ == "__main__":
    run_stage(summarize_flow)
