-- ClaimJobs of every org: the orgs with jobs a claim could take, per type ($1), found by
-- skipping through idx_job_claim one org at a time (a loose index scan: one probe per
-- org, however many jobs each has). Due-ness is checked by the claim itself.
WITH RECURSIVE orgs(type, org_id) AS (
    SELECT t.type,
           (SELECT org_id FROM job
            WHERE job.type = t.type AND status IN ('queued', 'failed')
            ORDER BY job.type, org_id LIMIT 1)
    FROM unnest($1::text[]) AS t(type)
    UNION ALL
    SELECT o.type,
           (SELECT org_id FROM job
            WHERE job.type = o.type AND status IN ('queued', 'failed') AND org_id > o.org_id
            ORDER BY job.type, org_id LIMIT 1)
    FROM orgs o
    WHERE o.org_id IS NOT NULL
)
SELECT org_id, type FROM orgs WHERE org_id IS NOT NULL
