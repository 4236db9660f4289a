"""The values the library hands out: jobs, events, counts, as plain typed Python.

Each model is built from its protobuf message once, so user code never touches
`google.protobuf.Struct` or `Timestamp`: params and results are dicts, times are aware
`datetime`s in UTC, statuses are `JobStatus` members.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from jobledger.v1 import ledger_pb2

JsonObject = dict[str, Any]
"""A JSON object as Python values (params, result, detail)."""


class JobStatus(enum.IntEnum):
    """A job's status; the values are those of `jobledger.v1.JobStatus`."""

    UNSPECIFIED = 0
    QUEUED = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELED = 5
    DEAD_LETTER = 6

    @property
    def is_final(self) -> bool:
        """SUCCEEDED, CANCELED and DEAD_LETTER: a job-scope event stream ends after them."""
        return self in (JobStatus.SUCCEEDED, JobStatus.CANCELED, JobStatus.DEAD_LETTER)

    @classmethod
    def parse(cls, name: str) -> JobStatus:
        """`RUNNING`, `running` or `JOB_STATUS_RUNNING` (as error metadata names them)."""
        return cls[name.upper().removeprefix("JOB_STATUS_")]


# --- conversions -----------------------------------------------------------------------


def to_struct(value: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    """A dict as a Struct (None stays None: the field is left unset)."""
    if value is None:
        return None
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def from_struct(struct: struct_pb2.Struct) -> JsonObject:
    """A Struct as a dict. Struct numbers are doubles; whole ones come back as ints, as
    the ledger stores them (JSON integers)."""
    return {key: _plain(value) for key, value in struct.fields.items()}


def _plain(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return from_struct(value.struct_value)
    if kind == "list_value":
        return [_plain(v) for v in value.list_value.values]
    if kind == "number_value":
        n = value.number_value
        return int(n) if n.is_integer() and abs(n) <= 2**53 else n
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    return None


def to_timestamp(when: dt.datetime | dt.timedelta | None) -> timestamp_pb2.Timestamp | None:
    """An instant (an aware datetime; naive ones are taken as UTC) or a delay from now."""
    if when is None:
        return None
    if isinstance(when, dt.timedelta):
        when = dt.datetime.now(dt.timezone.utc) + when
    elif when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


def from_timestamp(message: Any, name: str) -> dt.datetime | None:
    """The Timestamp field `name` of `message` as an aware UTC datetime, None if unset."""
    if not message.HasField(name):
        return None
    ts: timestamp_pb2.Timestamp = getattr(message, name)
    return ts.ToDatetime(tzinfo=dt.timezone.utc)


Seconds = float | dt.timedelta
"""A duration: seconds as a number, or a timedelta."""


def seconds(value: Seconds) -> float:
    """A duration in seconds."""
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


def to_duration(value: Seconds | None) -> duration_pb2.Duration | None:
    """A duration as a protobuf Duration (None stays unset)."""
    if value is None:
        return None
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds(value) * 1e9))
    return duration


# --- models ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long a job that failed with attempts left waits before it is claimable
    again: min(max_backoff, initial_backoff x 2^(attempt - 1)) x a factor in [0.5, 1).
    None leaves the server's default (1 s and 1 h)."""

    initial_backoff: Seconds | None = None
    max_backoff: Seconds | None = None

    def to_proto(self) -> ledger_pb2.RetryPolicy:
        """As `jobledger.v1.RetryPolicy`."""
        return ledger_pb2.RetryPolicy(
            initial_backoff=to_duration(self.initial_backoff),
            max_backoff=to_duration(self.max_backoff),
        )


