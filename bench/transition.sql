-- TransitionJob's ceiling: the transaction Store::transition_job runs (src/store/jobs.rs)
-- for a report without request_id (BEGIN, the locking SELECT, the one statement that
-- updates the job and writes its event, COMMIT): a progress report (RUNNING -> RUNNING,
-- one event) on a random job of the njobs RUNNING jobs `jobledger bench compare` puts
-- in the table.
\set n random(1, :njobs)
\set progress random(0, 100)
BEGIN;
WITH serialized AS (
    SELECT pg_advisory_xact_lock(hashtextextended(lpad(to_hex(:n::int8), 32, '0')::uuid::text, 0)))
SELECT id, org_id, type, status, attempt, max_attempts, priority,
     idempotency_key, requested_by, params, created_at, updated_at, started_at, finished_at,
     last_error_code, last_error_message, stage, progress, result, clock_timestamp() AS now
FROM serialized, job WHERE id = lpad(to_hex(:n::int8), 32, '0')::uuid
    AND org_id = '00000000-0000-0000-0000-000000000000' FOR UPDATE OF job;
WITH updated AS (
    UPDATE job SET status = 'running', attempt = 1, updated_at = clock_timestamp(),
        started_at = created_at, finished_at = NULL, last_error_code = NULL,
        last_error_message = NULL, stage = 'bench', progress = :progress, result = NULL
    WHERE id = lpad(to_hex(:n::int8), 32, '0')::uuid
 ), recorded AS (
    INSERT INTO job_transition_request (job_id, request_id, to_status,
                                        job_snapshot, event_ids)
    SELECT lpad(to_hex(:n::int8), 32, '0')::uuid, NULL, 'running', '{}', '{}'
    WHERE NULL::text IS NOT NULL
 )
 INSERT INTO job_event (id, job_id, org_id, ts, prev_status, next_status, attempt,
                        detail_json)
 SELECT e.id, lpad(to_hex(:n::int8), 32, '0')::uuid, '00000000-0000-0000-0000-000000000000',
        clock_timestamp(), e.prev, e.next, e.attempt, e.detail
 FROM unnest(ARRAY[gen_random_uuid()], ARRAY['running'], ARRAY['running'], ARRAY[1],
             ARRAY[jsonb_build_object('stage', 'bench', 'progress', :progress::int4)])
      WITH ORDINALITY AS e(id, prev, next, attempt, detail, n)
 ORDER BY e.n
 RETURNING id, seq, xid::text::int8;
COMMIT;
-- After the commit the server announces the event (src/feed/announcer.rs), batched with
-- whatever else committed meanwhile; unbatched here, the ceiling's side pays it in full.
SELECT pg_notify('jobledger_events',
                 '00000000-0000-0000-0000-000000000000 ' || lpad(to_hex(:n::int8), 32, '0')::uuid);
