#!/usr/bin/env bash
# Generate the Python client of jobledger from the contract, proto/jobledger/v1/ledger.proto.
#
#   examples/python/generate.sh           into examples/python/generated (git-ignored)
#   examples/python/generate.sh OUT_DIR   into OUT_DIR (then set JOBLEDGER_PYTHON_GENERATED=OUT_DIR)
#
# Uses grpcio-tools (its bundled protoc) from examples/python/.venv, or the python given
# as PYTHON (run setup.sh first). Writes jobledger/v1/ledger_pb2.py (messages),
# ledger_pb2_grpc.py (the JobLedgerStub) and ledger_pb2.pyi (types for editors).
# google/rpc/status.proto is read from proto/ but not generated: its module,
# google.rpc.status_pb2, comes from googleapis-common-protos with ErrorInfo & co.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${1:-$here/generated}"
if [[ -n "${PYTHON:-}" ]]; then
  python="$PYTHON"
elif [[ -x "$here/.venv/bin/python" ]]; then
  python="$here/.venv/bin/python"
else
  python=python3
fi
if ! "$python" -c 'import grpc_tools.protoc' 2>/dev/null; then
  echo "generate.sh: grpcio-tools is not installed for $python: run examples/python/setup.sh first (or set PYTHON)" >&2
  exit 2
fi

# Generate next to the target and swap it in, so a reader never sees half a client.
mkdir -p "$(dirname "$out")"
tmp="$(mktemp -d "${out%/}.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
"$python" -m grpc_tools.protoc -I "$repo/proto" \
  --python_out="$tmp" --grpc_python_out="$tmp" --pyi_out="$tmp" \
  jobledger/v1/ledger.proto
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "generate.sh: wrote the jobledger.v1 client into $out" >&2
