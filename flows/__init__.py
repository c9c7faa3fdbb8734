"""Prefect flows: one per pipeline stage, each a thin shell over the `p2p` library.

Importing this package sets the quiet, offline, project-local defaults (docs/architecture.md §12) before Prefect or
MLflow are imported, so `python -m flows.<stage>` behaves the same from DVC, a shell, or a test.
"""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

for _key, _value in {
    "PREFECT_HOME": str(ROOT / ".prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "60",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
}.items():
    os.environ.setdefault(_key, _value)
