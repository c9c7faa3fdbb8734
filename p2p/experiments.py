"""`make paper` on one machine: the grid's missing points as queued DVC experiments, run, then the report refreshed.

Every point is `dvc exp run --queue -S ... --name <preset>-<figure>-<label> evaluate`, run by `dvc exp run --run-all
--jobs N` in temporary copies of the workspace. They share the project's caches and MLflow store (p2p.paths.
shared_root: DVC points $DVC_ROOT at the project) and DVC's cache, so each reuses every stage output its params leave
alone. The report stage then reads every point's results from MLflow. The state of what the report last saw is kept
in .dvc/tmp, so a second `make paper` with nothing new runs nothing (docs/grid.md).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from p2p.config import load_config
from p2p.grid import TARGET, GridConfig, Point, load_grid, points
from p2p.io import write_text

log = logging.getLogger(__name__)


class DvcError(RuntimeError):
    """A `dvc` command failed; the message holds its command line and the end of its output."""


def dvc_binary() -> str:
    """The `dvc` beside this interpreter (the project's virtual environment), else the one on PATH."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.exists() else (shutil.which("dvc") or "dvc")


def dvc(args: Sequence[str], root: Path, *, capture: bool = True, env: dict[str, str] | None = None) -> str:
    """Run `dvc ARGS` in `root`; its stdout, or a DvcError naming the command and the end of its output."""
    result = subprocess.run([dvc_binary(), *args], cwd=root, text=True, env=env,
                            stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE if capture else None)
    if result.returncode != 0:
        tail = ((result.stdout or "") + (result.stderr or ""))[-3000:]
        raise DvcError(f"`dvc {' '.join(args)}` failed (exit {result.returncode}) in {root}\n{tail}")
    return result.stdout or ""


def done_names(root: Path, remote: str | None = None, rev: str | None = None) -> set[str]:
    """Names of the experiments on the current commit or on `rev` (`dvc exp list`), here or on `remote`."""
    out = dvc(["exp", "list", "--name-only", *(["--rev", rev] if rev else []), *([remote] if remote else [])], root)
    return {line.strip() for line in out.splitlines() if line.strip()}


def queue_status(root: Path) -> dict[str, str]:
    """Experiment name -> its state in DVC's queue (Queued, Running, Success, Failed)."""
    out = dvc(["queue", "status"], root)
    states = {}
    for line in out.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 3 and parts[-1] in ("Queued", "Running", "Success", "Failed"):
            states[parts[1]] = parts[-1]
    return states


def experiment_env() -> dict[str, str]:
    """The environment of the experiments: each is its own pipeline run (no shared P2P_PIPELINE_RUN key)."""
    env = dict(os.environ)
    env.pop("P2P_PIPELINE_RUN", None)
    return env


@dataclass
class Plan:
    """What `make paper` does for a preset: every point, which are done, which hub embedders are absent."""

    preset: str
    grid: GridConfig
    points: list[Point]
    done: set[str]
    absent: list[str]

    @property
    def missing(self) -> list[Point]:
        return [p for p in self.points if p.exp_name(self.preset) not in self.done]

    def table(self) -> str:
        lines = [f"grid of preset {self.preset}: {len(self.points)} experiments, {len(self.missing)} to run"]
        for p in self.points:
            state = "done" if p.exp_name(self.preset) in self.done else "to run"
            lines.append(f"  {p.exp_name(self.preset):<40} {p.varied:<60} {state}")
        if self.absent:
            lines.append(f"  not in the local Hugging Face cache, left out of Table 4: {', '.join(self.absent)}")
        return "\n".join(lines)


def plan(root: Path, preset: str) -> Plan:
    cfg = load_config(root / "params.yaml", preset=preset)
    grid = load_grid(preset, root / "params.yaml")
    chosen, absent = points(cfg, grid)
    return Plan(preset, grid, chosen, done_names(root), absent)


def workspace_preset(root: Path) -> str:
    return load_config(root / "params.yaml").preset


def reproduce_base(root: Path, preset: str) -> None:
    """The base run of `preset` in the workspace: `dvc repro`, or `dvc exp run -S preset=...` when params.yaml names
    another preset (DVC then writes the preset into params.yaml, as any `dvc exp run -S` in the workspace does)."""
    args = ["repro"] if workspace_preset(root) == preset else ["exp", "run", "-S", f"preset={preset}"]
    log.info("base run: dvc %s", " ".join(args))
    dvc(args, root, capture=False)


def run_missing(root: Path, pending: list[Point], preset: str, workers: int) -> list[str]:
    """Queue `pending` and run the queue; returns the names that failed."""
    names = [p.exp_name(preset) for p in pending]
    # Left by a killed `make paper`: its queue entries, and a worker that may still run one. Queued again below.
    running = [name for name, state in queue_status(root).items() if name in names and state == "Running"]
    if running:
        try:
            dvc(["queue", "kill", *running], root)
        except DvcError as err:
            log.warning("%s", err)
    stale = [name for name, state in queue_status(root).items() if name in names]
    if stale:
        dvc(["queue", "remove", *stale], root)
    for point, name in zip(pending, names):
        dvc(["exp", "run", "--queue", "--name", name, *point.set_args(), TARGET], root)
    log.info("running %d experiments, %d at a time", len(names), workers)
    try:
        dvc(["exp", "run", "--run-all", "--jobs", str(workers)], root, capture=False, env=experiment_env())
    except DvcError as err:
        log.warning("%s", err)
    done = done_names(root)
    return [name for name in names if name not in done]


def report_state_path(root: Path, preset: str) -> Path:
    return root / ".dvc" / "tmp" / f"paper-{preset}.json"


def refresh_report(root: Path, preset: str, names: set[str]) -> bool:
    """Rerun the report stage when the set of finished experiments differs from what it last read; True if it ran."""
    state = report_state_path(root, preset)
    seen = json.loads(state.read_text()) if state.is_file() else None
    wanted = sorted(names)
    if seen == wanted:
        return False
    dvc(["repro", "--force", "--single-item", "report"], root, capture=False)
    write_text(state, json.dumps(wanted))
    return True


def run_paper(root: Path, preset: str | None = None, workers: int | None = None, dry_run: bool = False) -> Plan:
    """`make paper`: the base run, the grid's missing experiments, the report. Raises DvcError if any failed."""
    preset = preset or workspace_preset(root)
    if not dry_run:
        reproduce_base(root, preset)
    chosen = plan(root, preset)
    print(chosen.table(), flush=True)
    if dry_run:
        return chosen
    failed = []
    if chosen.missing:
        failed = run_missing(root, chosen.missing, preset, workers or chosen.grid.workers)
        chosen = plan(root, preset)
    names = {p.exp_name(preset) for p in chosen.points} & chosen.done
    if refresh_report(root, preset, names):
        print(f"report refreshed: {len(names)} of {len(chosen.points)} grid experiments (reports/README.md)")
    else:
        print("nothing new: every grid experiment was already in the report")
    if failed:
        raise DvcError(f"{len(failed)} experiment(s) failed: {', '.join(failed)}; see `dvc queue logs NAME`, fix, "
                       "and run `make paper` again (finished ones are not rerun)")
    return chosen
