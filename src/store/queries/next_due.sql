-- When the next job of these queues ($1 orgs, $2 types; orgs NULL: every org) becomes
-- claimable: the earliest future run_after. NULL when none is scheduled.
SELECT min(coalesce(job.run_after, job.created_at))
FROM unnest($1::uuid[], $2::text[]) AS q(org_id, type)
JOIN job ON job.type = q.type AND (q.org_id IS NULL OR job.org_id = q.org_id)
WHERE job.status IN ('queued', 'failed')
  AND (job.status = 'queued' OR job.attempt < job.max_attempts)
  AND coalesce(job.run_after, job.created_at) > now()
