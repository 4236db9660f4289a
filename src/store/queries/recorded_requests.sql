-- The recorded outcomes of these (job_id, request_id) pairs, where there are any.
SELECT job_id, request_id, to_status, job_snapshot, event_ids
FROM job_transition_request
WHERE (job_id, request_id) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))
