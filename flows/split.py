"""Stage `split`: random and OOD user splits per task under data/splits, with the split report in reports/splits."""

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from flows import ROOT, publish, run_name, run_stage
from p2p.config import Config, load_config
from p2p.layout import Layout
from p2p.stages import split
from p2p.tracking import stage_run


@task(name="split-task", cache_policy=NONE, task_run_name="split {dataset}/{task_id}")
def split_task(dataset: str, task_id: str, cfg: Config) -> dict:
    report = split.split_task(dataset, task_id, cfg, ROOT)
    sim = report["similarity"]["ood"]
    get_run_logger().info("%s/%s: k=%d, sizes %s, OOD test->train %.3f vs train->train %.3f", dataset, task_id,
                          report["k"], report["sizes"], sim["test_to_train"] or float("nan"),
                          sim["train_to_train"] or float("nan"))
    return report


@flow(name="split", flow_run_name=run_name("split"))
def split_flow(preset: str | None = None) -> None:
    cfg = load_config(ROOT / "params.yaml", preset)
    with stage_run("split", cfg, root=ROOT) as run:
        reports = [split_task(dataset, task_id, cfg) for dataset, task_id in cfg.data.tasks()]
        out = Layout(cfg, ROOT).report("splits")
        split.write_split_reports(reports, out)
        run.log_artifact(out, "splits")
        publish(out / "summary.md", "split-summary")
        for rep in reports:
            run.log_metrics(split.split_metrics(rep), prefix=f"{rep['dataset']}/{rep['task']}/")


if __name__ == "__main__":
    run_stage(split_flow)
