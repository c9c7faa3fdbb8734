"""Stage `fetch`: generate the embedded benchmark under data/raw/synth (real data are DVC-tracked inputs)."""

from prefect import flow, get_run_logger

from flows import ROOT, run_name, run_stage
from p2p.config import load_config
from p2p.stages.fetch import generate_benchmark
from p2p.tracking import stage_run


@flow(name="fetch", flow_run_name=run_name("fetch"))
def fetch_flow(preset: str | None = None) -> None:
    cfg = load_config(ROOT / "params.yaml", preset)
    with stage_run("fetch", cfg, root=ROOT) as run:
        tasks = generate_benchmark(cfg, ROOT)
        logger = get_run_logger()
        logger.info("synth: %d tasks generated", len(tasks))
        for dataset in sorted({source.dataset for source in cfg.data.sources} - {"synth"}):
            logger.info("%s: an input under %s/%s, read by the prepare stage (get it with `p2p data fetch %s`, "
                        "then `dvc add` the folder)", dataset, cfg.data.raw_dir, dataset, dataset)
        run.log_metrics({"synth_tasks": len(tasks)})


if __name__ == "__main__":
    run_stage(fetch_flow)
