#!/usr/bin/env bash
# Creates the development virtualenv of the jobledger package: requirements-dev.txt
# (pinned, from PyPI) and the package itself, editable (`pip install -e`), so the venv
# always runs the working tree's code.
#
#   clients/python/setup.sh          into target/python-client-venv (what the tests use)
#   clients/python/setup.sh VENV     into VENV
#
# Needs python3 >= 3.10 with the venv module (PYTHON=... picks another). Reused while
# requirements-dev.txt, pyproject.toml and the Python version stay the same; concurrent
# runs (tests in parallel) wait for one another. Prints the venv's path. Exit status 2
# when it could not be installed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${1:-$repo/target/python-client-venv}"
python="${PYTHON:-python3}"

if ! version="$("$python" -c 'import sys; assert sys.version_info >= (3, 10); print(sys.version.split()[0])' 2>/dev/null)"; then
  echo "setup.sh: $python is missing or older than Python 3.10 (set PYTHON=...)" >&2
  exit 2
fi
stamp="$(cat "$here/requirements-dev.txt" "$here/pyproject.toml" | sha256sum | cut -d' ' -f1) python-$version"

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
if command -v flock >/dev/null; then flock 9; fi
if [[ "$(cat "$venv/.installed" 2>/dev/null || true)" != "$stamp" ]]; then
  echo "setup.sh: installing requirements-dev.txt and the package (editable) into $venv (Python $version)" >&2
  rm -rf "$venv"
  if ! "$python" -m venv "$venv"; then
    echo "setup.sh: '$python -m venv' failed: install the venv module (Debian: apt-get install python3-venv)" >&2
    exit 2
  fi
  pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input --timeout 20 --retries 2)
  if ! "${pip[@]}" -r "$here/requirements-dev.txt" ||
    ! "${pip[@]}" --no-deps --no-build-isolation -e "$here"; then
    rm -rf "$venv"
    echo "setup.sh: could not install into $venv (is PyPI reachable? see pip's message above)" >&2
    exit 2
  fi
  echo "$stamp" >"$venv/.installed"
fi
echo "$venv"
