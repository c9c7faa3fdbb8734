"""Scheduled pipeline runs: serve the pipeline flow as a Prefect deployment with a cron schedule.

    prefect server start --host 127.0.0.1 --port 4200                  # the API and UI (another terminal)
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m flows.serve --cron "0 3 * * *"                           # runs `dvc repro` stage by stage at 03:00

The process keeps running and starts each scheduled run itself (no work pool needed); stop it with Ctrl-C. The UI
(http://127.0.0.1:4200) shows the deployment, its upcoming runs and every run's stage tasks and logs;
`--now` also triggers one run at once. Needs a real server: a temporary one would vanish with the process.

`--grid PRESET` also serves the paper's grid on its own cron (`--grid-cron`, default Saturdays at 04:00): a
`paper-grid` run, one task per missing experiment, each run by the workers of the `p2p-grid` pool, retried when it
fails or its worker dies; one grid run at a time (docs/grid-workers.md).
"""

from __future__ import annotations

import argparse
import os

from prefect.deployments.runner import RunnerDeployment

from flows.pipeline import pipeline_flow

DEPLOYMENT = "scheduled-dvc-repro"
GRID_DEPLOYMENT = "scheduled-paper-grid"


def deployment(cron: str, timezone: str = "UTC", via_dvc: bool = True) -> RunnerDeployment:
    """The pipeline flow on a cron schedule; by default through DVC, so unchanged stages are skipped."""
    from prefect.client.schemas.schedules import CronSchedule

    return pipeline_flow.to_deployment(
        name=DEPLOYMENT, schedule=CronSchedule(cron=cron, timezone=timezone), parameters={"via_dvc": via_dvc},
        description="P2P pipeline on a schedule: every stage in order, unchanged ones skipped by DVC",
        tags=["p2p"])


def grid_deployment(preset: str, cron: str, timezone: str = "UTC") -> RunnerDeployment:
    """The grid flow (flows/grid.py) on a cron schedule. A tick while the last grid still runs is skipped
    (concurrency limit 1, CANCEL_NEW): the next one picks up whatever is still missing."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.client.schemas.schedules import CronSchedule

    from flows.grid import paper_grid

    return paper_grid.to_deployment(
        name=GRID_DEPLOYMENT, schedule=CronSchedule(cron=cron, timezone=timezone), parameters={"preset": preset},
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
        description="The paper's grid on the p2p-grid work pool: the experiments missing on origin, then the report",
        tags=["p2p", "p2p-grid"])


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the P2P pipeline on a cron schedule (needs PREFECT_API_URL).")
    parser.add_argument("--cron", default="0 3 * * *", help="cron expression (default: daily at 03:00)")
    parser.add_argument("--timezone", default="UTC")
    parser.add_argument("--now", action="store_true", help="also start one run immediately")
    parser.add_argument("--grid", metavar="PRESET", default=None,
                        help="also serve the paper's grid of this preset on the p2p-grid work pool")
    parser.add_argument("--grid-cron", default="0 4 * * 6", help="the grid's cron (default: Saturdays at 04:00)")
    args = parser.parse_args()
    if not os.environ.get("PREFECT_API_URL"):
        raise SystemExit("Set PREFECT_API_URL to a running Prefect server first, e.g.\n"
                         "  prefect server start --host 127.0.0.1 --port 4200 &\n"
                         "  export PREFECT_API_URL=http://127.0.0.1:4200/api")
    from prefect import serve
    from prefect.deployments import run_deployment

    scheduled = deployment(args.cron, args.timezone)
    if args.now:
        scheduled.apply()
        run_deployment(f"pipeline/{DEPLOYMENT}", timeout=0)
    grid = [grid_deployment(args.grid, args.grid_cron, args.timezone)] if args.grid else []
    serve(scheduled, *grid)


if __name__ == "__main__":
    main()
