-- A job's status, if it exists in the org.
SELECT status FROM job WHERE id = $1 AND org_id = $2
