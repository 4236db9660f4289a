"""What both clients share: where the server is, how to reach it (TLS, a bearer token),
deadlines, which failures are repeated and how long to wait between tries, and the
requests they build."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from jobledger._models import (
    JobSpec,
    JobStatus,
    RetryPolicy,
    Seconds,
    seconds,
    to_duration,
    to_struct,
    to_timestamp,
)
from jobledger.errors import JobledgerError
from jobledger.v1 import ledger_pb2

DEFAULT_TARGET = "127.0.0.1:50051"


@dataclass(frozen=True, slots=True)
class TLS:
    """TLS to the server. Each value is PEM bytes or a path to a PEM file; with none,
    the system's roots are trusted. A client certificate and key make it mutual TLS."""

    root_certificates: bytes | str | Path | None = None
    certificate_chain: bytes | str | Path | None = None
    private_key: bytes | str | Path | None = None
    server_name: str | None = None
    """The name to check the server's certificate against, if not the target's host."""

    def credentials(self) -> grpc.ChannelCredentials:
        """As gRPC channel credentials."""
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.root_certificates),
            private_key=_pem(self.private_key),
            certificate_chain=_pem(self.certificate_chain),
        )


def _pem(value: bytes | str | Path | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


@dataclass(frozen=True, slots=True)
class Retries:
    """How the library repeats a call that failed with UNAVAILABLE (server restarting or
    unreachable, database down): only calls that are idempotent — reads, creates with an
    idempotency key, transitions (each carries a request_id the library generated, so a
    repeat is answered from the ledger's record and never applied twice), heartbeats.
    Never a claim (a claim whose answer was lost may have taken jobs; their leases run
    out and they are rescued).

    Waits `initial_backoff`, doubling up to `max_backoff` (each x a random factor in
    [0.5, 1]), or what the server's RetryInfo asks, and gives up once the next try would
    start more than `budget` seconds after the first.
    """

    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    budget: float = 30.0

    def delays(self) -> RetryClock:
        """A fresh clock for one call."""
        return RetryClock(self)


NO_RETRIES = Retries(budget=0.0)
"""Retries that never repeat a call."""


@dataclass(slots=True)
class RetryClock:
    """The waits of one call's tries."""

    retries: Retries
    spent: float = 0.0
    backoff: float = field(init=False)

    def __post_init__(self) -> None:
        self.backoff = self.retries.initial_backoff

    def next_wait(self, error: JobledgerError, idempotent: bool) -> float | None:
        """How long to wait before trying again, or None to give up and raise `error`."""
        if not (error.retryable and idempotent):
            return None
        wait = error.retry_delay
        if wait is None:
            wait = self.backoff * random.uniform(0.5, 1.0)
            self.backoff = min(self.backoff * 2, self.retries.max_backoff)
        if self.spent + wait > self.retries.budget:
            return None
        self.spent += wait
        return wait


TokenSource = str | Callable[[], str]
"""A bearer token, or a function returning the current one (called on every call)."""


@dataclass(frozen=True, slots=True)
class Settings:
    """A client's connection settings (the keyword arguments of `Client`)."""

    target: str = DEFAULT_TARGET
    org_id: str = ""
    token: TokenSource | None = None
    tls: TLS | bool | None = None
    timeout: float = 10.0
    retries: Retries = field(default_factory=Retries)
    channel_options: Sequence[tuple[str, Any]] = ()

    def address(self) -> tuple[str, bool]:
        """The gRPC target and whether it uses TLS: `host:port`, `http://host:port`
        (plaintext) or `https://host:port` (TLS with the system's roots unless `tls`)."""
        target, secure = self.target, bool(self.tls)
        for scheme, tls in (("http://", False), ("grpc://", False), ("https://", True)):
            if target.startswith(scheme):
                target, secure = target[len(scheme) :].rstrip("/"), secure or tls
        return target, secure

    def options(self) -> list[tuple[str, Any]]:
        """Channel options: reconnect quickly after the server comes back (gRPC's default
        backoff grows to 2 minutes), plus the caller's."""
        options: list[tuple[str, Any]] = [
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ]
        if isinstance(self.tls, TLS) and self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return options + list(self.channel_options)

    def credentials(self) -> grpc.ChannelCredentials:
        """The TLS credentials of a secure channel."""
        return self.tls.credentials() if isinstance(self.tls, TLS) else TLS().credentials()

    def sync_channel(self) -> grpc.Channel:
        """A blocking channel to the server."""
        target, secure = self.address()
        if secure:
            return grpc.secure_channel(target, self.credentials(), options=self.options())
        return grpc.insecure_channel(target, options=self.options())

    def aio_channel(self) -> grpc.aio.Channel:
        """An asyncio channel to the server."""
        target, secure = self.address()
        if secure:
            return grpc.aio.secure_channel(target, self.credentials(), options=self.options())
        return grpc.aio.insecure_channel(target, options=self.options())

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata: the bearer token, if any."""
        if self.token is None:
            return ()
        token = self.token() if callable(self.token) else self.token
        return (("authorization", f"Bearer {token}"),)

    def org(self, org_id: str | None) -> str:
        """The org of a call: the argument, else the client's."""
        return self.org_id if org_id is None else org_id


def new_request_id() -> str:
    """A request_id for a transition: unique, so no two steps ever share one."""
    return uuid.uuid4().hex


# --- requests ---------------------------------------------------------------------------


def create_request(
    org_id: str,
    *,
    type: str,
    params: Mapping[str, Any] | None,
    idempotency_key: str,
    priority: int,
    max_attempts: int,
    requested_by: str,
    run_after: dt.datetime | dt.timedelta | None,
    retry_policy: RetryPolicy | None,
) -> ledger_pb2.CreateJobRequest:
    """A CreateJobRequest."""
    spec = JobSpec(
        type=type,
        params=params,
        idempotency_key=idempotency_key,
        priority=priority,
        max_attempts=max_attempts,
        requested_by=requested_by,
        run_after=run_after,
        retry_policy=retry_policy,
        org_id=org_id,
    )
    return spec.to_proto(org_id)


def transition_request(
    org_id: str,
    job_id: str,
    to_status: JobStatus,
    *,
    expected_status: JobStatus | None = None,
    attempt: int | None = None,
    stage: str = "",
    progress: int | None = None,
    result: Mapping[str, Any] | None = None,
    error_code: str = "",
    error_message: str = "",
    detail: Mapping[str, Any] | None = None,
    actor: str = "",
    request_id: str | None = None,
    lease: Seconds | None = None,
    retry_after: Seconds | None = None,
) -> ledger_pb2.TransitionJobRequest:
    """A TransitionJobRequest, with a fresh request_id unless one is given."""
    request = ledger_pb2.TransitionJobRequest(
        org_id=org_id,
        job_id=job_id,
        to_status=ledger_pb2.JobStatus.ValueType(to_status),
        stage=stage,
        result=to_struct(result),
        error_code=error_code,
        error_message=error_message,
        detail=to_struct(detail),
        actor=actor,
        request_id=new_request_id() if request_id is None else request_id,
        lease=to_duration(lease),
        retry_after=to_duration(retry_after),
    )
    if expected_status is not None:
        request.expected_status = ledger_pb2.JobStatus.ValueType(expected_status)
    if attempt is not None:
        request.attempt = attempt
    if progress is not None:
        request.progress = progress
    return request


def list_request(
    org_id: str,
    *,
    statuses: Sequence[JobStatus],
    type: str,
    created_after: dt.datetime | None,
    created_before: dt.datetime | None,
    idempotency_key: str,
    page_size: int,
) -> ledger_pb2.ListJobsRequest:
    """The first page's ListJobsRequest."""
    return ledger_pb2.ListJobsRequest(
        org_id=org_id,
        statuses=[ledger_pb2.JobStatus.ValueType(s) for s in statuses],
        type=type,
        created_after=to_timestamp(created_after),
        created_before=to_timestamp(created_before),
        idempotency_key=idempotency_key,
        page_size=page_size,
    )


def claim_request(
    org_id: str,
    *,
    types: Sequence[str],
    worker_id: str,
    max_jobs: int,
    lease: Seconds,
    wait: Seconds,
    all_orgs: bool,
) -> ledger_pb2.ClaimJobsRequest:
    """A ClaimJobsRequest."""
    return ledger_pb2.ClaimJobsRequest(
        org_id="" if all_orgs else org_id,
        types=list(types),
        worker_id=worker_id,
        max_jobs=max_jobs,
        lease=to_duration(lease),
        wait=to_duration(wait),
        all_orgs=all_orgs,
    )


def claim_timeout(wait: Seconds, timeout: float) -> float:
    """A claim's deadline: its long-poll plus the call's own time."""
    return seconds(wait) + timeout
