-- GetJob: one job of one org (another org's job is not found).
SELECT id, org_id, type, status, attempt, max_attempts, priority, idempotency_key,
       requested_by, params, created_at, updated_at, started_at, finished_at,
       last_error_code, last_error_message, stage, progress, result, run_after,
       lease_expires_at, lease_holder, lease_ms, retry_initial_backoff_ms, retry_max_backoff_ms
FROM job
WHERE id = $1 AND org_id = $2
