-- TransitionJob, one call: the job's current row, locked, with the database's clock
-- read after the lock.
--
-- Writers of one job are serialized by a transaction-level advisory lock taken
-- *before* the row lock. Waiting for a row lock already assigns a transaction id, so
-- with the row lock alone, waiters could commit in a different order than their ids;
-- an advisory lock assigns none, so ids are taken in lock order, which is commit order.
-- The event feed relies on it: a job's events sort by (xid, seq) in the order they
-- were committed. clock_timestamp(), not now(): a call that waited for the lock must
-- not stamp its event earlier than the one it waited for.
WITH serialized AS (SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0)))
SELECT id, org_id, type, status, attempt, max_attempts, priority, idempotency_key,
       requested_by, params, created_at, updated_at, started_at, finished_at,
       last_error_code, last_error_message, stage, progress, result, run_after,
       lease_expires_at, lease_holder, lease_ms, retry_initial_backoff_ms, retry_max_backoff_ms,
       clock_timestamp() AS now
FROM serialized, job
WHERE id = $1 AND org_id = $2
FOR UPDATE OF job
