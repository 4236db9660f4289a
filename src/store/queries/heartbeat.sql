-- HeartbeatJob: moves the lease of job $1 (org $2) on, if it is RUNNING at attempt $3:
-- by $4 ms, else by the current lease's length, else by $5 (the default). No event.
UPDATE job
SET lease_ms = coalesce($4, lease_ms, $5),
    lease_expires_at = clock_timestamp()
        + make_interval(secs => coalesce($4, lease_ms, $5) / 1000.0)
WHERE id = $1 AND org_id = $2 AND status = 'running' AND attempt = $3
RETURNING lease_expires_at
