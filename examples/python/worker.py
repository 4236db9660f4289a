#!/usr/bin/env python3
"""A worker: the old stack's Dramatiq `mock_process` actor, on the jobledger library.

The library does the dispatch (docs/dispatch.md): it claims jobs with a long-poll up to
--slots at once, each under a lease (--lease) it heartbeats every third of it, reports
with the attempt as fencing token and a request_id per step, stops a handler whose job
was canceled or rescued, and on SIGTERM stops claiming, lets the jobs in hand finish
within --grace seconds, then hands the rest back (RUNNING -> QUEUED). A second SIGTERM
hands them back at once.

The handler is the mock job: the stages download, parse, transform, upload, `step_ms`
(a job param) each, reported as progress; it succeeds with a result. --fail-at-stage
makes it fail on purpose: attempts 1..--fail-attempts of the jobs matching --fail-jobs
fail at that stage (MockStageFailed; with --retry-delay, retried that long after), later
attempts succeed. --async runs the same handler as an `async def`.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import os
import socket
import sys
import time
from typing import Any

import jobledger
from jobledger import AsyncJobContext, JobContext, Retry, Worker

STAGES = ("download", "parse", "transform", "upload")
MOCK_PROCESS = "mock_process"


class MockStageFailed(Exception):
    """The mock's failure: recorded as error_code MOCK_STAGE_FAILED (without this
    attribute it would be the class name)."""

    error_code = "MOCK_STAGE_FAILED"


def parse_args() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--addr",
        default=os.environ.get("JOBLEDGER_ADDR", "127.0.0.1:50051"),
        help="host:port or http://host:port (env JOBLEDGER_ADDR; default 127.0.0.1:50051)",
    )
    parser.add_argument("--org", default=os.environ.get("JOBLEDGER_ORG", ""), help="org (UUID)")
    parser.add_argument(
        "--worker-id",
        default=f"{socket.gethostname()}-{os.getpid()}",
        help="the actor of every event and the lease holder (default HOST-PID)",
    )
    parser.add_argument("--type", default=MOCK_PROCESS, help=f"job type (default {MOCK_PROCESS})")
    parser.add_argument("--slots", type=int, default=1, help="jobs worked at once (default 1)")
    parser.add_argument("--lease", type=float, default=10.0, help="seconds, 1..3600 (default 10)")
    parser.add_argument("--wait", type=float, default=20.0, help="long-poll, 0..60 s (default 20)")
    parser.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="seconds the jobs in hand may finish after SIGTERM before they are handed back",
    )
    parser.add_argument(
        "--retry-delay", type=float, help="seconds until a failed attempt is retried"
    )
    parser.add_argument("--fail-at-stage", choices=STAGES, help="stage at which the mock fails")
    parser.add_argument("--fail-attempts", type=int, default=1, help="attempts that fail")
    parser.add_argument(
        "--fail-jobs", default="*", help="comma-separated globs on the key or id (default *)"
    )
    parser.add_argument("--async", dest="use_async", action="store_true", help="async handler")
    args = parser.parse_args()
    args.fail_patterns = [p.strip() for p in args.fail_jobs.split(",") if p.strip()]
    return args


def main() -> int:
    """Registers the handler and runs the worker until SIGTERM."""
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    worker = Worker(
        args.addr,
        worker_id=args.worker_id,
        org_id=args.org,
        concurrency=args.slots,
        lease=args.lease,
        wait=args.wait,
        grace_period=args.grace,
    )

    def should_fail(job: jobledger.Job, stage: str) -> bool:
        return (
            stage == args.fail_at_stage
            and job.attempt <= args.fail_attempts
            and any(
                fnmatch.fnmatchcase(name, p)
                for p in args.fail_patterns
                for name in (job.idempotency_key, job.id)
            )
        )

    def failure(job: jobledger.Job, stage: str) -> Exception:
        message = f"mock failure in stage {stage} (attempt {job.attempt})"
        if args.retry_delay is not None:
            return Retry(args.retry_delay, message, code=MockStageFailed.error_code)
        return MockStageFailed(message)

    def result(job: jobledger.Job) -> dict[str, Any]:
        rows = int(job.params.get("rows", 100))
        return {"rows": rows, "output": f"{job.params.get('file', job.id)}.parquet"}

    def say(job: jobledger.Job, stage: str, percent: int) -> None:
        key = job.idempotency_key or job.id
        worker.say(f"{key} attempt {job.attempt}: {stage} {percent}%")

    if args.use_async:

        @worker.handler(args.type)
        async def process_async(ctx: AsyncJobContext) -> dict[str, Any]:
            step = float(ctx.params.get("step_ms", 200)) / 1000
            for i, stage in enumerate(STAGES):
                percent = i * 100 // len(STAGES)
                await ctx.progress(stage, percent)
                say(ctx.job, stage, percent)
                await ctx.sleep(step)
                if should_fail(ctx.job, stage):
                    raise failure(ctx.job, stage)
            return result(ctx.job)

    else:

        @worker.handler(args.type)
        def process(ctx: JobContext) -> dict[str, Any]:
            step = float(ctx.params.get("step_ms", 200)) / 1000
            for i, stage in enumerate(STAGES):
                percent = i * 100 // len(STAGES)
                ctx.progress(stage, percent)
                say(ctx.job, stage, percent)
                ctx.sleep(step)  # returns early (JobLost) if the job is taken away
                if should_fail(ctx.job, stage):
                    raise failure(ctx.job, stage)
            return result(ctx.job)

    started = time.monotonic()
    worker.run()
    worker.say(f"ran {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except jobledger.JobledgerError as err:
        print(f"worker.py: {err}", file=sys.stderr)
        sys.exit(1)
