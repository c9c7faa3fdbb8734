"""One smoke-preset project through `dvc repro`, once per test session, shared by the end-to-end test files and by
every pytest-xdist worker (the `smoke_build` and `smoke_copy` fixtures of tests/conftest.py).

The project runs the synthetic benchmark and, beside it, official-format LaMP-4 and LaMP-5 dev files written here
(tests/lamp_files.py; never ../shared) and `dvc add`-ed as a user would: the shape of a researcher's LaMP subset, most
users with a single query and one or two history items. One run serves both, since every stage process costs ~10 s
of start-up (Python, torch, Prefect, MLflow) whatever its data; two runs cost the suite a whole pipeline of them.

The first worker to ask builds it under a file lock; the others wait for it and read its record. What the tests check
of the Prefect server the stages reported to (the dashboard during the run, flow runs, task runs, artifacts) is
recorded while that server is up, so a test on any worker can check it. The built project is never changed after:
a test that changes it works on a copy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

BIN = Path(sys.executable).parent
LAMP_TASKS = ("LaMP-4", "LaMP-5")
LAMP_USERS = 40
SYNTH_TASKS = ("LaMP-2M", "LaMP-3", "LaMP-7")
EVALUATED = ("base", "rag", "pag", "full_history", "mt_lora", "oppu", "p2p", "p2p_shuffled")
METHODS = (*EVALUATED, "oracle", "query_only")  # the references exist on the synthetic benchmark only
STAGES = ("fetch", "prepare", "summarize", "embed", "split", "train", "mt_lora", "oppu",
          *(f"evaluate_{m}" for m in EVALUATED), "evaluate", "privacy", "judge", "report")
#: Each task's official headline metric and its second one.
OFFICIAL = {"LaMP-2M": ("accuracy", "accuracy"), "LaMP-3": ("mae", "rmse"), "LaMP-7": ("rouge1", "rougeL"),
            "LaMP-4": ("rouge1", "rougeL"), "LaMP-5": ("rouge1", "rougeL")}
SOURCES = [{"dataset": "synth", "tasks": list(SYNTH_TASKS)}, {"dataset": "lamp", "tasks": list(LAMP_TASKS)}]
#: How long a worker waits for another's build (a whole smoke pipeline takes ~5 minutes on 2 cores).
BUILD_TIMEOUT_S = 1800


@dataclass(frozen=True)
class SmokeBuild:
    repo: Path
    output: str  # the first `dvc repro`'s stdout and stderr
    again: str  # a second `dvc repro`'s stdout: nothing left to run
    again_seconds: float
    status: str  # `dvc status` after it
    dashboard: str | None  # the Prefect dashboard's text during the run; None where there is no Chromium
    dashboard_error: str | None  # why the dashboard never showed the running stage
    prefect: dict[str, list[dict[str, Any]]]  # flow runs, task runs and artifacts as Prefect's API answered


def api_json(url: str, body: dict | None = None) -> Any:
    """GET `url`, or POST `body` as JSON to it; the decoded JSON answer."""
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"},
                                     method="GET" if body is None else "POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def shared_dir(basetemp: Path) -> Path:
    """A directory every worker of this pytest run sees: under pytest-xdist each worker's base temp dir is a child
    of the run's."""
    return basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp


def smoke_build(shared: Path, prefect_api: str) -> SmokeBuild:
    """The session's built project: built here unless another worker built it (or is building it: then waited for)."""
    record = shared / "smoke.json"
    with FileLock(shared / "smoke.lock", timeout=BUILD_TIMEOUT_S):
        if not record.exists():
            try:
                built = _build(shared / "smoke", prefect_api, shared / "smoke-browser")
                record.write_text(json.dumps({"build": asdict(built) | {"repo": str(built.repo)}}))
            except Exception as err:
                record.write_text(json.dumps({"error": f"{type(err).__name__}: {err}"}))
    saved = json.loads(record.read_text())
    if "error" in saved:
        raise RuntimeError(f"the shared smoke build failed: {saved['error'][-4000:]}")
    return SmokeBuild(**saved["build"] | {"repo": Path(saved["build"]["repo"])})


def run_ok(cmd: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """`cmd` run to completion in `cwd`; its output, or an error with the end of it when it fails."""
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def _build(repo: Path, prefect_api: str, browser_profile: Path) -> SmokeBuild:
    from conftest import git_commit, project_copy
    from lamp_files import write_lamp_split

    repo.mkdir(parents=True)
    env = project_copy(repo, SOURCES) | {"PREFECT_API_URL": prefect_api}
    for task in LAMP_TASKS:
        write_lamp_split(repo / "data/raw/lamp" / task, task, "dev", users=LAMP_USERS)
    run_ok(["git", "init", "-q"], repo, env)
    run_ok([BIN / "dvc", "add", "-q", "data/raw/lamp"], repo, env)
    git_commit(repo, env, "smoke project with LaMP-4/5 dev files")

    # While the repro runs, its stages' flow runs show in the Prefect dashboard, under their names.
    dashboard, dashboard_error = None, None
    with open(repo.parent / "smoke-repro.log", "w+") as log:
        repro = subprocess.Popen([str(BIN / "dvc"), "repro"], cwd=repo, env=env, stdout=log,
                                 stderr=subprocess.STDOUT, text=True)
        try:
            from cdp import browse, find_chromium

            if find_chromium() is not None:
                try:
                    dashboard = browse(f"{prefect_api.removesuffix('/api')}/runs", "fetch smoke", browser_profile,
                                       "prefect-dashboard.png")
                    if repro.poll() is not None:
                        dashboard_error = "the repro ended before the dashboard was checked"
                except AssertionError as err:
                    dashboard_error = str(err)
        finally:
            repro.wait(timeout=BUILD_TIMEOUT_S)
        log.seek(0)
        output = log.read()
    if repro.returncode != 0:
        raise RuntimeError(f"dvc repro failed:\n{output[-4000:]}")

    runs = api_json(f"{prefect_api}/flow_runs/filter", {})
    ids = sorted(r["id"] for r in runs)

    def artifacts(**where: list[str]) -> list[dict]:
        return api_json(f"{prefect_api}/artifacts/filter", {"artifacts": {k: {"any_": v} for k, v in where.items()}
                                                            | {"flow_run_id": {"any_": ids}}})

    prefect = {"flow_runs": runs,
               "task_runs": api_json(f"{prefect_api}/task_runs/filter", {"flow_runs": {"id": {"any_": ids}}}),
               "train_progress": artifacts(key=["train-progress"]), "mlflow_links": artifacts(key=["mlflow-run"]),
               "markdown": artifacts(type=["markdown"])}
    start = time.monotonic()
    again = run_ok([BIN / "dvc", "repro"], repo, env).stdout
    again_seconds = time.monotonic() - start
    status = run_ok([BIN / "dvc", "status"], repo, env).stdout
    return SmokeBuild(repo, output, again, again_seconds, status, dashboard, dashboard_error, prefect)
