-- How many jobs of each queue ($1 orgs, $2 types) are RUNNING: an index-only count on
-- idx_job_org_type_status per queue.
SELECT w.org_id, w.type,
       (SELECT count(*) FROM job
        WHERE job.org_id = w.org_id AND job.type = w.type AND job.status = 'running')
FROM unnest($1::uuid[], $2::text[]) AS w(org_id, type)
