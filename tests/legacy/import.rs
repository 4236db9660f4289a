//! The old `jobs` table becomes jobs and events: losslessly, all or nothing, once.

use std::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::{types::Json, FromRow};
use uuid::Uuid;

use crate::helpers::*;

#[derive(Debug, FromRow)]
struct ImportedJob {
    id: Uuid,
    org_id: Uuid,
    #[sqlx(rename = "type")]
    job_type: String,
    status: String,
    attempt: i32,
    max_attempts: i32,
    priority: i32,
    idempotency_key: Option<String>,
    requested_by: Option<String>,
    params: Option<Json<Value>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    last_error_code: Option<String>,
    last_error_message: Option<String>,
    stage: Option<String>,
    progress: Option<i32>,
    result: Option<Json<Value>>,
    // Its one event.
    event_count: i64,
    event_org_id: Uuid,
    event_ts: DateTime<Utc>,
    event_prev_status: Option<String>,
    event_next_status: String,
    event_attempt: Option<i32>,
    event_detail: Option<Json<Value>>,
}

async fn imported_jobs(db: &ScratchDb) -> Vec<ImportedJob> {
    sqlx::query_as(
        "SELECT j.id, j.org_id, j.type, j.status, j.attempt, j.max_attempts, j.priority,
                j.idempotency_key, j.requested_by, j.params, j.created_at, j.updated_at,
                j.started_at, j.finished_at, j.last_error_code, j.last_error_message,
                j.stage, j.progress, j.result,
                (SELECT count(*) FROM job_event c WHERE c.job_id = j.id) AS event_count,
                e.org_id AS event_org_id, e.ts AS event_ts, e.prev_status AS event_prev_status,
                e.next_status AS event_next_status, e.attempt AS event_attempt,
                e.detail_json AS event_detail
         FROM job j JOIN job_event e ON e.job_id = j.id
         ORDER BY j.id",
    )
    .fetch_all(&db.pool)
    .await
    .expect("reads the ledger")
}

/// The imported event's detail for a row: each old column present iff it was not NULL.
fn expected_detail(row: &LegacyRow, archive: &str) -> Value {
    let mut detail = json!({
        "imported": true,
        "imported_from": archive,
        "legacy_status": row.status.as_deref().unwrap(),
    });
    let map = detail.as_object_mut().unwrap();
    if let Some(stage) = &row.stage {
        map.insert("stage".into(), json!(stage));
    }
    if let Some(progress) = row.progress {
        map.insert("progress".into(), json!(progress));
    }
    if let Some(result) = row.result() {
        map.insert("result".into(), result.clone());
    }
    if let Some(error) = &row.error {
        map.insert("error_message".into(), json!(error));
    }
    detail
}

/// Every field of every imported job and event against the row it came from.
fn assert_imported(rows: &[LegacyRow], jobs: &[ImportedJob], archive: &str) {
    assert_eq!(jobs.len(), rows.len(), "one job (with one event) per row");
    let mut rows = rows.to_vec();
    rows.sort_by_key(|r| r.id);
    for (row, job) in rows.iter().zip(jobs) {
        let id = row.id;
        let status = row.status.as_deref().unwrap();
        let terminal = matches!(status, "completed" | "failed");
        let attempt = if status == "pending" { 0 } else { 1 };
        assert_eq!(job.id, id);
        assert_eq!(job.org_id, Uuid::nil(), "{id}");
        assert_eq!(job.job_type, "mock_process", "{id}");
        assert_eq!(job.status, mapped(status), "{id}");
        assert_eq!(job.attempt, attempt, "{id}");
        assert_eq!(job.max_attempts, 5, "{id}");
        assert_eq!(job.priority, 0, "{id}");
        assert_eq!(job.idempotency_key, None, "{id}");
        assert_eq!(job.requested_by, None, "{id}");
        assert!(job.params.is_none(), "{id}");
        assert_eq!(Some(job.created_at), row.created_at, "{id}");
        assert_eq!(Some(job.updated_at), row.updated_at, "{id}");
        assert_eq!(job.started_at, None, "{id}: the old table never said when");
        assert_eq!(
            job.finished_at,
            if terminal { row.updated_at } else { None },
            "{id}"
        );
        assert_eq!(job.last_error_code, None, "{id}");
        assert_eq!(job.last_error_message, row.error, "{id}");
        assert_eq!(job.stage, row.stage, "{id}");
        assert_eq!(job.progress, row.progress, "{id}");
        assert_eq!(job.result.as_ref().map(|j| &j.0), row.result(), "{id}");

        assert_eq!(job.event_count, 1, "{id}");
        assert_eq!(job.event_org_id, Uuid::nil(), "{id}");
        assert_eq!(Some(job.event_ts), row.updated_at, "{id}");
        assert_eq!(job.event_prev_status, None, "{id}");
        assert_eq!(job.event_next_status, mapped(status), "{id}");
        assert_eq!(job.event_attempt, Some(attempt), "{id}");
        assert_eq!(
            job.event_detail.as_ref().map(|j| &j.0),
            Some(&expected_detail(row, archive)),
            "{id}"
        );
    }
}

