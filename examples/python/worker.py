#!/usr/bin/env python3
"""A worker: the old stack's Dramatiq `mock_process` actor, reporting to jobledger.

jobledger is a ledger, not a queue: it does not hand out work. This worker finds work
by listing the org's QUEUED and FAILED `mock_process` jobs (ListJobs), and is woken up
early by the org's event stream (StreamEvents, org scope) when a job is created or
fails. Any number of workers can run; the ledger decides who gets a job:

- Claim: TransitionJob to RUNNING with expected_status = the status it saw and
  attempt = the attempt it saw. Of racing workers exactly one wins; the others get
  ABORTED and move on. Claiming a FAILED job is the retry (attempt + 1); the server
  refuses it once the budget is spent (FAILED_PRECONDITION, MAX_ATTEMPTS_EXHAUSTED).
- Work: the stages download, parse, transform, upload, each reported as RUNNING ->
  RUNNING with its stage and progress, fenced by `attempt`: a worker whose attempt was
  superseded gets ABORTED (STALE_ATTEMPT) and stops.
- Finish: SUCCEEDED with a result, or FAILED with an error code and message. The
  server moves a job whose last attempt failed on to DEAD_LETTER by itself.
- Every transition carries a request_id made of the worker, attempt and step, so a call
  repeated after a lost answer (UNAVAILABLE, deadline) is answered from the ledger's
  record instead of being applied twice.

--fail-at-stage makes the mock fail deterministically: attempts 1..--fail-attempts of
the jobs matching --fail-jobs fail at that stage, later attempts succeed.

Runs until SIGTERM or SIGINT, then finishes the job in hand and exits 0.
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

import grpc

import ledger_client as lc  # first: it puts the generated client on sys.path
from jobledger.v1 import ledger_pb2, ledger_pb2_grpc
from ledger_client import log

STAGES = ("download", "parse", "transform", "upload")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    lc.add_connection_args(parser)
    parser.add_argument(
        "--worker-id",
        default=f"{socket.gethostname()}-{os.getpid()}",
        help="the actor recorded on every event (default HOST-PID)",
    )
    parser.add_argument("--type", default=lc.MOCK_PROCESS, help=f"job type to run (default {lc.MOCK_PROCESS})")
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=2.0,
        help="seconds between listings when no event wakes the worker (default 2)",
    )
    parser.add_argument(
        "--retry-delay",
        type=float,
        default=1.0,
        help="seconds a FAILED job waits after its failure before it is retried (default 1)",
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
    if args.poll_interval <= 0 or args.retry_delay < 0:
        parser.error("--poll-interval must be positive and --retry-delay not negative")
    args.fail_patterns = [p.strip() for p in args.fail_jobs.split(",") if p.strip()]
    return args


class Worker:
    def __init__(self, stub: ledger_pb2_grpc.JobLedgerStub, args: argparse.Namespace) -> None:
        self.stub = stub
        self.args = args
        self.me = args.worker_id
        self.stopping = asyncio.Event()
        self.wake = asyncio.Event()
        self.refused: set[str] = set()  # jobs the ledger will not let us start
        self.stats = {"claimed": 0, "succeeded": 0, "failed": 0, "lost": 0}

    def say(self, message: str) -> None:
        log(f"{self.me}: {message}")

    # --- finding work ------------------------------------------------------------

    async def watch_events(self) -> None:
        """Org-scope stream, from now: any event into QUEUED or FAILED may be work for
        us. Only a wake-up; ListJobs stays the source of truth. Resumes after the last
        cursor when the stream breaks."""
        cursor = ""
        while not self.stopping.is_set():
            request = ledger_pb2.StreamEventsRequest(org_id=self.args.org, after_cursor=cursor)
            try:
                async for event in self.stub.StreamEvents(request):
                    cursor = event.cursor
                    if event.next_status in (lc.QUEUED, lc.FAILED):
                        self.wake.set()
            except grpc.aio.AioRpcError as err:
                if self.stopping.is_set():
                    return
                if err.code() not in lc.TRANSIENT:
                    self.say(f"no event stream ({lc.rich_error(err)}); polling only")
                    return
                self.say(f"event stream broke ({lc.rich_error(err)}); resuming after the last event")
                await asyncio.sleep(1.0)

    async def claimable(self) -> list[ledger_pb2.Job]:
        """The org's QUEUED and FAILED jobs of our type, most urgent and oldest first."""
        jobs, token = [], ""
        for _ in range(10):  # at most 1,000 jobs per look
            request = ledger_pb2.ListJobsRequest(
                org_id=self.args.org,
                statuses=[lc.QUEUED, lc.FAILED],
                type=self.args.type,
                page_size=100,
                page_token=token,
            )
            page = await lc.call(self.stub.ListJobs, request, what="list jobs")
            jobs.extend(job for job in page.jobs if job.id not in self.refused)
            token = page.next_page_token
            if not token:
                break
        return sorted(jobs, key=lambda j: (-j.priority, j.created_at.ToNanoseconds(), j.id))

    def retry_due_in(self, job: ledger_pb2.Job) -> float:
        """Seconds until a FAILED job may be retried (its failure time is the server's)."""
        if job.status != lc.FAILED:
            return 0.0
        failed_at = job.finished_at.ToDatetime(tzinfo=dt.timezone.utc)
        due = failed_at + dt.timedelta(seconds=self.args.retry_delay)
        return max(0.0, (due - dt.datetime.now(dt.timezone.utc)).total_seconds())

    async def run(self) -> None:
        watcher = asyncio.create_task(self.watch_events())
        self.say(f"watching {self.args.type} jobs at {lc.target(self.args.addr)}")
        try:
            while not self.stopping.is_set():
                self.wake.clear()
                wait = self.args.poll_interval
                worked = False
                for job in await self.claimable():
                    if self.stopping.is_set():
                        break
                    due_in = self.retry_due_in(job)
                    if due_in > 0:
                        wait = min(wait, due_in)
                        continue
                    running = await self.claim(job)
                    if running is not None:
                        await self.process(running)
                        worked = True
                        break  # list again: the rest of this listing is getting old
                if worked or self.stopping.is_set():
                    continue
                await self.sleep(wait)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        s = self.stats
        self.say(
            f"stopped: {s['claimed']} attempts claimed, {s['succeeded']} succeeded, "
            f"{s['failed']} failed, {s['lost']} lost to other workers"
        )

    async def sleep(self, seconds: float) -> None:
        """Until an event wakes us, we are told to stop, or `seconds` pass."""
        waits = [asyncio.create_task(self.wake.wait()), asyncio.create_task(self.stopping.wait())]
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for task in waits:
            task.cancel()

    # --- the ledger's side of a job ----------------------------------------------

    def key(self, job: ledger_pb2.Job) -> str:
        return job.idempotency_key or job.id

    async def claim(self, job: ledger_pb2.Job) -> ledger_pb2.Job | None:
        attempt = job.attempt + 1
        kind = "retry" if job.status == lc.FAILED else "start"
        request = ledger_pb2.TransitionJobRequest(
            org_id=self.args.org,
            job_id=job.id,
            to_status=lc.RUNNING,
            expected_status=job.status,  # compare-and-set: only if nobody moved it
            attempt=job.attempt,  # ... and nobody started another attempt
            actor=self.me,
            request_id=f"{self.me}/a{attempt}/claim",
        )
        try:
            response = await lc.call(self.stub.TransitionJob, request, what=f"claim {self.key(job)}")
        except grpc.aio.AioRpcError as err:
            rich = lc.rich_error(err)
            if err.code() == grpc.StatusCode.ABORTED:
                # STATUS_MISMATCH / STALE_ATTEMPT: another worker got there first.
                self.stats["lost"] += 1
                self.say(f"lost the claim on {self.key(job)} to another worker ({rich})")
            elif err.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                # MAX_ATTEMPTS_EXHAUSTED, INVALID_TRANSITION (e.g. canceled meanwhile),
                # JOB_NOT_FOUND: the ledger will not let anyone start it; stop trying.
                self.refused.add(job.id)
                self.say(f"cannot {kind} {self.key(job)}: {rich}")
            elif err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise  # a bug in this worker: the BadRequest names the field
            else:
                self.say(f"could not claim {self.key(job)} ({rich}); trying again later")
            return None
        running = response.job
        self.stats["claimed"] += 1
        self.say(f"claimed {self.key(job)} ({kind}, attempt {running.attempt}/{running.max_attempts})")
        return running

    async def report(self, job: ledger_pb2.Job, step: str, **fields) -> ledger_pb2.TransitionJobResponse | None:
        """One transition of the attempt we hold; None when the ledger says we no
        longer hold it (another attempt started, or the job was canceled)."""
        request = ledger_pb2.TransitionJobRequest(
            org_id=self.args.org,
            job_id=job.id,
            attempt=job.attempt,  # fencing token
            actor=self.me,
            request_id=f"{self.me}/a{job.attempt}/{step}",
            **fields,
        )
        try:
            return await lc.call(self.stub.TransitionJob, request, what=f"{step} {self.key(job)}")
        except grpc.aio.AioRpcError as err:
            if err.code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.FAILED_PRECONDITION):
                self.say(f"gave up {self.key(job)} attempt {job.attempt} at {step}: {lc.rich_error(err)}")
                return None
            raise

    def should_fail(self, job: ledger_pb2.Job, stage: str) -> bool:
        return (
            stage == self.args.fail_at_stage
            and job.attempt <= self.args.fail_attempts
            and any(fnmatch.fnmatchcase(name, p) for p in self.args.fail_patterns for name in (job.idempotency_key, job.id))
        )

    async def process(self, job: ledger_pb2.Job) -> None:
        """The mock job: four stages of `step_ms` each, reported with progress."""
        params = lc.from_struct(job.params)
        step = float(params.get("step_ms", 200)) / 1000
        rows = int(params.get("rows", 100))
        for i, stage in enumerate(STAGES):
            progress = i * 100 // len(STAGES)
            if await self.report(job, stage, to_status=lc.RUNNING, stage=stage, progress=progress) is None:
                return
            self.say(f"{self.key(job)} attempt {job.attempt}: {stage} {progress}%")
            await asyncio.sleep(step)
            if self.should_fail(job, stage):
                response = await self.report(
                    job,
                    "fail",
                    to_status=lc.FAILED,
                    stage=stage,
                    error_code="MOCK_STAGE_FAILED",
                    error_message=f"mock failure in stage {stage} (attempt {job.attempt})",
                )
                if response is not None:
                    self.stats["failed"] += 1
                    now = lc.status_name(response.job.status)
                    then = "will be retried" if response.job.status == lc.FAILED else "no attempts left"
                    self.say(f"{self.key(job)} attempt {job.attempt} failed at {stage} -> {now} ({then})")
                return
        result = {"rows": rows, "output": f"{params.get('file', job.id)}.parquet"}
        response = await self.report(
            job, "succeed", to_status=lc.SUCCEEDED, progress=100, result=lc.to_struct(result)
        )
        if response is not None:
            self.stats["succeeded"] += 1
            self.say(f"{self.key(job)} attempt {job.attempt} succeeded: {lc.show(result)}")


async def main() -> int:
    args = parse_args()
    async with lc.channel(args.addr) as channel:
        worker = Worker(ledger_pb2_grpc.JobLedgerStub(channel), args)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stopping.set)
        await worker.run()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except grpc.aio.AioRpcError as err:
        print(f"worker.py: {lc.rich_error(err)}", file=sys.stderr)
        sys.exit(1)
