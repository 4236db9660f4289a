//! Start-up, migrations, the schema, shutdown, reflection and the CLI — the process
//! as an operator sees it.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use jobledger::proto;
use sqlx::{Connection, Executor, PgConnection};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use uuid::Uuid;

use crate::helpers::{spawn_app, ScratchDb, ServerProcess, BIN};

#[tokio::test]
async fn the_schema_keeps_the_python_stacks_names_and_types() {
    let app = spawn_app().await;
    let columns: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text
         FROM information_schema.columns
         WHERE table_name IN ('job', 'job_event') AND table_schema = 'public'",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let has = |table: &str, column: &str, ty: &str, nullable: &str| {
        assert!(
            columns
                .iter()
                .any(|(t, c, d, n)| t == table && c == column && d == ty && n == nullable),
            "missing {table}.{column} {ty} nullable={nullable}; have {columns:?}"
        )
    };
    has("job", "id", "uuid", "NO");
    has("job", "org_id", "uuid", "NO");
    has("job", "type", "character varying", "NO");
    has("job", "status", "character varying", "NO");
    has("job", "attempt", "integer", "NO");
    has("job", "priority", "integer", "NO");
    has("job", "idempotency_key", "character varying", "YES");
    has("job", "requested_by", "character varying", "YES");
    has("job", "created_at", "timestamp with time zone", "NO");
    has("job", "updated_at", "timestamp with time zone", "NO");
    has("job", "started_at", "timestamp with time zone", "YES");
    has("job", "finished_at", "timestamp with time zone", "YES");
    has("job", "last_error_code", "character varying", "YES");
    has("job", "last_error_message", "text", "YES");
    has("job_event", "id", "uuid", "NO");
    has("job_event", "job_id", "uuid", "NO");
    has("job_event", "ts", "timestamp with time zone", "NO");
    has("job_event", "prev_status", "character varying", "YES");
    has("job_event", "next_status", "character varying", "NO");
    has("job_event", "detail_json", "jsonb", "YES");

    let lengths: Vec<(String, i32)> = sqlx::query_as(
        "SELECT column_name::text, character_maximum_length::int FROM information_schema.columns
         WHERE table_name = 'job' AND character_maximum_length IS NOT NULL ORDER BY 1",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    for (column, len) in [
        ("idempotency_key", 255),
        ("last_error_code", 100),
        ("requested_by", 255),
        ("status", 50),
        ("type", 100),
    ] {
        assert!(
            lengths.contains(&(column.to_owned(), len)),
            "{column}: {lengths:?}"
        );
    }

    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE tablename IN ('job', 'job_event')",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    for name in [
        "uq_job_org_idempotency",
        "idx_job_org_status",
        "idx_job_type_status",
        "idx_job_event_job_ts",
        "idx_job_event_ts",
    ] {
        assert!(
            indexes.iter().any(|i| i == name),
            "index {name} missing: {indexes:?}"
        );
    }
    let check: String = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'ck_job_status'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    for status in [
        "queued",
        "running",
        "succeeded",
        "failed",
        "canceled",
        "dead_letter",
    ] {
        assert!(check.contains(status), "{check}");
    }
    // The CHECK holds: the database itself refuses an unknown status.
    let bad = sqlx::query("INSERT INTO job (org_id, type, status) VALUES ($1, 't', 'pending')")
        .bind(Uuid::nil())
        .execute(&app.db)
        .await;
    assert!(bad.is_err());
    // Deleting a job deletes its events (ON DELETE CASCADE).
    let job = app.create("cascade").await;
    sqlx::query("DELETE FROM job WHERE id = $1::uuid")
        .bind(&job.id)
        .execute(&app.db)
        .await
        .unwrap();
    assert_eq!(app.count("job_event").await, 0);
}

#[tokio::test]
async fn replicas_starting_at_once_create_and_migrate_the_database_once() {
    let db = ScratchDb::new();
    let options: sqlx::postgres::PgConnectOptions = db.url().parse().unwrap();
    let runs = (0..6).map(|_| {
        let options = options.clone();
        tokio::spawn(async move { jobledger::store::prepare_database(&options).await })
    });
    for run in futures::future::join_all(runs).await {
        run.unwrap().expect("every replica's start-up succeeds");
    }
    let mut conn = PgConnection::connect(&db.url()).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(applied as usize, jobledger::store::MIGRATOR.iter().count());
    conn.close().await.unwrap();
}

