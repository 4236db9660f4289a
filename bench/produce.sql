-- The producer of workload `work`: what one CreateJobs call of 1,000 jobs runs (the
-- statement of src/store/queries/create_jobs.sql, without idempotency keys), as one
-- transaction, then the announcement the server sends after it commits. pgbench runs it
-- beside work.sql with weights that make the jobs created match the jobs worked.
WITH new_job AS (
    INSERT INTO job (id, org_id, type, priority, requested_by, max_attempts, params)
    SELECT gen_random_uuid(), '00000000-0000-0000-0000-000000000000', 'bench-work', 0,
           NULL, 5, '{"bench": true}'
    FROM generate_series(1, 1000)
    RETURNING *
), creation_event AS (
    INSERT INTO job_event (job_id, org_id, ts, prev_status, next_status, attempt,
                           detail_json)
    SELECT id, org_id, created_at, NULL, 'queued', 0, '{}'::jsonb FROM new_job
)
SELECT count(*) FROM new_job;
SELECT pg_notify('jobledger_events', 'e 00000000-0000-0000-0000-000000000000 x none queued bench-work');
