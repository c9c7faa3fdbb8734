#!/usr/bin/env bash
# `make paper`: the paper's experiment grid as DVC experiments (p2p/experiments.py, docs/grid.md), every stage of every
# experiment reporting to one local Prefect server (scripts/prefect_env.sh). Arguments go to `p2p paper`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prefect_env.sh
echo "Prefect dashboard of the grid's stages: ${PREFECT_API_URL%/api}/runs"
p2p paper "$@"
