"""Pipeline benchmark (docs/architecture.md §13.4): what a no-op `dvc repro` costs next to a real one, and what the
orchestration (a Prefect flow + an MLflow run per stage) adds to the library work of a stage.

    .venv/bin/python bench/pipeline.py [--preset smoke]

It clones the committed project into a temporary directory, runs the pipeline there on the given preset and
prints the timings and their ratios, all measured in this one run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smoke")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="p2p-bench-") as tmp:
        repo = Path(tmp) / "p2p"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
        params = repo / "params.yaml"
        params.write_text(params.read_text().replace("preset: cpu", f"preset: {args.preset}", 1))
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(repo),
               "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(repo / ".dvc_site_cache")}
        dvc = str(BIN / "dvc")

        full = timed([dvc, "repro"], repo, env)
        noop = min(timed([dvc, "repro"], repo, env) for _ in range(3))
        forced_split = timed([dvc, "repro", "--force", "--single-item", "split"], repo, env)
        library_split = timed([sys.executable, "-c", (
            "from pathlib import Path; from p2p.config import load_config; from p2p.stages import split as stages; "
            "cfg = load_config('params.yaml'); "
            "[stages.split_task(d, t, cfg, Path('.')) for d, t in cfg.data.tasks()]")],
            repo, env)

    print(f"preset {args.preset}")
    print(f"full dvc repro (fetch, prepare, split)   {full:8.2f} s")
    print(f"no-op dvc repro (best of 3)              {noop:8.2f} s   ratio no-op / full = {noop / full:.3f}")
    print(f"split stage, forced (flow + MLflow run)  {forced_split:8.2f} s")
    print(f"split work alone (library, new process)  {library_split:8.2f} s   "
          f"orchestration overhead = {forced_split - library_split:.2f} s "
          f"({forced_split / library_split:.2f}x the library time)")


if __name__ == "__main__":
    main()
