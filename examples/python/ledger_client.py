"""What the jobledger Python examples share: the generated client, the connection
flags, retries of transient failures, and reading jobledger's rich error details.

The client is generated from proto/jobledger/v1/ledger.proto by generate.sh into
./generated (or the directory named by JOBLEDGER_PYTHON_GENERATED).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

HERE = Path(__file__).resolve().parent
GENERATED = Path(os.environ.get("JOBLEDGER_PYTHON_GENERATED") or HERE / "generated")
if not (GENERATED / "jobledger" / "v1" / "ledger_pb2.py").is_file():
    sys.exit(
        f"the generated client is missing from {GENERATED}: run {HERE / 'generate.sh'} first"
    )
sys.path.insert(0, str(GENERATED))

import grpc  # noqa: E402
from google.protobuf import json_format, struct_pb2  # noqa: E402
from google.rpc import error_details_pb2, status_pb2  # noqa: E402
from jobledger.v1 import ledger_pb2  # noqa: E402

QUEUED = ledger_pb2.JOB_STATUS_QUEUED
RUNNING = ledger_pb2.JOB_STATUS_RUNNING
SUCCEEDED = ledger_pb2.JOB_STATUS_SUCCEEDED
FAILED = ledger_pb2.JOB_STATUS_FAILED
CANCELED = ledger_pb2.JOB_STATUS_CANCELED
DEAD_LETTER = ledger_pb2.JOB_STATUS_DEAD_LETTER
# A job-scope StreamEvents ends after an event into one of these.
FINAL = frozenset({SUCCEEDED, CANCELED, DEAD_LETTER})

# The job type of the old Python stack (its `jobs` table had no types; the migration
# imports those rows as this type).
MOCK_PROCESS = "mock_process"

DEFAULT_ADDR = "127.0.0.1:50051"

# Worth repeating the same request: the server was unreachable, shutting down, or the
# database was (UNAVAILABLE, with a RetryInfo), or the call ran out of time. Repeating
# is safe only for idempotent requests: a CreateJob with an idempotency_key, a
# TransitionJob with a request_id, a HeartbeatJob, and reads. Not a ClaimJobs: a claim
# whose answer was lost may have taken jobs (their leases run out and they are rescued).
TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--addr",
        default=os.environ.get("JOBLEDGER_ADDR", DEFAULT_ADDR),
        help="jobledger's address, host:port or http://host:port "
        f"(env JOBLEDGER_ADDR; default {DEFAULT_ADDR})",
    )
    parser.add_argument(
        "--org",
        default=os.environ.get("JOBLEDGER_ORG", ""),
        help='the org (UUID) to work in (env JOBLEDGER_ORG; default "": the default org)',
    )


def target(addr: str) -> str:
    """A gRPC target from an address as the jobledger CLI takes it (http://host:port)."""
    for scheme in ("http://", "grpc://"):
        if addr.startswith(scheme):
            return addr[len(scheme) :].rstrip("/")
    return addr


def channel(addr: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target(addr))


def status_name(status: int) -> str:
    """QUEUED, RUNNING, ... for a JobStatus value."""
    return ledger_pb2.JobStatus.Name(status).removeprefix("JOB_STATUS_")


def to_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as a dict. Struct numbers are doubles; whole ones come back as ints
    (the ledger stores them as JSON integers, as the old stack wrote them)."""
    return _whole_numbers(json_format.MessageToDict(struct))


def _whole_numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value


def show(value: Any) -> str:
    """A value for a log line: a bare word as is, anything else as compact JSON."""
    if isinstance(value, str) and value and not any(c.isspace() or c in "\"'" for c in value):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def iso(ts: Any) -> str:
    """A google.protobuf.Timestamp as ISO 8601 UTC with milliseconds: 2026-05-01T12:00:00.250Z."""
    return ts.ToDatetime().strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def log(*parts: Any) -> None:
    print(*parts, flush=True)


@dataclass
class RichError:
    """A failed call as jobledger describes it: the status code and message, plus the
    google.rpc.Status details of the `grpc-status-details-bin` trailer. Every jobledger
    error has an ErrorInfo (domain `jobledger`, an UPPER_SNAKE reason, metadata);
    INVALID_ARGUMENT adds a BadRequest naming each bad field, FAILED_PRECONDITION a
    PreconditionFailure, UNAVAILABLE a RetryInfo."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: list[tuple[str, str]] = field(default_factory=list)
    precondition_violations: list[tuple[str, str, str]] = field(default_factory=list)
    retry_delay: float | None = None

    def __str__(self) -> str:
        parts = [f"{self.code.name}: {self.message}"]
        if self.reason:
            parts.append(f"reason={self.reason}")
        parts += [f"{k}={v}" for k, v in sorted(self.metadata.items())]
        parts += [f"field {name!r}: {why}" for name, why in self.field_violations]
        parts += [f"precondition {kind} {subject}: {why}" for kind, subject, why in self.precondition_violations]
        if self.retry_delay is not None:
            parts.append(f"retry_after={self.retry_delay:g}s")
        return " | ".join(parts)


def rich_error(err: grpc.RpcError) -> RichError:
    """Decodes a failed call (grpc.RpcError, or grpc.aio.AioRpcError) into a RichError.

    The details travel as a serialized google.rpc.Status in the binary trailer
    `grpc-status-details-bin`; each detail is a google.protobuf.Any. (grpcio-status's
    `rpc_status.from_call` does the first step too; it is spelled out here.)"""
    rich = RichError(code=err.code(), message=err.details() or "")
    for key, value in err.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                rich.reason, rich.domain = info.reason, info.domain
                rich.metadata = dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                rich.field_violations = [(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
                failure = error_details_pb2.PreconditionFailure()
                detail.Unpack(failure)
                rich.precondition_violations = [
                    (v.type, v.subject, v.description) for v in failure.violations
                ]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                rich.retry_delay = retry.retry_delay.ToTimedelta().total_seconds()
    return rich


async def call(
    method: Callable[..., Awaitable[Any]],
    request: Any,
    *,
    what: str,
    tries: int = 5,
    timeout: float = 10.0,
) -> Any:
    """One unary call with a deadline; a transient failure is retried with the same
    request (so only for idempotent requests, see TRANSIENT), waiting as the server's
    RetryInfo says or with a growing backoff. Any other error is raised at once."""
    backoff = 0.2
    for attempt in range(1, tries + 1):
        try:
            return await method(request, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            if err.code() not in TRANSIENT or attempt == tries:
                raise
            rich = rich_error(err)
            wait = rich.retry_delay if rich.retry_delay is not None else backoff
            print(f"{what}: {rich}; repeating the same request in {wait:g}s", file=sys.stderr, flush=True)
            await asyncio.sleep(wait)
            backoff = min(backoff * 2, 5.0)
    raise AssertionError("unreachable")
