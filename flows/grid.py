"""The paper's grid on many machines: each point one Prefect flow run on a work pool, each worker in its own clone.

`make paper` runs the grid as queued DVC experiments on one machine (p2p/experiments.py). Here the same points run
wherever a Prefect worker polls the work pool, and share their results through the git remote `origin`, the DVC
remote and one MLflow tracking server (docs/grid-workers.md):

- `grid_point` (deployment `grid-point/p2p-grid` on the process work pool `p2p-grid`): in the worker's clone, checks
  out the commit, `dvc pull`s the base run's outputs, runs one point as `dvc exp run --temp`, and `dvc exp push`es it
  (git ref to origin, outputs to the DVC remote). A point already on the remote is skipped, so a point runs once.
- `paper_grid`: the points of the grid missing on the remote, one `grid_point` run each through the pool (one task
  per point, retried when its run fails or crashes: a worker that dies mid-experiment stops its run's heartbeats, the
  automation `deploy` creates marks that run Crashed, and the retry goes to a live worker), then the report.

    python -m flows.grid deploy --limit 4        # the work pool, the grid-point deployment, the crash automation
    python -m flows.grid worker                  # on each machine, in its own clone (one experiment at a time)
    python -m flows.grid run --preset cpu        # the grid of HEAD's commit, now (flows/serve.py --grid: on a cron)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from flows import ROOT, run_stage
from p2p.experiments import done_names, dvc, experiment_env, refresh_report
from p2p.grid import TARGET

#: The git remote every clone fetches commits from and pushes experiments to (its DVC remote is the default one).
REMOTE = "origin"
POOL = "p2p-grid"
DEPLOYMENT = "p2p-grid"  # grid-point/p2p-grid
AUTOMATION = "p2p-grid: crash silent grid points"
#: The clone a worker runs its points in (set by `python -m flows.grid worker`); else the clone of this code.
CLONE_ENV = "P2P_GRID_CLONE"
#: The worker that ran a point, in each experiment's environment (a stage may tag its MLflow run with it).
WORKER_ENV = "P2P_GRID_WORKER"
#: Seconds between a grid point's heartbeats (Prefect's minimum is 30); `deploy --crash-after` must be well above it.
HEARTBEAT_SECONDS = 60
#: Points created and awaited at once by one `paper_grid` run (threads that mostly sleep); how many *run* at once is
#: the work pool's concurrency limit and one per worker.
IN_FLIGHT = 64


def git(args: list[str], root: Path) -> str:
    """Run `git ARGS` in `root`; its stdout, or a RuntimeError with its stderr."""
    result = subprocess.run(["git", *args], cwd=root, text=True, capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"`git {' '.join(args)}` failed (exit {result.returncode}) in {root}\n"
                           f"{result.stderr[-2000:]}")
    return result.stdout


def clone_root() -> Path:
    return Path(os.environ.get(CLONE_ENV) or ROOT)


def set_args(changes: dict[str, str]) -> list[str]:
    return [arg for key, value in changes.items() for arg in ("-S", f"{key}={value}")]


def checkout(root: Path, commit: str) -> None:
    """The worker's clone at `commit`, fetched from origin. A clone with uncommitted changes is refused: a worker's
    clone is its own, and a checkout must not throw anyone's work away."""
    dirty = git(["status", "--porcelain", "--untracked-files=no"], root).strip()
    if dirty:
        raise RuntimeError(f"{root} has uncommitted changes; start grid workers in clones of their own "
                           f"(docs/grid-workers.md):\n{dirty[:1000]}")
    git(["fetch", "--quiet", REMOTE], root)
    git(["checkout", "--quiet", "--detach", commit], root)


def point_env(worker: str) -> dict[str, str]:
    """The experiment's environment: the stages are flow runs of their own, not this one (no PREFECT__ keys)."""
    env = {k: v for k, v in experiment_env().items() if not k.startswith("PREFECT__")}
    return env | {WORKER_ENV: worker}


def this_worker() -> str:
    """The name of the Prefect worker that started this flow run (its label), else this machine's name."""
    from prefect import get_client
    from prefect.runtime import flow_run

    if flow_run.id:
        with get_client(sync_client=True) as client:
            name = client.read_flow_run(flow_run.id).labels.get("prefect.worker.name")
        if name:
            return str(name)
    return socket.gethostname()


@flow(name="grid-point")
def grid_point(name: str, commit: str, changes: dict[str, str], target: str = TARGET) -> dict[str, str]:
    """One grid point in this worker's clone: checkout, `dvc pull`, `dvc exp run --temp`, `dvc exp push origin`."""
    root, logger, worker = clone_root(), get_run_logger(), this_worker()
    logger.info("%s on worker %s in %s at %s", name, worker, root, commit[:7])
    checkout(root, commit)
    outcome = {"experiment": name, "worker": worker, "commit": commit}
    if name in done_names(root, remote=REMOTE):
        logger.info("%s is already on %s: nothing to run", name, REMOTE)
        return outcome | {"outcome": "on the remote"}
    if name not in done_names(root):  # else a finished run here whose push failed: push it
        dvc(["pull", "--allow-missing"], root)  # the base run's outputs, so DVC reruns only what the point changes
        out = dvc(["exp", "run", "--temp", "--name", name, *set_args(changes), target], root, env=point_env(worker))
        for line in out.splitlines():
            logger.info("%s", line)
    dvc(["exp", "push", REMOTE, name], root)
    logger.info("%s pushed to %s", name, REMOTE)
    return outcome | {"outcome": "ran"}


