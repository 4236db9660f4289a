-- GetJob: one job of one org (another org's job is not found).
SELECT id, org_id, type, status, attempt, max_attempts, priority, idempotency_key,
       requested_by, params, created_at, updated_at, started_at, finished_at,
       last_error_code, last_error_message, stage, progress, result
FROM job
WHERE id = $1 AND org_id = $2
