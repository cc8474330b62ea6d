#!/usr/bin/env bash
# Refresh requirements.lock and requirements-dev.lock from pyproject.toml (newest versions that fit).
# Uses uv (installed into the project's virtualenv by scripts/bootstrap.sh, or any uv on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
uv="${UV:-}"
if [ -z "$uv" ]; then
    if [ -x .venv/bin/uv ]; then uv=.venv/bin/uv; elif command -v uv >/dev/null 2>&1; then uv=uv; else
        echo "lock.sh: no uv found; run scripts/bootstrap.sh first or 'pip install uv'" >&2
        exit 1
    fi
fi
common=(--universal --python-version 3.11 --generate-hashes --quiet --custom-compile-command scripts/lock.sh "$@")
"$uv" pip compile pyproject.toml "${common[@]}" -o requirements.lock
"$uv" pip compile pyproject.toml --extra dev "${common[@]}" -o requirements-dev.lock
echo "lock.sh: wrote requirements.lock and requirements-dev.lock" >&2
