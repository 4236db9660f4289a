-- TransitionJob's ceiling: the transaction a TransitionJob of its own runs
-- (src/store/transitions.rs, `transition_alone`: with group commit on, the default, a call
-- that arrives while no other TransitionJob is in flight runs exactly this) for a report
-- without request_id: BEGIN, the locking SELECT (advisory lock, then the row lock), the one
-- statement that updates the job and writes its event (the statement batches use too),
-- COMMIT. A progress report (RUNNING -> RUNNING, one event) on a random job of the njobs
-- RUNNING jobs `jobledger bench compare` puts in the table.
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
    UPDATE job SET status = u.status, attempt = u.attempt, updated_at = u.ts,
        started_at = u.started_at, finished_at = u.finished_at,
        last_error_code = u.error_code, last_error_message = u.error_message,
        stage = u.stage, progress = u.progress, result = u.result
    FROM unnest(ARRAY[lpad(to_hex(:n::int8), 32, '0')::uuid], ARRAY['running'], ARRAY[1],
                ARRAY[clock_timestamp()], ARRAY[clock_timestamp()], ARRAY[NULL::timestamptz],
                ARRAY[NULL::text], ARRAY[NULL::text], ARRAY['bench'], ARRAY[:progress::int4],
                ARRAY[NULL::jsonb])
         AS u(id, status, attempt, ts, started_at, finished_at, error_code,
              error_message, stage, progress, result)
    WHERE job.id = u.id
 ), recorded AS (
    INSERT INTO job_transition_request (job_id, request_id, to_status, job_snapshot,
                                        event_ids)
    SELECT r.job_id, r.request_id, r.to_status, r.snapshot, '{}'::uuid[]
    FROM unnest('{}'::uuid[], '{}'::text[], '{}'::text[], '{}'::jsonb[], '{}'::int4[],
                '{}'::int4[])
         AS r(job_id, request_id, to_status, snapshot, first_event, last_event)
 )
 INSERT INTO job_event (id, job_id, org_id, ts, prev_status, next_status, attempt,
                        detail_json)
 SELECT e.id, e.job_id, e.org_id, e.ts, e.prev, e.next, e.attempt, e.detail
 FROM unnest(ARRAY[gen_random_uuid()], ARRAY[lpad(to_hex(:n::int8), 32, '0')::uuid],
             ARRAY['00000000-0000-0000-0000-000000000000'::uuid], ARRAY[clock_timestamp()],
             ARRAY['running'], ARRAY['running'], ARRAY[1],
             ARRAY[jsonb_build_object('stage', 'bench', 'progress', :progress::int4)])
      WITH ORDINALITY AS e(id, job_id, org_id, ts, prev, next, attempt, detail, n)
 ORDER BY e.n
 RETURNING id, seq, xid::text::int8;
COMMIT;
-- After the commit the server announces the event (src/feed/announcer.rs), batched with
-- whatever else committed meanwhile; unbatched here, the ceiling's side pays it in full.
SELECT pg_notify('jobledger_events',
                 '00000000-0000-0000-0000-000000000000 ' || lpad(to_hex(:n::int8), 32, '0')::uuid);
