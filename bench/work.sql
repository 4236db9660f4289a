-- The ceiling of a worker's round (workload `work`): claim :claim_batch jobs, then
-- complete them, as ClaimJobs and TransitionJobs do: one transaction locks the oldest
-- ready jobs with SKIP LOCKED, starts them under a lease (one event each) and commits;
-- a second moves them to SUCCEEDED (one event each) and commits. Jobs come from the
-- QUEUED `bench-work` jobs `jobledger bench compare` puts in the table. Each transaction
-- is followed by the announcement the server sends after its commits.
BEGIN;
WITH c AS (
    SELECT id FROM job
    WHERE type = 'bench-work' AND org_id = '00000000-0000-0000-0000-000000000000'
      AND status IN ('queued', 'failed')
      AND (status = 'queued' OR attempt < max_attempts)
      AND coalesce(run_after, created_at) <= now()
    ORDER BY priority DESC, coalesce(run_after, created_at), id
    LIMIT :claim_batch
    FOR UPDATE SKIP LOCKED
), u AS (
    UPDATE job SET status = 'running', attempt = job.attempt + 1,
        started_at = clock_timestamp(), updated_at = clock_timestamp(), finished_at = NULL,
        run_after = NULL, lease_expires_at = clock_timestamp() + interval '60 s',
        lease_ms = 60000, lease_holder = 'pgbench'
    FROM c WHERE job.id = c.id
    RETURNING job.id, job.org_id, job.attempt
), e AS (
    INSERT INTO job_event (job_id, org_id, ts, prev_status, next_status, attempt, detail_json)
    SELECT id, org_id, clock_timestamp(), 'queued', 'running', attempt,
           jsonb_build_object('actor', 'pgbench')
    FROM u
)
SELECT coalesce(array_agg(id), '{}')::text AS ids FROM u \gset
COMMIT;
SELECT pg_notify('jobledger_events', 'e 00000000-0000-0000-0000-000000000000 x queued running bench-work');
BEGIN;
WITH u AS (
    UPDATE job SET status = 'succeeded', updated_at = clock_timestamp(),
        finished_at = clock_timestamp(), lease_expires_at = NULL, lease_holder = NULL,
        lease_ms = NULL, result = '{"bench": true}'
    WHERE id = ANY(:ids::uuid[]) AND status = 'running'
    RETURNING id, org_id, attempt
)
INSERT INTO job_event (job_id, org_id, ts, prev_status, next_status, attempt, detail_json)
SELECT id, org_id, clock_timestamp(), 'running', 'succeeded', attempt,
       jsonb_build_object('actor', 'pgbench', 'result', '{"bench": true}'::jsonb)
FROM u;
COMMIT;
SELECT pg_notify('jobledger_events', 'e 00000000-0000-0000-0000-000000000000 x running succeeded bench-work');