@dataclass(frozen=True, slots=True)
class Job:
    """A job as the ledger shows it (GetJob's view: `stage`, `progress`, `result` and
    `last_error_*` as last reported)."""

    id: str
    org_id: str
    type: str
    status: JobStatus
    attempt: int
    max_attempts: int
    priority: int
    idempotency_key: str
    requested_by: str
    params: JsonObject
    created_at: dt.datetime | None
    updated_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    last_error_code: str
    last_error_message: str
    stage: str
    progress: int
    result: JsonObject | None
    run_after: dt.datetime | None
    lease_expires_at: dt.datetime | None
    lease_holder: str

    @classmethod
    def from_proto(cls, job: ledger_pb2.Job) -> Job:
        """From `jobledger.v1.Job`."""
        return cls(
            id=job.id,
            org_id=job.org_id,
            type=job.type,
            status=JobStatus(job.status),
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            priority=job.priority,
            idempotency_key=job.idempotency_key,
            requested_by=job.requested_by,
            params=from_struct(job.params),
            created_at=from_timestamp(job, "created_at"),
            updated_at=from_timestamp(job, "updated_at"),
            started_at=from_timestamp(job, "started_at"),
            finished_at=from_timestamp(job, "finished_at"),
            last_error_code=job.last_error_code,
            last_error_message=job.last_error_message,
            stage=job.stage,
            progress=job.progress,
            result=from_struct(job.result) if job.HasField("result") else None,
            run_after=from_timestamp(job, "run_after"),
            lease_expires_at=from_timestamp(job, "lease_expires_at"),
            lease_holder=job.lease_holder,
        )


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One audit event: a status step of a job (or a progress report)."""

    id: str
    job_id: str
    org_id: str
    ts: dt.datetime | None
    prev_status: JobStatus
    next_status: JobStatus
    attempt: int
    detail: JsonObject
    cursor: str

    @classmethod
    def from_proto(cls, event: ledger_pb2.JobEvent) -> JobEvent:
        """From `jobledger.v1.JobEvent`."""
        return cls(
            id=event.id,
            job_id=event.job_id,
            org_id=event.org_id,
            ts=from_timestamp(event, "ts"),
            prev_status=JobStatus(event.prev_status),
            next_status=JobStatus(event.next_status),
            attempt=event.attempt,
            detail=from_struct(event.detail),
            cursor=event.cursor,
        )


@dataclass(frozen=True, slots=True)
class CreateResult:
    """A create's answer: the job, and whether this call created it (False: the
    idempotency key named an existing job with the same type and params)."""

    job: Job
    created: bool


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job to create (`create_many`); the fields of `Client.create`."""

    type: str
    params: Mapping[str, Any] | None = None
    idempotency_key: str = ""
    priority: int = 0
    max_attempts: int = 0
    requested_by: str = ""
    run_after: dt.datetime | dt.timedelta | None = None
    retry_policy: RetryPolicy | None = None
    org_id: str | None = None

    def to_proto(self, default_org: str) -> ledger_pb2.CreateJobRequest:
        """As `jobledger.v1.CreateJobRequest`."""
        return ledger_pb2.CreateJobRequest(
            org_id=default_org if self.org_id is None else self.org_id,
            type=self.type,
            priority=self.priority,
            idempotency_key=self.idempotency_key,
            requested_by=self.requested_by,
            max_attempts=self.max_attempts,
            params=to_struct(self.params),
            run_after=to_timestamp(self.run_after),
            retry_policy=self.retry_policy.to_proto() if self.retry_policy else None,
        )


@dataclass(frozen=True, slots=True)
class TransitionResult:
    """A transition's answer: the job after it, and the events it wrote (two when a
    failure of the last attempt dead-lettered the job; none for a replayed request)."""

    job: Job
    events: list[JobEvent]

    @classmethod
    def from_proto(cls, response: ledger_pb2.TransitionJobResponse) -> TransitionResult:
        """From `jobledger.v1.TransitionJobResponse`."""
        return cls(
            job=Job.from_proto(response.job),
            events=[JobEvent.from_proto(e) for e in response.events],
        )


@dataclass(frozen=True, slots=True)
class Counts:
    """CountJobs: the total, per status (every status, zeros included), and per
    (type, status) that has jobs."""

    total: int
    by_status: dict[JobStatus, int]
    by_type: dict[tuple[str, JobStatus], int] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, response: ledger_pb2.CountJobsResponse) -> Counts:
        """From `jobledger.v1.CountJobsResponse`."""
        return cls(
            total=response.total,
            by_status={JobStatus(c.status): c.count for c in response.by_status},
            by_type={(c.type, JobStatus(c.status)): c.count for c in response.counts},
        )


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job handed to this worker: RUNNING, its `attempt` the fencing token, and the
    start (or retry) event the claim wrote."""

    job: Job
    event: JobEvent

    @property
    def is_retry(self) -> bool:
        """Whether the claim retried a failed attempt (FAILED -> RUNNING)."""
        return self.event.prev_status == JobStatus.FAILED
