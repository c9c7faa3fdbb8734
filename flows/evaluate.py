"""Stage `evaluate`: every method x task x split on the same test queries (p2p.evaluation).

Writes data/eval/<split>/<dataset>/<task>/<method>.json (official LaMP JSON predictions, plus golds.json) and
reports/eval (metrics.json and comparisons.json for DVC, summary.md, history_buckets.csv). MLflow gets one run per
method x task in the `<preset>/<split>` experiment (p2p.tracking) with the same metric keys (each interval as
`<metric>_ci95_lo` and `_hi`), so the compare view lines them up, and the predictions as artifacts.
"""

from prefect import flow, task
from prefect.cache_policies import NONE

from flows import ROOT, run_stage
from p2p import evaluation
from p2p.config import load_config
from p2p.layout import Layout
from p2p.stages import evaluate
from p2p.tracking import result_params, stage_run


@task(name="evaluate-method", cache_policy=NONE, task_run_name="{method}-{split}-{inputs.data.task}")
def run_method(method, models, inputs, split, settings) -> evaluation.MethodRun:
    return evaluation.run_method(method, models, inputs, split, settings)


@flow(name="evaluate")
def evaluate_flow(preset: str | None = None) -> None:
    cfg = load_config(ROOT / "params.yaml", preset)
    with stage_run("evaluate", cfg, root=ROOT) as run:
        def log(split: str, task_id: str, method: str, scores: dict) -> None:
            # floats only, the same keys in every run: None -> NaN, each [lo, hi] interval -> `_ci95_lo`, `_ci95_hi`
            run.log_result(split, f"{method}/{task_id}", evaluation.flat_scores(scores),
                           {"method": method, "task": task_id, "split": split, **result_params(cfg)})

        metrics, comparisons, buckets = evaluate.evaluate_stage(cfg, ROOT, on_result=log, run=run_method)
        paths = Layout(cfg, ROOT)
        evaluate.write_reports(metrics, comparisons, buckets, cfg.preset, paths.report("eval"))
        run.log_artifact(paths.report("eval"), "reports")
        run.log_artifact(paths.eval, "predictions")


if __name__ == "__main__":
    run_stage(evaluate_flow)
