"""Makes a real jobledger server refuse in every way the library has a class for, and
prints one line per refusal: `raised CLASS REASON | message`. Run by
tests/python_client.rs against servers started with small limits.

    errors_probe.py prepare ADDR           a job FAILED on attempt 1 of 2; prints its id
    errors_probe.py probe ADDR AUTH_ADDR SECRET ORG EXHAUSTED_ID

ADDR: a server with --max-streams 1 --max-waiting-claims 1 --max-request-bytes 100000.
AUTH_ADDR: a server with HS256 auth (SECRET) and --max-inflight-requests 1. EXHAUSTED_ID:
the prepared job, which the test moved to attempt = max_attempts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import grpc

from jobledger import Client, JobSpec, JobStatus, Retries, errors
from jobledger.errors import JobledgerError
from jobledger.v1 import ledger_pb2

raised: dict[str, str] = {}


def expect(cls: type[JobledgerError], action: Callable[[], Any]) -> JobledgerError:
    """Runs `action`, which must raise exactly `cls`; records and prints it."""
    try:
        action()
    except JobledgerError as err:
        if type(err) is not cls:
            raise AssertionError(
                f"expected {cls.__name__}, got {type(err).__name__}: {err}"
            ) from err
        raised[cls.__name__] = err.reason
        print(f"raised {cls.__name__} {err.reason or '-'} | {err}", flush=True)
        return err
    raise AssertionError(f"expected {cls.__name__}, nothing was raised")


def token(secret: str, org: str, expires_in: float) -> str:
    """An HS256 JWT for `org`."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"org_id": org, "exp": int(time.time() + expires_in)}).encode())
    signature = hmac.new(secret.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{b64(signature)}"


def reraise(error: BaseException) -> Callable[[], None]:
    """An action that raises `error` (one caught elsewhere, for `expect`)."""

    def action() -> None:
        raise error

    return action


def one_refused(calls: list[Callable[[], Any]]) -> Callable[[], None]:
    """Runs `calls` at once (each in a thread); exactly one must raise. An action that
    raises what it raised."""
    errors_seen: list[BaseException] = []

    def run(call: Callable[[], Any]) -> None:
        try:
            call()
        except JobledgerError as err:
            errors_seen.append(err)

    threads = [threading.Thread(target=run, args=(call,), daemon=True) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(errors_seen) == 1, errors_seen
    return reraise(errors_seen[0])


def raw_call(client: Client, method: str, body: bytes) -> None:
    """A call with a body the library would never send; its refusal as the library's class."""
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = client._channel.unary_unary(method)
    try:
        call(body, timeout=5)
    except grpc.RpcError as err:
        raise errors.from_rpc_error(err) from None


def prepare(addr: str) -> None:
    with Client(addr) as client:
        job = client.create("exhaust", max_attempts=2).job
        (claimed,) = client.claim(["exhaust"], worker_id="probe", lease=30)
        client.transition(job.id, JobStatus.FAILED, attempt=claimed.job.attempt)
        print(job.id)


def probe(addr: str, auth_addr: str, secret: str, org: str, exhausted: str) -> None:
    client = Client(addr, retries=Retries(budget=0))
    job = client.create("probe").job

    expect(errors.InvalidArgument, lambda: client.create("", max_attempts=-1))
    expect(
        errors.MalformedRequest,
        lambda: raw_call(client, "/jobledger.v1.JobLedger/GetJob", b"\xff\xff\xff"),
    )
    expect(
        errors.Unimplemented, lambda: raw_call(client, "/jobledger.v1.JobLedger/NoSuchMethod", b"")
    )
    expect(errors.JobNotFound, lambda: client.get(str(uuid.uuid4())))
    key = f"probe-{uuid.uuid4()}"
    first = client.create("probe", {"n": 1}, idempotency_key=key).job
    reused = expect(
        errors.IdempotencyKeyReused, lambda: client.create("probe", {"n": 2}, idempotency_key=key)
    )
    assert isinstance(reused, errors.IdempotencyKeyReused) and reused.job_id == first.id, reused
    mismatch = expect(
        errors.StatusMismatch,
        lambda: client.transition(job.id, JobStatus.RUNNING, expected_status=JobStatus.FAILED),
    )
    assert mismatch.metadata["status"] == "QUEUED", mismatch.metadata
    invalid = expect(
        errors.InvalidTransition, lambda: client.transition(job.id, JobStatus.SUCCEEDED)
    )
    assert isinstance(invalid, errors.InvalidTransition)
    assert invalid.from_status == JobStatus.QUEUED and invalid.to_status == JobStatus.SUCCEEDED
    assert set(invalid.allowed) == {JobStatus.RUNNING, JobStatus.CANCELED}, invalid.allowed
    assert {v.subject for v in invalid.precondition_violations} == {"RUNNING", "CANCELED"}
    exhausted_err = expect(
        errors.MaxAttemptsExhausted,
        lambda: client.transition(exhausted, JobStatus.RUNNING, expected_status=JobStatus.FAILED),
    )
    assert isinstance(exhausted_err, errors.MaxAttemptsExhausted)
    assert JobStatus.DEAD_LETTER in exhausted_err.allowed, exhausted_err.allowed

    # A claimed job: a stale attempt, a reused request_id, then canceled under its holder.
    (claimed,) = client.claim(["probe"], worker_id="probe", max_jobs=1, lease=30)
    held = claimed.job
    stale = expect(errors.StaleAttempt, lambda: client.heartbeat(held.id, held.attempt + 1))
    assert isinstance(stale, errors.StaleAttempt) and stale.current_attempt == held.attempt
    client.transition(held.id, JobStatus.RUNNING, attempt=held.attempt, stage="s", request_id="r-1")
    expect(
        errors.RequestIdReused,
        lambda: client.transition(held.id, JobStatus.CANCELED, request_id="r-1"),
    )
    client.cancel(held.id, reason="probe")
    gone = expect(errors.JobNotRunning, lambda: client.heartbeat(held.id, held.attempt))
    assert isinstance(gone, errors.JobNotRunning) and gone.status == JobStatus.CANCELED

    # The second server: authentication, and one call at a time.
    anonymous = Client(auth_addr, retries=Retries(budget=0))
    expect(errors.Unauthenticated, lambda: anonymous.count())
    authed = Client(auth_addr, token=token(secret, org, 600), retries=Retries(budget=0))
    other_org = str(uuid.uuid4())
    denied = expect(errors.PermissionDenied, lambda: authed.count(org_id=other_org))
    assert denied.reason == "ORG_MISMATCH" and denied.metadata["org_id"] == other_org
    authed.create("probe")  # the token works
    # A cursor of this ledger moved past every transaction it has seen (a forged one, or
    # one from another cluster): out of range.
    version, xid, rest = next(iter(client.events(first.id, history_only=True))).cursor.split(".", 2)
    forged = f"{version}.{int(xid, 16) + 0x10000000:x}.{rest}"
    expect(errors.CursorOutOfRange, lambda: next(client.events(first.id, after_cursor=forged)))
    # Two long-polls at once where one call may be in progress: one of them is refused.
    refused = one_refused(
        [partial(authed.claim, ["nothing"], worker_id=f"probe-{i}", wait=2) for i in range(2)]
    )
    expect(errors.TooManyRequests, refused)
    expired = Client(auth_addr, token=token(secret, org, -3600), retries=Retries(budget=0))

    def past_deadline() -> None:
        # An org stream never ends by itself: its deadline does (on the second server,
        # whose stream limit is not the test's).
        stream = authed._stub.StreamEvents(
            ledger_pb2.StreamEventsRequest(), timeout=0.3, metadata=authed.settings.metadata()
        )
        try:
            next(stream)
        except grpc.RpcError as err:
            raise errors.from_rpc_error(err) from None

    expect(errors.DeadlineExceeded, past_deadline)
    expect(errors.Unauthenticated, lambda: expired.count())

    # Limits of the first server.
    expect(errors.RequestTooLarge, lambda: client.create("probe", {"blob": "x" * 200_000}))
    # Two long-polls at once where one claim may wait: one of them is refused.
    refused = one_refused(
        [partial(client.claim, ["nothing"], worker_id=f"probe-{i}", wait=2) for i in range(2)]
    )
    expect(errors.TooManyWaitingClaims, refused)
    # Two org streams (open until cancelled) where one may be open: one of them is
    # refused; the other is then cancelled by this process (CANCELLED).
    streams = [client._stub.StreamEvents(ledger_pb2.StreamEventsRequest()) for _ in range(2)]

    def read(stream: Any) -> None:
        try:
            next(stream, None)
        except grpc.RpcError as err:
            raise errors.from_rpc_error(err) from None

    outcomes: list[JobledgerError | None] = [None, None]
    done = [threading.Event(), threading.Event()]

    def hold(i: int) -> None:
        try:
            read(streams[i])
        except JobledgerError as err:
            outcomes[i] = err
        done[i].set()

    for i in range(2):
        threading.Thread(target=hold, args=(i,), daemon=True).start()
    deadline = time.monotonic() + 20
    while not any(d.is_set() for d in done):
        assert time.monotonic() < deadline, "neither stream was refused"
        time.sleep(0.05)
    time.sleep(0.3)
    for stream in streams:
        stream.cancel()
    for d in done:
        assert d.wait(10)
    kinds = sorted(type(o).__name__ for o in outcomes)
    assert kinds == ["Cancelled", "TooManyStreams"], outcomes
    for outcome in outcomes:
        assert outcome is not None
        expect(type(outcome), reraise(outcome))

    # Nothing listening.
    nowhere = Client("127.0.0.1:1", retries=Retries(budget=0), timeout=5)
    unavailable = expect(errors.Unavailable, lambda: nowhere.get(job.id))
    assert unavailable.retryable

    # A batch entry's error is the same class as a call's.
    results = client.create_many([JobSpec("probe"), JobSpec("")])
    assert not isinstance(results[0], JobledgerError) and isinstance(
        results[1], errors.InvalidArgument
    ), results

    classes = [c.__name__ for c in errors.ALL_ERRORS if c.reasons]
    print("reason classes: " + " ".join(classes), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "prepare":
        prepare(sys.argv[2])
    else:
        probe(*sys.argv[2:7])
