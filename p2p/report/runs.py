"""Evaluation results of earlier pipeline runs, read back from MLflow, for the ablation tables and figures.

Every `dvc exp run -S <ablation param>=...` logs its evaluate stage to MLflow; the report stage collects those runs
(same preset and data, any value of the ablation params) so Tables 4-5 and Figs. 3 and 6 fill in as experiments run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The params that define an ablation (Tables 4-5, Figs. 3 and 6); every evaluate child run records them.
ABLATION_PARAMS = ("profile.variant", "model.embedder", "model.embedder_kind", "profile.retrieval_k",
                   "evaluate.retrieval_k", "train.user_fraction", "train.cluster_fraction")


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


def _data_id(config: Any) -> str:
    """What a result's numbers are comparable on: the data settings and the base model."""
    flat = config.flat()
    keys = sorted(k for k in flat if k.startswith("data.") and not k.endswith("_dir")) + ["model.base_llm"]
    return json.dumps({k: flat[k] for k in keys}, sort_keys=True, default=str)


def result_params(config: Any) -> dict[str, str]:
    """Params of every evaluate result run: the ablation params and what makes two runs comparable."""
    flat = config.flat()
    return {**{name: str(flat[name]) for name in ABLATION_PARAMS}, "comparable_on": _data_id(config)}


def collect_rows(config: Any, root: Path) -> list[EvalRow]:
    """Every evaluate result of this preset in the MLflow store that ran on the same data and base model."""
    from p2p.tracking import experiment_name, tracking_uri

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(config, root))
    wanted = _data_id(config)
    rows = []
    for split in config.evaluate.splits:
        experiment = client.get_experiment_by_name(experiment_name(config, split))
        if experiment is None:
            continue
        for run in client.search_runs([experiment.experiment_id], "tags.stage = 'evaluate'", max_results=50000):
            params = run.data.params
            if params.get("comparable_on") != wanted or "method" not in params:
                continue
            rows.append(EvalRow(method=params["method"], task=params["task"], split=split,
                                params={name: params.get(name, "") for name in ABLATION_PARAMS},
                                metrics=dict(run.data.metrics), run_id=run.info.run_id,
                                start_time=run.info.start_time or 0))
    return rows