#[tokio::test]
async fn ten_thousand_old_rows_are_imported_field_by_field_and_served_as_before() {
    let db = ScratchDb::new().await;
    db.exec(LEGACY_DDL).await;
    let rows = legacy_rows(10_000);
    insert_legacy(&db.pool, &rows).await;
    let before = fingerprint(&db.pool, "jobs").await;
    for status in LEGACY_STATUSES {
        assert!(rows.iter().any(|r| r.status.as_deref() == Some(status)));
    }
    assert!(rows.iter().any(|r| r.stage.is_none()));
    assert!(rows.iter().any(|r| r.progress.is_none()));
    assert!(rows.iter().any(|r| r.result.is_none()));
    assert!(rows.iter().any(|r| r.error.is_none()));

    let started = Instant::now();
    let imports = jobledger::tools::legacy::migrate(&db.options())
        .await
        .expect("migrations run");
    let took = started.elapsed();
    eprintln!(
        "legacy import: {} rows migrated (all migrations, import included) in {:.3} s",
        rows.len(),
        took.as_secs_f64()
    );
    assert_eq!(imports.len(), 1, "{imports:?}");
    assert_eq!(imports[0].imported, 10_000);
    assert_eq!(imports[0].updated, 0);
    assert_eq!(imports[0].unchanged, 0);
    assert_eq!(imports[0].archived_as, "jobs_legacy_imported");

    // The old table is kept, renamed, untouched.
    assert!(!db.table_exists("jobs").await);
    assert_eq!(fingerprint(&db.pool, "jobs_legacy_imported").await, before);
    assert_eq!(
        legacy_table(&db.pool, "jobs_legacy_imported").await.len(),
        10_000
    );

    assert_eq!(db.count("job").await, 10_000);
    assert_eq!(db.count("job_event").await, 10_000);
    assert_imported(&rows, &imported_jobs(&db).await, "jobs_legacy_imported");

    // GetJob shows what the old REST API showed: a sample with every kind of row.
    let server = Server::start(&db).await;
    let sample = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 97 == 0 || i % 500 == 7 || *i < 60)
        .map(|(_, r)| r);
    let mut checked = 0;
    for row in sample {
        assert_old_view(&server.get(row.id).await, row);
        checked += 1;
    }
    assert!(checked > 150, "{checked}");
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_status_stops_the_migration_naming_values_and_ids_and_changes_nothing() {
    let db = ScratchDb::new().await;
    db.exec(LEGACY_DDL).await;
    let mut rows = legacy_rows(40);
    let mut archived: Vec<Uuid> = Vec::new();
    for (i, row) in rows.iter_mut().enumerate() {
        let status = match i {
            0..12 => "archived",
            12 => "Completed",
            13 => "done ",
            _ => continue,
        };
        row.status = Some(status.to_owned());
        if status == "archived" {
            archived.push(row.id);
        }
    }
    rows[14].status = None;
    insert_legacy(&db.pool, &rows).await;
    let before = fingerprint(&db.pool, "jobs").await;
    archived.sort();

    // The binary, as an operator runs it: fails, and says what and where.
    let (ok, stdout, stderr) = db.jobledger(&["migrate"]);
    assert!(!ok, "migrate must fail: {stdout} {stderr}");
    let said = format!("{stdout}{stderr}");
    assert!(said.contains("unknown statuses"), "{said}");
    assert!(said.contains("'archived' (12 rows: "), "{said}");
    for id in &archived[..10] {
        assert!(said.contains(&id.to_string()), "{id} missing: {said}");
    }
    assert!(said.contains("and 2 more"), "{said}");
    assert!(
        said.contains(&format!("'Completed' (1 row: {})", rows[12].id)),
        "{said}"
    );
    assert!(
        said.contains(&format!("'done ' (1 row: {})", rows[13].id)),
        "{said}"
    );
    assert!(
        said.contains(&format!("NULL (1 row: {})", rows[14].id)),
        "{said}"
    );

    // The library says the same.
    let err = jobledger::store::prepare_database(&db.options())
        .await
        .expect_err("the import refuses");
    let err = format!("{err:#}");
    assert!(err.contains("'archived' (12 rows: "), "{err}");

    // Nothing changed: the old table is where it was, as it was; the import wrote nothing.
    assert!(db.table_exists("jobs").await);
    assert!(!db.table_exists("jobs_legacy_imported").await);
    assert_eq!(fingerprint(&db.pool, "jobs").await, before);
    assert_eq!(db.count("job").await, 0);
    assert_eq!(db.count("job_event").await, 0);
    let import_applied: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = 3)")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(!import_applied);

    // Fixed, the same command goes through.
    db.exec(
        "UPDATE jobs SET status = 'failed' WHERE status = 'archived' OR status IS NULL;
         UPDATE jobs SET status = 'completed' WHERE status IN ('Completed', 'done ');",
    )
    .await;
    let (ok, stdout, stderr) = db.jobledger(&["migrate"]);
    assert!(ok, "{stdout} {stderr}");
    assert_eq!(db.count("job").await, 40);
    assert!(db.table_exists("jobs_legacy_imported").await);
}

