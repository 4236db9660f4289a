-- The event feed (StreamEvents): cursors that never skip an event, and wake-ups.
--
-- xid: the id of the transaction that wrote the event (pg_current_xact_id(): 64 bits,
--   never wraps). Sequences and timestamps are assigned before commit, so transactions
--   that commit out of order make them skip: a reader that has seen seq 11 may later
--   see seq 10 appear. An org feed therefore delivers only events of transactions older
--   than every transaction still running (xid < xmin of the current snapshot), in
--   (xid, seq) order; nothing can commit afterwards and sort before what was delivered.
--   Rows that exist when this runs all get this migration's xid (ordered by seq).
ALTER TABLE job_event ADD COLUMN IF NOT EXISTS xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX IF NOT EXISTS idx_job_event_org_xid_seq ON job_event (org_id, xid, seq);
CREATE INDEX IF NOT EXISTS idx_job_event_job_xid_seq ON job_event (job_id, xid, seq);
-- Superseded by idx_job_event_job_xid_seq (a job's events in (xid, seq) order are in seq
-- order: its writers are serialized by the job's locks). One index less per insert.
DROP INDEX IF EXISTS uq_job_event_job_seq;

-- Live subscribers are woken by the server after each commit (LISTEN/NOTIFY on channel
-- `jobledger_events`, sent in a statement of its own; see src/feed/announcer.rs). Not by
-- a trigger here: a NOTIFY inside the writing transaction makes PostgreSQL serialize the
-- commits of all notifying transactions, so concurrent writes could not share a flush.
