#!/usr/bin/env bash
# Validate OpenAPI documents (the HTTP API's GET /openapi.json) against the OpenAPI 3
# specification.
#
#   scripts/validate-openapi.sh FILE...
#
# Uses openapi-spec-validator from PyPI (pinned in openapi-validator-requirements.txt),
# installed on first use into a virtualenv under target/ (override with
# JOBLEDGER_OPENAPI_VALIDATOR_VENV); later runs need no network. Exit status: 0 when every
# document is valid, 1 when one is not, 2 when the validator cannot be installed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
requirements="$here/openapi-validator-requirements.txt"
venv="${JOBLEDGER_OPENAPI_VALIDATOR_VENV:-$repo/target/openapi-validator-venv}"
py="$venv/bin/python"

[[ $# -gt 0 ]] || { echo "usage: $0 FILE..." >&2; exit 2; }

# Install (or reinstall after a change of the pins). Concurrent runs wait for one another.
stamp="$(sha256sum "$requirements" | cut -d' ' -f1)"
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
if command -v flock >/dev/null; then flock 9; fi
if [[ "$(cat "$venv/.installed" 2>/dev/null || true)" != "$stamp" ]]; then
  echo "validate-openapi.sh: installing openapi-spec-validator into $venv" >&2
  rm -rf "$venv"
  if ! python3 -m venv "$venv" \
    || ! "$py" -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements"; then
    echo "validate-openapi.sh: could not install the validator (needs python3 with venv and PyPI)" >&2
    exit 2
  fi
  echo "$stamp" >"$venv/.installed"
fi
exec 9>&-

status=0
for file in "$@"; do
  "$py" -m openapi_spec_validator --schema 3.0 "$file" || status=1
done
exit "$status"
