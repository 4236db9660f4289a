-- CountJobs counts an org's jobs by (type, status). Without this index that is a scan of
-- the whole table (about 0.4 s for an org of a million jobs on the reference machine,
-- and it pushes the table through the buffer cache each time); with it, an index-only
-- scan of a small index (8.5 MB for 1.2 million jobs, thanks to B-tree deduplication):
-- 140–185 ms for a million jobs. Measured in BENCHMARKS.md. (A plain CREATE INDEX, like
-- 0004: migrations run in a transaction, which CONCURRENTLY cannot.)
CREATE INDEX IF NOT EXISTS idx_job_org_type_status ON job (org_id, type, status);
