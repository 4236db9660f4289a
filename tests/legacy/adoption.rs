//! A database the Python stack migrated (`job`, `job_event`, rows in them) is adopted:
//! its rows stay as they were, and jobledger serves them.

use chrono::{DateTime, TimeZone, Utc};
use jobledger::proto;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::*;

const JOB_COLUMNS: [&str; 14] = [
    "id",
    "org_id",
    "type",
    "status",
    "attempt",
    "priority",
    "idempotency_key",
    "requested_by",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "last_error_code",
    "last_error_message",
];
const EVENT_COLUMNS: [&str; 6] = [
    "id",
    "job_id",
    "ts",
    "prev_status",
    "next_status",
    "detail_json",
];

/// The Python stack's columns of every row of `table`, as JSON, by id.
async fn python_view(pool: &PgPool, table: &str, columns: &[&str]) -> Vec<Value> {
    let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
    sqlx::query_scalar(&format!(
        "SELECT (SELECT jsonb_object_agg(key, value) FROM jsonb_each(to_jsonb(t))
                 WHERE key = ANY($1))
         FROM {table} t ORDER BY id"
    ))
    .bind(&columns)
    .fetch_all(pool)
    .await
    .unwrap()
}

struct PyJob {
    id: Uuid,
    org: Uuid,
    status: &'static str,
    attempt: i32,
    error: Option<(&'static str, &'static str)>,
}

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 12, minute, 0).unwrap()
}

async fn insert_job(pool: &PgPool, j: &PyJob, job_type: &str, key: Option<&str>) {
    sqlx::query(
        "INSERT INTO job (id, org_id, type, status, attempt, idempotency_key, requested_by,
                          created_at, updated_at, started_at, finished_at, last_error_code,
                          last_error_message)
         VALUES ($1, $2, $3, $4, $5, $6, 'api-gateway', $7, $8,
                 CASE WHEN $4 <> 'queued' THEN $7 END,
                 CASE WHEN $4 IN ('succeeded', 'failed') THEN $8 END, $9, $10)",
    )
    .bind(j.id)
    .bind(j.org)
    .bind(job_type)
    .bind(j.status)
    .bind(j.attempt)
    .bind(key)
    .bind(at(0))
    .bind(at(30))
    .bind(j.error.map(|e| e.0))
    .bind(j.error.map(|e| e.1))
    .execute(pool)
    .await
    .unwrap();
}

