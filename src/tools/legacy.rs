//! The Python stack's `jobs` table: the way in (import, done by migration 0003 and by
//! `jobledger migrate import-legacy`) and the way back (`jobledger migrate export-legacy`).
//!
//! The import itself is SQL, in the migration: it must run inside the migration's
//! transaction so a database is never left half-migrated. This module runs it again on
//! demand, reports what it recorded, and writes the ledger back into the old shape.

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{postgres::PgConnectOptions, Connection, FromRow, PgConnection};

use crate::store;

/// The old stack's table.
pub const LEGACY_TABLE: &str = "jobs";

/// One import of a `jobs` table, as recorded in `jobledger_legacy_import`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, FromRow)]
pub struct ImportReport {
    /// The name the old table was kept under.
    pub archived_as: String,
    /// Rows that became new jobs.
    #[sqlx(rename = "imported_rows")]
    pub imported: i64,
    /// Rows of jobs already in the ledger that the old stack had changed since.
    #[sqlx(rename = "updated_rows")]
    pub updated: i64,
    /// Rows of jobs already in the ledger, identical in the old shape: left alone.
    #[sqlx(rename = "unchanged_rows")]
    pub unchanged: i64,
    pub imported_at: DateTime<Utc>,
}

/// What `export` wrote, and what the old shape could not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportReport {
    /// Rows written into `jobs`.
    pub exported: i64,
    /// Rows per old status (`pending`, `processing`, `completed`, `failed`).
    pub statuses: BTreeMap<String, i64>,
    /// The table `jobs` copied its definition from (the newest kept import), or none:
    /// then it was created in the documented shape.
    pub shape_from: Option<String>,
    /// What the old shape loses; each count is of jobs.
    pub lossy: ExportLoss,
}

/// Jobs whose export drops something (see docs/migrating-from-python.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, FromRow)]
pub struct ExportLoss {
    /// CANCELED, written as `failed`.
    pub canceled_as_failed: i64,
    /// DEAD_LETTER, written as `failed`.
    pub dead_letter_as_failed: i64,
    /// Of another org than the default one (the old stack had no orgs).
    pub other_org: i64,
    /// Of another type than `mock_process` (the old stack had no types).
    pub other_type: i64,
    /// With params, an idempotency key or requested_by (no column for them).
    pub with_input: i64,
    /// With a last_error_code (only the message has a column).
    pub with_error_code: i64,
    /// Events not exported (the old table has no history); they stay in `job_event`.
    pub events: i64,
}

/// Runs the migrations and returns the imports they made (a `jobs` table is imported by
/// the first run of migration 0003).
pub async fn migrate(options: &PgConnectOptions) -> anyhow::Result<Vec<ImportReport>> {
    let before = last_import(options).await;
    store::prepare_database(options).await?;
    imports_since(options, before).await
}

/// Runs the migrations, then imports a `jobs` table that appeared after migration 0003
/// ran (the old stack was restarted on an export, and the database comes back). One
/// transaction; nothing when there is no `jobs` table.
pub async fn import(options: &PgConnectOptions) -> anyhow::Result<Vec<ImportReport>> {
    let before = last_import(options).await;
    store::prepare_database(options).await?;
    let mut conn = PgConnection::connect_with(options)
        .await
        .context("connecting to the ledger database")?;
    sqlx::query("SELECT * FROM jobledger_import_legacy_jobs()")
        .execute(&mut conn)
        .await
        .context("importing table jobs")?;
    conn.close().await.ok();
    imports_since(options, before).await
}

/// The id of the newest recorded import; 0 when there is none (or no database yet).
async fn last_import(options: &PgConnectOptions) -> i64 {
    let Ok(mut conn) = PgConnection::connect_with(options).await else {
        return 0;
    };
    let last = sqlx::query_scalar::<_, Option<i64>>("SELECT max(id) FROM jobledger_legacy_import")
        .fetch_one(&mut conn)
        .await;
    conn.close().await.ok();
    last.ok().flatten().unwrap_or(0)
}

async fn imports_since(options: &PgConnectOptions, id: i64) -> anyhow::Result<Vec<ImportReport>> {
    let mut conn = PgConnection::connect_with(options)
        .await
        .context("connecting to the ledger database")?;
    let reports = sqlx::query_as(
        "SELECT archived_as, imported_rows, updated_rows, unchanged_rows, imported_at
         FROM jobledger_legacy_import WHERE id > $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&mut conn)
    .await
    .context("reading the record of legacy imports")?;
    conn.close().await.ok();
    Ok(reports)
}

