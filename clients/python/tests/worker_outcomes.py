"""How a handler's outcome is recorded; run by tests/python_client.rs, which reads the
rows afterwards.

    worker_outcomes.py ADDR

Creates one job per case (key `outcome-CASE`, max_attempts 3), runs a Worker with sync
and async handlers until every job is final, then prints `done`.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from jobledger import AsyncJobContext, Client, Fail, JobContext, JobStatus, Retry, Worker


class QuotaExceeded(Exception):
    """Says its own error code."""

    error_code = "QUOTA"


CASES = ["ok", "async-ok", "boom", "quota", "later", "dead", "scalar", "unjson", "detail"]


async def main(addr: str) -> None:
    with Client(addr) as client:
        ids = {
            case: client.create(
                f"outcome-{case}", {"case": case}, idempotency_key=f"outcome-{case}", max_attempts=3
            ).job.id
            for case in CASES
        }
    worker = Worker(addr, worker_id="outcomes", concurrency=4, lease=5, wait=1)

    @worker.handler("outcome-ok")
    def ok(job: JobContext) -> dict[str, Any]:
        return {"params": job.params, "attempt": job.attempt}

    @worker.handler("outcome-async-ok")
    async def async_ok(job: AsyncJobContext) -> dict[str, Any]:
        await job.progress("only", 50)
        return {"async": True}

    @worker.handler("outcome-boom")
    def boom(job: JobContext) -> None:
        raise ValueError("bad input")

    @worker.handler("outcome-quota")
    async def quota(job: AsyncJobContext) -> None:
        raise QuotaExceeded("over the daily quota")

    @worker.handler("outcome-later")
    def later(job: JobContext) -> dict[str, Any]:
        if job.attempt == 1:
            raise Retry(after=0.3, message="not yet")
        return {"retried": job.is_retry}

    @worker.handler("outcome-dead")
    async def dead(job: AsyncJobContext) -> None:
        raise Fail("NO_FILE", "nothing to process", retry=False)

    @worker.handler("outcome-scalar")
    def scalar(job: JobContext) -> int:
        return 42

    @worker.handler("outcome-unjson")
    def unjson(job: JobContext) -> dict[str, Any]:
        return {"when": object()}

    @worker.handler("outcome-detail")
    def detail(job: JobContext) -> None:
        job.detail(rows_seen=7)
        job.progress("end", 90, note="almost")

    running = asyncio.ensure_future(worker.run_async())
    want = dict.fromkeys(["ok", "async-ok", "later", "scalar", "detail"], JobStatus.SUCCEEDED)
    want["dead"] = JobStatus.DEAD_LETTER
    with Client(addr) as client:
        for _ in range(600):
            jobs = {case: client.get(job_id) for case, job_id in ids.items()}
            done = all(jobs[case].status == status for case, status in want.items())
            # The failures are retried after their backoff; their first one is enough.
            failed = all(jobs[case].last_error_code for case in ("boom", "quota", "unjson"))
            if done and failed:
                break
            await asyncio.sleep(0.05)
    worker.stop()
    stats = await running
    print(f"stats: {stats}", flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