#[tokio::test]
async fn running_the_import_again_imports_nothing_twice() {
    let db = ScratchDb::new().await;
    db.exec(LEGACY_DDL).await;
    let rows = legacy_rows(300);
    insert_legacy(&db.pool, &rows).await;
    let imports = jobledger::tools::legacy::migrate(&db.options())
        .await
        .unwrap();
    assert_eq!(imports[0].imported, 300);

    // The migrations again: nothing to do.
    assert!(jobledger::tools::legacy::migrate(&db.options())
        .await
        .unwrap()
        .is_empty());
    let (ok, stdout, stderr) = db.jobledger(&["migrate"]);
    assert!(ok, "{stdout} {stderr}");
    // The import again, without a `jobs` table: nothing to do.
    let (ok, stdout, stderr) = db.jobledger(&["migrate", "import-legacy"]);
    assert!(ok, "{stderr}");
    assert_eq!(serde_json::from_str::<Value>(&stdout).unwrap(), json!([]));
    assert_eq!(db.count("job").await, 300);
    assert_eq!(db.count("job_event").await, 300);

    // The same rows come back (the old table restored by hand): still nothing twice.
    db.exec(
        "CREATE TABLE jobs (LIKE jobs_legacy_imported INCLUDING ALL);
         INSERT INTO jobs SELECT * FROM jobs_legacy_imported;",
    )
    .await;
    let (ok, stdout, stderr) = db.jobledger(&["migrate", "import-legacy"]);
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report[0]["archived_as"], "jobs_legacy_imported_2",
        "{report}"
    );
    assert_eq!(report[0]["imported"], 0, "{report}");
    assert_eq!(report[0]["updated"], 0, "{report}");
    assert_eq!(report[0]["unchanged"], 300, "{report}");
    assert_eq!(db.count("job").await, 300);
    assert_eq!(db.count("job_event").await, 300);
    // The first kept table is still there, untouched.
    assert_eq!(
        legacy_table(&db.pool, "jobs_legacy_imported").await.len(),
        300
    );
    assert_imported(&rows, &imported_jobs(&db).await, "jobs_legacy_imported");

    // Two imports at once take turns: one imports, the other finds nothing to do.
    db.exec(
        "CREATE TABLE jobs (LIKE jobs_legacy_imported INCLUDING ALL);
         INSERT INTO jobs SELECT * FROM jobs_legacy_imported;",
    )
    .await;
    let options = db.options();
    let (a, b) = tokio::join!(
        jobledger::tools::legacy::import(&options),
        jobledger::tools::legacy::import(&options)
    );
    a.expect("first import");
    b.expect("second import");
    assert!(!db.table_exists("jobs").await);
    assert!(db.table_exists("jobs_legacy_imported_3").await);
    assert!(!db.table_exists("jobs_legacy_imported_4").await);
    assert_eq!(db.count("jobledger_legacy_import").await, 3);
    assert_eq!(db.count("job").await, 300);
    assert_eq!(db.count("job_event").await, 300);
}

#[tokio::test]
async fn rows_without_timestamps_borrow_the_other_one() {
    let db = ScratchDb::new().await;
    db.exec(LEGACY_DDL).await;
    let mut rows = legacy_rows(3);
    rows[0].created_at = None;
    rows[1].updated_at = None;
    insert_legacy(&db.pool, &rows).await;
    jobledger::tools::legacy::migrate(&db.options())
        .await
        .unwrap();
    let times: Vec<(Uuid, DateTime<Utc>, DateTime<Utc>)> =
        sqlx::query_as("SELECT id, created_at, updated_at FROM job")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let of = |id: Uuid| times.iter().find(|t| t.0 == id).unwrap();
    assert_eq!(of(rows[0].id).1, rows[0].updated_at.unwrap());
    assert_eq!(of(rows[0].id).2, rows[0].updated_at.unwrap());
    assert_eq!(of(rows[1].id).1, rows[1].created_at.unwrap());
    assert_eq!(of(rows[1].id).2, rows[1].created_at.unwrap());
    // The kept table still has the NULLs.
    let kept = legacy_table(&db.pool, "jobs_legacy_imported").await;
    assert!(kept
        .iter()
        .any(|r| r.id == rows[0].id && r.created_at.is_none()));
}
