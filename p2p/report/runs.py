"""Evaluation results of earlier pipeline runs, as the ablation tables and figures read them.

Every `dvc exp run -S <ablation param>=...` logs its evaluate stage to MLflow; the report stage collects those runs
(p2p.tracking.collect_rows: same preset and data, any value of the ablation params) so Tables 4-5 and Figs. 3 and 6
fill in as experiments run.
"""

from __future__ import annotations

from dataclasses import dataclass

# The params that define an ablation (Tables 4-5, Figs. 3 and 6); every evaluate child run records them.
ABLATION_PARAMS = ("profile.variant", "model.embedder", "model.embedder_kind", "profile.retrieval_k",
                   "evaluate.retrieval_k", "train.user_fraction", "train.cluster_fraction", "train.max_users",
                   "train.seed")


@dataclass(frozen=True)
class EvalRow:
    """One method x task x split result of one evaluate run."""

    method: str
    task: str                 # "<dataset>/<task id>", e.g. "synth/LaMP-2M" (the keys of reports/eval/metrics.json)
    split: str                # random_test | ood_test
    params: dict[str, str]    # ABLATION_PARAMS -> value as logged (strings, e.g. "full", "2", "1.0")
    metrics: dict[str, float] # the keys of reports/eval/metrics.json, e.g. "official/accuracy", "ms_per_instance"
    run_id: str = ""
    start_time: int = 0       # ms since the epoch; the newest run wins when two share the same params
    experiment_id: str = ""   # the MLflow experiment of the run (its compare view needs it)
