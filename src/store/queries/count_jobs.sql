-- CountJobs: an org's jobs by (type, status), optionally of one type ($2), in one
-- snapshot (the numbers add up). An index-only scan of idx_job_org_type_status.
SELECT type::text AS type, status::text AS status, count(*) AS count
FROM job
WHERE org_id = $1 AND ($2::text IS NULL OR type = $2)
GROUP BY type, status
ORDER BY type, status
