-- Carrying the Python stack's data over (docs/migrating-from-python.md).
--
-- 1. Adoption. On a database where the Python stack created `job` and `job_event`, the
--    columns 0001 adds are empty on the adopted rows. Two are filled here:
--    - job_event.seq was numbered in the table's physical order when 0001 added it; the
--      adopted events (attempt IS NULL: jobledger always writes an attempt) are
--      renumbered among themselves in (ts, seq) order, so they read in time order.
--    - job.stage / progress / result (the compatibility view GetJob reads) come from the
--      newest events carrying each in detail_json, as the old REST API showed them. Values
--      of a kind jobledger cannot hold (a progress that is not a number) are skipped, never
--      an error: the events themselves are not touched.
-- 2. Import. jobledger_import_legacy_jobs() turns the older table `jobs` (statuses pending,
--    processing, completed, failed) into jobs and events, then keeps `jobs` under the name
--    `jobs_legacy_imported`. It is called below, and again by
--    `jobledger migrate import-legacy` after a rollback. Without a `jobs` table it does
--    nothing.

-- 1a. Adopted events in time order.
WITH adopted AS (
    SELECT id, seq,
           row_number() OVER (ORDER BY ts, seq) AS by_time,
           row_number() OVER (ORDER BY seq) AS by_seq
    FROM job_event
    WHERE attempt IS NULL
), renumbered AS (
    SELECT a.id, s.seq AS new_seq
    FROM adopted a JOIN adopted s ON s.by_seq = a.by_time
    WHERE a.seq <> s.seq
)
-- Through negative values, so no (job_id, seq) pair is ever held twice mid-statement.
UPDATE job_event e SET seq = -r.new_seq FROM renumbered r WHERE e.id = r.id;
UPDATE job_event SET seq = -seq WHERE seq < 0;

-- 1b. The compatibility view of adopted jobs (those with none of it yet).
WITH latest AS (
    SELECT j.id,
           (SELECT e.detail_json ->> 'stage'
            FROM job_event e
            WHERE e.job_id = j.id
              AND jsonb_typeof(e.detail_json) = 'object'
              AND jsonb_typeof(e.detail_json -> 'stage') IN ('string', 'number', 'boolean')
            ORDER BY e.ts DESC, e.seq DESC LIMIT 1) AS stage,
           (SELECT round(p.value)::integer
            FROM job_event e
            CROSS JOIN LATERAL (
                SELECT CASE jsonb_typeof(e.detail_json -> 'progress')
                           WHEN 'number' THEN (e.detail_json -> 'progress')::numeric
                           WHEN 'string' THEN CASE
                               WHEN (e.detail_json ->> 'progress')
                                    ~ '^[[:space:]]*[-+]?[0-9]{1,9}(\.[0-9]+)?[[:space:]]*$'
                               THEN trim(e.detail_json ->> 'progress')::numeric
                           END
                       END AS value
            ) p
            WHERE e.job_id = j.id
              AND jsonb_typeof(e.detail_json) = 'object'
              AND p.value BETWEEN -2147483648 AND 2147483647
            ORDER BY e.ts DESC, e.seq DESC LIMIT 1) AS progress,
           (SELECT e.detail_json -> 'result'
            FROM job_event e
            WHERE e.job_id = j.id
              AND jsonb_typeof(e.detail_json) = 'object'
              AND jsonb_typeof(e.detail_json -> 'result') <> 'null'
            ORDER BY e.ts DESC, e.seq DESC LIMIT 1) AS result
    FROM job j
    WHERE j.stage IS NULL AND j.progress IS NULL AND j.result IS NULL
)
UPDATE job j
SET stage = l.stage, progress = l.progress, result = l.result
FROM latest l
WHERE j.id = l.id
  AND (l.stage IS NOT NULL OR l.progress IS NOT NULL OR l.result IS NOT NULL);

