"""The grid on many machines (flows/grid.py, docs/grid-workers.md), for real on this machine: a Prefect server, an
MLflow server, a bare git remote, a directory DVC remote, two process workers each in its own clone, one of them
killed mid-experiment. A tiny DVC project stands in for P2P (two stages of python one-liners that log to MLflow), so
each point takes seconds, not the smoke pipeline's minutes; the points are given to `paper_grid` as JSON."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, wait_for_http

pytestmark = pytest.mark.slow

CODE = Path(__file__).resolve().parents[1]  # flows/ and p2p/: every process imports them from here
BIN = Path(sys.executable).parent
HEARTBEAT = 30  # Prefect's minimum
CRASH_AFTER = 45  # the automation's silence before a point counts as crashed
POINTS = {"tiny-seeds-seed1": {"train.seed": "1"}, "tiny-seeds-seed2": {"train.seed": "2"},
          "tiny-fig6-k3": {"evaluate.k": "3"}}

PARAMS = "preset: tiny\ntrain:\n  seed: 0\nevaluate:\n  k: 1\n"
DVC_YAML = """\
stages:
  train:
    cmd: python train.py
    deps: [train.py]
    params: [train.seed]
    outs: [model.json]
  evaluate:
    cmd: python evaluate.py
    deps: [evaluate.py, model.json]
    params: [evaluate.k]
    outs: [metrics.json]
"""
TRAIN = """\
import json, time, yaml
seed = yaml.safe_load(open("params.yaml"))["train"]["seed"]
time.sleep(1)
json.dump({"seed": seed}, open("model.json", "w"))
"""
# Logs one MLflow run (tagged with the experiment and the worker), then works a few seconds: the test kills a worker
# while its run is RUNNING.
EVALUATE = """\
import json, os, time, mlflow, yaml
params = yaml.safe_load(open("params.yaml"))
model = json.load(open("model.json"))
mlflow.set_experiment("grid-test")
tags = {"dvc_experiment": os.environ.get("DVC_EXP_NAME", ""), "worker": os.environ.get("P2P_GRID_WORKER", "")}
with mlflow.start_run(run_name="evaluate", tags=tags):
    mlflow.log_params({"train.seed": model["seed"], "evaluate.k": params["evaluate"]["k"]})
    time.sleep(6)
    mlflow.log_metric("score", model["seed"] + params["evaluate"]["k"])
