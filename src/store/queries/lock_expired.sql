-- The rescuer: RUNNING jobs whose lease expired, oldest expiry first, at most $1, locked;
-- rows another transaction holds (a report arriving now) are skipped and looked at again
-- next round.
SELECT id, org_id, type, status, attempt, max_attempts, priority, idempotency_key,
       requested_by, params, created_at, updated_at, started_at, finished_at,
       last_error_code, last_error_message, stage, progress, result, run_after,
       lease_expires_at, lease_holder, lease_ms, retry_initial_backoff_ms, retry_max_backoff_ms,
       clock_timestamp() AS now
FROM job
WHERE status = 'running' AND lease_expires_at < now()
ORDER BY lease_expires_at
LIMIT $1
FOR UPDATE SKIP LOCKED
