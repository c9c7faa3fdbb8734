"""Stage `judge`: the LLM judge scores the evaluate stage's answers on the open-ended tasks (Table 3).

Judge endpoint from params.yaml `judge` (key from the environment variable it names); without one a local model
judges and the report says so. Scores are cached per (prompt, judge model), so a rerun costs nothing.
"""

from prefect import flow

from flows import ROOT, publish, run_name, run_stage
from p2p.config import load_config
from p2p.layout import Layout
from p2p.stages import judge as stage
from p2p.tracking import result_params, stage_run


@flow(name="judge", flow_run_name=run_name("judge"))
def judge_flow(preset: str | None = None) -> None:
    cfg = load_config(ROOT / "params.yaml", preset)
    with stage_run("judge", cfg, root=ROOT) as run:
        metrics, label = stage.judge_stage(cfg, ROOT)
        local = cfg.judge.base_url is None and any(metrics.values())  # a local model judged something
        reports = Layout(cfg, ROOT).report("judge")
        stage.write_reports(metrics, label, local, reports)
        for split, by_task in metrics.items():
            for task_id, by_method in by_task.items():
                for method, summary in by_method.items():
                    scores = {k: v for k, v in summary.items() if v is not None}
                    run.log_metrics(scores, prefix=f"{split}/{task_id}/{method}/")
                    run.log_result(split, f"{method}/{task_id}", {f"judge/{k}": v for k, v in scores.items()},
                                   {"method": method, "task": task_id, "split": split, "judge": label,
                                    **result_params(cfg)})
        run.run_tag("judge", label)
        run.log_artifact(reports, "reports")
        publish(reports / "summary.md", "judge-summary")


if __name__ == "__main__":
    run_stage(judge_flow)
