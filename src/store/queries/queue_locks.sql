-- Try-locks of limited queues (transaction-level advisory locks, never waited for): a
-- limited queue is claimed from by one transaction at a time, which counts its RUNNING
-- jobs in the next statement (a fresh snapshot, after the previous holder committed).
SELECT w.org_id, w.type,
       pg_try_advisory_xact_lock(hashtextextended('jobledger.queue/' || w.org_id || '/' || w.type, 0))
FROM unnest($1::uuid[], $2::text[]) AS w(org_id, type)
