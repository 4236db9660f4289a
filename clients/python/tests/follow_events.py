"""Follows an org's events across server restarts; run by tests/python_client.rs.

    follow_events.py ADDR COUNT

Creates a job `follow-start`, takes its creation event's cursor, and follows the org's
events after it with `Client.events` (which resumes after UNAVAILABLE by itself),
printing `event JOB_ID PREV->NEXT aATTEMPT CURSOR` for each, until COUNT were printed.
"""

from __future__ import annotations

import sys

from jobledger import Client, Retries

addr, count = sys.argv[1], int(sys.argv[2])
with Client(addr, retries=Retries(budget=60)) as client:
    start = client.create("follow-start", idempotency_key="follow-start").job
    cursor = next(iter(client.events(start.id, history_only=True))).cursor
    print(f"following after {cursor}", flush=True)
    for seen, event in enumerate(client.events(after_cursor=cursor), start=1):
        prev, next_ = event.prev_status.name, event.next_status.name
        print(f"event {event.job_id} {prev}->{next_} a{event.attempt} {event.cursor}", flush=True)
        if seen == count:
            break
print("done", flush=True)