#[tokio::test]
async fn migrate_subcommand_creates_and_migrates_then_exits() {
    let db = ScratchDb::new();
    let out = Command::new(BIN)
        .args([
            "migrate",
            "--database-url",
            &db.url(),
            "--log-format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut conn = PgConnection::connect(&db.url()).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('job', 'job_event')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(tables, 2);
    // Running it again is a no-op, not an error.
    let again = Command::new(BIN)
        .args(["migrate", "--database-url", &db.url()])
        .output()
        .unwrap();
    assert!(again.status.success());
    conn.close().await.unwrap();
}

/// `jobledger health` against `addr`; its exit code.
fn health_exit(addr: &str, service: &str) -> Option<i32> {
    Command::new(BIN)
        .args([
            "health",
            "--addr",
            addr,
            "--service",
            service,
            "--timeout-ms",
            "1000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()
        .and_then(|s| s.code())
}

#[tokio::test]
async fn sigterm_finishes_in_flight_calls_refuses_new_ones_and_exits_zero() {
    let db = ScratchDb::new();
    let mut server = ServerProcess::start(BIN, &db.url(), &["--drain-timeout-ms", "8000"]).await;
    let channel = Channel::from_shared(server.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = proto::job_ledger_client::JobLedgerClient::new(channel.clone());
    let job = client
        .create_job(proto::CreateJobRequest {
            r#type: "drain".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();

    // Hold the job's row lock so a transition stays in flight across the signal.
    let mut locker = PgConnection::connect(&db.url()).await.unwrap();
    locker.execute("BEGIN").await.unwrap();
    sqlx::query("SELECT 1 FROM job WHERE id = $1::uuid FOR UPDATE")
        .bind(&job.id)
        .execute(&mut locker)
        .await
        .unwrap();
    let mut in_flight_client = client.clone();
    let job_id = job.id.clone();
    let in_flight = tokio::spawn(async move {
        in_flight_client
            .transition_job(proto::TransitionJobRequest {
                job_id,
                to_status: proto::JobStatus::Running as i32,
                ..Default::default()
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !in_flight.is_finished(),
        "the transition should be waiting on the lock"
    );

    server.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New calls are refused: health is no longer SERVING and a new connection fails.
    assert_ne!(health_exit(&server.addr, ""), Some(0));
    let fresh = Channel::from_shared(server.addr.clone())
        .unwrap()
        .connect()
        .await;
    if let Ok(fresh) = fresh {
        let refused = proto::job_ledger_client::JobLedgerClient::new(fresh)
            .get_job(proto::GetJobRequest {
                job_id: job.id.clone(),
                ..Default::default()
            })
            .await;
        assert!(
            refused.is_err(),
            "a call after SIGTERM was served: {refused:?}"
        );
    }
    assert_eq!(
        server.child.try_wait().unwrap(),
        None,
        "must wait for the in-flight call"
    );

    // Release the lock: the in-flight call completes, then the process exits 0.
    locker.execute("COMMIT").await.unwrap();
    let answered = in_flight
        .await
        .unwrap()
        .expect("in-flight call finishes OK");
    assert_eq!(answered.into_inner().job.unwrap().attempt, 1);
    assert_eq!(server.wait(Duration::from_secs(8)).await, Some(0));
}

#[tokio::test]
async fn shutdown_ends_health_watch_streams_instead_of_waiting_for_the_drain_timeout() {
    let mut app = spawn_app().await;
    let mut watch = app
        .health
        .clone()
        .watch(HealthCheckRequest {
            service: "liveness".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(watch.next().await.unwrap().is_ok());
    let started = Instant::now();
    app.stop().await.unwrap();
    // The drain timeout is 5 s in tests; ending the stream lets shutdown finish first.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    let mut rest = Vec::new();
    while let Some(item) = watch.next().await {
        rest.push(item);
    }
    assert!(
        rest.iter().all(|r| r.is_ok()),
        "watch ended with an error: {rest:?}"
    );
}

// Multi-threaded: the CLI runs as a blocking subprocess while this process serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_subcommand_exit_codes_follow_grpc_health_probe() {
    let app = spawn_app().await;
    let started = Instant::now();
    while health_exit(&app.addr, "") != Some(0) {
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(health_exit(&app.addr, "liveness"), Some(0));
    assert_eq!(health_exit(&app.addr, "jobledger.v1.JobLedger"), Some(0));
    // An unknown service: the RPC fails (NOT_FOUND) → 3.
    assert_eq!(health_exit(&app.addr, "nope"), Some(3));
    // Nothing listening → 2.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    assert_eq!(
        health_exit(&format!("http://127.0.0.1:{closed}"), ""),
        Some(2)
    );
}

#[tokio::test]
async fn reflection_lists_the_ledger_and_health_services() {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let app = spawn_app().await;
    let channel = Channel::from_shared(app.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"jobledger.v1.JobLedger".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
}
