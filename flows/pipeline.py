"""The whole pipeline as one Prefect flow: every stage in DVC's order, as a subflow or through `dvc repro`.

- `pipeline_flow(preset=...)` runs the stage flows in this process as subflows of one flow run (the UI nests
  them); any preset, no DVC needed. Stages resume from their caches and checkpoints, so a rerun of unchanged
  settings costs little more than evaluation.
- `pipeline_flow(via_dvc=True)` runs each stage as `dvc repro --single-item <stage>`: DVC skips stages whose
  code, data and params are unchanged and keeps dvc.lock right. The preset is the one in params.yaml. This is what
  the scheduled deployment (flows/serve.py) runs.

Either way the stages' MLflow runs share one parent, keyed by this flow run (P2P_PIPELINE_RUN, tag `pipeline_run`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from flows import ROOT, run_stage
from flows.stage import stage_flow
from p2p.stages import STAGES as STAGE_LIST
from p2p.tracking import PIPELINE_RUN_ENV

STAGES = [stage.name for stage in STAGE_LIST]


@task(name="dvc-repro", cache_policy=NONE, retries=1, retry_delay_seconds=30, task_run_name="dvc-repro-{stage}")
def dvc_stage(stage: str) -> str:
    """One stage through DVC (skipped when up to date); the stage's own flow run reports to the same API."""
    dvc = Path(sys.executable).parent / "dvc"
    result = subprocess.run([str(dvc) if dvc.exists() else "dvc", "repro", "--single-item", stage], cwd=ROOT,
                            capture_output=True, text=True, env=os.environ.copy())
    logger = get_run_logger()
    for line in result.stdout.splitlines():
        logger.info("%s", line)
    if result.returncode != 0:
        raise RuntimeError(f"dvc repro --single-item {stage} failed ({result.returncode}):\n"
                           f"{result.stderr[-3000:]}")
    return "ran" if f"Running stage '{stage}'" in result.stdout else "up to date"


@flow(name="pipeline")
def pipeline_flow(preset: str | None = None, via_dvc: bool = False, stages: list[str] | None = None) -> dict:
    """Run `stages` (default: all, in order); returns stage -> what happened."""
    chosen = list(STAGES) if stages is None else stages
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; the stages are {list(STAGES)}")
    if via_dvc and preset is not None:
        raise ValueError("via_dvc runs the preset of params.yaml; run `dvc exp run -S preset=...` for another one")
    os.environ[PIPELINE_RUN_ENV] = f"prefect-{flow_run.id}" if flow_run.id else os.environ.get(PIPELINE_RUN_ENV, "")
    logger = get_run_logger()
    done = {}
    for name in chosen:
        logger.info("stage %s (%s)", name, "dvc repro" if via_dvc else "subflow")
        if via_dvc:
            done[name] = dvc_stage(name)
        else:
            stage_flow(name)(preset=preset)
            done[name] = "ran"
    return done


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None)
    parser.add_argument("--via-dvc", action="store_true")
    parser.add_argument("--stages", nargs="+", default=None, help="these stages, in this order (default: all)")
    args = parser.parse_args()
    run_stage(pipeline_flow, preset=args.preset, via_dvc=args.via_dvc, stages=args.stages)
