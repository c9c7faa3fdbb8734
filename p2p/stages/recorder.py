"""What a stage reports besides its files: metrics, result runs, artifacts, published summaries, progress, steps.

A stage recipe (`p2p/stages/<stage>.py`, `run(cfg, root, rec)`) does all of its stage's work and tells `rec` what
it did. This base class keeps nothing and runs each step in place: what a notebook, the CLI or a test gets. The
Prefect shell (flows/stage.py) passes one that logs to the stage's MLflow run (p2p.tracking) and shows steps,
summaries and progress in the Prefect UI, so the recipe is the same wherever it runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class Recorder:
    """Where a stage run reports (docs/architecture.md §2). Every method may be called any number of times."""

    def log_metrics(self, metrics: Mapping[str, Any], prefix: str = "", step: int | None = None) -> None:
        """Numbers of the stage run (a training loss at `step`, a task's statistics under `prefix`)."""

    def log_result(self, split: str, name: str, metrics: Mapping[str, Any], params: Mapping[str, Any]) -> None:
        """One method x task result on a test split (MLflow: a run in the split's experiment, for the compare view)."""

    def run_tag(self, key: str, value: str) -> None:
        """A label of the stage run (e.g. which model judged)."""

    def log_artifact(self, path: Path, name: str | None = None) -> None:
        """A file or folder the stage wrote, kept with the run."""

    def log_torch_model(self, model: Any, name: str, code_dir: Path) -> None:
        """A trained module, kept with the run as a loadable model."""

    def publish(self, report: Path, key: str) -> None:
        """A stage's markdown report, shown where the run is browsed (Prefect: a markdown artifact `key`)."""

    def progress(self, percent: float) -> None:
        """How far a long stage is, 0-100."""

    def step(self, fn: Callable[..., T], name: str, label: str, *args: Any, **kwargs: Any) -> T:
        """Run one unit of the stage's work, `fn(*args, **kwargs)` (a task, an OPPU group of users): here in place;
        under Prefect as a task run `name` labelled `label`, so the UI shows each one and a failure names it."""
        return fn(*args, **kwargs)


class LogRecorder(Recorder):
    """Logs each metric group and published report's path: what `p2p stage NAME` shows on the console."""

    def log_metrics(self, metrics: Mapping[str, Any], prefix: str = "", step: int | None = None) -> None:
        if step is None:
            log.info("%s%s", f"{prefix} " if prefix else "",
                     ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))

    def publish(self, report: Path, key: str) -> None:
        log.info("%s: %s", key, report)
