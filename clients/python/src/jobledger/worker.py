"""`Worker`: runs handler functions on the jobs jobledger hands out.

The runtime claims jobs of the handlers' types with a long-poll (ClaimJobs `wait`), up to
`concurrency` at once, each under a lease it keeps alive with a heartbeat every third of
the lease. A handler's return value is the job's `result` (SUCCEEDED); an exception fails
the attempt (FAILED, the server retries it after a backoff or dead-letters the last one);
`Retry` asks for a retry after a given delay, `Fail(..., retry=False)` dead-letters at
once. Every report carries the attempt (the fencing token): when the server says the job
is no longer this worker's (canceled, rescued after a stall, superseded), the handler is
stopped and nothing more of that attempt is recorded. On SIGTERM (or `stop()`) the worker
stops claiming, lets running handlers finish for `grace_period`, then hands the rest back
(RUNNING -> QUEUED, fenced by attempt) so another worker takes them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from jobledger import _settings as s
from jobledger._models import ClaimedJob, Job, JobStatus, Seconds, TransitionResult, seconds
from jobledger.aio import AsyncClient
from jobledger.errors import (
    Aborted,
    DeadlineExceeded,
    FailedPrecondition,
    JobledgerError,
    NotFound,
    ResourceExhausted,
)

log = logging.getLogger("jobledger.worker")

# The most a failure's retry may be put off (the server's limit): a job dead-lettered by
# `Fail(retry=False)` is failed with this delay first, so nobody claims it in between.
_MAX_RETRY_AFTER = 30 * 24 * 3600.0
_MAX_ERROR_MESSAGE = 8 * 1024


class Retry(Exception):
    """Raise from a handler to fail this attempt and have it retried `after` seconds
    from now (None: the job's backoff). The last attempt is dead-lettered as any
    failure is."""

    def __init__(
        self, after: Seconds | None = None, message: str = "", *, code: str = "RETRY"
    ) -> None:
        super().__init__(message or f"retry requested ({code})")
        self.after = after
        self.code = code


class Fail(Exception):
    """Raise from a handler to fail this attempt with an error `code` and `message`.
    With `retry=False` the job is dead-lettered at once, whatever attempts it has left."""

    def __init__(self, code: str, message: str = "", *, retry: bool = True) -> None:
        super().__init__(message or code)
        self.code = code
        self.message = message or code
        self.retry = retry


class JobLost(Exception):
    """Raised by a job context's reports once the job is no longer this worker's
    (canceled, rescued, superseded by a later attempt, handed back). The handler should
    stop; whatever it returns or raises afterwards is not recorded."""


@dataclass
class WorkerStats:
    """What a worker did: attempts claimed, and how each ended."""

    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    lost: int = 0
    handed_back: int = 0

    def __str__(self) -> str:
        return (
            f"{self.claimed} attempts claimed, {self.succeeded} succeeded, {self.failed} "
            f"failed, {self.lost} lost (canceled, rescued or superseded), "
            f"{self.handed_back} handed back"
        )


class _ContextBase:
    """What both kinds of job context show of the job."""

    def __init__(self, held: _Held) -> None:
        self._held = held

    @property
    def job(self) -> Job:
        """The job as claimed (RUNNING)."""
        return self._held.claimed.job

    @property
    def id(self) -> str:
        """The job's id."""
        return self.job.id

    @property
    def params(self) -> dict[str, Any]:
        """The job's input, as created."""
        return self.job.params

    @property
    def attempt(self) -> int:
        """This attempt's number (1 for the first): the fencing token of every report."""
        return self.job.attempt

    @property
    def is_retry(self) -> bool:
        """Whether an earlier attempt failed."""
        return self._held.claimed.is_retry

    @property
    def worker_id(self) -> str:
        """The worker holding the job (the actor of its reports)."""
        return self._held.worker.worker_id


class JobContext(_ContextBase):
    """The job as a synchronous handler sees it (the handler runs in a thread of its own).

    `cancelled` is set when the job is no longer this worker's; reports then raise
    `JobLost`. Long work should check it (or use `sleep`) to stop early.
    """

    def __init__(self, held: _Held) -> None:
        super().__init__(held)
        self.cancelled = threading.Event()

    def progress(self, stage: str = "", percent: int | None = None, **detail: Any) -> None:
        """Reports progress (RUNNING -> RUNNING with `stage`, `percent` 0..100 and
        `detail` on the event); extends the lease. Raises `JobLost` if the job is gone."""
        if self.cancelled.is_set():
            raise JobLost(self._held.lost or "the job is no longer this worker's")
        self._held.worker.from_thread(
            self._held.worker.report_progress(self._held, stage, percent, detail)
        )

    def detail(self, **fields: Any) -> None:
        """Records `fields` on an event of the job without changing stage or progress."""
        self.progress(**fields)

    def sleep(self, duration: Seconds) -> None:
        """Sleeps, returning early with `JobLost` when the job is taken away."""
        if self.cancelled.wait(seconds(duration)):
            raise JobLost(self._held.lost or "the job is no longer this worker's")


class AsyncJobContext(_ContextBase):
    """The job as an `async def` handler sees it. When the job is no longer this
    worker's, the handler's task is cancelled (and `cancelled` set)."""

    def __init__(self, held: _Held) -> None:
        super().__init__(held)
        self.cancelled = asyncio.Event()

    async def progress(self, stage: str = "", percent: int | None = None, **detail: Any) -> None:
        """Reports progress (RUNNING -> RUNNING with `stage`, `percent` 0..100 and
        `detail` on the event); extends the lease. Raises `JobLost` if the job is gone."""
        await self._held.worker.report_progress(self._held, stage, percent, detail)

    async def detail(self, **fields: Any) -> None:
        """Records `fields` on an event of the job without changing stage or progress."""
        await self.progress(**fields)

    async def sleep(self, duration: Seconds) -> None:
        """Sleeps (the task is cancelled if the job is taken away meanwhile)."""
        await asyncio.sleep(seconds(duration))


SyncHandler = Callable[[JobContext], Any]
AsyncHandler = Callable[[AsyncJobContext], Awaitable[Any]]
H = TypeVar("H", SyncHandler, AsyncHandler)


@dataclass(eq=False)
class _Held:
    """A job this worker holds: the claim, the context given to the handler, and why
    it was taken away (None while it is ours)."""

    worker: Worker
    claimed: ClaimedJob
    is_async: bool
    context: JobContext | AsyncJobContext | None = None
    handler: asyncio.Future[Any] | None = None
    worker_task: asyncio.Future[None] | None = None
    lost: str | None = None
    handing_back: bool = False
    reports: int = 0
    last_extended: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> str:
        """How logs name the job: its idempotency key, else its id."""
        return self.claimed.job.idempotency_key or self.claimed.job.id

    def next_request_id(self, step: str) -> str:
        """A request_id unique to this worker, attempt and step."""
        self.reports += 1
        job = self.claimed.job
        return f"{self.worker.worker_id}/{job.id}/a{job.attempt}/{self.reports}-{step}"


class Worker:
    """Claims jobs of the registered handlers' types and runs them.

    >>> worker = Worker("127.0.0.1:50051", concurrency=4)
    >>> @worker.handler("mock_process")
    ... def process(job: JobContext) -> dict[str, Any]:
    ...     job.progress("parse", 50)
    ...     return {"rows": job.params["rows"]}
    >>> worker.run()  # until SIGTERM
    """

    def __init__(
        self,
        target: str = s.DEFAULT_TARGET,
        *,
        worker_id: str | None = None,
        concurrency: int = 1,
        lease: Seconds = 30.0,
        wait: Seconds = 20.0,
        grace_period: Seconds = 30.0,
        org_id: str = "",
        all_orgs: bool = False,
        token: s.TokenSource | None = None,
        tls: s.TLS | bool | None = None,
        timeout: float = 10.0,
        retries: s.Retries | None = None,
    ) -> None:
        """A worker of the server at `target`. `concurrency` jobs run at once (each
        claim asks for the free slots, at most 100). `lease` (1 s .. 1 h) is how long a
        job stays this worker's without a heartbeat; `wait` (0 .. 60 s) how long a claim
        long-polls; `grace_period` how long running handlers may finish after SIGTERM
        before their jobs are handed back. `worker_id` (default HOST-PID) is the actor of
        the claims and reports and the lease holder."""
        if not 1 <= concurrency <= 10_000:
            raise ValueError("concurrency must be 1..10000")
        if not 1.0 <= seconds(lease) <= 3600.0:
            raise ValueError("lease must be 1 s .. 1 h")
        if not 0.0 <= seconds(wait) <= 60.0:
            raise ValueError("wait must be 0 .. 60 s")
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.concurrency = concurrency
        self.lease = seconds(lease)
        self.wait = seconds(wait)
        self.grace_period = seconds(grace_period)
        self.all_orgs = all_orgs
        self.stats = WorkerStats()
        self._client_args: dict[str, Any] = {
            "target": target,
            "org_id": org_id,
            "token": token,
            "tls": tls,
            "timeout": timeout,
            "retries": retries,
        }
        self._handlers: dict[str, tuple[Callable[..., Any], bool]] = {}
        self._held: dict[str, _Held] = {}
        self._log = logging.LoggerAdapter(log, {"worker_id": self.worker_id})
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: AsyncClient | None = None
        self._stopping: asyncio.Event | None = None
        self._leaving: asyncio.Event | None = None
        self._slot_freed: asyncio.Event | None = None
        self._stop_requests = 0
        # Final reports waiting for the next TransitionJobs call, and the task sending them.
        self._completions: list[tuple[Any, asyncio.Future[TransitionResult]]] = []
        self._completer: asyncio.Future[None] | None = None

    def handler(self, type: str) -> Callable[[H], H]:
        """Registers the decorated function as the handler of jobs of `type`: a plain
        function (run in a thread, given a `JobContext`) or an `async def` (run on the
        worker's event loop, given an `AsyncJobContext`)."""

        def register(function: H) -> H:
            self._handlers[type] = (function, inspect.iscoroutinefunction(function))
            return function

        return register

    def say(self, message: str) -> None:
        """A line of the worker's log (logger `jobledger.worker`, level INFO)."""
        self._log.info("%s: %s", self.worker_id, message)

    # --- running ------------------------------------------------------------------------

    def run(self) -> WorkerStats:
        """Runs until SIGTERM or SIGINT (or `stop()`): the first stops claiming and lets
        the jobs in hand finish for the grace period, then hands the rest back; a second
        hands them back at once."""
        return asyncio.run(self.run_async(install_signal_handlers=True))

    def stop(self) -> None:
        """As SIGTERM; callable from any thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._stop_requested)

    def _stop_requested(self) -> None:
        assert self._stopping is not None and self._leaving is not None
        self._stop_requests += 1
        (self._leaving if self._stopping.is_set() else self._stopping).set()

    async def run_async(self, *, install_signal_handlers: bool = False) -> WorkerStats:
        """Runs on the current event loop until `stop()` (or a signal, if installed)."""
        if not self._handlers:
            raise ValueError("no handler registered: use @worker.handler(type)")
        self._loop = asyncio.get_running_loop()
        self._stopping, self._leaving = asyncio.Event(), asyncio.Event()
        self._slot_freed = asyncio.Event()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._stop_requested)
        async with AsyncClient(**self._client_args) as client:
            self._client = client
            try:
                await self._claim_until_stopped()
                await self._drain()
            finally:
                self._client = None
                if install_signal_handlers:
                    for sig in (signal.SIGTERM, signal.SIGINT):
                        self._loop.remove_signal_handler(sig)
        self.say(f"stopped: {self.stats}")
        return self.stats

    async def _claim_until_stopped(self) -> None:
        assert self._stopping is not None and self._slot_freed is not None
        assert self._client is not None
        self.say(
            f"claiming {', '.join(self._handlers)} jobs at {self._client.settings.target}: "
            f"concurrency {self.concurrency}, lease {self.lease:g}s (heartbeat every "
            f"{self.lease / 3:.3g}s), long-poll {self.wait:g}s"
        )
        backoff = 0.1
        while not self._stopping.is_set():
            free = self.concurrency - len(self._held)
            if free <= 0:
                self._slot_freed.clear()
                await self._until(self._slot_freed)
                continue
            try:
                claimed = await self._claim(min(free, 100))
            except (JobledgerError, asyncio.TimeoutError) as err:
                if isinstance(err, JobledgerError) and not (
                    err.retryable or isinstance(err, ResourceExhausted | DeadlineExceeded)
                ):
                    raise  # INVALID_ARGUMENT, PERMISSION_DENIED, ...: a setup error
                # Claimed again later, never repeated blindly: a claim whose answer was
                # lost may have taken jobs; their leases run out and they are rescued.
                wait = getattr(err, "retry_delay", None) or backoff
                self.say(f"claim failed ({err}); claiming again in {wait:.2g}s")
                await self._until(None, timeout=wait)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            for job in claimed:
                self._start(job)

    async def _until(self, event: asyncio.Event | None, timeout: float | None = None) -> None:
        """Until `event` is set, the worker is told to stop, or `timeout` passes."""
        assert self._stopping is not None
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._stopping.wait())]
        if event is not None:
            waits.append(asyncio.ensure_future(event.wait()))
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for task in waits:
            task.cancel()

    async def _claim(self, max_jobs: int) -> list[ClaimedJob]:
        """One long-poll; [] when it ran out or the worker was told to stop (the call is
        then cancelled, and a cancelled claim takes nothing)."""
        assert self._client is not None and self._stopping is not None
        claim = asyncio.ensure_future(
            self._client.claim(
                list(self._handlers),
                worker_id=self.worker_id,
                max_jobs=max_jobs,
                lease=self.lease,
                wait=self.wait,
                all_orgs=self.all_orgs,
            )
        )
        stop = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait([claim, stop], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not claim.done():
            claim.cancel()
            await asyncio.gather(claim, return_exceptions=True)
            return []
        return claim.result()

    async def _drain(self) -> None:
        """After the last claim: let the handlers in hand finish within the grace period
        (or until told again), then hand back the jobs still running."""
        assert self._leaving is not None
        if not self._held:
            return
        self.say(
            f"finishing {len(self._held)} job(s) in hand within {self.grace_period:g}s; "
            "signal again to hand them back now"
        )
        work: list[asyncio.Future[Any]] = [
            h.worker_task for h in self._held.values() if h.worker_task is not None
        ]
        leave: asyncio.Future[Any] = asyncio.ensure_future(self._leaving.wait())
        deadline = time.monotonic() + self.grace_period
        while not leave.done() and any(not t.done() for t in work):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            pending = [t for t in work if not t.done()]
            await asyncio.wait([*pending, leave], timeout=left, return_when=asyncio.FIRST_COMPLETED)
        leave.cancel()
        await asyncio.gather(*(self._hand_back(h) for h in list(self._held.values())))
        await asyncio.gather(*work, return_exceptions=True)

    # --- holding a job ------------------------------------------------------------------

    def _start(self, claimed: ClaimedJob) -> None:
        job = claimed.job
        if job.id in self._held:  # never run one job twice in one worker
            self.say(f"claimed {job.id} again while holding it; ignoring the second claim")
            return
        function, is_async = self._handlers[job.type]
        held = _Held(worker=self, claimed=claimed, is_async=is_async)
        held.context = AsyncJobContext(held) if is_async else JobContext(held)
        self._held[job.id] = held
        self.stats.claimed += 1
        lease = _clock(job.lease_expires_at)
        self.say(
            f"claimed {held.key} ({'retry' if claimed.is_retry else 'start'}, attempt "
            f"{job.attempt}/{job.max_attempts}, lease until {lease})"
        )
        held.worker_task = asyncio.ensure_future(self._work(held, function))
        held.worker_task.add_done_callback(lambda _: self._release(held))

    def _release(self, held: _Held) -> None:
        self._held.pop(held.claimed.job.id, None)
        if self._slot_freed is not None:
            self._slot_freed.set()

    async def _work(self, held: _Held, function: Callable[..., Any]) -> None:
        """The handler beside the job's heartbeat, then the final report."""
        beat = asyncio.ensure_future(self._heartbeat(held))
        try:
            if held.is_async:
                held.handler = asyncio.ensure_future(function(held.context))
            else:
                held.handler = self._in_thread(function, held.context)
            await asyncio.wait([held.handler])
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
        if held.lost is not None or held.handler.cancelled():
            if not held.handing_back:
                self.stats.lost += 1
                self.say(
                    f"lost {held.key} attempt {held.claimed.job.attempt}: {held.lost}; "
                    "its handler is stopped"
                )
            return
        error = held.handler.exception()
        try:
            if error is None:
                try:
                    await self._succeed(held, held.handler.result())
                except (TypeError, ValueError) as unstorable:  # a result that is not JSON
                    await self._fail(held, unstorable)
            else:
                await self._fail(held, error)
        except JobledgerError as err:
            # Unanswered for the whole retry budget: the lease runs out and the server
            # rescues the job; the attempt's outcome is not recorded.
            self.stats.lost += 1
            self.say(f"could not report {held.key} attempt {held.claimed.job.attempt}: {err}")

    def _in_thread(self, function: Callable[..., Any], context: Any) -> asyncio.Future[Any]:
        """Runs a sync handler in a daemon thread (so a handler that ignores `cancelled`
        never keeps the process from exiting); its outcome as a future of this loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def settle(value: Any, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)

        def run() -> None:
            try:
                value = function(context)
            except BaseException as error:  # the handler's outcome, whatever it is
                with contextlib.suppress(RuntimeError):  # the loop is closed: exiting
                    loop.call_soon_threadsafe(settle, None, error)
                return
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, value, None)

        threading.Thread(target=run, name=f"jobledger-{context.id}", daemon=True).start()
        return future

    def from_thread(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Runs a report of a sync handler's thread on the worker's loop, and waits."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _lose(self, held: _Held, why: str) -> None:
        """The job is no longer ours: stop its handler (once)."""
        if held.lost is not None:
            return
        held.lost = why
        context = held.context
        if context is not None:
            context.cancelled.set()
        if held.handler is not None and held.handler is not asyncio.current_task():
            held.handler.cancel()

    async def _heartbeat(self, held: _Held) -> None:
        """Every third of the lease, HeartbeatJob with our attempt. Refused: the job was
        canceled, rescued or superseded, so the handler stops. Unanswered for a whole
        lease: the server has most likely rescued it by now, so the handler stops too."""
        assert self._client is not None
        client = self._client
        job = held.claimed.job
        interval = self.lease / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await client.heartbeat(
                    job.id, job.attempt, org_id=job.org_id, timeout=interval, repeat=False
                )
                held.last_extended = time.monotonic()
            except (FailedPrecondition, Aborted, NotFound) as err:
                self._lose(held, f"heartbeat refused: {err}")
                return
            except JobledgerError as err:
                quiet = time.monotonic() - held.last_extended
                if quiet >= self.lease:
                    self._lose(held, f"no heartbeat answered for {quiet:.1f}s, a lease ({err})")
                    return
                self.say(f"heartbeat of {held.key} failed ({err}); trying again")

    async def _transition(
        self, held: _Held, step: str, to_status: JobStatus, *, final: bool = False, **fields: Any
    ) -> Job | None:
        """One report of the attempt we hold (with `attempt`, never expected_status); the
        job after it, or None when the ledger says we no longer hold it. A `final` report
        (success, failure) goes with the others waiting in one TransitionJobs call."""
        assert self._client is not None
        job = held.claimed.job
        request = s.transition_request(
            job.org_id,
            job.id,
            to_status,
            attempt=job.attempt,
            actor=self.worker_id,
            request_id=held.next_request_id(step),
            **fields,
        )
        try:
            if final:
                result = await self._complete(request)
            else:
                result = await self._client.call_transition(request)
        except (FailedPrecondition, Aborted, NotFound) as err:
            self._lose(held, f"{step} refused: {err}")
            return None
        held.last_extended = time.monotonic()
        return result.job

    async def _complete(self, request: Any) -> TransitionResult:
        """Sends a final report with the others that are waiting: while one TransitionJobs
        call is on its way, the reports of jobs finishing meanwhile queue up for the next
        (one call per job was the limit of a busy worker; docs in BENCHMARKS.md)."""
        future: asyncio.Future[TransitionResult] = asyncio.get_running_loop().create_future()
        self._completions.append((request, future))
        if self._completer is None or self._completer.done():
            self._completer = asyncio.ensure_future(self._send_completions())
        return await future

    async def _send_completions(self) -> None:
        assert self._client is not None
        while self._completions:
            batch, self._completions = self._completions[:1000], self._completions[1000:]
            outcomes: list[TransitionResult | JobledgerError]
            try:
                outcomes = await self._client.transition_many([r for r, _ in batch])
            except JobledgerError as err:
                outcomes = [err] * len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, JobledgerError):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    async def report_progress(
        self, held: _Held, stage: str, percent: int | None, detail: Mapping[str, Any]
    ) -> None:
        """A progress report of the handler; `JobLost` once the job is gone."""
        if held.lost is not None:
            raise JobLost(held.lost)
        done = await self._transition(
            held,
            stage or "detail",
            JobStatus.RUNNING,
            stage=stage,
            progress=percent,
            detail=dict(detail) or None,
        )
        if done is None:
            raise JobLost(held.lost)

    async def _succeed(self, held: _Held, value: Any) -> None:
        result = value if value is None or isinstance(value, Mapping) else {"value": value}
        job = await self._transition(
            held, "succeed", JobStatus.SUCCEEDED, final=True, progress=100, result=result
        )
        if job is None:
            self.stats.lost += 1
            self.say(f"lost {held.key} attempt {held.claimed.job.attempt}: {held.lost}")
            return
        self.stats.succeeded += 1
        self.say(f"{held.key} attempt {job.attempt} succeeded")

    async def _fail(self, held: _Held, error: BaseException) -> None:
        retry_after: Seconds | None = None
        retry = True
        if isinstance(error, Retry):
            code, message, retry_after = error.code, str(error), error.after
        elif isinstance(error, Fail):
            code, message, retry = error.code, error.message, error.retry
        else:
            code = getattr(error, "error_code", None) or type(error).__name__
            message = str(error) or repr(error)
        message = message.encode()[:_MAX_ERROR_MESSAGE].decode(errors="ignore")
        if not retry:
            job = await self._dead_letter(held, str(code)[:100], message)
        else:
            job = await self._transition(
                held,
                "fail",
                JobStatus.FAILED,
                final=True,
                error_code=str(code)[:100],
                error_message=message,
                retry_after=retry_after,
            )
        if job is None:
            self.stats.lost += 1
            self.say(f"lost {held.key} attempt {held.claimed.job.attempt}: {held.lost}")
            return
        self.stats.failed += 1
        if job.status == JobStatus.FAILED and job.run_after is not None:
            then = f"retried not before {_clock(job.run_after)}"
        else:
            then = "no attempts left" if retry else "not retried"
        self.say(
            f"{held.key} attempt {job.attempt} failed: {code}: {message} -> "
            f"{job.status.name} ({then})"
        )

    async def _dead_letter(self, held: _Held, code: str, message: str) -> Job | None:
        """FAILED then DEAD_LETTER in one transaction (TransitionJobs), both fenced."""
        assert self._client is not None
        job = held.claimed.job
        failed = s.transition_request(
            job.org_id,
            job.id,
            JobStatus.FAILED,
            actor=self.worker_id,
            attempt=job.attempt,
            error_code=code,
            error_message=message,
            retry_after=_MAX_RETRY_AFTER,
            request_id=held.next_request_id("fail"),
        )
        dead = s.transition_request(
            job.org_id,
            job.id,
            JobStatus.DEAD_LETTER,
            actor=self.worker_id,
            expected_status=JobStatus.FAILED,
            attempt=job.attempt,
            detail={"retry": False},
            request_id=held.next_request_id("dead-letter"),
        )
        first, second = await self._client.transition_many([failed, dead])
        if isinstance(first, JobledgerError):
            if isinstance(first, (FailedPrecondition, Aborted, NotFound)):
                self._lose(held, f"fail refused: {first}")
                return None
            raise first
        if isinstance(second, JobledgerError):
            # The failure was the last attempt: the server dead-lettered it already.
            return first.job
        return second.job

    async def _hand_back(self, held: _Held) -> None:
        """Stops the handler and requeues the job (RUNNING -> QUEUED, fenced by our
        attempt): another worker claims it at once instead of after the lease."""
        if held.lost is not None or (held.handler is not None and held.handler.done()):
            return  # gone already, or its final report is on its way
        held.handing_back = True
        self._lose(held, "handed back")
        job = held.claimed.job
        assert self._client is not None
        try:
            await self._client.transition(
                job.id,
                JobStatus.QUEUED,
                attempt=job.attempt,
                actor=self.worker_id,
                request_id=held.next_request_id("hand-back"),
                org_id=job.org_id,
            )
        except (FailedPrecondition, Aborted, NotFound) as err:
            self.say(f"{held.key} attempt {job.attempt} was no longer ours to hand back ({err})")
            return
        self.stats.handed_back += 1
        self.say(f"handed back {held.key} attempt {job.attempt} -> QUEUED")


def _clock(when: dt.datetime | None) -> str:
    """A server time for a log line: HH:MM:SS.mmm UTC."""
    return when.strftime("%H:%M:%S.%f")[:-3] if when else "-"
