"""Stage `fetch`: put every configured source's raw files under data/raw (synthetic benchmark or download)."""

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from flows import ROOT
from p2p.config import Config, SourceConfig, load_config
from p2p.stages.fetch import fetch_source as fetch
from p2p.tracking import stage_run


@task(name="fetch-source", cache_policy=NONE)
def fetch_source(source: SourceConfig, cfg: Config) -> int:
    paths = fetch(source, cfg, ROOT)
    get_run_logger().info("%s: %d raw files ready", source.dataset, len(paths))
    return len(paths)


@flow(name="fetch")
def fetch_flow(preset: str | None = None) -> None:
    cfg = load_config(ROOT / "params.yaml", preset)
    with stage_run("fetch", cfg, root=ROOT) as run:
        for source in cfg.data.sources:
            run.log_metrics({"files": fetch_source(source, cfg)}, prefix=f"{source.dataset}/")


if __name__ == "__main__":
    fetch_flow()
