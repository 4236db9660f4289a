-- The events of a replayed request_id, in feed order.
SELECT id, job_id, org_id, ts, prev_status, next_status, attempt, detail_json, seq,
       xid::text::int8 AS xid
FROM job_event
WHERE id = ANY($1)
ORDER BY xid, seq
