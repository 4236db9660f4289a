#!/usr/bin/env bash
# Create a virtualenv with the example's packages (requirements.txt).
#
#   examples/python/setup.sh            into examples/python/.venv
#   examples/python/setup.sh VENV       into VENV (the tests use target/python-example-venv)
#
# Needs python3 (3.10 or newer, with the venv module) and PyPI. The venv is reused while
# requirements.txt and the Python version stay the same, and rebuilt when either changes.
# Concurrent runs (tests in parallel) wait for one another instead of installing into one
# venv at once. Exit status: 0 when the venv is ready, 2 when it could not be installed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-$here/.venv}"
requirements="$here/requirements.txt"
python="${PYTHON:-python3}"

if ! version="$("$python" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null)"; then
  echo "setup.sh: $python not found: the example needs Python 3.10 or newer (set PYTHON=...)" >&2
  exit 2
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "setup.sh: $python is Python $version; the pinned packages need 3.10 or newer (set PYTHON=...)" >&2
  exit 2
fi
stamp="$(sha256sum "$requirements" | cut -d' ' -f1) python-$version"

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
if command -v flock >/dev/null; then flock 9; fi
if [[ "$(cat "$venv/.installed" 2>/dev/null || true)" != "$stamp" ]]; then
  echo "setup.sh: installing $(grep -c '^[a-z]' "$requirements") packages from PyPI into $venv (Python $version)" >&2
  rm -rf "$venv"
  if ! "$python" -m venv "$venv"; then
    echo "setup.sh: '$python -m venv' failed: install the venv module (Debian: apt-get install python3-venv)" >&2
    exit 2
  fi
  # Bounded waits and a few retries, so an unreachable PyPI fails in about a minute
  # with pip's own message above this one, instead of hanging.
  if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    --timeout 20 --retries 2 -r "$requirements"; then
    rm -rf "$venv"
    echo "setup.sh: could not install $requirements from PyPI into $venv (is PyPI reachable? see pip's message above)" >&2
    exit 2
  fi
  echo "$stamp" >"$venv/.installed"
fi
echo "$venv"
