#!/usr/bin/env bash
# Set up the virtualenv with the test tools if needed (scripts/bootstrap.sh --dev) and run the test suite.
# Arguments go to pytest, e.g. scripts/test.sh -q tests/api. The tests use GATEWAY_TEST_DATABASE_URL if set,
# else PostgreSQL on 127.0.0.1:5432 if it answers, else an embedded PostgreSQL; engine tests start their own Ray.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$("$root/scripts/bootstrap.sh" --dev)"
cd "$root"
exec "$venv/bin/python" -m pytest "$@"
