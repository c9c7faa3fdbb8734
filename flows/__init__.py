"""Prefect flows: one per pipeline stage, each a thin shell over the `p2p` library.

Importing this package sets the quiet, project-local defaults (docs/architecture.md §12) before Prefect or
MLflow are imported, so `python -m flows.<stage>` behaves the same from DVC, a shell, or a test. `run_stage` is
every stage's command: an expected failure is printed once, with what to do next.
"""

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

for _key, _value in {
    "PREFECT_HOME": str(ROOT / ".prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "p2p",  # the library's records go to the console and the Prefect UI too ...
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",  # ... the UI only those made inside a flow run
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
}.items():
    os.environ.setdefault(_key, _value)

logging.getLogger("p2p").setLevel(logging.INFO)  # what a stage did (samples, users, caches), not only warnings

#: Said after a bad file's or path's cause, which names what is wrong but not how to go on.
_RESUME = "Fix that, then run `dvc repro` again: it resumes from this stage"


class _QuietExpected(logging.Filter):
    """Keeps Prefect's console from repeating an expected failure: the task's and the flow's error records (each
    with a traceback) and their "Finished in state Failed(...)" lines, which all carry the same text. The Prefect
    server still receives them (its API handler sits on another logger), so the UI shows the whole story."""

    def __init__(self, expected: tuple[type[BaseException], ...]):
        super().__init__()
        self.expected = expected
        self.causes: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, self.expected):
            self.causes.add(str(error).splitlines()[0][:80])
            return False
        if record.levelno >= logging.ERROR or "Finished in state Failed" in record.getMessage():
            return not any(cause in record.getMessage() for cause in self.causes)
        return True


def run_name(stage: str) -> Callable[[], str]:
    """A stage's flow-run name, `<stage> <preset> <pipeline run>` (`stage` may name the flow's parameters:
    `evaluate_{method}`). The pipeline run is `P2P_PIPELINE_RUN` (make run sets it to `<commit>-<UTC start>`, the
    whole-pipeline flow to its own run), so the stages of one `dvc repro` sort together in the dashboard and carry
    the key their MLflow runs are tagged with."""

    def name() -> str:
        import yaml
        from prefect.runtime import flow_run

        preset = flow_run.parameters.get("preset")
        if not preset:
            try:
                preset = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8")).get("preset")
            except (OSError, AttributeError, yaml.YAMLError):
                preset = None
        label = stage.format(**flow_run.parameters)  # e.g. "evaluate_{method}" -> the DVC stage's name
        return " ".join(part for part in (label, preset, os.environ.get("P2P_PIPELINE_RUN")) if part)

    return name


def publish(report: Path, key: str) -> None:
    """A stage's markdown report (`summary.md`, or the report index) as a Prefect markdown artifact named `key`,
    so the flow run's page in the dashboard shows its results; nothing when the file is not there."""
    from prefect.artifacts import create_markdown_artifact

    if report.is_file():
        create_markdown_artifact(markdown=report.read_text(encoding="utf-8"), key=key,
                                 description=f"{report.relative_to(ROOT) if report.is_relative_to(ROOT) else report}")


def run_stage(flow: Callable[..., object], **parameters: object) -> None:
    """Run a stage's flow (with `parameters`) as its command. An expected failure (p2p/failures.py) ends it with
    one message on stderr, `error: stage '<name>': <cause>` and what to do next, and exit status 2, where it used to
    appear five times (two Prefect records with tracebacks, two state lines, Python's traceback). Anything else
    keeps its traceback."""
    from p2p.failures import EXPECTED, message
    from p2p.io import InputError

    quiet = _QuietExpected(EXPECTED)
    for handler in logging.getLogger().handlers:  # Prefect's console handler, set up when prefect was imported
        handler.addFilter(quiet)
    try:
        flow(**parameters)
    except EXPECTED as err:
        cause = message(err)
        if isinstance(err, (InputError, OSError)) and "dvc repro" not in cause:  # it names what, not how to go on
            cause = f"{cause.rstrip('.')}. {_RESUME}"
        print(f"error: stage '{getattr(flow, 'name', flow)}': {cause}", file=sys.stderr)
        raise SystemExit(2) from None