json.dump({"score": model["seed"] + params["evaluate"]["k"]}, open("metrics.json", "w"))
"""


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def base_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "DVC_", "P2P_"))}
    return env | {"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "PYTHONPATH": str(CODE),
                  "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(tmp / "dvc-site-cache"),
                  "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
                  "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
                  "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com"}


def start(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (the flow run of a process worker is in a session of its own)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a process and everything it started, as if its machine died."""
    for pid in descendants(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=30)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        for pid in reversed(descendants(process.pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            kill_tree(process)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real Prefect server (with its automations and triggers) and a real MLflow server on loopback, both
    started at once: {"prefect": API URL, "mlflow": tracking URI}."""
    tmp = tmp_path_factory.mktemp("servers")
    prefect_port, mlflow_port = free_port(), free_port()
    api = f"http://127.0.0.1:{prefect_port}/api"
    env = base_env(tmp)
    prefect = start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
                    tmp, env | {"PREFECT_HOME": str(tmp / "prefect"), "PREFECT_API_URL": api}, tmp / "prefect.log")
    mlflow = start([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
                    "--artifacts-destination", str(tmp / "artifacts"), "--host", "127.0.0.1", "--port",
                    str(mlflow_port), "--workers", "1"], tmp, env, tmp / "mlflow.log")
    try:
        wait_for_http(f"{api}/health", prefect, tmp / "prefect.log", 300)
        wait_for_http(f"http://127.0.0.1:{mlflow_port}/health", mlflow, tmp / "mlflow.log", 300)
        yield {"prefect": api, "mlflow": f"http://127.0.0.1:{mlflow_port}"}
    finally:
        stop(mlflow)
        stop(prefect)


def tiny_project(tmp: Path, env: dict[str, str]) -> Path:
    """The head clone: the tiny project's base run done, committed and pushed to the bare git remote, its outputs to
    the directory DVC remote (what `make run`, `git push` and `dvc push` leave for the workers)."""
    run(["git", "init", "-q", "--bare", str(tmp / "origin.git")], tmp, env)
    head = tmp / "head"
    head.mkdir()
    for name, text in {"params.yaml": PARAMS, "dvc.yaml": DVC_YAML, "train.py": TRAIN, "evaluate.py": EVALUATE}.items():
        (head / name).write_text(textwrap.dedent(text))
    run(["git", "init", "-q", "-b", "main"], head, env)
    run(["dvc", "init", "-q"], head, env)
    run(["dvc", "remote", "add", "-d", "store", str(tmp / "dvc-remote")], head, env)
    run(["dvc", "repro"], head, env)
    run(["git", "add", "."], head, env)
    run(["git", "commit", "-qm", "tiny project, base run"], head, env)
    run(["git", "remote", "add", "origin", str(tmp / "origin.git")], head, env)
    run(["git", "push", "-q", "origin", "main"], head, env)
    run(["dvc", "push", "-q"], head, env)
    return head


def test_grid_points_are_p2p_grids_points_of_the_commits_params(tmp_path: Path):
    """What `paper_grid` sends the workers is p2p.grid's grid of the commit's params.yaml (not the workspace's): each
    point's name and `-S` params, plus `preset=` when the grid's preset is not the file's."""
    from flows.grid import grid_points
    from p2p.config import load_config
    from p2p.grid import load_grid, points

    env = base_env(tmp_path)
    params = (CODE / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(params)
    run(["git", "init", "-q"], tmp_path, env)
    run(["git", "add", "params.yaml"], tmp_path, env)
    run(["git", "commit", "-qm", "params"], tmp_path, env)
    (tmp_path / "params.yaml").write_text("not: [what, the, commit, has]\n")
    own = load_config(CODE / "params.yaml").preset
    for preset in (own, "smoke" if own != "smoke" else "cpu"):
        cfg = load_config(CODE / "params.yaml", preset)
        expected, absent = points(cfg, load_grid(preset, CODE / "params.yaml"))
        extra = {} if preset == own else {"preset": preset}
        assert grid_points(tmp_path, "HEAD", preset) == (
            preset, {p.exp_name(preset): extra | dict(p.changes) for p in expected}, absent)
    assert grid_points(tmp_path, "HEAD", None)[0] == own


def grid_runs(api: str) -> list:
    """Every flow run of the grid-point deployment, through the Prefect API."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with SyncPrefectClient(api) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["p2p-grid"])),
                                     sort=FlowRunSort.START_TIME_ASC, limit=200)


def grid_tasks(api: str) -> list[dict[str, tuple[str, int]]]:
    """Per `paper-grid` flow run (oldest first): its experiment tasks, name -> (state, attempts)."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort

    with SyncPrefectClient(api) as client:
        parents = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["paper-grid"])),
                                        sort=FlowRunSort.START_TIME_ASC, limit=10)
        tasks = [client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[parent.id])),
                                       sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=200) for parent in parents]
    return [{t.name: (t.state.name, t.run_count) for t in runs if t.name in POINTS} for runs in tasks]


