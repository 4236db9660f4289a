-- GetJob's ceiling: the one SELECT Store::get_job runs (src/store/jobs.rs), on a random
-- job of the njobs that `jobledger bench compare` puts in the table (ids 1..njobs as
-- UUIDs: lpad(to_hex(n), 32, '0')).
\set n random(1, :njobs)
SELECT id, org_id, type, status, attempt, max_attempts, priority,
     idempotency_key, requested_by, params, created_at, updated_at, started_at, finished_at,
     last_error_code, last_error_message, stage, progress, result
FROM job WHERE id = lpad(to_hex(:n::int8), 32, '0')::uuid
    AND org_id = '00000000-0000-0000-0000-000000000000';
