# Sourced by scripts/repro.sh (`make run`) and scripts/paper.sh (`make paper`): one local Prefect server for every
# stage. Without PREFECT_API_URL each stage would start (and stop) its own temporary server, ~10 s apiece. Which server:
#   - PREFECT_API_URL, if the user set one;
#   - else `make prefect-ui`'s server on 127.0.0.1:4200, if it is up: one dashboard shows live and past runs;
#   - else a temporary server on a free port for this run, whose dashboard talks to its own API (Prefect's UI
#     otherwise asks 127.0.0.1:4200 for its data). Its database is in $PREFECT_HOME, so `make prefect-ui` shows
#     these runs afterwards. It runs only the services that record runs (events, task runs): scheduling,
#     automations and worker upkeep have nothing to do during a `dvc repro`, and with them the idle server took 7.6%
#     of a core against 2.4% without, taken from the stages on 2 cores (docs/pipeline.md).
healthy() { python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null; }
if [[ -z "${PREFECT_API_URL:-}" ]]; then
  if healthy "http://127.0.0.1:4200/api/health"; then
    export PREFECT_API_URL="http://127.0.0.1:4200/api"
  else
    port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    mkdir -p "$PREFECT_HOME"
    off=()
    for service in TRIGGERS LATE_RUNS SCHEDULER PAUSE_EXPIRATIONS FOREMAN REPOSSESSOR CLEANUP_RECONCILER \
        CANCELLATION_CLEANUP; do off+=("PREFECT_SERVER_SERVICES_${service}_ENABLED=false"); done
    env PREFECT_UI_API_URL="http://127.0.0.1:$port/api" "${off[@]}" \
      prefect server start --host 127.0.0.1 --port "$port" > "$PREFECT_HOME/repro-server.log" 2>&1 &
    server=$!
    trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
    export PREFECT_API_URL="http://127.0.0.1:$port/api"
    for _ in $(seq 240); do healthy "$PREFECT_API_URL/health" && break; sleep 0.5; done
    healthy "$PREFECT_API_URL/health" || {
      echo "the local Prefect server did not start; see $PREFECT_HOME/repro-server.log" >&2; exit 1; }
  fi
fi