def grid_points(root: Path, commit: str, preset: str | None) -> tuple[str, dict[str, dict[str, str]], list[str]]:
    """(preset, experiment name -> params it sets, hub embedders left out) of the grid in `commit`'s params.yaml
    (p2p.grid). A preset other than the file's is set by every point too (its base outputs are then not on the
    remote: each point recomputes them)."""
    import yaml

    from p2p.config import load_config
    from p2p.grid import load_grid, points

    with tempfile.TemporaryDirectory() as tmp:
        params = Path(tmp) / "params.yaml"
        params.write_text(git(["show", f"{commit}:params.yaml"], root), encoding="utf-8")
        own = (yaml.safe_load(params.read_text(encoding="utf-8")) or {}).get("preset")
        cfg = load_config(params, preset)
        chosen, absent = points(cfg, load_grid(cfg.preset, params))
    extra = {} if cfg.preset == own else {"preset": cfg.preset}
    return cfg.preset, {p.exp_name(cfg.preset): extra | dict(p.changes) for p in chosen}, absent


@task(name="grid-point", cache_policy=NONE, retries=2, retry_delay_seconds=10, task_run_name="{name}")
def run_point(name: str, commit: str, changes: dict[str, str], poll_seconds: float = 5) -> str:
    """One point as a `grid_point` flow run on the work pool, awaited; the worker that ran it. A run that ends other
    than Completed (Failed, or Crashed when its worker died) raises, so the task's retry starts a new run."""
    from prefect.deployments import run_deployment

    run = run_deployment(f"grid-point/{DEPLOYMENT}", parameters={"name": name, "commit": commit, "changes": changes},
                         flow_run_name=name, timeout=None, poll_interval=poll_seconds)
    worker = run.labels.get("prefect.worker.name", "no worker")
    if run.state is None or not run.state.is_completed():
        state = run.state.name if run.state else "no state"
        raise RuntimeError(f"{name}: flow run {run.id} ended {state} on {worker}: "
                           f"{run.state.message if run.state else ''}")
    get_run_logger().info("%s done by worker %s (flow run %s)", name, worker, run.id)
    return str(worker)


@task(name="report", cache_policy=NONE, retries=1, retry_delay_seconds=60)
def report(root: Path, preset: str, names: set[str]) -> bool:
    return refresh_report(root, preset, names)


def grid_run_name() -> str:
    from prefect.runtime import flow_run

    return " ".join(part for part in ("paper-grid", flow_run.parameters.get("preset")) if part)


@flow(name="paper-grid", flow_run_name=grid_run_name, task_runner=ThreadPoolTaskRunner(max_workers=IN_FLIGHT))
def paper_grid(preset: str | None = None, root: str | None = None, commit: str | None = None,
               points: dict[str, dict[str, str]] | None = None, retries: int = 2, with_report: bool = True,
               poll_seconds: float = 5) -> dict[str, str]:
    """The grid's missing points of `commit` (default: the HEAD of `root`, this clone) through the work pool;
    experiment name -> the worker that ran it. `points` (name -> params) replaces the grid of params.yaml."""
    where = Path(root) if root else ROOT
    logger = get_run_logger()
    commit = commit or git(["rev-parse", "HEAD"], where).strip()
    git(["fetch", "--quiet", REMOTE], where)
    if not git(["branch", "--remotes", "--contains", commit], where).strip():
        raise RuntimeError(f"commit {commit[:7]} is not on {REMOTE}: push it (and `dvc push` its base run) first; "
                           "the workers fetch it from there")
    if points is None:
        preset, points, absent = grid_points(where, commit, preset)
        if absent:  # p2p.grid looks in this machine's Hugging Face cache
            logger.warning("not in the local Hugging Face cache, left out of Table 4: %s", ", ".join(absent))
    done = done_names(where, remote=REMOTE, rev=commit)
    todo = {name: changes for name, changes in points.items() if name not in done}
    logger.info("grid of %s at %s: %d experiments, %d on %s, %d to run: %s", preset, commit[:7], len(points),
                len(points) - len(todo), REMOTE, len(todo), ", ".join(todo) or "none")
    point = run_point.with_options(retries=retries)
    futures = {name: point.submit(name, commit, changes, poll_seconds) for name, changes in todo.items()}
    wait(list(futures.values()))
    failed = sorted(name for name, future in futures.items() if not future.state.is_completed())
    workers = {name: future.result() for name, future in futures.items() if name not in failed}
    if with_report and preset:
        names = set(points) & done_names(where, remote=REMOTE, rev=commit)
        if report(where, preset, names):
            logger.info("report refreshed: %d of %d grid experiments", len(names), len(points))
    if failed:
        raise RuntimeError(f"{len(failed)} grid point(s) failed after {retries} retries: {', '.join(failed)}; "
                           "their flow runs' logs say why. Run the grid again: finished points are not rerun")
    return workers


