//! The way back: `jobledger migrate export-legacy` writes the ledger into the old shape.

use jobledger::proto;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

/// Column definitions of `table`: name, type, nullability, default.
async fn columns(db: &ScratchDb, table: &str) -> Vec<(String, String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT column_name::text, data_type::text || coalesce('(' || character_maximum_length || ')', ''),
                is_nullable::text, column_default::text
         FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn old_to_ledger_to_old_reproduces_every_row_field_by_field() {
    let db = ScratchDb::new().await;
    db.exec(LEGACY_DDL).await;
    let rows = legacy_rows(2_000);
    insert_legacy(&db.pool, &rows).await;
    let original = legacy_table(&db.pool, "jobs").await;
    let original_text: Vec<(Uuid, Option<String>)> =
        sqlx::query_as("SELECT id, result::text FROM jobs ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let original_columns = columns(&db, "jobs").await;

    let (ok, stdout, stderr) = db.jobledger(&["migrate"]);
    assert!(ok, "{stdout} {stderr}");
    assert!(!db.table_exists("jobs").await);
    assert_eq!(db.count("job").await, 2_000);

    let (ok, stdout, stderr) = db.jobledger(&["migrate", "export-legacy"]);
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(report["exported"], 2_000, "{report}");
    assert_eq!(report["shape_from"], "jobs_legacy_imported", "{report}");
    assert_eq!(report["statuses"]["pending"], 500, "{report}");
    assert_eq!(report["statuses"]["completed"], 500, "{report}");
    assert_eq!(report["lossy"]["canceled_as_failed"], 0, "{report}");
    assert_eq!(report["lossy"]["events"], 2_000, "{report}");

    // Every row, every field, as it was.
    let exported = legacy_table(&db.pool, "jobs").await;
    assert_eq!(exported.len(), original.len());
    for (after, before) in exported.iter().zip(&original) {
        assert_eq!(after.id, before.id);
        assert_eq!(after.status, before.status, "{}", before.id);
        assert_eq!(after.stage, before.stage, "{}", before.id);
        assert_eq!(after.progress, before.progress, "{}", before.id);
        assert_eq!(after.result, before.result, "{}", before.id);
        assert_eq!(after.error, before.error, "{}", before.id);
        assert_eq!(after.created_at, before.created_at, "{}", before.id);
        assert_eq!(after.updated_at, before.updated_at, "{}", before.id);
    }
    assert_eq!(exported, original);
    // Byte for byte in the JSON too (not only equal as values).
    let exported_text: Vec<(Uuid, Option<String>)> =
        sqlx::query_as("SELECT id, result::text FROM jobs ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(exported_text, original_text);
    // The table the old stack had: same columns, types, defaults; indexed the same way.
    assert_eq!(columns(&db, "jobs").await, original_columns);
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT regexp_replace(indexdef, '^.* USING ', '') FROM pg_indexes
         WHERE tablename = 'jobs' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(indexes, ["btree (id)", "btree (status)"]);
    // The ledger is still all there.
    assert_eq!(db.count("job").await, 2_000);
    assert_eq!(db.count("job_event").await, 2_000);

    // A second export does not overwrite the table the old stack now owns.
    let (ok, _, stderr) = db.jobledger(&["migrate", "export-legacy"]);
    assert!(!ok);
    assert!(stderr.contains("already exists"), "{stderr}");

    // And forward again: the returned table is recognised, nothing imported twice.
    let (ok, stdout, stderr) = db.jobledger(&["migrate", "import-legacy"]);
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report[0]["imported"], 0, "{report}");
    assert_eq!(report[0]["unchanged"], 2_000, "{report}");
    assert_eq!(db.count("job_event").await, 2_000);
}

#[tokio::test]
async fn the_old_stacks_changes_after_a_rollback_come_forward_again() {
    let db = ScratchDb::new().await;
    db.exec(LEGACY_DDL).await;
    let rows = legacy_rows(100);
    insert_legacy(&db.pool, &rows).await;
    jobledger::tools::legacy::migrate(&db.options())
        .await
        .unwrap();
    jobledger::tools::legacy::export(&db.options())
        .await
        .unwrap();

    // The old stack runs again for a while: finishes a job, takes a new one.
    let processing = rows
        .iter()
        .find(|r| r.status.as_deref() == Some("processing"))
        .unwrap();
    sqlx::query(
        "UPDATE jobs SET status = 'completed', stage = 'done', progress = 100,
                         result = '{\"rows\": 7}', updated_at = updated_at + interval '1 hour'
         WHERE id = $1",
    )
    .bind(processing.id)
    .execute(&db.pool)
    .await
    .unwrap();
    let new_id = Uuid::new_v4();
    sqlx::query("INSERT INTO jobs (id, status, stage, progress) VALUES ($1, 'pending', NULL, 0)")
        .bind(new_id)
        .execute(&db.pool)
        .await
        .unwrap();

    let imports = jobledger::tools::legacy::import(&db.options())
        .await
        .unwrap();
    assert_eq!(imports.len(), 1, "{imports:?}");
    assert_eq!(
        (
            imports[0].imported,
            imports[0].updated,
            imports[0].unchanged
        ),
        (1, 1, 99)
    );
    assert_eq!(imports[0].archived_as, "jobs_legacy_imported_2");
    assert_eq!(db.count("job").await, 101);
    assert_eq!(db.count("job_event").await, 102);

    let server = Server::start(&db).await;
    let job = server.get(processing.id).await;
    assert_eq!(job.status, proto::JobStatus::Succeeded as i32);
    assert_eq!((job.stage.as_str(), job.progress), ("done", 100));
    assert_eq!(
        job.result,
        Some(jobledger::proto::json::json_to_struct(&json!({"rows": 7})))
    );
    let events: Vec<(Option<String>, String)> = sqlx::query_as(
        "SELECT prev_status, next_status FROM job_event WHERE job_id = $1 ORDER BY seq",
    )
    .bind(processing.id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        events,
        [
            (None, "running".to_owned()),
            (Some("running".to_owned()), "succeeded".to_owned())
        ]
    );
    assert_eq!(
        server.get(new_id).await.status,
        proto::JobStatus::Queued as i32
    );
    server.stop().await;
}

#[tokio::test]
async fn jobs_the_ledger_ran_are_exported_with_their_losses_reported() {
    let db = ScratchDb::new().await;
    let server = Server::start(&db).await;
    let mut client = server.client.clone();
    let create = |job_type: &str| proto::CreateJobRequest {
        r#type: job_type.to_owned(),
        params: Some(jobledger::proto::json::json_to_struct(&json!({"n": 1}))),
        ..Default::default()
    };
    let mut ids = Vec::new();
    for job_type in [
        "mock_process",
        "mock_process",
        "mock_process",
        "report",
        "mock_process",
    ] {
        let job = client
            .create_job(create(job_type))
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        ids.push(job.id);
    }
    let step = |id: &str, to: proto::JobStatus| proto::TransitionJobRequest {
        job_id: id.to_owned(),
        to_status: to as i32,
        ..Default::default()
    };
    // 0: queued. 1: running with a stage. 2: succeeded with a result. 3: canceled.
    // 4: failed with a code and message, then dead-lettered.
    client
        .transition_job(proto::TransitionJobRequest {
            stage: "parse".into(),
            progress: Some(40),
            ..step(&ids[1], proto::JobStatus::Running)
        })
        .await
        .unwrap();
    client
        .transition_job(step(&ids[2], proto::JobStatus::Running))
        .await
        .unwrap();
    client
        .transition_job(proto::TransitionJobRequest {
            result: Some(jobledger::proto::json::json_to_struct(&json!({"rows": 3}))),
            ..step(&ids[2], proto::JobStatus::Succeeded)
        })
        .await
        .unwrap();
    client
        .transition_job(step(&ids[3], proto::JobStatus::Canceled))
        .await
        .unwrap();
    client
        .transition_job(step(&ids[4], proto::JobStatus::Running))
        .await
        .unwrap();
    client
        .transition_job(proto::TransitionJobRequest {
            error_code: "E42".into(),
            error_message: "disk full".into(),
            ..step(&ids[4], proto::JobStatus::Failed)
        })
        .await
        .unwrap();
    client
        .transition_job(step(&ids[4], proto::JobStatus::DeadLetter))
        .await
        .unwrap();
    server.stop().await;

    let report = jobledger::tools::legacy::export(&db.options())
        .await
        .unwrap();
    assert_eq!(report.exported, 5);
    assert_eq!(report.shape_from, None, "no import: the documented shape");
    assert_eq!(report.lossy.canceled_as_failed, 1);
    assert_eq!(report.lossy.dead_letter_as_failed, 1);
    assert_eq!(report.lossy.other_org, 0);
    assert_eq!(report.lossy.other_type, 1);
    assert_eq!(report.lossy.with_input, 5);
    assert_eq!(report.lossy.with_error_code, 1);

    let rows = legacy_table(&db.pool, "jobs").await;
    let row = |id: &str| rows.iter().find(|r| r.id.to_string() == id).unwrap();
    let fields = |id: &str| {
        let r = row(id);
        (
            r.status.clone().unwrap(),
            r.stage.clone(),
            r.progress,
            r.result().cloned(),
            r.error.clone(),
        )
    };
    assert_eq!(fields(&ids[0]), ("pending".into(), None, None, None, None));
    assert_eq!(
        fields(&ids[1]),
        (
            "processing".into(),
            Some("parse".into()),
            Some(40),
            None,
            None
        )
    );
    assert_eq!(
        fields(&ids[2]),
        (
            "completed".into(),
            None,
            None,
            Some(json!({"rows": 3})),
            None
        )
    );
    assert_eq!(fields(&ids[3]), ("failed".into(), None, None, None, None));
    assert_eq!(
        fields(&ids[4]),
        ("failed".into(), None, None, None, Some("disk full".into()))
    );
    let ledger_times: Vec<(
        Uuid,
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
    )> = sqlx::query_as("SELECT id, created_at, updated_at FROM job")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    for (id, created, updated) in ledger_times {
        let r = row(&id.to_string());
        assert_eq!((r.created_at, r.updated_at), (Some(created), Some(updated)));
    }
    assert_eq!(
        columns(&db, "jobs")
            .await
            .into_iter()
            .map(|c| c.0)
            .collect::<Vec<_>>(),
        [
            "id",
            "status",
            "stage",
            "progress",
            "result",
            "error",
            "created_at",
            "updated_at"
        ]
    );
}
