-- TransitionJob's writes, one statement for one call or a whole batch: each job's final
-- state ($1..$11 and $26..$29, one row per job), the outcome of each call that carried a
-- request_id ($13..$18, its events a slice of $12), and every event in call order ($12,
-- $19..$25).
WITH updated AS (
    UPDATE job SET status = u.status, attempt = u.attempt, updated_at = u.ts,
        started_at = u.started_at, finished_at = u.finished_at,
        last_error_code = u.error_code, last_error_message = u.error_message,
        stage = u.stage, progress = u.progress, result = u.result,
        run_after = u.run_after, lease_expires_at = u.lease_expires_at,
        lease_holder = u.lease_holder, lease_ms = u.lease_ms
    FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::timestamptz[],
                $5::timestamptz[], $6::timestamptz[], $7::text[], $8::text[],
                $9::text[], $10::int4[], $11::jsonb[], $26::timestamptz[],
                $27::timestamptz[], $28::text[], $29::int4[])
         AS u(id, status, attempt, ts, started_at, finished_at, error_code,
              error_message, stage, progress, result, run_after, lease_expires_at,
              lease_holder, lease_ms)
    WHERE job.id = u.id
), recorded AS (
    INSERT INTO job_transition_request (job_id, request_id, to_status, job_snapshot,
                                        event_ids)
    SELECT r.job_id, r.request_id, r.to_status, r.snapshot,
           ($12::uuid[])[r.first_event:r.last_event]
    FROM unnest($13::uuid[], $14::text[], $15::text[], $16::jsonb[], $17::int4[],
                $18::int4[])
         AS r(job_id, request_id, to_status, snapshot, first_event, last_event)
)
INSERT INTO job_event (id, job_id, org_id, ts, prev_status, next_status, attempt,
                       detail_json)
SELECT e.id, e.job_id, e.org_id, e.ts, e.prev, e.next, e.attempt, e.detail
FROM unnest($12::uuid[], $19::uuid[], $20::uuid[], $21::timestamptz[], $22::text[],
            $23::text[], $24::int4[], $25::jsonb[])
     WITH ORDINALITY AS e(id, job_id, org_id, ts, prev, next, attempt, detail, n)
ORDER BY e.n
RETURNING id, seq, xid::text::int8
