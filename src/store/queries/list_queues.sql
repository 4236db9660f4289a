-- ListQueues: an org's ($1) queues, optionally of one type ($2): every type with jobs
-- that are or will be claimable or running, and every configured queue. Reads the org's
-- QUEUED, FAILED and RUNNING rows (idx_job_org_status): linear in the active backlog.
WITH active AS (
    SELECT type,
           count(*) FILTER (WHERE status = 'running') AS running,
           count(*) FILTER (WHERE status <> 'running'
                              AND coalesce(run_after, created_at) <= now()) AS ready,
           count(*) FILTER (WHERE status <> 'running'
                              AND coalesce(run_after, created_at) > now()) AS scheduled,
           min(coalesce(run_after, created_at))
               FILTER (WHERE status <> 'running'
                         AND coalesce(run_after, created_at) <= now()) AS oldest_ready
    FROM job
    WHERE org_id = $1 AND ($2::text IS NULL OR type = $2)
      AND (status IN ('queued', 'running') OR (status = 'failed' AND attempt < max_attempts))
    GROUP BY type
)
SELECT coalesce(a.type, q.type)::text AS type,
       coalesce(q.paused, false) AS paused,
       coalesce(q.max_running, 0) AS max_running,
       coalesce(a.ready, 0) AS ready,
       coalesce(a.scheduled, 0) AS scheduled,
       coalesce(a.running, 0) AS running,
       extract(epoch FROM now() - a.oldest_ready)::float8 AS oldest_ready_age_secs
FROM active a
FULL JOIN (SELECT * FROM job_queue WHERE org_id = $1 AND ($2::text IS NULL OR type = $2)) q
  ON q.type = a.type
ORDER BY 1