def deploy(pool: str = POOL, limit: int | None = None, crash_after: float = 3 * HEARTBEAT_SECONDS) -> None:
    """The process work pool `pool` (at most `limit` points at once over all workers; None: no limit), the
    `grid-point` deployment on it, and the automation that marks a point Crashed once its heartbeats stop for
    `crash_after` seconds (its worker died), which `paper_grid` then retries on another worker."""
    from prefect import get_client
    from prefect.automations import Automation
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.exceptions import ObjectNotFound
    from prefect.types.entrypoint import EntrypointType
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(
            name=pool, type="process", concurrency_limit=limit,
            base_job_template=ProcessWorker.get_default_base_job_template(),
            description="P2P grid points (flows/grid.py): one worker per machine, each in its own clone"),
            overwrite=True)
    # A module path, not a file: each worker imports flows.grid from its own clone (PYTHONPATH, set by `worker`).
    # From the module, not this file: run as `python -m flows.grid` this file is `__main__`.
    from flows.grid import grid_point

    deployment_id = grid_point.to_deployment(
        name=DEPLOYMENT, entrypoint_type=EntrypointType.MODULE_PATH, tags=["p2p", "p2p-grid"],
        description="One point of the paper's grid in the worker's clone (flows/grid.py)").apply(work_pool_name=pool)
    try:
        Automation.read(name=AUTOMATION).delete()
    except (ObjectNotFound, ValueError):
        pass
    Automation(
        name=AUTOMATION,
        description=f"A grid point whose heartbeats stop for {crash_after:.0f} s lost its worker: marked Crashed, "
                    "so paper_grid retries it on another worker (docs/grid-workers.md)",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.id": f"prefect.deployment.{deployment_id}"},
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
            within=timedelta(seconds=crash_after)),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {crash_after:.0f} s: its worker is gone")],
    ).create()


def worker_command(pool: str, name: str) -> list[str]:
    prefect = Path(sys.executable).parent / "prefect"
    return [str(prefect) if prefect.exists() else (shutil.which("prefect") or "prefect"), "worker", "start",
            "--pool", pool, "--type", "process", "--limit", "1", "--name", name]


def worker_env(clone: Path) -> dict[str, str]:
    """A worker's environment: this code importable by its flow runs, its clone, heartbeats the automation watches."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env[CLONE_ENV] = str(clone)
    env.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(HEARTBEAT_SECONDS))
    return env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    dep = sub.add_parser("deploy", help="the work pool, the grid-point deployment and the crash automation")
    dep.add_argument("--pool", default=POOL)
    dep.add_argument("--limit", type=int, default=None, help="points at once over all workers (default: no limit)")
    dep.add_argument("--crash-after", type=float, default=3 * HEARTBEAT_SECONDS,
                     help="seconds without a heartbeat before a point counts as crashed (default: %(default)s)")
    wrk = sub.add_parser("worker", help="a process worker for the pool in this clone (one point at a time)")
    wrk.add_argument("--pool", default=POOL)
    wrk.add_argument("--clone", type=Path, default=ROOT, help="the clone it runs points in (default: this one)")
    wrk.add_argument("--name", default=None, help="default: <host>-<clone folder>")
    run = sub.add_parser("run", help="run the grid now through the pool (needs workers)")
    run.add_argument("--preset", default=None, help="default: params.yaml's at the commit")
    run.add_argument("--root", default=None, help="the clone whose HEAD and params.yaml say what to run")
    run.add_argument("--commit", default=None, help="default: the HEAD of --root")
    run.add_argument("--points", default=None, help="JSON {name: {param: value}} instead of params.yaml's grid")
    run.add_argument("--retries", type=int, default=2)
    run.add_argument("--no-report", action="store_true", help="do not refresh the report stage afterwards")
    run.add_argument("--poll-seconds", type=float, default=5)
    args = parser.parse_args(argv)
    if not os.environ.get("PREFECT_API_URL"):
        raise SystemExit("Set PREFECT_API_URL to the Prefect server every machine reaches (docs/grid-workers.md)")
    if args.command == "deploy":
        deploy(args.pool, args.limit, args.crash_after)
        print(f"work pool {args.pool} (limit {args.limit}), deployment grid-point/{DEPLOYMENT}, automation "
              f"'{AUTOMATION}' ({args.crash_after:.0f} s)")
    elif args.command == "worker":
        clone = args.clone.resolve()
        name = args.name or f"{socket.gethostname()}-{clone.name}"
        os.chdir(clone)
        os.execve(worker_command(args.pool, name)[0], worker_command(args.pool, name), worker_env(clone))
    else:
        run_stage(paper_grid, preset=args.preset, root=args.root, commit=args.commit,
                  points=json.loads(args.points) if args.points else None, retries=args.retries,
                  with_report=not args.no_report, poll_seconds=args.poll_seconds)


if __name__ == "__main__":
    main()
