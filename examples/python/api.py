#!/usr/bin/env python3
"""The API side: what the old FastAPI endpoints did, against jobledger.

Creates N `mock_process` jobs, each with an idempotency key and the params the old API
took (the file to process and its row count), then follows every job's events with
StreamEvents until the job is final (SUCCEEDED, CANCELED or DEAD_LETTER), printing each
event, and ends with each job as GetJob shows it (the old REST view: status, stage,
progress, result, last error).

Run it again with the same --prefix and it creates nothing: the keys already name the
jobs (created = false), and their streams replay the stored events. With --show it only
prints the jobs as they are now: who holds a RUNNING job's lease (lease_holder) and
until when (lease_expires_at), or when a QUEUED or FAILED job becomes claimable
(run_after).

Exit status: 0 when every job SUCCEEDED (--show: when every job exists), 3 when some
ended otherwise (dead-lettered or canceled), 1 on an error, 2 on bad flags.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import grpc
from google.protobuf import timestamp_pb2

import ledger_client as lc  # first: it puts the generated client on sys.path
from jobledger.v1 import ledger_pb2, ledger_pb2_grpc
from ledger_client import log


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    lc.add_connection_args(parser)
    parser.add_argument("--count", type=int, default=3, help="how many jobs (default 3)")
    parser.add_argument(
        "--prefix",
        default="upload",
        help="idempotency keys are PREFIX-1 .. PREFIX-N (default upload)",
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=0,
        help="each job's retry budget (default 0: the server's default, 5)",
    )
    parser.add_argument("--rows", type=int, default=1000, help="rows of the first file (default 1000)")
    parser.add_argument(
        "--step-ms",
        type=int,
        default=200,
        help="how long the worker spends in each stage, a job param (default 200)",
    )
    parser.add_argument(
        "--run-after",
        type=float,
        default=0.0,
        help="schedule the jobs: not claimable for this many seconds (default 0: at once)",
    )
    parser.add_argument(
        "--show",
        action="store_true",
        help="create nothing: print the jobs PREFIX-1..N as they are now, and exit",
    )
    parser.add_argument(
        "--demo-errors",
        action="store_true",
        help="also send two bad requests and print the error details jobledger returns",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="give up waiting for the jobs after this many seconds (default 300)",
    )
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be at least 1")
    if args.max_attempts < 0:
        parser.error("--max-attempts must not be negative")
    if args.run_after < 0:
        parser.error("--run-after must not be negative")
    return args


async def create_jobs(stub, args) -> list[tuple[str, ledger_pb2.Job]]:
    jobs = []
    run_after = None
    if args.run_after > 0:
        run_after = timestamp_pb2.Timestamp()
        run_after.FromNanoseconds(time.time_ns() + int(args.run_after * 1e9))
    for i in range(1, args.count + 1):
        key = f"{args.prefix}-{i}"
        request = ledger_pb2.CreateJobRequest(
            org_id=args.org,
            type=lc.MOCK_PROCESS,
            idempotency_key=key,
            requested_by="api.py",
            max_attempts=args.max_attempts,
            run_after=run_after,
            params=lc.to_struct(
                {"file": f"uploads/{key}.csv", "rows": args.rows * i, "step_ms": args.step_ms}
            ),
        )
        # The idempotency key makes repeating a create after a lost answer safe: the
        # repeat returns the job the first call made.
        response = await lc.call(stub.CreateJob, request, what=f"create {key}")
        job = response.job
        scheduled = f" run_after={lc.iso(job.run_after)}" if job.HasField("run_after") else ""
        if response.created:
            log(f"created {key} {job.id} {lc.status_name(job.status)} max_attempts={job.max_attempts}{scheduled}")
        else:
            log(f"exists  {key} {job.id} {lc.status_name(job.status)} (idempotent repeat, created=false)")
        jobs.append((key, job))
    return jobs


async def demo_errors(stub, args, first_key: str) -> None:
    """Two requests the server refuses, and what a client can read from the refusal."""
    reused = ledger_pb2.CreateJobRequest(
        org_id=args.org,
        type=lc.MOCK_PROCESS,
        idempotency_key=first_key,
        params=lc.to_struct({"file": "uploads/something-else.csv"}),
    )
    invalid = ledger_pb2.CreateJobRequest(org_id=args.org, type="", max_attempts=-1)
    for what, request in (("same key, other params", reused), ("no type, negative max_attempts", invalid)):
        try:
            await stub.CreateJob(request, timeout=10)
            log(f"refused? {what}: no, it was accepted")
        except grpc.aio.AioRpcError as err:
            log(f"refused {what}: {lc.rich_error(err)}")


async def follow(stub, args, key: str, job_id: str) -> int:
    """Prints the job's events from its first one until the stream ends at a final
    status; returns how many events it printed. A stream cut by the server (UNAVAILABLE,
    e.g. a replica shutting down) is resumed after the last event's cursor, so no event
    is missed or printed twice."""
    cursor, seen, breaks = "", 0, 0
    while True:
        request = ledger_pb2.StreamEventsRequest(org_id=args.org, job_id=job_id, after_cursor=cursor)
        try:
            async for event in stub.StreamEvents(request):
                log(format_event(key, event))
                cursor, seen = event.cursor, seen + 1
            return seen
        except grpc.aio.AioRpcError as err:
            breaks += 1
            if err.code() not in lc.TRANSIENT or breaks > 5:
                raise
            log(f"stream of {key} cut ({lc.rich_error(err)}); resuming after the last event")
            await asyncio.sleep(0.5 * breaks)


def format_event(key: str, event: ledger_pb2.JobEvent) -> str:
    before = lc.status_name(event.prev_status) if event.prev_status else "(created)"
    parts = [f"event {key} {before} -> {lc.status_name(event.next_status)} attempt={event.attempt}"]
    detail = lc.from_struct(event.detail)
    for name in ("stage", "progress", "result", "error_code", "error_message", "run_after", "reason", "actor"):
        if name in detail:
            parts.append(f"{name}={lc.show(detail[name])}")
    return " ".join(parts)


def format_job(key: str, job: ledger_pb2.Job) -> str:
    parts = [
        f"job {key} {lc.status_name(job.status)} attempt={job.attempt}/{job.max_attempts}",
        f"stage={lc.show(job.stage)} progress={job.progress}",
    ]
    if job.HasField("result"):
        parts.append(f"result={lc.show(lc.from_struct(job.result))}")
    if job.last_error_code or job.last_error_message:
        parts.append(f"last_error={lc.show(job.last_error_code + ': ' + job.last_error_message)}")
    # Dispatch: when a QUEUED or FAILED job becomes claimable; who holds a RUNNING job
    # and until when (unset once it leaves RUNNING).
    if job.HasField("run_after"):
        parts.append(f"run_after={lc.iso(job.run_after)}")
    if job.lease_holder:
        parts.append(f"lease_holder={lc.show(job.lease_holder)}")
    if job.HasField("lease_expires_at"):
        parts.append(f"lease_expires_at={lc.iso(job.lease_expires_at)}")
    return " ".join(parts)


async def show_jobs(stub, args) -> int:
    """Prints the jobs PREFIX-1..N as they are now (found by idempotency key)."""
    missing = 0
    for i in range(1, args.count + 1):
        key = f"{args.prefix}-{i}"
        request = ledger_pb2.ListJobsRequest(org_id=args.org, idempotency_key=key, page_size=1)
        found = (await lc.call(stub.ListJobs, request, what=f"find {key}")).jobs
        if found:
            log(format_job(key, found[0]))
        else:
            log(f"no job {key}")
            missing += 1
    return 3 if missing else 0


async def main() -> int:
    args = parse_args()
    async with lc.channel(args.addr) as channel:
        stub = ledger_pb2_grpc.JobLedgerStub(channel)
        if args.show:
            return await show_jobs(stub, args)
        jobs = await create_jobs(stub, args)
        if args.demo_errors:
            await demo_errors(stub, args, jobs[0][0])
        try:
            counts = await asyncio.wait_for(
                asyncio.gather(*(follow(stub, args, key, job.id) for key, job in jobs)),
                args.timeout,
            )
        except asyncio.TimeoutError:
            log(f"gave up after {args.timeout:g}s: not every job reached a final status")
            return 1
        log(f"streamed {sum(counts)} events of {len(jobs)} jobs")
        finished = []
        for key, job in jobs:
            request = ledger_pb2.GetJobRequest(org_id=args.org, job_id=job.id)
            finished.append((await lc.call(stub.GetJob, request, what=f"get {key}")).job)
            log(format_job(key, finished[-1]))
        succeeded = sum(job.status == lc.SUCCEEDED for job in finished)
        log(f"{succeeded} of {len(finished)} jobs succeeded")
        return 0 if succeeded == len(finished) else 3


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except grpc.aio.AioRpcError as err:
        print(f"api.py: {lc.rich_error(err)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
