-- ClaimJobs: the claimable jobs of each queue ($1 orgs, $2 types, $3 most to take from
-- it), locked, in claim order: highest priority, then oldest run_after (or created_at).
-- Claimable: QUEUED, or FAILED with attempts left, whose run_after has passed. Rows
-- another transaction holds are skipped, never waited for; rows in $4 (already taken by
-- this transaction) are left out. Each queue walks idx_job_claim in its order.
SELECT j.id, j.org_id, j.type, j.status, j.attempt, j.max_attempts, j.priority,
       j.idempotency_key, j.requested_by, j.params, j.created_at, j.updated_at,
       j.started_at, j.finished_at, j.last_error_code, j.last_error_message, j.stage,
       j.progress, j.result, j.run_after, j.lease_expires_at, j.lease_holder, j.lease_ms,
       j.retry_initial_backoff_ms, j.retry_max_backoff_ms,
       clock_timestamp() AS now
FROM unnest($1::uuid[], $2::text[], $3::int4[]) AS q(org_id, type, take)
CROSS JOIN LATERAL (
    SELECT * FROM job
    WHERE job.type = q.type AND job.org_id = q.org_id
      AND job.status IN ('queued', 'failed')
      AND (job.status = 'queued' OR job.attempt < job.max_attempts)
      AND coalesce(job.run_after, job.created_at) <= now()
      AND job.id <> ALL($4::uuid[])
    ORDER BY job.priority DESC, coalesce(job.run_after, job.created_at), job.id
    LIMIT q.take
    FOR UPDATE OF job SKIP LOCKED
) j
