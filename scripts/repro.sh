#!/usr/bin/env bash
# `make run`: `dvc repro` with one local Prefect server for every stage. Without PREFECT_API_URL each stage would
# start (and stop) its own temporary server, ~10 s apiece. The server's database is in $PREFECT_HOME, so
# `make prefect-ui` shows these runs afterwards. An existing PREFECT_API_URL is used as is.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PREFECT_API_URL:-}" ]]; then
  port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p "$PREFECT_HOME"
  prefect server start --host 127.0.0.1 --port "$port" > "$PREFECT_HOME/repro-server.log" 2>&1 &
  server=$!
  trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
  export PREFECT_API_URL="http://127.0.0.1:$port/api"
  python - "$PREFECT_API_URL/health" <<'PY'
import sys, time, urllib.request
for _ in range(240):
    try:
        urllib.request.urlopen(sys.argv[1], timeout=2)
        sys.exit(0)
    except OSError:
        time.sleep(0.5)
sys.exit(f"the local Prefect server did not start; see {sys.argv[1]} and $PREFECT_HOME/repro-server.log")
PY
fi
dvc repro "$@"
