"""Scheduled pipeline runs: serve the pipeline flow as a Prefect deployment with a cron schedule.

    prefect server start --host 127.0.0.1 --port 4200                  # the API and UI (another terminal)
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m flows.serve --cron "0 3 * * *"                           # runs `dvc repro` stage by stage at 03:00

The process keeps running and starts each scheduled run itself (no work pool needed); stop it with Ctrl-C. The UI
(http://127.0.0.1:4200) shows the deployment, its upcoming runs and every run's stage tasks and logs;
`--now` also triggers one run at once. Needs a real server: a temporary one would vanish with the process.
"""

from __future__ import annotations

import argparse
import os

from prefect.deployments.runner import RunnerDeployment

from flows.pipeline import pipeline_flow

DEPLOYMENT = "scheduled-dvc-repro"


def deployment(cron: str, timezone: str = "UTC", via_dvc: bool = True) -> RunnerDeployment:
    """The pipeline flow on a cron schedule; by default through DVC, so unchanged stages are skipped."""
    from prefect.client.schemas.schedules import CronSchedule

    return pipeline_flow.to_deployment(
        name=DEPLOYMENT, schedule=CronSchedule(cron=cron, timezone=timezone), parameters={"via_dvc": via_dvc},
        description="P2P pipeline on a schedule: every stage in order, unchanged ones skipped by DVC",
        tags=["p2p"])


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the P2P pipeline on a cron schedule (needs PREFECT_API_URL).")
    parser.add_argument("--cron", default="0 3 * * *", help="cron expression (default: daily at 03:00)")
    parser.add_argument("--timezone", default="UTC")
    parser.add_argument("--now", action="store_true", help="also start one run immediately")
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
    serve(scheduled)


if __name__ == "__main__":
    main()
