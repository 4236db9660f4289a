#!/usr/bin/env python3
"""A worker: the old stack's Dramatiq `mock_process` actor, taking its work from jobledger.

jobledger hands out the work itself (docs/dispatch.md): no second queue, no listing.

- Claim: ClaimJobs with the worker's free slots as max_jobs, a lease (--lease) and a
  long-poll (--wait): the call returns as soon as a job of our type is claimable, or
  empty when the wait runs out. Each job comes back RUNNING, already started (or
  retried) for us with one event whose actor is our --worker-id; its `attempt` is our
  fencing token. Concurrent workers never get the same job.
- Lease: the job is ours until `lease_expires_at`. A background task heartbeats it
  (HeartbeatJob) every third of the lease; progress reports extend it too. If we die,
  the server's rescuer moves the job to FAILED (LEASE_EXPIRED, actor `jobledger`) once
  the lease runs out, and it is claimed again, by us or another worker.
- Stop when told: a heartbeat or a report answered FAILED_PRECONDITION (JOB_NOT_RUNNING:
  canceled by an operator, or rescued after we went quiet; INVALID_TRANSITION for a
  final report) or ABORTED (STALE_ATTEMPT: another attempt has started) means the job is
  no longer ours: its work is stopped at once and nothing more is reported.
- Work: the stages download, parse, transform, upload, each reported as RUNNING ->
  RUNNING with its stage and progress, `attempt` and no expected_status (a report of the
  holder: the server refuses it unless the job is still RUNNING at that attempt).
- Finish: SUCCEEDED with a result, or FAILED with an error code and message (and
  `retry_after` = --retry-delay, if given; else the job's backoff). The server moves a
  job whose last attempt failed on to DEAD_LETTER by itself.
- Every report carries a request_id made of the worker, attempt and step, so a call
  repeated after a lost answer (UNAVAILABLE, deadline) is answered from the ledger's
  record instead of being applied twice.

--fail-at-stage makes the mock fail deterministically: attempts 1..--fail-attempts of
the jobs matching --fail-jobs fail at that stage, later attempts succeed.

Runs until SIGTERM or SIGINT, then stops claiming, finishes the jobs in hand and exits 0.
A second SIGTERM or SIGINT hands the jobs in hand back instead (RUNNING -> QUEUED with
our attempt), so another worker takes them at once rather than after the lease.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import fnmatch
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

import ledger_client as lc  # first: it puts the generated client on sys.path
from jobledger.v1 import ledger_pb2, ledger_pb2_grpc
from ledger_client import log

STAGES = ("download", "parse", "transform", "upload")

# A heartbeat or report refused with one of these codes means the job is no longer
# ours: JOB_NOT_RUNNING / INVALID_TRANSITION (canceled, rescued, finished),
# STALE_ATTEMPT (another attempt started), JOB_NOT_FOUND.
LOST = frozenset(
    {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED, grpc.StatusCode.NOT_FOUND}
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    lc.add_connection_args(parser)
    parser.add_argument(
        "--worker-id",
        default=f"{socket.gethostname()}-{os.getpid()}",
        help="the actor recorded on every event and the lease holder (default HOST-PID)",
    )
    parser.add_argument("--type", default=lc.MOCK_PROCESS, help=f"job type to run (default {lc.MOCK_PROCESS})")
    parser.add_argument(
        "--slots", type=int, default=1, help="jobs worked at once; a claim asks for the free ones (default 1)"
    )
    parser.add_argument(
        "--lease",
        type=float,
        default=10.0,
        help="seconds a claimed job stays ours without a heartbeat, 1..3600 (default 10); "
        "heartbeats go every third of it",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=20.0,
        help="seconds a claim long-polls while nothing is claimable, 0..60 (default 20)",
    )
    parser.add_argument(
        "--retry-delay",
        type=float,
        help="seconds a job that failed here waits before it is claimable again "
        "(retry_after; default: the job's backoff, 1 s doubling per attempt)",
    )
    parser.add_argument("--fail-at-stage", choices=STAGES, help="stage at which the mock fails")
    parser.add_argument(
        "--fail-attempts",
        type=int,
        default=1,
        help="how many attempts (the first ones) fail at --fail-at-stage (default 1)",
    )
    parser.add_argument(
        "--fail-jobs",
        default="*",
        help="which jobs fail: comma-separated glob patterns on the idempotency key or job id (default *)",
    )
    args = parser.parse_args()
    if args.fail_attempts < 1:
        parser.error("--fail-attempts must be at least 1")
    if args.slots < 1 or args.slots > 100:
        parser.error("--slots must be 1..100 (a claim takes at most 100 jobs)")
    if not 1 <= args.lease <= 3600:
        parser.error("--lease must be 1..3600 seconds")
    if not 0 <= args.wait <= 60:
        parser.error("--wait must be 0..60 seconds")
    if args.retry_delay is not None and args.retry_delay < 0:
        parser.error("--retry-delay must not be negative")
    args.fail_patterns = [p.strip() for p in args.fail_jobs.split(",") if p.strip()]
    return args


def seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(value * 1e9))
    return duration


def clock(ts: timestamp_pb2.Timestamp) -> str:
    """A server time for a log line: HH:MM:SS.mmm UTC."""
    return ts.ToDatetime(tzinfo=dt.timezone.utc).strftime("%H:%M:%S.%f")[:-3]


@dataclass
class Held:
    """A job this worker holds: the job as claimed (RUNNING; its `attempt` is the fencing
    token), the task doing its work, and why it was taken away (None while it is ours)."""

    job: ledger_pb2.Job
    kind: str  # start or retry
    task: asyncio.Task | None = None
    beat: asyncio.Task | None = None
    lost: str | None = None
    handing_back: bool = False
    last_extended: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> str:
        return self.job.idempotency_key or self.job.id


class Worker:
    def __init__(self, stub: ledger_pb2_grpc.JobLedgerStub, args: argparse.Namespace) -> None:
        self.stub = stub
        self.args = args
        self.me = args.worker_id
        self.stopping = asyncio.Event()  # first SIGTERM/SIGINT: claim no more
        self.leaving = asyncio.Event()  # second: hand the jobs in hand back
        self.slot_freed = asyncio.Event()
        self.held: dict[str, Held] = {}
        self.stats = {"claimed": 0, "succeeded": 0, "failed": 0, "lost": 0, "handed back": 0}

    def say(self, message: str) -> None:
        log(f"{self.me}: {message}")

    def signaled(self) -> None:
        """SIGTERM/SIGINT: the first stops claiming, the second hands back the jobs in hand."""
        (self.leaving if self.stopping.is_set() else self.stopping).set()

    # --- getting work ------------------------------------------------------------

    async def run(self) -> None:
        a = self.args
        self.say(
            f"claiming {a.type} jobs at {lc.target(a.addr)}: {a.slots} slot(s), lease {a.lease:g}s "
            f"(heartbeat every {a.lease / 3:.3g}s), long-poll {a.wait:g}s"
        )
        backoff = 0.2
        while not self.stopping.is_set():
            free = a.slots - len(self.held)
            if free == 0:
                self.slot_freed.clear()
                await self.until(self.slot_freed)
                continue
            try:
                claimed = await self.claim(free)
            except grpc.aio.AioRpcError as err:
                if err.code() not in lc.TRANSIENT | {grpc.StatusCode.RESOURCE_EXHAUSTED}:
                    raise  # INVALID_ARGUMENT, PERMISSION_DENIED, ...: a bug or a setup error
                # Claims are not repeated blindly: a claim whose answer was lost may have
                # taken jobs; their leases run out and the rescuer hands them out again.
                rich = lc.rich_error(err)
                wait = rich.retry_delay if rich.retry_delay is not None else backoff
                self.say(f"claim failed ({rich}); claiming again in {wait:g}s")
                await self.until(self.stopping, timeout=wait)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.2
            for claimed_job in claimed:
                self.start(claimed_job)
        # Told to stop: no more claims. The jobs in hand are finished (and heartbeated);
        # told again, we hand them back instead (RUNNING -> QUEUED, claimable at once).
        if self.held:
            self.say(f"finishing {len(self.held)} job(s) in hand; signal again to hand them back")
            finished = asyncio.gather(*(held.task for held in self.held.values()), return_exceptions=True)
            leave = asyncio.create_task(self.leaving.wait())
            await asyncio.wait([finished, leave], return_when=asyncio.FIRST_COMPLETED)
            leave.cancel()
            if not finished.done():
                await asyncio.gather(*(self.hand_back(held) for held in list(self.held.values())))
            await finished
        s = self.stats
        self.say(
            f"stopped: {s['claimed']} attempts claimed, {s['succeeded']} succeeded, "
            f"{s['failed']} failed, {s['lost']} lost (canceled, rescued or superseded), "
            f"{s['handed back']} handed back"
        )

    async def until(self, event: asyncio.Event, timeout: float | None = None) -> None:
        """Until `event` is set, we are told to stop, or `timeout` passes."""
        waits = [asyncio.create_task(event.wait()), asyncio.create_task(self.stopping.wait())]
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for task in waits:
            task.cancel()

    async def claim(self, free: int) -> list[ledger_pb2.ClaimedJob]:
        """One ClaimJobs long-poll for up to `free` jobs; [] when the wait ran out or we
        were told to stop (the call is then cancelled: a cancelled claim takes nothing)."""
        request = ledger_pb2.ClaimJobsRequest(
            org_id=self.args.org,
            types=[self.args.type],
            worker_id=self.me,
            max_jobs=free,
            lease=seconds(self.args.lease),
            wait=seconds(self.args.wait),
        )
        # The deadline covers the wait plus the claim itself.
        call = asyncio.ensure_future(self.stub.ClaimJobs(request, timeout=self.args.wait + 10))
        stop = asyncio.create_task(self.stopping.wait())
        await asyncio.wait([call, stop], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not call.done():
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)
            return []
        return list(call.result().jobs)

    def start(self, claimed: ledger_pb2.ClaimedJob) -> None:
        job = claimed.job
        kind = "retry" if claimed.event.prev_status == lc.FAILED else "start"
        held = Held(job=job, kind=kind)
        self.held[job.id] = held
        self.stats["claimed"] += 1
        self.say(
            f"claimed {held.key} ({kind}, attempt {job.attempt}/{job.max_attempts}, "
            f"lease until {clock(job.lease_expires_at)})"
        )
        held.task = asyncio.create_task(self.work(held))
        held.task.add_done_callback(lambda _: self.release(held))

    def release(self, held: Held) -> None:
        self.held.pop(held.job.id, None)
        self.slot_freed.set()

    # --- holding a job -----------------------------------------------------------

    async def work(self, held: Held) -> None:
        """The job's work beside its heartbeat; the heartbeat cancels the work when the
        server says the job is no longer ours."""
        held.beat = asyncio.create_task(self.heartbeat(held))
        try:
            await self.process(held)
        except asyncio.CancelledError:
            if held.lost is None:
                raise
        finally:
            await self.stop_heartbeat(held)
        if held.lost is not None and not held.handing_back:
            self.stats["lost"] += 1
            self.say(f"lost {held.key} attempt {held.job.attempt}: {held.lost}; its work is stopped")

    async def stop_heartbeat(self, held: Held) -> None:
        if held.beat is not None and held.beat is not asyncio.current_task():
            held.beat.cancel()
            await asyncio.gather(held.beat, return_exceptions=True)

    async def hand_back(self, held: Held) -> None:
        """Stops the job's work and requeues it (RUNNING -> QUEUED, fenced by our
        attempt): another worker can claim it at once instead of after the lease."""
        held.handing_back = True
        self.lose(held, "handed back")
        if held.task is not None:
            await asyncio.gather(held.task, return_exceptions=True)
        response = await self.report(held, "hand-back", to_status=lc.QUEUED)
        if response is None:
            self.say(f"{held.key} attempt {held.job.attempt} was no longer ours to hand back")
            return
        self.stats["handed back"] += 1
        now = lc.status_name(response.job.status)
        self.say(f"handed back {held.key} attempt {held.job.attempt} -> {now}")

    def lose(self, held: Held, why: str) -> None:
        """The job is no longer ours: stop its work (once)."""
        if held.lost is None:
            held.lost = why
            if held.task is not None and held.task is not asyncio.current_task():
                held.task.cancel()

    async def heartbeat(self, held: Held) -> None:
        """Every third of the lease, HeartbeatJob with our attempt. Refused: the job was
        canceled, rescued or superseded, so its work stops. Unanswered for a whole lease:
        the server has most likely rescued it by now, so its work stops too."""
        interval = self.args.lease / 3
        request = ledger_pb2.HeartbeatJobRequest(
            org_id=self.args.org, job_id=held.job.id, attempt=held.job.attempt
        )
        while True:
            await asyncio.sleep(interval)
            try:
                await self.stub.HeartbeatJob(request, timeout=interval)
                held.last_extended = time.monotonic()
            except grpc.aio.AioRpcError as err:
                rich = lc.rich_error(err)
                if err.code() in LOST:
                    self.lose(held, f"heartbeat refused: {rich}")
                    return
                quiet = time.monotonic() - held.last_extended
                if quiet >= self.args.lease:
                    self.lose(held, f"no heartbeat answered for {quiet:.1f}s, a whole lease ({rich})")
                    return
                self.say(f"heartbeat of {held.key} failed ({rich}); trying again")

    async def report(self, held: Held, step: str, **fields) -> ledger_pb2.TransitionJobResponse | None:
        """One transition of the attempt we hold (with `attempt`, never expected_status);
        None when the ledger says we no longer hold it."""
        job = held.job
        request = ledger_pb2.TransitionJobRequest(
            org_id=self.args.org,
            job_id=job.id,
            attempt=job.attempt,  # fencing token
            actor=self.me,
            request_id=f"{self.me}/a{job.attempt}/{step}",
            **fields,
        )
        try:
            response = await lc.call(self.stub.TransitionJob, request, what=f"{step} {held.key}")
        except grpc.aio.AioRpcError as err:
            if err.code() in LOST:
                self.lose(held, f"{step} refused: {lc.rich_error(err)}")
                return None
            raise
        held.last_extended = time.monotonic()
        return response

    def should_fail(self, job: ledger_pb2.Job, stage: str) -> bool:
        return (
            stage == self.args.fail_at_stage
            and job.attempt <= self.args.fail_attempts
            and any(fnmatch.fnmatchcase(name, p) for p in self.args.fail_patterns for name in (job.idempotency_key, job.id))
        )

    async def process(self, held: Held) -> None:
        """The mock job: four stages of `step_ms` each, reported with progress."""
        job = held.job
        params = lc.from_struct(job.params)
        step = float(params.get("step_ms", 200)) / 1000
        rows = int(params.get("rows", 100))
        for i, stage in enumerate(STAGES):
            progress = i * 100 // len(STAGES)
            if await self.report(held, stage, to_status=lc.RUNNING, stage=stage, progress=progress) is None:
                return
            self.say(f"{held.key} attempt {job.attempt}: {stage} {progress}%")
            await asyncio.sleep(step)
            if self.should_fail(job, stage):
                await self.fail(held, stage)
                return
        result = {"rows": rows, "output": f"{params.get('file', job.id)}.parquet"}
        # The final report answers for the job from here on: a heartbeat racing it
        # would only be refused because the job has just left RUNNING.
        await self.stop_heartbeat(held)
        response = await self.report(
            held, "succeed", to_status=lc.SUCCEEDED, progress=100, result=lc.to_struct(result)
        )
        if response is not None:
            self.stats["succeeded"] += 1
            self.say(f"{held.key} attempt {job.attempt} succeeded: {lc.show(result)}")

    async def fail(self, held: Held, stage: str) -> None:
        job = held.job
        await self.stop_heartbeat(held)
        fields = {}
        if self.args.retry_delay is not None:
            fields["retry_after"] = seconds(self.args.retry_delay)
        response = await self.report(
            held,
            "fail",
            to_status=lc.FAILED,
            stage=stage,
            error_code="MOCK_STAGE_FAILED",
            error_message=f"mock failure in stage {stage} (attempt {job.attempt})",
            **fields,
        )
        if response is None:
            return
        self.stats["failed"] += 1
        now = response.job
        if now.status == lc.FAILED:
            then = f"will be retried, not before {clock(now.run_after)}"
        else:
            then = "no attempts left"
        self.say(f"{held.key} attempt {job.attempt} failed at {stage} -> {lc.status_name(now.status)} ({then})")


async def main() -> int:
    args = parse_args()
    async with lc.channel(args.addr) as channel:
        worker = Worker(ledger_pb2_grpc.JobLedgerStub(channel), args)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.signaled)
        await worker.run()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except grpc.aio.AioRpcError as err:
        print(f"worker.py: {lc.rich_error(err)}", file=sys.stderr)
        sys.exit(1)
