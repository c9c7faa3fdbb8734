"""Stage `evaluate`: every method x task x split scored alike from the `evaluate_<method>` stages' answers.

No model runs here (p2p.stages.evaluate.aggregate_stage). Writes data/eval/reference (golds and the synthetic
benchmark's reference rules) and reports/eval (metrics.json, comparisons.json and unseen.json for DVC, summary.md,
history_buckets.csv). MLflow gets one run per method x task in the `<preset>/<split>` experiment (p2p.tracking) with
the same metric keys, the task's headline and P2P's paired difference from the method first (each interval as
`<metric>_ci95_lo` and `_hi`), so the compare view lines them up.
"""

from prefect import flow

from flows import ROOT, publish, run_name, run_stage
from p2p import evaluation
from p2p.config import load_config
from p2p.layout import Layout
from p2p.stages import evaluate
from p2p.tracking import result_metrics, result_params, stage_run


@flow(name="evaluate", flow_run_name=run_name("evaluate"))
def evaluate_flow(preset: str | None = None) -> None:
    cfg = load_config(ROOT / "params.yaml", preset)
    with stage_run("evaluate", cfg, root=ROOT) as run:
        metrics, comparisons, buckets, unseen = evaluate.aggregate_stage(cfg, ROOT)
        for split, by_task in metrics.items():
            for task_id, by_method in by_task.items():
                for method, scores in by_method.items():
                    # floats only, the same keys in every run: None -> NaN, each [lo, hi] -> `_ci95_lo`, `_ci95_hi`
                    found = result_metrics(task_id, method, evaluation.flat_scores(scores),
                                           comparisons[split].get(task_id))
                    run.log_result(split, f"{method}/{task_id}", found,
                                   {"method": method, "task": task_id, "split": split, **result_params(cfg)})
        paths = Layout(cfg, ROOT)
        evaluate.write_reports(metrics, comparisons, buckets, unseen, cfg.preset, paths.report("eval"))
        run.log_artifact(paths.report("eval"), "reports")
        publish(paths.report("eval") / "summary.md", "evaluate-summary")


if __name__ == "__main__":
    run_stage(evaluate_flow)
