"""`AsyncClient`: the asyncio client of jobledger (`Client` is the blocking one)."""

from __future__ import annotations

import asyncio
import builtins
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2

from jobledger import _settings as s
from jobledger._models import (
    ClaimedJob,
    Counts,
    CreateResult,
    Job,
    JobEvent,
    JobSpec,
    JobStatus,
    RetryPolicy,
    Seconds,
    TransitionResult,
    from_timestamp,
    to_duration,
)
from jobledger.errors import JobledgerError, from_rpc_error, from_status_proto
from jobledger.v1 import ledger_pb2, ledger_pb2_grpc

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class AsyncClient:
    """An asyncio client of jobledger over one gRPC channel (one event loop).

    Every call has a deadline (`timeout` seconds, per call or the client's). A call that
    fails with UNAVAILABLE is repeated when it is idempotent (see `Retries`); every other
    failure raises the `jobledger.errors` class of its reason at once.

    >>> async with AsyncClient("127.0.0.1:50051") as client:
    ...     job = (await client.create("report", idempotency_key="r-05")).job
    """

    def __init__(
        self,
        target: str = s.DEFAULT_TARGET,
        *,
        org_id: str = "",
        token: s.TokenSource | None = None,
        tls: s.TLS | bool | None = None,
        timeout: float = 10.0,
        retries: s.Retries | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """Connects (lazily) to `target`: `host:port`, `http://host:port` or
        `https://host:port`. `org_id` is the default org of every call ("" = the default
        org, or the token's with authentication on); `token` a bearer token (or a
        function returning it); `tls` True (system roots) or a `TLS`."""
        self.settings = s.Settings(
            target=target,
            org_id=org_id,
            token=token,
            tls=tls,
            timeout=timeout,
            retries=retries or s.Retries(),
            channel_options=channel_options,
        )
        self._channel = self.settings.aio_channel()
        self._stub = ledger_pb2_grpc.JobLedgerStub(self._channel)

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(
        self,
        method: Callable[..., Awaitable[Resp]],
        request: Req,
        *,
        idempotent: bool,
        timeout: float | None = None,
    ) -> Resp:
        """One unary call under a deadline, repeated after UNAVAILABLE when idempotent."""
        clock = self.settings.retries.delays()
        while True:
            try:
                return await method(
                    request,
                    timeout=timeout or self.settings.timeout,
                    metadata=self.settings.metadata(),
                )
            except grpc.RpcError as err:
                error = from_rpc_error(err)
                wait = clock.next_wait(error, idempotent)
                if wait is None:
                    raise error from None
                await asyncio.sleep(wait)

    # --- jobs ---------------------------------------------------------------------------

    async def create(
        self,
        type: str,
        params: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str = "",
        priority: int = 0,
        max_attempts: int = 0,
        requested_by: str = "",
        run_after: dt.datetime | dt.timedelta | None = None,
        retry_policy: RetryPolicy | None = None,
        org_id: str | None = None,
        timeout: float | None = None,
    ) -> CreateResult:
        """Creates a job in QUEUED. With an `idempotency_key`, a repeat with the same type
        and params returns the existing job (`created` False), and the call is repeated
        after UNAVAILABLE; the same key with other input raises `IdempotencyKeyReused`.
        `run_after` (an instant, or a delay from now) schedules it; `max_attempts` 0 is
        the server's default (5)."""
        request = s.create_request(
            self.settings.org(org_id),
            type=type,
            params=params,
            idempotency_key=idempotency_key,
            priority=priority,
            max_attempts=max_attempts,
            requested_by=requested_by,
            run_after=run_after,
            retry_policy=retry_policy,
        )
        response = await self._call(
            self._stub.CreateJob, request, idempotent=bool(idempotency_key), timeout=timeout
        )
        return CreateResult(Job.from_proto(response.job), response.created)

    async def create_many(
        self, jobs: Iterable[JobSpec], *, timeout: float | None = None
    ) -> builtins.list[CreateResult | JobledgerError]:
        """Creates up to 1,000 jobs in one call and one transaction. Each entry is
        answered as a `create` of its own would be: a `CreateResult`, or the exception it
        would have raised (one bad entry never fails its neighbours). Repeated after
        UNAVAILABLE only when every entry has an idempotency key."""
        request = ledger_pb2.CreateJobsRequest(
            jobs=[job.to_proto(self.settings.org_id) for job in jobs]
        )
        idempotent = all(job.idempotency_key for job in request.jobs)
        response = await self._call(
            self._stub.CreateJobs, request, idempotent=idempotent, timeout=timeout
        )
        return [
            from_status_proto(r.error)
            if r.HasField("error")
            else CreateResult(Job.from_proto(r.job), r.created)
            for r in response.results
        ]

    async def get(
        self, job_id: str, *, org_id: str | None = None, timeout: float | None = None
    ) -> Job:
        """The job (raises `JobNotFound`)."""
        request = ledger_pb2.GetJobRequest(org_id=self.settings.org(org_id), job_id=job_id)
        response = await self._call(self._stub.GetJob, request, idempotent=True, timeout=timeout)
        return Job.from_proto(response.job)

    async def list(
        self,
        *,
        statuses: Sequence[JobStatus] = (),
        type: str = "",
        created_after: dt.datetime | None = None,
        created_before: dt.datetime | None = None,
        idempotency_key: str = "",
        page_size: int = 200,
        org_id: str | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[Job]:
        """The org's jobs matching every filter given, newest first, fetched a page at a
        time as the iterator is consumed. Jobs created while it runs are not part of it."""
        request = s.list_request(
            self.settings.org(org_id),
            statuses=statuses,
            type=type,
            created_after=created_after,
            created_before=created_before,
            idempotency_key=idempotency_key,
            page_size=page_size,
        )
        while True:
            page = await self._call(self._stub.ListJobs, request, idempotent=True, timeout=timeout)
            for job in page.jobs:
                yield Job.from_proto(job)
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    async def count(
        self, *, type: str = "", org_id: str | None = None, timeout: float | None = None
    ) -> Counts:
        """Exact counts of the org's jobs (of one `type`, if given)."""
        request = ledger_pb2.CountJobsRequest(org_id=self.settings.org(org_id), type=type)
        response = await self._call(self._stub.CountJobs, request, idempotent=True, timeout=timeout)
        return Counts.from_proto(response)

    async def transition(
        self,
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
        org_id: str | None = None,
        timeout: float | None = None,
    ) -> TransitionResult:
        """Moves the job along the state machine. `attempt` fences the report to the
        attempt the caller holds (`StaleAttempt`, `JobNotRunning` otherwise);
        `expected_status` compares and sets (`StatusMismatch`). Every call carries a
        `request_id` (generated unless given) and is repeated after UNAVAILABLE: a repeat
        of an applied step is answered from the ledger's record, never applied twice."""
        request = s.transition_request(
            self.settings.org(org_id),
            job_id,
            to_status,
            expected_status=expected_status,
            attempt=attempt,
            stage=stage,
            progress=progress,
            result=result,
            error_code=error_code,
            error_message=error_message,
            detail=detail,
            actor=actor,
            request_id=request_id,
            lease=lease,
            retry_after=retry_after,
        )
        response = await self._call(
            self._stub.TransitionJob, request, idempotent=True, timeout=timeout
        )
        return TransitionResult.from_proto(response)

    async def cancel(
        self,
        job_id: str,
        *,
        reason: str = "",
        actor: str = "",
        org_id: str | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Cancels the job (from QUEUED, RUNNING or FAILED; `reason` is recorded as its
        error message). Its worker is told at its next heartbeat and stops."""
        result = await self.transition(
            job_id,
            JobStatus.CANCELED,
            error_message=reason,
            actor=actor,
            org_id=org_id,
            timeout=timeout,
        )
        return result.job

    async def events(
        self,
        job_id: str = "",
        *,
        after_cursor: str = "",
        history_only: bool = False,
        org_id: str | None = None,
    ) -> AsyncIterator[JobEvent]:
        """A job's events (or, with no `job_id`, the org's from now on), stored ones
        first, then live ones as they are written. A job's stream ends after its event
        into SUCCEEDED, CANCELED or DEAD_LETTER; the org's runs until the iterator is
        closed. A stream cut by UNAVAILABLE (a server shutting down or restarting, a
        broken connection) is resumed after the last event received, so every event
        arrives exactly once; it gives up (raising `Unavailable`) when the server stays
        away for the retry budget."""
        org = self.settings.org(org_id)
        cursor = after_cursor
        clock = self.settings.retries.delays()
        while True:
            request = ledger_pb2.StreamEventsRequest(
                org_id=org, job_id=job_id, after_cursor=cursor, history_only=history_only
            )
            call = self._stub.StreamEvents(request, metadata=self.settings.metadata())
            try:
                async for message in call:
                    event = JobEvent.from_proto(message)
                    cursor = event.cursor
                    clock = self.settings.retries.delays()
                    yield event
                return
            except grpc.RpcError as err:
                error = from_rpc_error(err)
                wait = clock.next_wait(error, idempotent=True)
                if wait is None:
                    raise error from None
                await asyncio.sleep(wait)
            finally:
                call.cancel()

    async def call_transition(
        self, request: ledger_pb2.TransitionJobRequest, *, timeout: float | None = None
    ) -> TransitionResult:
        """TransitionJob with a request built by `jobledger.transition_request` (repeated
        after UNAVAILABLE when it has a request_id)."""
        response = await self._call(
            self._stub.TransitionJob, request, idempotent=bool(request.request_id), timeout=timeout
        )
        return TransitionResult.from_proto(response)

    async def transition_many(
        self, requests: Sequence[ledger_pb2.TransitionJobRequest], *, timeout: float | None = None
    ) -> builtins.list[TransitionResult | JobledgerError]:
        """Up to 1,000 transitions in one call and one transaction, each answered as a call
        of its own would be: a `TransitionResult`, or the exception it would have raised.
        Build the requests with `jobledger.transition_request` (each with its request_id,
        so the call is repeated after UNAVAILABLE)."""
        request = ledger_pb2.TransitionJobsRequest(transitions=requests)
        idempotent = all(r.request_id for r in requests)
        response = await self._call(
            self._stub.TransitionJobs, request, idempotent=idempotent, timeout=timeout
        )
        return [
            from_status_proto(r.error)
            if r.HasField("error")
            else TransitionResult.from_proto(r.response)
            for r in response.results
        ]

    # --- dispatch -----------------------------------------------------------------------

    async def claim(
        self,
        types: Sequence[str],
        *,
        worker_id: str,
        max_jobs: int = 1,
        lease: Seconds = 30.0,
        wait: Seconds = 0.0,
        all_orgs: bool = False,
        org_id: str | None = None,
    ) -> builtins.list[ClaimedJob]:
        """Claims up to `max_jobs` jobs of `types`, each started under a `lease` held by
        `worker_id`; long-polls up to `wait` while none is claimable. Never repeated (a
        lost answer may have taken jobs). Most programs want `Worker` instead."""
        request = s.claim_request(
            self.settings.org(org_id),
            types=types,
            worker_id=worker_id,
            max_jobs=max_jobs,
            lease=lease,
            wait=wait,
            all_orgs=all_orgs,
        )
        timeout = s.claim_timeout(wait, self.settings.timeout)
        response = await self._call(
            self._stub.ClaimJobs, request, idempotent=False, timeout=timeout
        )
        return [
            ClaimedJob(Job.from_proto(c.job), JobEvent.from_proto(c.event)) for c in response.jobs
        ]

    async def heartbeat(
        self,
        job_id: str,
        attempt: int,
        *,
        lease: Seconds | None = None,
        org_id: str | None = None,
        timeout: float | None = None,
        repeat: bool = True,
    ) -> dt.datetime | None:
        """Extends the lease of the attempt the caller holds; the new expiry. Raises
        `JobNotRunning` or `StaleAttempt` when the job is no longer the caller's.
        `repeat=False`: not repeated after UNAVAILABLE (a worker heartbeats again soon)."""
        request = ledger_pb2.HeartbeatJobRequest(
            org_id=self.settings.org(org_id),
            job_id=job_id,
            attempt=attempt,
            lease=to_duration(lease),
        )
        response = await self._call(
            self._stub.HeartbeatJob, request, idempotent=repeat, timeout=timeout
        )
        return from_timestamp(response, "lease_expires_at")

    # --- health -------------------------------------------------------------------------

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The standard health check: `SERVING`, `NOT_SERVING`, ... of `service` (""
        and `jobledger.v1.JobLedger`: the database answers; `liveness`: the process)."""
        check = self._channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        request = health_pb2.HealthCheckRequest(service=service)
        response = await self._call(check, request, idempotent=True, timeout=timeout)
        name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        return name
