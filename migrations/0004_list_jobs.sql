-- ListJobs pages an org's jobs newest first by (created_at, id). No existing index has
-- that order for an org across all statuses (idx_job_org_status leads with status), so
-- without this one every page of an unfiltered listing would read and sort all of the
-- org's jobs. With it, a page is a short backward index range scan from the token's
-- position, whatever the org's size. (A plain CREATE INDEX: it blocks writes to `job`
-- while it builds, about a second per million rows; migrations run in a transaction,
-- which CONCURRENTLY cannot.)
CREATE INDEX IF NOT EXISTS idx_job_org_created ON job (org_id, created_at, id);
