"""Stage `evaluate_<method>`: one method on every task's test queries (p2p.stages.evaluate.evaluate_method_stage).

`python -m flows.evaluate_method METHOD`. Writes data/eval/<method>/<split>/<dataset>/<task>.json (official LaMP
JSON predictions) and `.run.json` beside it (seconds, choice-scored labels); the `evaluate` stage scores them.
"""

import sys

from prefect import flow, task
from prefect.cache_policies import NONE

from flows import ROOT, run_name, run_stage
from p2p import evaluation
from p2p.config import load_config
from p2p.stages import evaluate
from p2p.tracking import stage_run


@task(name="evaluate-method", cache_policy=NONE, task_run_name="{method} {split} {inputs.data.task}")
def run_method(method, models, inputs, split, settings) -> evaluation.MethodRun:
    return evaluation.run_method(method, models, inputs, split, settings)


@flow(name="evaluate-method", flow_run_name=run_name("evaluate_{method}"))
def evaluate_method_flow(method: str, preset: str | None = None) -> None:
    cfg = load_config(ROOT / "params.yaml", preset)
    with stage_run(f"evaluate_{method}", cfg, root=ROOT) as run:
        out = evaluate.evaluate_method_stage(cfg, ROOT, method, run=run_method)
        run.log_artifact(out, "predictions")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m flows.evaluate_method METHOD")
    run_stage(evaluate_method_flow, method=sys.argv[1])
