#!/usr/bin/env bash
# Create (or update) the project's virtualenv from the lock file and install the gateway into it.
#
#   scripts/bootstrap.sh          runtime dependencies (requirements.lock)
#   scripts/bootstrap.sh --dev    plus the test and lint tools (requirements-dev.lock)
#
# Needs only Python 3.11+ with pip and venv. Environment:
#   SERVERLESS_GATEWAY_VENV  where the virtualenv lives (default: .venv in the repository)
#   PYTHON                   the interpreter to build it from (default: the first python3.11+ on PATH)
# Re-running is cheap: nothing is installed again until the lock file or pyproject.toml change.
# Progress goes to stderr (the installer's own progress too when stderr is a terminal); stdout holds only the
# virtualenv's path.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${SERVERLESS_GATEWAY_VENV:-$root/.venv}"
kind=runtime
lock="$root/requirements.lock"
if [ "${1:-}" = "--dev" ]; then
    kind=dev
    lock="$root/requirements-dev.lock"
fi

say() { echo "bootstrap: $*" >&2; }

is_new_enough() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }

find_python() {
    if [ -n "${PYTHON:-}" ]; then
        is_new_enough "$PYTHON" || { say "PYTHON=$PYTHON is not Python 3.11 or newer"; exit 1; }
        echo "$PYTHON"
        return
    fi
    for candidate in python3.11 python3.12 python3.13 python3.14 python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 && is_new_enough "$candidate"; then
            echo "$candidate"
            return
        fi
    done
    say "Python 3.11 or newer is needed; none was found on PATH (set PYTHON=/path/to/python3.11)"
    exit 1
}

python="$venv/bin/python"
if [ ! -x "$python" ] || ! is_new_enough "$python"; then
    base="$(find_python)"
    say "creating $venv with $base ($("$base" --version 2>&1))"
    if ! "$base" -m venv "$venv" >&2; then
        say "'$base -m venv' failed; on Debian/Ubuntu install the python3-venv package"
        exit 1
    fi
fi

# What is installed is recorded by a stamp named after the lock files and pyproject.toml; dev includes runtime.
digest="$(cat "$root/requirements.lock" "$root/requirements-dev.lock" "$root/pyproject.toml" | "$python" -c \
    'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])')"
stamp="$venv/.installed-$digest-$kind"
if [ -f "$stamp" ] || [ -f "$venv/.installed-$digest-dev" ]; then
    echo "$venv"
    exit 0
fi

started=$(date +%s)
say "installing $(basename "$lock") into $venv (the first time takes a few minutes: Ray is large)"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# In a terminal the installers show their progress (downloads, builds); in CI logs and pipes they stay quiet.
quiet=(--quiet)
if [ -t 2 ]; then
    quiet=()
fi
"$python" -m pip install --quiet --upgrade pip uv >&2 || say "could not install uv; using pip alone"
installed=""
if [ -x "$venv/bin/uv" ]; then
    # uv is several times faster than pip; fall back to pip if it cannot reach what pip can.
    if "$venv/bin/uv" pip install "${quiet[@]}" --python "$python" -r "$lock" >&2 &&
        "$venv/bin/uv" pip install --quiet --python "$python" --no-deps -e "$root" >&2; then
        installed=yes
    else
        say "uv failed; falling back to pip"
    fi
fi
if [ -z "$installed" ]; then
    say "installing with pip"
    "$python" -m pip install "${quiet[@]}" -r "$lock" >&2
    "$python" -m pip install --quiet --no-deps -e "$root" >&2
fi
find "$venv" -maxdepth 1 -name '.installed-*' ! -name ".installed-$digest-*" -delete
touch "$stamp"
say "ready in $(($(date +%s) - started)) s"
echo "$venv"
