"""Every call of `Client` and `AsyncClient` against a real server, with assertions on
what comes back; prints `ok NAME` per check and `created KEY ID` per job the test then
reads from the database. Run by tests/python_client.rs.

    client_flow.py ADDR
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import uuid

from jobledger import (
    AsyncClient,
    Client,
    CreateResult,
    JobSpec,
    JobStatus,
    RetryPolicy,
    errors,
)


def ok(name: str) -> None:
    print(f"ok {name}", flush=True)


def sync_flow(addr: str) -> None:
    with Client(addr, timeout=5) as client:
        assert client.health() == "SERVING"
        assert client.health("liveness") == "SERVING"
        ok("health")

        run_after = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
        first = client.create(
            "flow",
            {"file": "a.csv", "rows": 3, "nested": {"x": [1, 2.5, "y", None, True]}},
            idempotency_key="flow-1",
            priority=7,
            max_attempts=3,
            requested_by="client_flow",
            run_after=run_after,
            retry_policy=RetryPolicy(initial_backoff=0.5, max_backoff=dt.timedelta(minutes=2)),
        )
        job = first.job
        assert first.created and job.status == JobStatus.QUEUED, first
        assert job.params == {
            "file": "a.csv",
            "rows": 3,
            "nested": {"x": [1, 2.5, "y", None, True]},
        }
        assert job.priority == 7 and job.max_attempts == 3 and job.requested_by == "client_flow"
        assert (
            job.run_after is not None and abs((job.run_after - run_after).total_seconds()) < 0.001
        )
        print(f"created flow-1 {job.id}", flush=True)
        again = client.create("flow", job.params, idempotency_key="flow-1")
        assert not again.created and again.job.id == job.id
        ok("create")

        batch = client.create_many(
            [JobSpec("flow", {"i": i}, idempotency_key=f"batch-{i}") for i in range(3)]
            + [JobSpec("", {"i": 3})]
        )
        assert [type(r).__name__ for r in batch] == ["CreateResult"] * 3 + ["InvalidArgument"]
        bad = batch[3]
        assert isinstance(bad, errors.InvalidArgument)
        assert [v.field for v in bad.field_violations] == ["type"], bad.field_violations
        for i, result in enumerate(batch[:3]):
            assert isinstance(result, CreateResult)
            print(f"created batch-{i} {result.job.id}", flush=True)
        ok("create_many")

        got = client.get(job.id)
        assert got == job, (got, job)
        ok("get")

        for i in range(7):
            client.create("page", {"i": i})
        listed = list(client.list(type="page", page_size=2))
        assert [j.params["i"] for j in listed] == [6, 5, 4, 3, 2, 1, 0], listed
        assert [j.id for j in client.list(idempotency_key="flow-1")] == [job.id]
        assert len(list(client.list(statuses=[JobStatus.QUEUED], page_size=1000))) == 11
        ok("list")

        counts = client.count()
        assert counts.total == 11 and counts.by_status[JobStatus.QUEUED] == 11, counts
        assert counts.by_type[("page", JobStatus.QUEUED)] == 7
        assert client.count(type="flow").total == 4
        ok("count")

        # A job driven by hand: start (fenced by expected status), progress, success.
        page = listed[0]
        started = client.transition(
            page.id, JobStatus.RUNNING, expected_status=JobStatus.QUEUED, actor="me"
        )
        assert started.job.attempt == 1 and len(started.events) == 1
        report = client.transition(
            page.id,
            JobStatus.RUNNING,
            attempt=1,
            stage="parse",
            progress=40,
            detail={"rows_seen": 12},
            request_id="flow-report-1",
        )
        replay = client.transition(
            page.id,
            JobStatus.RUNNING,
            attempt=1,
            stage="parse",
            progress=40,
            request_id="flow-report-1",
        )
        assert replay.job == report.job, "a replayed request_id answers from the record"
        done = client.transition(page.id, JobStatus.SUCCEEDED, attempt=1, result={"rows": 12})
        assert done.job.status == JobStatus.SUCCEEDED and done.job.result == {"rows": 12}
        assert done.job.stage == "parse" and done.job.finished_at is not None
        ok("transition")

        events = list(client.events(page.id))
        steps = [(e.prev_status.name, e.next_status.name, e.attempt) for e in events]
        assert steps == [
            ("UNSPECIFIED", "QUEUED", 0),
            ("QUEUED", "RUNNING", 1),
            ("RUNNING", "RUNNING", 1),
            ("RUNNING", "SUCCEEDED", 1),
        ], steps
        assert events[2].detail["rows_seen"] == 12 and events[2].detail["stage"] == "parse"
        tail = list(client.events(page.id, after_cursor=events[1].cursor))
        assert [e.id for e in tail] == [e.id for e in events[2:]]
        history = list(client.events(job.id, history_only=True))
        assert [e.next_status for e in history] == [JobStatus.QUEUED], history
        ok("events")

        canceled = client.cancel(listed[1].id, reason="not needed", actor="operator")
        assert canceled.status == JobStatus.CANCELED and canceled.finished_at is not None
        last = list(client.events(canceled.id))[-1]
        assert last.detail["error_message"] == "not needed" and last.detail["actor"] == "operator"
        ok("cancel")

        # Dispatch by hand: claim under a lease, heartbeat, fail with a retry delay.
        (claimed,) = client.claim(["page"], worker_id="flow-worker", lease=10)
        assert claimed.job.status == JobStatus.RUNNING and claimed.job.lease_holder == "flow-worker"
        assert not claimed.is_retry and claimed.event.detail["actor"] == "flow-worker"
        expires = client.heartbeat(claimed.job.id, claimed.job.attempt, lease=20)
        assert expires is not None and claimed.job.lease_expires_at is not None
        assert expires > claimed.job.lease_expires_at
        failed = client.transition(
            claimed.job.id,
            JobStatus.FAILED,
            attempt=claimed.job.attempt,
            error_code="E",
            retry_after=30,
        )
        assert failed.job.run_after is not None and failed.job.lease_holder == ""
        ok("claim")


async def async_flow(addr: str) -> None:
    async with AsyncClient(addr, timeout=5) as client:
        assert await client.health() == "SERVING"
        created = await client.create("async", {"n": 1}, idempotency_key="async-1")
        job = created.job
        print(f"created async-1 {job.id}", flush=True)
        assert created.created and (await client.get(job.id)) == job
        results = await client.create_many([JobSpec("async", {"n": n}) for n in range(2, 5)])
        assert all(isinstance(r, CreateResult) for r in results)
        listed = [j.params["n"] async for j in client.list(type="async", page_size=1)]
        assert sorted(listed) == [1, 2, 3, 4] and listed[-1] == 1, listed  # one batch: one instant
        assert (await client.count(type="async")).total == 4
        ok("async create, get, list, count")

        # Follow a job live while it is moved: the stream ends after the final event.
        seen: list[str] = []

        async def follow() -> None:
            async for event in client.events(job.id):
                seen.append(event.next_status.name)

        follower = asyncio.ensure_future(follow())
        await asyncio.sleep(0.3)
        await client.transition(job.id, JobStatus.RUNNING, expected_status=JobStatus.QUEUED)
        await client.transition(job.id, JobStatus.RUNNING, attempt=1, progress=50)
        await client.transition(job.id, JobStatus.SUCCEEDED, attempt=1)
        await asyncio.wait_for(follower, 10)
        assert seen == ["QUEUED", "RUNNING", "RUNNING", "SUCCEEDED"], seen
        ok("async events")

        try:
            await client.transition(job.id, JobStatus.CANCELED)
        except errors.InvalidTransition as err:
            assert err.from_status == JobStatus.SUCCEEDED and err.allowed == []
        else:
            raise AssertionError("a final job was canceled")
        try:
            await client.get(str(uuid.uuid4()))
        except errors.JobNotFound:
            pass
        else:
            raise AssertionError("a job that does not exist was found")
        (claimed,) = await client.claim(["async"], worker_id="async-worker", lease=5, wait=1)
        await client.heartbeat(claimed.job.id, claimed.job.attempt)
        canceled = await client.cancel(claimed.job.id)
        assert canceled.status == JobStatus.CANCELED
        ok("async errors, claim, cancel")


if __name__ == "__main__":
    sync_flow(sys.argv[1])
    asyncio.run(async_flow(sys.argv[1]))
    print("all ok", flush=True)
