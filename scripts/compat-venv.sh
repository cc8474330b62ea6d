#!/usr/bin/env bash
# Create (once) a virtualenv holding the official qiskit-serverless client and print its python's path.
#
# The client pins certifi, zipp and cloudpickle exactly, which clashes with Ray, so it lives in its own
# virtualenv, cached between runs on this machine:
#   ${GATEWAY_COMPAT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/serverless-gateway/compat-venv-<version>}
# Environment:
#   QISKIT_SERVERLESS_VERSION  client version to install (default 0.37.0)
#   GATEWAY_COMPAT_VENV        where the virtualenv lives (default: the cache directory above)
#   GATEWAY_COMPAT_BASE_PYTHON the interpreter the virtualenv is built from (default: python3.11, else python3)
# Progress goes to stderr; stdout holds only the python path, so `PY=$(scripts/compat-venv.sh)` works.
set -euo pipefail

version="${QISKIT_SERVERLESS_VERSION:-0.37.0}"
venv="${GATEWAY_COMPAT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/serverless-gateway/compat-venv-${version}}"
python="$venv/bin/python"
marker="$venv/.compat-complete-${version}"

ready() {
    [ -f "$marker" ] && [ -x "$python" ] &&
        "$python" -c "import sys, importlib.metadata as m; sys.exit(m.version('qiskit-serverless') != '$version')" \
            >/dev/null 2>&1
}

if ready; then
    echo "$python"
    exit 0
fi

mkdir -p "$(dirname "$venv")"
# One builder at a time: a second run waits for the first, then finds the venv ready.
exec 9>"$venv.lock"
flock 9
if ready; then
    echo "$python"
    exit 0
fi

base="${GATEWAY_COMPAT_BASE_PYTHON:-}"
if [ -z "$base" ]; then
    if command -v python3.11 >/dev/null 2>&1 && python3.11 -c "" >/dev/null 2>&1; then
        base=python3.11
    else
        base=python3
    fi
fi

started=$(date +%s)
echo "compat-venv: building $venv with $base (qiskit-serverless==$version)" >&2
rm -rf "$venv"
"$base" -m venv "$venv" >&2
"$python" -m pip install --quiet --upgrade pip uv >&2
# uv is much faster than pip here; fall back to pip when uv cannot reach an index pip knows about.
if ! "$venv/bin/uv" pip install --quiet --python "$python" "qiskit-serverless==${version}" >&2; then
    echo "compat-venv: uv failed, falling back to pip" >&2
    "$python" -m pip install --quiet "qiskit-serverless==${version}" >&2
fi
"$python" -c "import qiskit_serverless; print('compat-venv: qiskit-serverless', qiskit_serverless.__version__)" >&2
touch "$marker"
echo "compat-venv: ready in $(($(date +%s) - started)) s" >&2
echo "$python"
