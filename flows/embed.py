"""Stage `embed`: profile embeddings of every user and every query (cached by model and text)."""

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from flows import ROOT, run_name, run_stage
from p2p.config import Config, load_config
from p2p.profiles.embeddings import Embedder
from p2p.stages import embed
from p2p.stages.common import corpus_embedder
from p2p.tracking import stage_run


@task(name="embed-task", cache_policy=NONE, task_run_name="embed {dataset}/{task_id}")
def embed_task(dataset: str, task_id: str, cfg: Config, embedder: Embedder) -> dict:
    stats = embed.embed_task(dataset, task_id, cfg, ROOT, embedder)
    get_run_logger().info("%s/%s: %d texts: %d embedded, %d from the cache; %.1f texts/s", dataset, task_id,
                          stats["texts"], stats["embedded"], stats["cache_hits"], stats["texts_per_second"])
    return stats


@flow(name="embed", flow_run_name=run_name("embed"))
def embed_flow(preset: str | None = None) -> None:
    cfg = load_config(ROOT / "params.yaml", preset)
    with stage_run("embed", cfg, root=ROOT) as run:
        embedder = corpus_embedder(cfg, ROOT)
        for dataset, task_id in cfg.data.tasks():
            run.log_metrics(embed_task(dataset, task_id, cfg, embedder), prefix=f"{dataset}/{task_id}/")


if __name__ == "__main__":
    run_stage(embed_flow)
