-- The paused and limited queues among ($1 orgs, $2 types). No row: running, no limit.
SELECT q.org_id, q.type, q.paused, q.max_running
FROM job_queue q
JOIN unnest($1::uuid[], $2::text[]) AS w(org_id, type)
  ON q.org_id = w.org_id AND q.type = w.type
WHERE q.paused OR q.max_running > 0