async fn insert_event(
    pool: &PgPool,
    job: Uuid,
    minute: u32,
    prev: Option<&str>,
    next: &str,
    detail: Option<Value>,
) {
    sqlx::query(
        "INSERT INTO job_event (job_id, ts, prev_status, next_status, detail_json)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(job)
    .bind(at(minute))
    .bind(prev)
    .bind(next)
    .bind(detail.map(sqlx::types::Json))
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_database_the_python_stack_migrated_is_adopted_and_served() {
    let db = ScratchDb::new().await;
    db.exec(PYTHON_LEDGER_DDL).await;
    let org = Uuid::nil();
    let other_org = Uuid::new_v4();
    let done = PyJob {
        id: Uuid::new_v4(),
        org,
        status: "succeeded",
        attempt: 1,
        error: None,
    };
    let odd = PyJob {
        id: Uuid::new_v4(),
        org,
        status: "running",
        attempt: 2,
        error: None,
    };
    let failed = PyJob {
        id: Uuid::new_v4(),
        org: other_org,
        status: "failed",
        attempt: 3,
        error: Some(("TIMEOUT", "took too long ⏱")),
    };
    let fresh = PyJob {
        id: Uuid::new_v4(),
        org,
        status: "queued",
        attempt: 0,
        error: None,
    };
    let pool = &db.pool;
    insert_job(pool, &done, "mock_process", Some("upload-1")).await;
    insert_job(pool, &odd, "report", None).await;
    insert_job(pool, &failed, "mock_process", None).await;
    insert_job(pool, &fresh, "mock_process", Some("upload-2")).await;

    // Written out of time order, so physical order is not time order.
    insert_event(
        pool,
        done.id,
        4,
        Some("running"),
        "succeeded",
        Some(json!({"result": {"rows": 3, "ü": "ß"}, "progress": 100})),
    )
    .await;
    insert_event(
        pool,
        done.id,
        2,
        Some("queued"),
        "running",
        Some(json!({"stage": "download", "progress": 10})),
    )
    .await;
    insert_event(pool, done.id, 1, None, "queued", Some(json!({}))).await;
    insert_event(
        pool,
        done.id,
        3,
        Some("running"),
        "running",
        Some(json!({"stage": "parse", "progress": 55.5})),
    )
    .await;
    // Progress the ledger cannot hold must not stop the migration: "abc", true, 1e12
    // are skipped, "45" is read as 45; a stage that is a number reads as its text.
    insert_event(pool, odd.id, 1, None, "queued", None).await;
    insert_event(
        pool,
        odd.id,
        2,
        Some("queued"),
        "running",
        Some(json!({"stage": 7, "progress": "45"})),
    )
    .await;
    insert_event(
        pool,
        odd.id,
        3,
        Some("running"),
        "running",
        Some(json!({"progress": "abc"})),
    )
    .await;
    insert_event(
        pool,
        odd.id,
        4,
        Some("running"),
        "running",
        Some(json!({"progress": true, "result": [1, 2]})),
    )
    .await;
    insert_event(
        pool,
        odd.id,
        5,
        Some("running"),
        "running",
        Some(json!({"progress": 1e12, "stage": null})),
    )
    .await;
    insert_event(
        pool,
        odd.id,
        6,
        Some("running"),
        "running",
        Some(json!(["not", "an", "object"])),
    )
    .await;
    insert_event(pool, failed.id, 1, None, "queued", None).await;
    insert_event(
        pool,
        failed.id,
        2,
        Some("queued"),
        "running",
        Some(json!({"stage": "fetch", "progress": 33.3})),
    )
    .await;
    insert_event(
        pool,
        failed.id,
        3,
        Some("running"),
        "failed",
        Some(json!({"error": "took too long ⏱"})),
    )
    .await;
    insert_event(pool, fresh.id, 1, None, "queued", None).await;

    let jobs_before = python_view(pool, "job", &JOB_COLUMNS).await;
    let events_before = python_view(pool, "job_event", &EVENT_COLUMNS).await;

    let imports = jobledger::tools::legacy::migrate(&db.options())
        .await
        .expect("the Python stack's database migrates");
    assert!(imports.is_empty(), "no `jobs` table, nothing imported");
    assert!(!db.table_exists("jobs_legacy_imported").await);

    // Nothing the Python stack wrote was lost or altered.
    assert_eq!(python_view(pool, "job", &JOB_COLUMNS).await, jobs_before);
    assert_eq!(
        python_view(pool, "job_event", &EVENT_COLUMNS).await,
        events_before
    );
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE tablename IN ('job', 'job_event')",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for name in [
        "uq_job_org_idempotency",
        "idx_job_org_status",
        "idx_job_type_status",
        "idx_job_event_job_ts",
        "idx_job_event_ts",
    ] {
        assert!(indexes.iter().any(|i| i == name), "{name}: {indexes:?}");
    }

    // Adopted events read in time order.
    let out_of_order: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (
            SELECT ts, lag(ts) OVER (PARTITION BY job_id ORDER BY seq) AS previous FROM job_event
         ) e WHERE previous > ts",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(out_of_order, 0);

    // The service serves them, with the old API's view from the newest events.
    let server = Server::start(&db).await;
    let job = server.get(done.id).await;
    assert_eq!(job.status, proto::JobStatus::Succeeded as i32);
    assert_eq!(job.r#type, "mock_process");
    assert_eq!(job.attempt, 1);
    assert_eq!(job.idempotency_key, "upload-1");
    assert_eq!(job.stage, "parse");
    assert_eq!(job.progress, 100);
    assert_eq!(
        job.result,
        Some(jobledger::proto::json::json_to_struct(
            &json!({"rows": 3, "ü": "ß"})
        ))
    );
    assert_eq!(job.created_at, Some(timestamp(at(0))));
    assert_eq!(job.updated_at, Some(timestamp(at(30))));

    let job = server.get(odd.id).await;
    assert_eq!(job.status, proto::JobStatus::Running as i32);
    assert_eq!(job.stage, "7");
    assert_eq!(job.progress, 45);
    assert_eq!(
        job.result,
        Some(jobledger::proto::json::json_to_struct(&json!([1, 2])))
    );

    let job = server
        .client
        .clone()
        .get_job(proto::GetJobRequest {
            org_id: other_org.to_string(),
            job_id: failed.id.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(job.status, proto::JobStatus::Failed as i32);
    assert_eq!(job.stage, "fetch");
    assert_eq!(job.progress, 33);
    assert_eq!(job.last_error_code, "TIMEOUT");
    assert_eq!(job.last_error_message, "took too long ⏱");
    assert_eq!(job.attempt, 3);

    let job = server.get(fresh.id).await;
    assert_eq!(job.status, proto::JobStatus::Queued as i32);
    assert_eq!(
        (job.stage.as_str(), job.progress, job.result),
        ("", 0, None)
    );

    // And moves them on: the adopted job takes its next transition and its event.
    let moved = server
        .client
        .clone()
        .transition_job(proto::TransitionJobRequest {
            job_id: odd.id.to_string(),
            to_status: proto::JobStatus::Succeeded as i32,
            attempt: Some(2),
            result: Some(jobledger::proto::json::json_to_struct(&json!({"ok": true}))),
            ..Default::default()
        })
        .await
        .expect("an adopted job moves on")
        .into_inner();
    assert_eq!(
        moved.job.unwrap().status,
        proto::JobStatus::Succeeded as i32
    );
    let newest: String = sqlx::query_scalar(
        "SELECT next_status FROM job_event WHERE job_id = $1 ORDER BY seq DESC LIMIT 1",
    )
    .bind(odd.id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(newest, "succeeded");
    server.stop().await;
}

#[tokio::test]
async fn an_adopted_database_that_still_has_the_older_jobs_table_imports_it_too() {
    let db = ScratchDb::new().await;
    db.exec(PYTHON_LEDGER_DDL).await;
    db.exec(LEGACY_DDL).await;
    let existing = PyJob {
        id: Uuid::new_v4(),
        org: Uuid::nil(),
        status: "running",
        attempt: 1,
        error: None,
    };
    insert_job(&db.pool, &existing, "mock_process", None).await;
    insert_event(&db.pool, existing.id, 1, None, "queued", None).await;
    let rows = legacy_rows(25);
    insert_legacy(&db.pool, &rows).await;

    let imports = jobledger::tools::legacy::migrate(&db.options())
        .await
        .unwrap();
    assert_eq!(imports.len(), 1);
    assert_eq!(imports[0].imported, 25);
    assert_eq!(db.count("job").await, 26);
    assert_eq!(db.count("job_event").await, 26);
    let server = Server::start(&db).await;
    for row in &rows {
        assert_old_view(&server.get(row.id).await, row);
    }
    assert_eq!(
        server.get(existing.id).await.status,
        proto::JobStatus::Running as i32
    );
    server.stop().await;
}
