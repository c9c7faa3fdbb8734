#!/usr/bin/env bash
# `make run`: `dvc repro` with one local Prefect server for every stage (scripts/prefect_env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prefect_env.sh
# One key names this run's stages in both tools: their Prefect flow runs and their MLflow parent run.
export P2P_PIPELINE_RUN="${P2P_PIPELINE_RUN:-$(git rev-parse --short HEAD 2>/dev/null || echo workspace)-$(date -u +%Y%m%dT%H%M%SZ)}"
echo "Prefect dashboard of this run ($P2P_PIPELINE_RUN): ${PREFECT_API_URL%/api}/runs"
dvc repro "$@"
