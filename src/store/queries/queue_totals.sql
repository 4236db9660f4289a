-- The metrics' queue gauges: every org's QUEUED, FAILED-with-attempts-left and RUNNING
-- jobs by type: ready, scheduled, running, and the oldest ready job's age in seconds.
-- Reads the active rows of every org: bounded by the caller's statement timeout.
SELECT type::text,
       count(*) FILTER (WHERE status <> 'running'
                          AND coalesce(run_after, created_at) <= now()) AS ready,
       count(*) FILTER (WHERE status <> 'running'
                          AND coalesce(run_after, created_at) > now()) AS scheduled,
       count(*) FILTER (WHERE status = 'running') AS running,
       extract(epoch FROM now() - min(coalesce(run_after, created_at))
           FILTER (WHERE status <> 'running'
                     AND coalesce(run_after, created_at) <= now()))::float8 AS oldest_ready_age
FROM job
WHERE status IN ('queued', 'running') OR (status = 'failed' AND attempt < max_attempts)
GROUP BY type
