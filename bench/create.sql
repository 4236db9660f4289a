-- CreateJob's ceiling: the one statement Store::create_job runs (src/store/jobs.rs),
-- as one autocommit transaction, with a fresh idempotency key each time. Values are the
-- ones `jobledger bench` sends (type "bench", params {"bench": true}, requested_by
-- "bench", default org, max_attempts 5).
\set key random(1, 1000000000000000)
WITH new_job AS (
    INSERT INTO job (org_id, type, priority, idempotency_key, requested_by,
                     max_attempts, params)
    VALUES ('00000000-0000-0000-0000-000000000000', 'bench', 0, :key, 'bench',
            5, '{"bench": true}')
    ON CONFLICT (org_id, idempotency_key) WHERE idempotency_key IS NOT NULL
    DO NOTHING
    RETURNING *
 ), creation_event AS (
    INSERT INTO job_event (job_id, org_id, ts, prev_status, next_status, attempt,
                           detail_json)
    SELECT id, org_id, created_at, NULL, 'queued', 0, '{"actor": "bench"}' FROM new_job
 )
 SELECT id, org_id, type, status, attempt, max_attempts, priority,
     idempotency_key, requested_by, params, created_at, updated_at, started_at, finished_at,
     last_error_code, last_error_message, stage, progress, result FROM new_job;
-- After the commit the server announces the new job's creation event
-- (src/feed/announcer.rs), batched with whatever else committed meanwhile.
SELECT pg_notify('jobledger_events', '00000000-0000-0000-0000-000000000000 ' || gen_random_uuid());