-- 2. The import of `jobs`.
--
-- Each row of `jobs` becomes a job with the same id and timestamps in the default org,
-- type `mock_process`, the mapped status, `error` as last_error_message, finished_at =
-- updated_at when completed or failed, attempt 1 once it was picked up (0 when pending),
-- and the compatibility columns stage/progress/result as the row had them. Its one event
-- (prev_status NULL, ts = updated_at) carries in detail_json the keys stage, progress,
-- result and error_message -- each present exactly when the old column was not NULL, so
-- SQL NULL and JSON null stay apart -- and `imported: true`, `imported_from` (the kept
-- table) and `legacy_status`.
--
-- All or nothing: it runs in the caller's transaction and takes `jobs` exclusively. A
-- status it does not know, a NULL or a duplicate id stops it with a message naming the
-- values and ids, before anything is written.
--
-- Rows whose id is already a job (an import after a rollback with export-legacy): a row
-- that reads the same as the job does in the old shape is left alone, so nothing is
-- imported twice; a row the old stack changed since updates the job, with one event.
-- One row per import: when, how many rows, and where the old table went. The CLI reports
-- from it, and export-legacy takes the shape of the newest kept table from it.
CREATE TABLE IF NOT EXISTS jobledger_legacy_import (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    archived_as    text NOT NULL,
    imported_rows  bigint NOT NULL,
    updated_rows   bigint NOT NULL,
    unchanged_rows bigint NOT NULL,
    imported_at    timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION jobledger_import_legacy_jobs()
RETURNS TABLE (imported_rows bigint, updated_rows bigint, unchanged_rows bigint,
               archived_as text)
LANGUAGE plpgsql AS $import$
#variable_conflict use_column
DECLARE
    missing  text;
    problems text;
    archive  text := 'jobs_legacy_imported';
    suffix   integer := 1;
    n_imported  bigint;
    n_updated   bigint;
    n_unchanged bigint;
BEGIN
    -- Two imports at once (a replica starting, an operator's import-legacy) take turns;
    -- the second then finds no `jobs` table and does nothing.
    PERFORM pg_advisory_xact_lock(hashtext('jobledger_import_legacy_jobs'));
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_tables
                   WHERE schemaname = current_schema() AND tablename = 'jobs') THEN
        RETURN QUERY SELECT 0::bigint, 0::bigint, 0::bigint, NULL::text;
        RETURN;
    END IF;

    SELECT string_agg(c, ', ') INTO missing
    FROM unnest(ARRAY['id', 'status', 'stage', 'progress', 'result', 'error',
                      'created_at', 'updated_at']) AS c
    WHERE NOT EXISTS (SELECT 1 FROM information_schema.columns
                      WHERE table_schema = current_schema() AND table_name = 'jobs'
                        AND column_name = c);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'cannot import table jobs: it has no column %; it is not the Python stack''s jobs table (rename it, then run the migrations again)',
            missing;
    END IF;

    -- The old stack must not write while its rows move.
    LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE;

    SELECT string_agg(format('%s (%s row%s: %s%s)',
                             coalesce(quote_literal(status), 'NULL'), n,
                             CASE WHEN n = 1 THEN '' ELSE 's' END,
                             array_to_string(ids[1:10], ', '),
                             CASE WHEN n > 10 THEN format(', and %s more', n - 10) ELSE '' END),
                      '; ' ORDER BY status NULLS FIRST)
    INTO problems
    FROM (SELECT status::text AS status, count(*) AS n,
                 array_agg(coalesce(id::text, 'NULL') ORDER BY id) AS ids
          FROM jobs
          WHERE status IS NULL
             OR status::text NOT IN ('pending', 'processing', 'completed', 'failed')
          GROUP BY status::text) unknown;
    IF problems IS NOT NULL THEN
        RAISE EXCEPTION 'cannot import table jobs: rows with unknown statuses: %. Known statuses: pending, processing, completed, failed. Nothing was changed; fix or delete these rows, then run the migrations again',
            problems;
    END IF;

    SELECT string_agg(format('%s (%s rows)', coalesce(id::text, 'NULL'), n), ', '
                      ORDER BY id NULLS FIRST)
    INTO problems
    FROM (SELECT id, count(*) AS n FROM jobs GROUP BY id
          HAVING id IS NULL OR count(*) > 1) bad;
    IF problems IS NOT NULL THEN
        RAISE EXCEPTION 'cannot import table jobs: ids that are NULL or repeated: %. Nothing was changed; fix or delete these rows, then run the migrations again',
            problems;
    END IF;

    WHILE EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                  JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace
                  WHERE s.nspname = current_schema() AND c.relname = archive) LOOP
        suffix := suffix + 1;
        archive := 'jobs_legacy_imported_' || suffix;
    END LOOP;

    WITH legacy AS (
        SELECT l.id,
               l.status::text AS legacy_status,
               CASE l.status::text
                   WHEN 'pending' THEN 'queued'
                   WHEN 'processing' THEN 'running'
                   WHEN 'completed' THEN 'succeeded'
                   WHEN 'failed' THEN 'failed'
               END AS status,
               l.stage::text AS stage,
               l.progress::integer AS progress,
               l.result::jsonb AS result,
               l.error::text AS error,
               -- job.created_at/updated_at are NOT NULL; a missing one borrows the other.
               coalesce(l.created_at::timestamptz, l.updated_at::timestamptz, now())
                   AS created_at,
               coalesce(l.updated_at::timestamptz, l.created_at::timestamptz, now())
                   AS updated_at
        FROM jobs l
    ), src AS (
        SELECT l.*,
               j.id IS NOT NULL AS known,
               j.status AS ledger_status,
               coalesce(j.org_id, '00000000-0000-0000-0000-000000000000'::uuid) AS org_id,
               CASE WHEN l.status = 'queued' THEN coalesce(j.attempt, 0)
                    ELSE greatest(j.attempt, 1)
               END AS attempt,
               -- The job as export-legacy would write it, against the row.
               j.id IS NOT NULL AND (
                   CASE j.status
                       WHEN 'queued' THEN 'pending'
                       WHEN 'running' THEN 'processing'
                       WHEN 'succeeded' THEN 'completed'
                       ELSE 'failed'
                   END,
                   j.stage, j.progress, j.result, j.last_error_message, j.created_at,
                   j.updated_at
               ) IS DISTINCT FROM (
                   l.legacy_status, l.stage, l.progress, l.result, l.error, l.created_at,
                   l.updated_at
               ) AS changed
        FROM legacy l
        LEFT JOIN job j ON j.id = l.id
    ), inserted AS (
        INSERT INTO job (id, org_id, type, status, attempt, created_at, updated_at,
                         finished_at, last_error_message, stage, progress, result)
        SELECT id, org_id, 'mock_process', status, attempt, created_at, updated_at,
               CASE WHEN status IN ('succeeded', 'failed') THEN updated_at END,
               error, stage, progress, result
        FROM src
        WHERE NOT known
    ), updated AS (
        UPDATE job j
        SET status = s.status, attempt = s.attempt, updated_at = s.updated_at,
            finished_at = CASE WHEN s.status IN ('succeeded', 'failed') THEN s.updated_at END,
            last_error_message = s.error, stage = s.stage, progress = s.progress,
            result = s.result
        FROM src s
        WHERE j.id = s.id AND s.changed
    ), events AS (
        INSERT INTO job_event (job_id, org_id, ts, prev_status, next_status, attempt,
                               detail_json)
        SELECT id, org_id, updated_at, ledger_status, status, attempt,
               jsonb_build_object('imported', true, 'imported_from', archive,
                                  'legacy_status', legacy_status)
               || CASE WHEN stage IS NULL THEN '{}'::jsonb
                       ELSE jsonb_build_object('stage', stage) END
               || CASE WHEN progress IS NULL THEN '{}'::jsonb
                       ELSE jsonb_build_object('progress', progress) END
               || CASE WHEN result IS NULL THEN '{}'::jsonb
                       ELSE jsonb_build_object('result', result) END
               || CASE WHEN error IS NULL THEN '{}'::jsonb
                       ELSE jsonb_build_object('error_message', error) END
        FROM src
        WHERE NOT known OR changed
        ORDER BY created_at, id
    )
    SELECT count(*) FILTER (WHERE NOT known),
           count(*) FILTER (WHERE changed),
           count(*) FILTER (WHERE known AND NOT changed)
    INTO n_imported, n_updated, n_unchanged
    FROM src;

    -- Kept, not dropped: the old rows stay readable (and restorable) as they were.
    EXECUTE format('ALTER TABLE jobs RENAME TO %I', archive);
    INSERT INTO jobledger_legacy_import (archived_as, imported_rows, updated_rows, unchanged_rows)
    VALUES (archive, n_imported, n_updated, n_unchanged);
    RETURN QUERY SELECT n_imported, n_updated, n_unchanged, archive;
END
$import$;

SELECT * FROM jobledger_import_legacy_jobs();