/// Writes every job of the ledger into a new table `jobs` in the old stack's shape, in
/// one transaction, so the old stack can be restarted on the database. `job` and
/// `job_event` are not changed. Refuses when `jobs` exists.
///
/// The new table copies the definition (types, defaults, constraints, indexes) of the
/// newest table an import kept, so it is the table the old stack had; without one it is
/// created in the documented shape.
pub async fn export(options: &PgConnectOptions) -> anyhow::Result<ExportReport> {
    let mut conn = PgConnection::connect_with(options)
        .await
        .context("connecting to the ledger database")?;
    let mut tx = conn.begin().await?;
    // One snapshot for the rows and the report.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await?;
    ensure_exportable(&mut tx).await?;
    let shape_from = create_legacy_table(&mut tx).await?;
    let exported = sqlx::query(&format!(
        "INSERT INTO {LEGACY_TABLE} (id, status, stage, progress, result, error, created_at,
                                     updated_at)
         SELECT id,
                CASE status
                    WHEN 'queued' THEN 'pending'
                    WHEN 'running' THEN 'processing'
                    WHEN 'succeeded' THEN 'completed'
                    ELSE 'failed'
                END,
                stage, progress, result, last_error_message, created_at, updated_at
         FROM job
         ORDER BY created_at, id"
    ))
    .execute(&mut *tx)
    .await
    .context("writing the ledger into table jobs")?
    .rows_affected() as i64;
    let statuses: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT status::text, count(*) FROM {LEGACY_TABLE} GROUP BY 1 ORDER BY 1"
    ))
    .fetch_all(&mut *tx)
    .await?;
    let lossy = losses(&mut tx).await?;
    tx.commit().await.context("committing the export")?;
    conn.close().await.ok();
    Ok(ExportReport {
        exported,
        statuses: statuses.into_iter().collect(),
        shape_from,
        lossy,
    })
}

/// There is a ledger to export, and no `jobs` table in the way.
async fn ensure_exportable(tx: &mut PgConnection) -> anyhow::Result<()> {
    let ledger: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables
                        WHERE schemaname = current_schema() AND tablename = 'job')",
    )
    .fetch_one(&mut *tx)
    .await?;
    anyhow::ensure!(
        ledger,
        "this database has no table `job`: there is no ledger to export (run `jobledger migrate` on the right database)"
    );
    let existing: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                        JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace
                        WHERE s.nspname = current_schema() AND c.relname = $1)",
    )
    .bind(LEGACY_TABLE)
    .fetch_one(&mut *tx)
    .await?;
    if existing {
        anyhow::bail!(
            "a table (or view) `{LEGACY_TABLE}` already exists: the export writes a new one. \
             Rename or drop it (after checking what it holds), then export again"
        );
    }
    Ok(())
}

/// Creates `jobs` like the newest table an import kept (which still exists), else in
/// the documented shape; the kept table's name, if one was copied.
async fn create_legacy_table(tx: &mut PgConnection) -> anyhow::Result<Option<String>> {
    let shape_from: Option<String> = sqlx::query_scalar(
        "SELECT i.archived_as FROM jobledger_legacy_import i
         WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_tables
                       WHERE schemaname = current_schema() AND tablename = i.archived_as)
         ORDER BY i.id DESC LIMIT 1",
    )
    .fetch_optional(&mut *tx)
    .await
    .context("reading the record of legacy imports")?;
    let create = match &shape_from {
        Some(archive) => format!(
            "CREATE TABLE {LEGACY_TABLE} (LIKE \"{}\" INCLUDING ALL)",
            archive.replace('"', "\"\"")
        ),
        None => format!(
            "CREATE TABLE {LEGACY_TABLE} (
                id         uuid PRIMARY KEY,
                status     varchar NOT NULL DEFAULT 'pending',
                stage      varchar,
                progress   integer,
                result     jsonb,
                error      text,
                created_at timestamptz DEFAULT now(),
                updated_at timestamptz DEFAULT now()
             )"
        ),
    };
    sqlx::query(&create)
        .execute(&mut *tx)
        .await
        .context("creating table jobs")?;
    Ok(shape_from)
}

/// What the old shape cannot hold, counted over the ledger.
async fn losses(tx: &mut PgConnection) -> anyhow::Result<ExportLoss> {
    Ok(sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'canceled') AS canceled_as_failed,
                count(*) FILTER (WHERE status = 'dead_letter') AS dead_letter_as_failed,
                count(*) FILTER (WHERE org_id <> '00000000-0000-0000-0000-000000000000')
                    AS other_org,
                count(*) FILTER (WHERE type <> 'mock_process') AS other_type,
                count(*) FILTER (WHERE params IS NOT NULL OR idempotency_key IS NOT NULL
                                 OR requested_by IS NOT NULL) AS with_input,
                count(*) FILTER (WHERE last_error_code IS NOT NULL) AS with_error_code,
                (SELECT count(*) FROM job_event) AS events
         FROM job",
    )
    .fetch_one(&mut *tx)
    .await?)
}