def test_two_workers_run_the_grid_once_and_a_killed_workers_point_is_retried_by_the_other(
        servers: dict[str, str], tmp_path: Path):
    import mlflow
    from prefect.client.orchestration import SyncPrefectClient

    env = base_env(tmp_path) | {"PREFECT_API_URL": servers["prefect"], "MLFLOW_TRACKING_URI": servers["mlflow"],
                                "PREFECT_HOME": str(tmp_path / "prefect-home")}
    started = time.monotonic()
    head = tiny_project(tmp_path, env)
    for worker in ("w1", "w2"):
        run(["git", "clone", "-q", str(tmp_path / "origin.git"), str(tmp_path / worker)], tmp_path, env)
    run([sys.executable, "-m", "flows.grid", "deploy", "--pool", "p2p-grid", "--limit", "2", "--crash-after",
         str(CRASH_AFTER)], head, env)
    worker_env = env | {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT), "PREFECT_WORKER_QUERY_SECONDS": "2"}
    workers = {name: start([sys.executable, "-m", "flows.grid", "worker", "--clone", str(tmp_path / name), "--name",
                            name], tmp_path / name, worker_env, tmp_path / f"{name}.log") for name in ("w1", "w2")}
    grid = start([sys.executable, "-m", "flows.grid", "run", "--root", str(head), "--preset", "tiny", "--points",
                  json.dumps(POINTS), "--no-report", "--poll-seconds", "2"], head, env, tmp_path / "grid.log")
    client = mlflow.MlflowClient(servers["mlflow"])
    try:
        # w1 mid-experiment: its point's MLflow run is RUNNING. Then its machine dies.
        deadline, killed = time.monotonic() + 120, None
        while killed is None:
            assert time.monotonic() < deadline, f"w1 ran no point:\n{(tmp_path / 'w1.log').read_text()[-3000:]}"
            assert grid.poll() is None, (tmp_path / "grid.log").read_text()[-3000:]
            for row in client.search_runs(client.get_experiment_by_name("grid-test").experiment_id,
                                          "tags.worker = 'w1' and attributes.status = 'RUNNING'"):
                killed = row.data.tags["dvc_experiment"]
            time.sleep(0.5)
        kill_tree(workers["w1"])
        grid.wait(timeout=240)
        log = (tmp_path / "grid.log").read_text()
        assert grid.returncode == 0, log[-5000:]
        elapsed = time.monotonic() - started

        # Every point completed exactly once, the killed one on w2 after its run on w1 crashed.
        runs = grid_runs(servers["prefect"])
        completed = {r.name: r.labels.get("prefect.worker.name") for r in runs if r.state.is_completed()}
        assert sorted(r.name for r in runs if r.state.is_completed()) == sorted(POINTS)
        assert completed[killed] == "w2"
        crashed = [r for r in runs if r.state.is_crashed()]
        assert [(r.name, r.labels.get("prefect.worker.name")) for r in crashed] == [(killed, "w1")]
        assert "heartbeat" in crashed[0].state.message
        assert len(runs) == len(POINTS) + 1
        with SyncPrefectClient(servers["prefect"]) as prefect:
            assert prefect.read_work_pool("p2p-grid").concurrency_limit == 2

        # MLflow: one finished evaluation per experiment, with its params, by the worker Prefect names; w1's
        # interrupted one never finished.
        rows = client.search_runs(client.get_experiment_by_name("grid-test").experiment_id,
                                  "tags.dvc_experiment != ''")
        finished = [r for r in rows if r.info.status == "FINISHED"]
        assert sorted(r.data.tags["dvc_experiment"] for r in finished) == sorted(POINTS)
        for row in finished:
            name = row.data.tags["dvc_experiment"]
            assert row.data.tags["worker"] == completed[name]
            assert {k: row.data.params[k] for k in POINTS[name]} == POINTS[name]
        assert [(r.data.tags["dvc_experiment"], r.data.tags["worker"]) for r in rows if r.info.status == "RUNNING"] \
            == [(killed, "w1")]

        # The remote holds every experiment; a second grid run finds nothing to do and starts no flow run.
        remote = run(["dvc", "exp", "list", "--name-only", "origin"], head, env)
        assert sorted(remote.split()) == sorted(POINTS)
        again = subprocess.run([sys.executable, "-m", "flows.grid", "run", "--root", str(head), "--preset", "tiny",
                                "--points", json.dumps(POINTS), "--no-report"], cwd=head, env=env, capture_output=True,
                               text=True, timeout=120)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "3 experiments, 3 on origin, 0 to run" in again.stderr
        assert len(grid_runs(servers["prefect"])) == len(runs)

        # In the UI: one task per experiment in the grid's flow run, the killed one retried once; none in the second.
        first, second = grid_tasks(servers["prefect"])
        assert first == {name: ("Completed", 2 if name == killed else 1) for name in POINTS}
        assert second == {}
        print(f"grid of {len(POINTS)} with a killed worker ({killed} on w1): {elapsed:.0f} s")
    finally:
        for process in (grid, *workers.values()):
            stop(process)


def test_serve_registers_the_grid_on_a_cron_beside_the_scheduled_dvc_repro(servers: dict[str, str],
                                                                            tmp_path: Path):
    """`python -m flows.serve --grid PRESET` registers (and serves) the grid's cron deployment next to the pipeline's;
    read back through the server's API: the schedule, its parameters, one grid run at a time."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.exceptions import ObjectNotFound

    env = base_env(tmp_path) | {"PREFECT_API_URL": servers["prefect"], "PREFECT_HOME": str(tmp_path / "home")}
    serve = start([sys.executable, "-m", "flows.serve", "--cron", "0 3 * * *", "--grid", "smoke", "--grid-cron",
                   "30 4 * * 6"], CODE, env, tmp_path / "serve.log")
    try:
        with SyncPrefectClient(servers["prefect"]) as client:
            deadline = time.monotonic() + 120
            while True:
                assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                try:
                    grid = client.read_deployment_by_name("paper-grid/scheduled-paper-grid")
                    pipeline = client.read_deployment_by_name("pipeline/scheduled-dvc-repro")
                    break
                except ObjectNotFound:
                    assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                    time.sleep(1)
    finally:
        stop(serve)
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in grid.schedules] == [("30 4 * * 6", "UTC", True)]
    assert [s.schedule.cron for s in pipeline.schedules] == ["0 3 * * *"]
    assert grid.parameters == {"preset": "smoke"}
    assert grid.global_concurrency_limit.limit == 1
    assert grid.concurrency_options.collision_strategy == "CANCEL_NEW"
    assert "p2p-grid" in grid.tags
