#!/usr/bin/env bash
# Generates the protobuf and gRPC modules of the `jobledger` package from the contract,
# proto/jobledger/v1/ledger.proto, and commits nothing: run it after changing the proto,
# then commit src/jobledger/v1/ (a test fails while the committed modules are stale).
#
#   clients/python/generate.sh           into clients/python/src (jobledger/v1/...)
#   clients/python/generate.sh OUT_DIR   into OUT_DIR/jobledger/v1 (the staleness test)
#
# Needs a python with requirements-dev.txt installed (grpcio-tools: protoc and the gRPC
# plugin; mypy-protobuf: typed .pyi stubs): PYTHON=..., else target/python-client-venv.
# google/rpc/status.proto is read, not generated: google.rpc.status_pb2 comes from
# googleapis-common-protos.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${1:-$here/src}"
python="${PYTHON:-$repo/target/python-client-venv/bin/python}"
bin="$(dirname "$python")"
if ! "$python" -c 'import grpc_tools.protoc, mypy_protobuf' 2>/dev/null || [[ ! -x "$bin/protoc-gen-mypy" ]]; then
  echo "generate.sh: $python lacks grpcio-tools or mypy-protobuf: install clients/python/requirements-dev.txt into its venv (or set PYTHON)" >&2
  exit 2
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$python" -m grpc_tools.protoc -I "$repo/proto" \
  --plugin=protoc-gen-mypy="$bin/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$bin/protoc-gen-mypy_grpc" \
  --python_out="$tmp" --grpc_python_out="$tmp" \
  --mypy_out="$tmp" --mypy_grpc_out="$tmp" \
  jobledger/v1/ledger.proto
cat >"$tmp/jobledger/v1/__init__.py" <<'INIT'
"""Generated from proto/jobledger/v1/ledger.proto by clients/python/generate.sh: do not edit."""
INIT
mkdir -p "$out/jobledger/v1"
rm -f "$out"/jobledger/v1/ledger_pb2*.py* "$out/jobledger/v1/__init__.py"
cp "$tmp"/jobledger/v1/* "$out/jobledger/v1/"
echo "generate.sh: wrote $(ls "$tmp/jobledger/v1" | tr '\n' ' ')into $out/jobledger/v1" >&2
