-- CreateJob and CreateJobs: every job of the batch and its creation event in one
-- statement, and the jobs that already hold a key. Entries are rows of the arrays;
-- `n` is the entry's index, `first` is false for an entry whose (org, key) an earlier
-- entry of the batch also has (it is answered by a re-run, which sees the earlier one).
-- Rows are inserted in (org_id, idempotency_key) order, so concurrent batches with
-- overlapping keys wait for each other in one order and never deadlock.
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::int4[], $5::text[],
                         $6::text[], $7::int4[], $8::jsonb[], $9::int4[], $10::bool[],
                         $11::timestamptz[], $12::int8[], $13::int8[])
        AS i(id, org_id, type, priority, idempotency_key, requested_by,
             max_attempts, params, n, first, run_after, retry_initial_backoff_ms,
             retry_max_backoff_ms)
), new_job AS (
    INSERT INTO job (id, org_id, type, priority, idempotency_key, requested_by,
                     max_attempts, params, run_after, retry_initial_backoff_ms,
                     retry_max_backoff_ms)
    SELECT id, org_id, type, priority, idempotency_key, requested_by, max_attempts, params,
           run_after, retry_initial_backoff_ms, retry_max_backoff_ms
    FROM input WHERE first
    ORDER BY org_id, idempotency_key
    ON CONFLICT (org_id, idempotency_key) WHERE idempotency_key IS NOT NULL
    DO NOTHING
    RETURNING *
), creation_event AS (
    INSERT INTO job_event (job_id, org_id, ts, prev_status, next_status, attempt,
                           detail_json)
    SELECT id, org_id, created_at, NULL, 'queued', 0,
           CASE WHEN requested_by IS NULL THEN '{}'::jsonb
                ELSE jsonb_build_object('actor', requested_by) END
    FROM new_job
)
SELECT nj.id, nj.org_id, nj.type, nj.status, nj.attempt, nj.max_attempts, nj.priority,
       nj.idempotency_key, nj.requested_by, nj.params, nj.created_at, nj.updated_at,
       nj.started_at, nj.finished_at, nj.last_error_code, nj.last_error_message, nj.stage,
       nj.progress, nj.result, nj.run_after, nj.lease_expires_at, nj.lease_holder, nj.lease_ms,
       nj.retry_initial_backoff_ms, nj.retry_max_backoff_ms,
       i.n, true AS created, true AS same_input
FROM new_job nj JOIN input i ON i.id = nj.id
UNION ALL
SELECT j.id, j.org_id, j.type, j.status, j.attempt, j.max_attempts, j.priority,
       j.idempotency_key, j.requested_by, j.params, j.created_at, j.updated_at,
       j.started_at, j.finished_at, j.last_error_code, j.last_error_message, j.stage,
       j.progress, j.result, j.run_after, j.lease_expires_at, j.lease_holder, j.lease_ms,
       j.retry_initial_backoff_ms, j.retry_max_backoff_ms,
       i.n, false, (j.type = i.type AND j.params IS NOT DISTINCT FROM i.params)
FROM input i JOIN job j ON j.org_id = i.org_id AND j.idempotency_key = i.idempotency_key
