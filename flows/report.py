"""Stage `report`: the paper's Tables 1-5 (markdown + CSV, the paper's values beside ours) and Figs. 3-6 (PNG).

Reads the earlier stages' reports and data plus every comparable evaluate run in MLflow (the ablation experiments
of Tables 4-5 and Figs. 3 and 6); writes reports/tables, reports/figures and the index reports/README.md.
"""

from prefect import flow

from flows import ROOT, publish, run_name, run_stage
from p2p.config import load_config
from p2p.layout import Layout
from p2p.stages import report as stage
from p2p.tracking import collect_rows, stage_run


@flow(name="report", flow_run_name=run_name("report"))
def report_flow(preset: str | None = None) -> None:
    cfg = load_config(ROOT / "params.yaml", preset)
    with stage_run("report", cfg, root=ROOT) as run:
        rows = collect_rows(cfg, ROOT)
        report = stage.report_stage(cfg, ROOT, rows)
        run.log_metrics(report.metrics)
        out = Layout(cfg, ROOT).reports
        run.log_artifact(out / "tables", "reports/tables")
        run.log_artifact(out / "figures", "reports/figures")
        run.log_artifact(out / "README.md", "reports")
        for table in ("table1", "table2"):  # every method on held-out users: random and OOD split
            publish(out / "tables" / f"{table}.md", f"report-{table}")


if __name__ == "__main__":
    run_stage(report_flow)
