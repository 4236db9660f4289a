-- Work dispatch (docs/dispatch.md): claims with leases, rescue of expired leases,
-- scheduled jobs and retry backoff, per-queue pause and running limits.
--
-- Status values stay the Python stack's: a scheduled job is QUEUED with a future
-- run_after, a job waiting out its backoff is FAILED with one. Every column is nullable
-- or defaulted, so the old stack can still write rows.

-- run_after: QUEUED/FAILED: not claimable before this instant (NULL: at once).
ALTER TABLE job ADD COLUMN IF NOT EXISTS run_after timestamptz;
-- lease_expires_at, lease_holder, lease_ms: a RUNNING job under a lease, who holds it,
--   and the lease's length (a heartbeat or progress report without one extends by it).
ALTER TABLE job ADD COLUMN IF NOT EXISTS lease_expires_at timestamptz;
ALTER TABLE job ADD COLUMN IF NOT EXISTS lease_holder varchar(255);
ALTER TABLE job ADD COLUMN IF NOT EXISTS lease_ms integer;
-- retry_initial_backoff_ms, retry_max_backoff_ms: the job's RetryPolicy (NULL: the
--   server's defaults, 1 s and 1 h).
ALTER TABLE job ADD COLUMN IF NOT EXISTS retry_initial_backoff_ms bigint;
ALTER TABLE job ADD COLUMN IF NOT EXISTS retry_max_backoff_ms bigint;

-- Claims walk this index in claim order (priority, then run_after or created_at) within
-- one type and org; claims of every org walk it type by type, org by org. Only the rows
-- a claim can take are in it, so it stays the size of the backlog.
CREATE INDEX IF NOT EXISTS idx_job_claim
    ON job (type, org_id, priority DESC, (coalesce(run_after, created_at)), id)
    WHERE status IN ('queued', 'failed');

-- The rescuer finds expired leases here.
CREATE INDEX IF NOT EXISTS idx_job_lease
    ON job (lease_expires_at)
    WHERE status = 'running' AND lease_expires_at IS NOT NULL;

-- A queue is an org's jobs of one type. A row exists only for a queue someone paused or
-- limited; no row: running, no limit.
CREATE TABLE IF NOT EXISTS job_queue (
    org_id      uuid NOT NULL,
    type        varchar(100) NOT NULL,
    paused      boolean NOT NULL DEFAULT false,
    max_running integer NOT NULL DEFAULT 0 CHECK (max_running >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, type)
);
