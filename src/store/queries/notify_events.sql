-- Tells the other replicas which jobs have new events: one notification per
-- "org_id job_id" payload ($2) on channel $1, after the writes committed.
SELECT pg_notify($1, p) FROM unnest($2::text[]) p
