-- The metrics' jobledger_jobs: all jobs of every org by status.
SELECT status::text, count(*) FROM job GROUP BY status
