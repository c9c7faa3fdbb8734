# Quiet, project-local settings for DVC, Prefect, MLflow and Hugging Face (docs/architecture.md §12).
# Sourced by the Makefile targets; source it yourself before running `dvc`/`prefect`/`mlflow` by hand.
_p2p_root=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)
export PREFECT_HOME="${PREFECT_HOME:-$_p2p_root/.prefect}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-180}"
export MLFLOW_DISABLE_TELEMETRY=true
export DO_NOT_TRACK=1
export DVC_NO_ANALYTICS=1
export DVC_STUDIO_OFFLINE=true
export DVC_SITE_CACHE_DIR="${DVC_SITE_CACHE_DIR:-$_p2p_root/.dvc_site_cache}"
export TOKENIZERS_PARALLELISM=false
unset _p2p_root
