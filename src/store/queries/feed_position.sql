-- The transaction horizon now: xmin, xmax and the snapshot itself.
SELECT pg_snapshot_xmin(s)::text::int8, pg_snapshot_xmax(s)::text::int8, s::text
FROM pg_current_snapshot() s
