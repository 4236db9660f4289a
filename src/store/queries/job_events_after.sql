-- A job's committed events after a cursor ($3 xid, $4 seq), in feed order. The job's
-- locks serialize its writers, so a later commit always sorts after what is visible now.
SELECT id, job_id, org_id, ts, prev_status, next_status, attempt, detail_json, seq,
       xid::text::int8 AS xid
FROM job_event
WHERE job_id = $1 AND org_id = $2 AND (xid, seq) > ($3::text::xid8, $4)
ORDER BY xid, seq
LIMIT $5
