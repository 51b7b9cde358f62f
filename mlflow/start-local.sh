#!/usr/bin/env bash
# A local MLflow tracking server (UI + REST + model registry) on 127.0.0.1, over the project's embedded
# store: the SQLite file and artifact folder that `make run` writes when MLFLOW_TRACKING_URI is unset
# (mlflow.db and mlartifacts/ in the repository root), so its runs and registered models show in the UI.
#
#   mlflow/start-local.sh                         # http://127.0.0.1:5000
#   VIDPRIOR_MLFLOW_PORT=5001 mlflow/start-local.sh
#   export MLFLOW_TRACKING_URI=http://127.0.0.1:5000   # then the stages and the CLI log through it
#
# VIDPRIOR_MLFLOW_STORE: the folder holding mlflow.db and mlartifacts/ (default: the repository root).
# Extra arguments go to `mlflow server` (e.g. --workers 2). Local only: the production server is
# mlflow/kubernetes/ (PostgreSQL + object storage).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
store="${VIDPRIOR_MLFLOW_STORE:-$root}"
port="${VIDPRIOR_MLFLOW_PORT:-5000}"
# The project's virtual environment when there is one (`make install`), else mlflow on the PATH.
mlflow_bin="$root/.venv/bin/mlflow"
[[ -x "$mlflow_bin" ]] || mlflow_bin="$(command -v mlflow)" || {
  echo "start-local.sh: mlflow not found (run 'make install')" >&2
  exit 1
}
mkdir -p "$store/mlartifacts"
# MLflow's GenAI job runner (LLM judges, prompt optimisation) is a second process polling the store;
# vidprior uses none of it, and on SQLite it slows every registry write several times over.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

# --serve-artifacts: clients upload and download through the server (mlflow-artifacts:/ URIs), as they
# do in production; experiments created by the embedded store keep their file: locations.
exec "$mlflow_bin" server \
  --host 127.0.0.1 \
  --port "$port" \
  --workers 1 \
  --backend-store-uri "sqlite:///$store/mlflow.db" \
  --serve-artifacts \
  --artifacts-destination "$store/mlartifacts" \
  "$@"
