#!/usr/bin/env python3
"""The API side: what the old FastAPI endpoints did, on the jobledger library.

Creates N `mock_process` jobs, each with an idempotency key and the params the old API
took (the file to process and its row count), then follows every job's events until the
job is final (SUCCEEDED, CANCELED or DEAD_LETTER), printing each event, and ends with
each job as GetJob shows it (the old REST view: status, stage, progress, result, error).

Run it again with the same --prefix and it creates nothing: the keys already name the
jobs (created = false), and their streams replay the stored events. A stream cut by a
server restart is resumed by the library after the last event it delivered. With --show
it only prints the jobs as they are now (who holds a RUNNING job's lease and until when,
or when a QUEUED or FAILED job becomes claimable).

Exit status: 0 when every job SUCCEEDED (--show: when every job exists), 3 when some
ended otherwise (dead-lettered or canceled), 1 on an error, 2 on bad flags.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
from typing import Any

import jobledger
from jobledger import AsyncClient, IdempotencyKeyReused, InvalidArgument, Job, JobEvent

MOCK_PROCESS = "mock_process"


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--addr",
        default=os.environ.get("JOBLEDGER_ADDR", "127.0.0.1:50051"),
        help="host:port or http://host:port (env JOBLEDGER_ADDR; default 127.0.0.1:50051)",
    )
    parser.add_argument("--org", default=os.environ.get("JOBLEDGER_ORG", ""), help="org (UUID)")
    parser.add_argument("--count", type=int, default=3, help="how many jobs (default 3)")
    parser.add_argument("--prefix", default="upload", help="keys PREFIX-1..N (default upload)")
    parser.add_argument("--max-attempts", type=int, default=0, help="retry budget (0: 5)")
    parser.add_argument("--rows", type=int, default=1000, help="rows of the first file")
    parser.add_argument("--step-ms", type=int, default=200, help="time per stage (a param)")
    parser.add_argument("--run-after", type=float, default=0.0, help="seconds until claimable")
    parser.add_argument("--show", action="store_true", help="only print the jobs as they are")
    parser.add_argument("--demo-errors", action="store_true", help="two refused requests")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after (seconds)")
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be at least 1")
    return args


def log(*parts: object) -> None:
    """One line on stdout, at once."""
    print(*parts, flush=True)


def show(value: Any) -> str:
    """A value for a log line: a bare word as is, anything else as compact JSON."""
    if isinstance(value, str) and value and not any(c.isspace() or c in "\"'" for c in value):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def iso(when: dt.datetime | None) -> str:
    """ISO 8601 UTC with milliseconds: 2026-05-01T12:00:00.250Z."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z" if when else "-"


async def create_jobs(client: AsyncClient, args: argparse.Namespace) -> list[tuple[str, Job]]:
    """Creates (or finds, by key) the jobs PREFIX-1..N."""
    jobs = []
    run_after = dt.timedelta(seconds=args.run_after) if args.run_after > 0 else None
    for i in range(1, args.count + 1):
        key = f"{args.prefix}-{i}"
        # The key makes a repeat (after a lost answer: the library repeats it by itself
        # after UNAVAILABLE) return the job the first call made.
        created = await client.create(
            MOCK_PROCESS,
            {"file": f"uploads/{key}.csv", "rows": args.rows * i, "step_ms": args.step_ms},
            idempotency_key=key,
            requested_by="api.py",
            max_attempts=args.max_attempts,
            run_after=run_after,
        )
        job = created.job
        if created.created:
            scheduled = f" run_after={iso(job.run_after)}" if job.run_after else ""
            status = f"{job.status.name} max_attempts={job.max_attempts}{scheduled}"
            log(f"created {key} {job.id} {status}")
        else:
            log(f"exists  {key} {job.id} {job.status.name} (idempotent repeat, created=false)")
        jobs.append((key, job))
    return jobs


async def demo_errors(client: AsyncClient, first_key: str) -> None:
    """Two requests the server refuses, as the library's exception classes."""
    try:
        await client.create(
            MOCK_PROCESS, {"file": "uploads/something-else.csv"}, idempotency_key=first_key
        )
    except IdempotencyKeyReused as err:
        log(f"refused same key, other params: {err}")  # err.job_id: the existing job
    try:
        await client.create("", max_attempts=-1)
    except InvalidArgument as err:
        log(f"refused no type, negative max_attempts: {err}")


async def follow(client: AsyncClient, key: str, job_id: str) -> int:
    """Prints the job's events from its first one until the stream ends at a final
    status; how many it printed."""
    seen = 0
    async for event in client.events(job_id):
        log(format_event(key, event))
        seen += 1
    return seen


def format_event(key: str, event: JobEvent) -> str:
    """An event as a line: the step, its attempt and its detail."""
    before = event.prev_status.name if event.prev_status else "(created)"
    parts = [f"event {key} {before} -> {event.next_status.name} attempt={event.attempt}"]
    for name in ("stage", "progress", "result", "error_code", "error_message", "run_after"):
        if name in event.detail:
            parts.append(f"{name}={show(event.detail[name])}")
    for name in ("reason", "actor"):
        if name in event.detail:
            parts.append(f"{name}={show(event.detail[name])}")
    return " ".join(parts)


def format_job(key: str, job: Job) -> str:
    """A job as GetJob shows it, with its lease or schedule."""
    parts = [
        f"job {key} {job.status.name} attempt={job.attempt}/{job.max_attempts}",
        f"stage={show(job.stage)} progress={job.progress}",
    ]
    if job.result is not None:
        parts.append(f"result={show(job.result)}")
    if job.last_error_code or job.last_error_message:
        parts.append(f"last_error={show(job.last_error_code + ': ' + job.last_error_message)}")
    if job.run_after:
        parts.append(f"run_after={iso(job.run_after)}")
    if job.lease_holder:
        parts.append(f"lease_holder={show(job.lease_holder)}")
    if job.lease_expires_at:
        parts.append(f"lease_expires_at={iso(job.lease_expires_at)}")
    return " ".join(parts)


async def show_jobs(client: AsyncClient, args: argparse.Namespace) -> int:
    """Prints the jobs PREFIX-1..N as they are now (found by key)."""
    missing = 0
    for i in range(1, args.count + 1):
        key = f"{args.prefix}-{i}"
        found = [job async for job in client.list(idempotency_key=key, page_size=1)]
        if found:
            log(format_job(key, found[0]))
        else:
            log(f"no job {key}")
            missing += 1
    return 3 if missing else 0


async def main() -> int:
    """Creates, follows, prints; the exit status."""
    args = parse_args()
    async with AsyncClient(args.addr, org_id=args.org) as client:
        if args.show:
            return await show_jobs(client, args)
        jobs = await create_jobs(client, args)
        if args.demo_errors:
            await demo_errors(client, jobs[0][0])
        try:
            counts = await asyncio.wait_for(
                asyncio.gather(*(follow(client, key, job.id) for key, job in jobs)),
                args.timeout,
            )
        except asyncio.TimeoutError:
            log(f"gave up after {args.timeout:g}s: not every job reached a final status")
            return 1
        log(f"streamed {sum(counts)} events of {len(jobs)} jobs")
        finished = [await client.get(job.id) for _, job in jobs]
        for (key, _), job in zip(jobs, finished, strict=True):
            log(format_job(key, job))
        succeeded = sum(job.status == jobledger.JobStatus.SUCCEEDED for job in finished)
        log(f"{succeeded} of {len(finished)} jobs succeeded")
        return 0 if succeeded == len(finished) else 3


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except jobledger.JobledgerError as err:
        print(f"api.py: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
