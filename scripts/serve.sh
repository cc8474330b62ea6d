#!/usr/bin/env bash
# Set up the virtualenv if needed (scripts/bootstrap.sh) and start the gateway on its embedded defaults:
# an embedded PostgreSQL, a local Ray head and file storage, all under ./.gateway (GATEWAY_DATA_DIR).
# Arguments go to `serverless-gateway serve`, e.g. scripts/serve.sh --host 0.0.0.0 --port 8080
set -euo pipefail
venv="$("$(dirname "$0")/bootstrap.sh")"
exec "$venv/bin/serverless-gateway" serve "$@"
