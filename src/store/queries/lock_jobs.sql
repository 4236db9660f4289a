-- TransitionJob, a group commit's batch: the rows of the jobs ($1 ids, $2 orgs) whose
-- locks are free, locked; a busy job is left out (its call then runs alone). Try-locks
-- in hash order, then the row locks, skipping rows locked by others: the same lock
-- order as lock_job.sql (advisory, then row), so the event feed's commit order holds
-- for batched writes too.
WITH wanted AS MATERIALIZED (
    SELECT DISTINCT ON (h) id, org_id, h
    FROM (SELECT w.id, w.org_id, hashtextextended(w.id::text, 0) AS h
          FROM unnest($1::uuid[], $2::uuid[]) AS w(id, org_id)) AS w
    ORDER BY h
), serialized AS MATERIALIZED (
    SELECT id, org_id FROM wanted WHERE pg_try_advisory_xact_lock(h)
)
SELECT id, org_id, type, status, attempt, max_attempts, priority, idempotency_key,
       requested_by, params, created_at, updated_at, started_at, finished_at,
       last_error_code, last_error_message, stage, progress, result, run_after,
       lease_expires_at, lease_holder, lease_ms, retry_initial_backoff_ms, retry_max_backoff_ms,
       clock_timestamp() AS now
FROM job
WHERE (id, org_id) IN (SELECT id, org_id FROM serialized)
FOR UPDATE OF job SKIP LOCKED
