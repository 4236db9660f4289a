#!/usr/bin/env python3
"""Throughput of one `Worker` process: jobs/s worked end to end on no-op handlers.

For each concurrency (and handler kind), creates --jobs jobs of a fresh type (CreateJobs,
1,000 a call), then runs a Worker in this process until all of them succeeded: each job
is claimed (long-poll, batches of the free slots), heartbeat-scheduled, handed to the
handler, and completed with a TransitionJob carrying the result. Prints a Markdown table:
jobs/s from the first claim to the last completion, and the CPU time this process spent
per job (the library's cost: gRPC, protobuf, asyncio, threads for sync handlers).

    python clients/python/bench.py --addr 127.0.0.1:50051 --jobs 5000 --concurrency 1,16,64
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
import uuid

from jobledger import AsyncJobContext, Client, JobContext, JobSpec, Worker


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def work(addr: str, job_type: str, jobs: int, concurrency: int, sync: bool) -> float:
    """Runs a Worker until `jobs` jobs succeeded; the seconds it took."""
    worker = Worker(addr, worker_id=f"bench-{concurrency}", concurrency=concurrency, wait=1)
    if sync:

        @worker.handler(job_type)
        def noop(job: JobContext) -> None:
            return None

    else:

        @worker.handler(job_type)
        async def noop_async(job: AsyncJobContext) -> None:
            return None

    started = time.perf_counter()
    running = asyncio.ensure_future(worker.run_async())
    while worker.stats.succeeded < jobs:
        if running.done():
            running.result()  # raises what stopped it
        await asyncio.sleep(0.005)
    took = time.perf_counter() - started
    worker.stop()
    await running
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--addr", default="127.0.0.1:50051")
    parser.add_argument("--jobs", type=int, default=5000, help="jobs per run (default 5000)")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated")
    parser.add_argument("--handlers", default="async,sync", help="async, sync or both")
    args = parser.parse_args()
    print("| handler | concurrency | jobs | seconds | jobs/s | CPU ms/job (this process) |")
    print("|---|---:|---:|---:|---:|---:|")
    with Client(args.addr, timeout=60) as client:
        for kind in args.handlers.split(","):
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                job_type = f"bench-{uuid.uuid4().hex[:8]}"
                for start in range(0, args.jobs, 1000):
                    batch = [JobSpec(job_type) for _ in range(min(1000, args.jobs - start))]
                    client.create_many(batch)
                cpu = cpu_seconds()
                took = asyncio.run(
                    work(args.addr, job_type, args.jobs, concurrency, kind == "sync")
                )
                per_job = (cpu_seconds() - cpu) / args.jobs * 1000
                print(
                    f"| {kind} | {concurrency} | {args.jobs} | {took:.2f} | "
                    f"{args.jobs / took:.0f} | {per_job:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
