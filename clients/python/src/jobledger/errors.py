"""Exceptions: one class per ErrorInfo reason jobledger sends, under one per gRPC code.

Every jobledger error carries a `google.rpc.Status` in the `grpc-status-details-bin`
trailer: an ErrorInfo (domain `jobledger`, an UPPER_SNAKE reason, metadata), and for some
codes a BadRequest (field violations), a PreconditionFailure (the allowed next statuses)
or a RetryInfo. `from_rpc_error` turns a failed call into the most specific class; the
class's attributes are the decoded details (`InvalidTransition.allowed`,
`IdempotencyKeyReused.job_id`, `InvalidArgument.field_violations`, ...). Catch the code's
class (`FailedPrecondition`) to handle a family, the reason's class to handle one case.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

# googleapis-common-protos' google.rpc is a namespace package: mypy needs the modules by path.
import google.rpc.error_details_pb2 as error_details_pb2  # noqa: PLR0402
import google.rpc.status_pb2 as status_pb2  # noqa: PLR0402
import grpc

from jobledger._models import JobStatus

DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """A BadRequest violation: the request field and what is wrong with it."""

    field: str
    description: str


@dataclass(frozen=True, slots=True)
class PreconditionViolation:
    """A PreconditionFailure violation (`STATUS`, an allowed next status, why)."""

    type: str
    subject: str
    description: str


class JobledgerError(Exception):
    """A call jobledger (or the connection to it) refused.

    `code` is the gRPC status code, `reason` the ErrorInfo reason ("" when the error did
    not come from jobledger, e.g. the connection failed), `metadata` its metadata.
    `retryable` says whether repeating the same request may succeed.
    """

    codes: ClassVar[tuple[grpc.StatusCode, ...]] = ()
    reasons: ClassVar[tuple[str, ...]] = ()
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: Iterable[FieldViolation] = (),
        precondition_violations: Iterable[PreconditionViolation] = (),
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations = list(field_violations)
        self.precondition_violations = list(precondition_violations)
        self.retry_delay = retry_delay
        """How long the server asked to wait before repeating (RetryInfo), if it did."""

    def __str__(self) -> str:
        parts = [f"{self.code.name}: {self.message}"]
        if self.reason:
            parts.append(f"reason={self.reason}")
        parts += [f"{k}={v}" for k, v in sorted(self.metadata.items())]
        parts += [f"field {v.field!r}: {v.description}" for v in self.field_violations]
        return " | ".join(parts)


# --- by code ---------------------------------------------------------------------------


class InvalidArgument(JobledgerError):
    """INVALID_ARGUMENT: the request is malformed; `field_violations` names each field."""

    codes = (grpc.StatusCode.INVALID_ARGUMENT,)
    reasons = ("INVALID_ARGUMENT",)


class MalformedRequest(InvalidArgument):
    """INVALID_ARGUMENT `MALFORMED_REQUEST`: the body is not a message of the method."""

    reasons = ("MALFORMED_REQUEST",)


class NotFound(JobledgerError):
    """NOT_FOUND."""

    codes = (grpc.StatusCode.NOT_FOUND,)


class JobNotFound(NotFound):
    """NOT_FOUND `JOB_NOT_FOUND`: no such job in the org (another org's job looks the same)."""

    reasons = ("JOB_NOT_FOUND",)

    @property
    def job_id(self) -> str:
        """The job asked for."""
        return self.metadata.get("job_id", "")


class FailedPrecondition(JobledgerError):
    """FAILED_PRECONDITION: the job is not in a status that allows the request."""

    codes = (grpc.StatusCode.FAILED_PRECONDITION,)

    @property
    def allowed(self) -> list[JobStatus]:
        """The statuses the job may move to from where it is (from the
        PreconditionFailure; empty when it is final)."""
        names = self.metadata.get("allowed", "")
        return [JobStatus.parse(n) for n in names.split(",") if n]


class InvalidTransition(FailedPrecondition):
    """FAILED_PRECONDITION `INVALID_TRANSITION`: the state machine has no such step."""

    reasons = ("INVALID_TRANSITION",)

    @property
    def from_status(self) -> JobStatus:
        """Where the job is."""
        return JobStatus.parse(self.metadata.get("from", "UNSPECIFIED"))

    @property
    def to_status(self) -> JobStatus:
        """Where the request wanted it."""
        return JobStatus.parse(self.metadata.get("to", "UNSPECIFIED"))


class MaxAttemptsExhausted(FailedPrecondition):
    """FAILED_PRECONDITION `MAX_ATTEMPTS_EXHAUSTED`: a retry with no attempts left."""

    reasons = ("MAX_ATTEMPTS_EXHAUSTED",)


class JobNotRunning(FailedPrecondition):
    """FAILED_PRECONDITION `JOB_NOT_RUNNING`: a holder's report or heartbeat on a job no
    longer RUNNING (canceled, rescued, handed back): stop working on it."""

    reasons = ("JOB_NOT_RUNNING",)

    @property
    def status(self) -> JobStatus:
        """The job's status now."""
        return JobStatus.parse(self.metadata.get("status", "UNSPECIFIED"))


class Aborted(JobledgerError):
    """ABORTED: a compare-and-set on the job lost."""

    codes = (grpc.StatusCode.ABORTED,)


class StatusMismatch(Aborted):
    """ABORTED `STATUS_MISMATCH`: `expected_status` is not the job's status."""

    reasons = ("STATUS_MISMATCH",)


class StaleAttempt(Aborted):
    """ABORTED `STALE_ATTEMPT`: another attempt of the job has started since."""

    reasons = ("STALE_ATTEMPT",)

    @property
    def attempt(self) -> int:
        """The attempt the request named."""
        return int(self.metadata.get("attempt", "0"))

    @property
    def current_attempt(self) -> int:
        """The job's attempt now."""
        return int(self.metadata.get("current_attempt", "0"))


class AlreadyExists(JobledgerError):
    """ALREADY_EXISTS: a key was reused with different input."""

    codes = (grpc.StatusCode.ALREADY_EXISTS,)

    @property
    def job_id(self) -> str:
        """The job that holds the key."""
        return self.metadata.get("job_id", "")


class IdempotencyKeyReused(AlreadyExists):
    """ALREADY_EXISTS `IDEMPOTENCY_KEY_REUSED`: the key names job `job_id`, created with
    another type or params."""

    reasons = ("IDEMPOTENCY_KEY_REUSED",)


class RequestIdReused(AlreadyExists):
    """ALREADY_EXISTS `REQUEST_ID_REUSED`: the request_id was applied to the job with
    another `to_status`."""

    reasons = ("REQUEST_ID_REUSED",)


class CursorOutOfRange(JobledgerError):
    """OUT_OF_RANGE `CURSOR_OUT_OF_RANGE`: the cursor is not one of this database's."""

    codes = (grpc.StatusCode.OUT_OF_RANGE,)
    reasons = ("CURSOR_OUT_OF_RANGE",)


class ResourceExhausted(JobledgerError):
    """RESOURCE_EXHAUSTED: a limit of the server."""

    codes = (grpc.StatusCode.RESOURCE_EXHAUSTED,)


class TooManyStreams(ResourceExhausted):
    """RESOURCE_EXHAUSTED `TOO_MANY_STREAMS` (`--max-streams`)."""

    reasons = ("TOO_MANY_STREAMS",)


class TooManyWaitingClaims(ResourceExhausted):
    """RESOURCE_EXHAUSTED `TOO_MANY_WAITING_CLAIMS` (`--max-waiting-claims`)."""

    reasons = ("TOO_MANY_WAITING_CLAIMS",)


class TooManyRequests(ResourceExhausted):
    """RESOURCE_EXHAUSTED `TOO_MANY_REQUESTS` (`--max-inflight-requests`)."""

    reasons = ("TOO_MANY_REQUESTS",)


class RequestTooLarge(ResourceExhausted):
    """RESOURCE_EXHAUSTED `REQUEST_TOO_LARGE` (`--max-request-bytes`)."""

    reasons = ("REQUEST_TOO_LARGE",)


class Unavailable(JobledgerError):
    """UNAVAILABLE: the server is unreachable or shutting down, or its database is.
    Retryable: the library repeats idempotent calls by itself."""

    codes = (grpc.StatusCode.UNAVAILABLE,)
    reasons = ("DATABASE_UNAVAILABLE", "SHUTTING_DOWN")
    retryable = True


class DeadlineExceeded(JobledgerError):
    """DEADLINE_EXCEEDED: the call's deadline passed (usually the client's own timer)."""

    codes = (grpc.StatusCode.DEADLINE_EXCEEDED,)
    reasons = ("DEADLINE_EXCEEDED",)


class Unauthenticated(JobledgerError):
    """UNAUTHENTICATED: no, malformed, invalid or expired bearer token."""

    codes = (grpc.StatusCode.UNAUTHENTICATED,)
    reasons = ("MISSING_CREDENTIALS", "INVALID_TOKEN", "TOKEN_EXPIRED", "ORG_CLAIM_MISSING")


class PermissionDenied(JobledgerError):
    """PERMISSION_DENIED: the token does not allow it (`ORG_MISMATCH`,
    `WORKER_SCOPE_REQUIRED`)."""

    codes = (grpc.StatusCode.PERMISSION_DENIED,)
    reasons = ("ORG_MISMATCH", "WORKER_SCOPE_REQUIRED")


class Unimplemented(JobledgerError):
    """UNIMPLEMENTED: the server has no such method (an older server)."""

    codes = (grpc.StatusCode.UNIMPLEMENTED,)
    reasons = ("METHOD_NOT_FOUND",)


class Internal(JobledgerError):
    """INTERNAL or UNKNOWN: a bug, in the server or between."""

    codes = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS)


