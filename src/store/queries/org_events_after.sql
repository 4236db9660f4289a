-- An org's events after a cursor ($3 xid, $4 seq), in feed order, below the horizon:
-- the oldest transaction of this database still running. An event above it may yet be
-- joined by one that sorts before it. $2, a pg_snapshot or NULL: leave out the events of
-- transactions it saw committed (a stream "from now").
SELECT id, job_id, org_id, ts, prev_status, next_status, attempt, detail_json, seq,
       xid::text::int8 AS xid
FROM job_event
WHERE org_id = $1 AND (xid, seq) > ($3::text::xid8, $4)
  AND xid < (
      -- xmin is cluster-wide, so skip transactions that pg_stat_activity places in
      -- another database (one it cannot place yet counts as ours: the safe side).
      SELECT CASE WHEN pg_snapshot_xmin(s) = pg_snapshot_xmax(s)
                  THEN pg_snapshot_xmax(s)
                  ELSE coalesce(
                      (SELECT min(x) FROM pg_snapshot_xip(s) x
                       WHERE xid(x) NOT IN (
                           SELECT backend_xid FROM pg_stat_activity
                           WHERE backend_xid IS NOT NULL
                             AND datname IS DISTINCT FROM current_database())),
                      pg_snapshot_xmax(s))
             END
      FROM pg_current_snapshot() s)
  AND ($2::text IS NULL OR NOT pg_visible_in_snapshot(xid, $2::text::pg_snapshot))
ORDER BY xid, seq
LIMIT $5
