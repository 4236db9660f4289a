#!/usr/bin/env bash
# Creates a virtualenv with the jobledger library (clients/python) for the examples:
#
#   examples/python/setup.sh            into examples/python/.venv
#   examples/python/setup.sh VENV       into VENV
#
# Needs python3 (3.10 or newer, with the venv module) and PyPI (the library's
# dependencies: grpcio, protobuf, googleapis-common-protos, grpcio-health-checking).
# The tests use clients/python/setup.sh's venv instead (the library installed editable).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-$here/.venv}"
python="${PYTHON:-python3}"

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "setup.sh: $python is missing or older than Python 3.10 (set PYTHON=...)" >&2
  exit 2
fi
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$here/../../clients/python"
echo "$venv"