class Cancelled(JobledgerError):
    """CANCELLED: the call was cancelled (by this process)."""

    codes = (grpc.StatusCode.CANCELLED,)


def _leaves(cls: type[JobledgerError]) -> list[type[JobledgerError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out += _leaves(sub)
    return out


ALL_ERRORS: tuple[type[JobledgerError], ...] = tuple(_leaves(JobledgerError))
"""Every exception class of the library, the base first."""

# The most specific class first: a reason's class, else its code's.
_BY_REASON: dict[tuple[grpc.StatusCode, str], type[JobledgerError]] = {}
_BY_CODE: dict[grpc.StatusCode, type[JobledgerError]] = {}
for _cls in ALL_ERRORS:
    for _code in _cls.codes:
        _BY_CODE.setdefault(_code, _cls)
        for _reason in _cls.reasons:
            _BY_REASON[(_code, _reason)] = _cls


def from_status(
    code: grpc.StatusCode, message: str, details: status_pb2.Status | None
) -> JobledgerError:
    """The exception for a status code, message and google.rpc.Status details."""
    reason = ""
    metadata: dict[str, str] = {}
    fields: list[FieldViolation] = []
    preconditions: list[PreconditionViolation] = []
    retry_delay: float | None = None
    info = error_details_pb2.ErrorInfo()
    bad = error_details_pb2.BadRequest()
    failure = error_details_pb2.PreconditionFailure()
    retry = error_details_pb2.RetryInfo()
    for detail in details.details if details is not None else ():
        # Unpack answers False for a detail of another type.
        if detail.Unpack(info):
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Unpack(bad):
            fields = [FieldViolation(v.field, v.description) for v in bad.field_violations]
        elif detail.Unpack(failure):
            preconditions = [
                PreconditionViolation(v.type, v.subject, v.description) for v in failure.violations
            ]
        elif detail.Unpack(retry):
            retry_delay = retry.retry_delay.ToTimedelta().total_seconds()
    cls = _BY_REASON.get((code, reason)) or _BY_CODE.get(code, JobledgerError)
    return cls(
        message,
        code=code,
        reason=reason,
        metadata=metadata,
        field_violations=fields,
        precondition_violations=preconditions,
        retry_delay=retry_delay,
    )


def from_rpc_error(err: grpc.RpcError) -> JobledgerError:
    """The exception for a failed call (sync `grpc.RpcError` or `grpc.aio.AioRpcError`)."""
    call: grpc.Call = err  # type: ignore[assignment]
    details: status_pb2.Status | None = None
    for key, value in call.trailing_metadata() or ():
        if key == DETAILS_KEY and isinstance(value, bytes):
            details = status_pb2.Status.FromString(value)
    error = from_status(call.code(), call.details() or "", details)
    error.__cause__ = err
    return error


def from_status_proto(status: status_pb2.Status) -> JobledgerError:
    """The exception for a google.rpc.Status (a CreateJobs or TransitionJobs entry)."""
    return from_status(_CODES.get(status.code, grpc.StatusCode.UNKNOWN), status.message, status)


_CODES = {code.value[0]: code for code in grpc.StatusCode}
