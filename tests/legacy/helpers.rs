//! Scratch databases, the Python stack's tables, rows of every kind, and a server.

#![allow(dead_code)]

use std::{process::Command, sync::LazyLock, time::Duration};

use chrono::{DateTime, TimeZone, Utc};
use jobledger::{
    proto::{self, job_ledger_client::JobLedgerClient},
    server::Config,
    testkit::{self, InProcessServer},
};
use serde_json::{json, Value};
use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    types::Json,
    FromRow, PgPool,
};
use tonic::transport::Channel;
use uuid::Uuid;

pub const BIN: &str = env!("CARGO_BIN_EXE_jobledger");

static TRACING: LazyLock<()> = LazyLock::new(|| {
    if std::env::var_os("TEST_LOG").is_some() {
        jobledger::server::telemetry::init(Some(jobledger::server::telemetry::LogFormat::Pretty));
    }
});

/// A database of our own on the shared server, dropped (WITH FORCE) when this goes away,
/// also when the test panics.
pub struct ScratchDb {
    pub name: String,
    pub pool: PgPool,
    db: testkit::ScratchDb,
}

impl ScratchDb {
    pub async fn new() -> ScratchDb {
        let db = testkit::ScratchDb::new();
        db.create().await.expect("creates the scratch database");
        let pool = PgPoolOptions::new()
            .max_connections(3)
            .connect(&db.url())
            .await
            .expect("test pool connects");
        ScratchDb {
            name: db.name.clone(),
            pool,
            db,
        }
    }

    pub fn url(&self) -> String {
        self.db.url()
    }

    pub fn options(&self) -> PgConnectOptions {
        self.url().parse().unwrap()
    }

    /// Runs `jobledger <args> --database-url <this database>`; (success, stdout, stderr).
    pub fn jobledger(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(BIN)
            .args(args)
            .args(["--database-url", &self.url()])
            .env("JOBLEDGER_LOG_FORMAT", "json")
            .env_remove("DATABASE_URL")
            .output()
            .expect("runs the binary");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sql)
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{e}: {sql}"));
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("count {table}: {e}"))
    }

    pub async fn table_exists(&self, table: &str) -> bool {
        sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

/// The old stack's table as its SQLAlchemy model created it.
pub const LEGACY_DDL: &str = "
    CREATE TABLE jobs (
        id         uuid PRIMARY KEY,
        status     varchar(20) DEFAULT 'pending',
        stage      varchar(255),
        progress   integer,
        result     jsonb,
        error      text,
        created_at timestamptz DEFAULT now(),
        updated_at timestamptz DEFAULT now()
    );
    CREATE INDEX ix_jobs_status ON jobs (status);";

/// The Python stack's later tables (spec §4: its columns and index names, nothing of
/// jobledger's).
pub const PYTHON_LEDGER_DDL: &str = "
    CREATE TABLE job (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        org_id uuid NOT NULL,
        type varchar(100) NOT NULL,
        status varchar(50) NOT NULL DEFAULT 'queued',
        attempt integer NOT NULL DEFAULT 0,
        priority integer NOT NULL DEFAULT 0,
        idempotency_key varchar(255),
        requested_by varchar(255),
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        started_at timestamptz,
        finished_at timestamptz,
        last_error_code varchar(100),
        last_error_message text,
        CONSTRAINT ck_job_status CHECK (status IN ('queued', 'running', 'succeeded', 'failed',
                                                  'canceled', 'dead_letter'))
    );
    CREATE UNIQUE INDEX uq_job_org_idempotency ON job (org_id, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX idx_job_org_status ON job (org_id, status, created_at);
    CREATE INDEX idx_job_type_status ON job (type, status);
    CREATE TABLE job_event (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        job_id uuid NOT NULL REFERENCES job (id) ON DELETE CASCADE,
        ts timestamptz NOT NULL DEFAULT now(),
        prev_status varchar(50),
        next_status varchar(50) NOT NULL,
        detail_json jsonb
    );
    CREATE INDEX idx_job_event_job_ts ON job_event (job_id, ts);
    CREATE INDEX idx_job_event_ts ON job_event (ts);";

/// A row of the old `jobs` table.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct LegacyRow {
    pub id: Uuid,
    pub status: Option<String>,
    pub stage: Option<String>,
    pub progress: Option<i32>,
    pub result: Option<Json<Value>>,
    pub error: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl LegacyRow {
    pub fn result(&self) -> Option<&Value> {
        self.result.as_ref().map(|j| &j.0)
    }
}

pub const LEGACY_STATUSES: [&str; 4] = ["pending", "processing", "completed", "failed"];

/// The status jobledger gives an old one.
pub fn mapped(status: &str) -> &'static str {
    match status {
        "pending" => "queued",
        "processing" => "running",
        "completed" => "succeeded",
        "failed" => "failed",
        other => panic!("not an old status: {other}"),
    }
}

pub fn mapped_proto(status: &str) -> proto::JobStatus {
    match mapped(status) {
        "queued" => proto::JobStatus::Queued,
        "running" => proto::JobStatus::Running,
        "succeeded" => proto::JobStatus::Succeeded,
        _ => proto::JobStatus::Failed,
    }
}

/// A result of about `bytes` bytes of JSON.
pub fn large_result(bytes: usize, seed: usize) -> Value {
    let items: Vec<Value> = (0..bytes / 64)
        .map(|i| json!({"row": i + seed, "name": format!("élément-{i}"), "ok": i % 2 == 0}))
        .collect();
    json!({"items": items, "summary": {"count": items.len(), "seed": seed}})
}

/// `n` old rows of every kind: all statuses, NULL stage/progress/result/error, unicode,
/// results of every JSON shape (objects, arrays, strings, numbers, booleans, JSON null)
/// and every 500th one large. Timestamps are distinct, to the microsecond, never NULL.
pub fn legacy_rows(n: usize) -> Vec<LegacyRow> {
    let base = Utc.with_ymd_and_hms(2023, 3, 14, 9, 26, 53).unwrap();
    let stages = [
        None,
        Some("download"),
        Some("parse"),
        Some("étape 2 — vérification ✓"),
        Some("日本語のステージ"),
        Some("emoji 🚀🔥"),
        Some(""),
        Some("quotes ' \" \\ and\nnewline"),
    ];
    (0..n)
        .map(|i| {
            let status = LEGACY_STATUSES[i % 4];
            let result = if i % 500 == 7 {
                Some(large_result(100_000, i))
            } else {
                match i % 11 {
                    0 => None,
                    1 => Some(json!({"rows": i, "file": format!("f{i}.csv")})),
                    2 => Some(json!([1, "two", {"three": 3.5}, null, [true, false]])),
                    3 => Some(json!(format!("just a string ✓ {i}"))),
                    4 => Some(json!(i as i64 * 1_000_003)),
                    5 => Some(json!(-12.25)),
                    6 => Some(json!(true)),
                    7 => Some(Value::Null),
                    8 => Some(
                        json!({"nested": {"deeper": {"ключ": "значение", "list": [1e300, -0.5]}}}),
                    ),
                    9 => Some(json!({})),
                    _ => Some(json!([])),
                }
            };
            let error = match (status, i % 3) {
                ("failed", 0) => None,
                ("failed", 1) => Some(format!("ValueError: bad row {i}\nTraceback…")),
                ("failed", _) => Some("échec: délai dépassé ⏱".to_owned()),
                // The old stack also left errors on rows that later completed.
                ("completed", 1) if i % 5 == 0 => Some(format!("retried after: {i}")),
                _ => None,
            };
            let progress = match i % 13 {
                0 => None,
                1 => Some(-1),
                2 => Some(150),
                _ => Some((i % 101) as i32),
            };
            let created_at = base
                + chrono::Duration::seconds(i as i64)
                + chrono::Duration::microseconds(((i * 7919) % 1_000_000) as i64);
            let updated_at = created_at + chrono::Duration::microseconds(1 + (i * 31) as i64);
            LegacyRow {
                id: Uuid::new_v4(),
                status: Some(status.to_owned()),
                stage: stages[i % stages.len()].map(str::to_owned),
                progress,
                result: result.map(Json),
                error,
                created_at: Some(created_at),
                updated_at: Some(updated_at),
            }
        })
        .collect()
}

/// Inserts `rows` into `jobs`, a thousand per statement.
pub async fn insert_legacy(pool: &PgPool, rows: &[LegacyRow]) {
    for chunk in rows.chunks(1000) {
        sqlx::query(
            "INSERT INTO jobs (id, status, stage, progress, result, error, created_at, updated_at)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::jsonb[],
                                  $6::text[], $7::timestamptz[], $8::timestamptz[])",
        )
        .bind(chunk.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.status.clone()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.stage.clone()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.progress).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.result.clone()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.error.clone()).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .bind(chunk.iter().map(|r| r.updated_at).collect::<Vec<_>>())
        .execute(pool)
        .await
        .expect("inserts old rows");
    }
}

/// Every row of an old-shaped `table`, by id.
pub async fn legacy_table(pool: &PgPool, table: &str) -> Vec<LegacyRow> {
    sqlx::query_as(&format!(
        "SELECT id, status::text AS status, stage::text AS stage, progress, result, error,
                created_at, updated_at
         FROM {table} ORDER BY id"
    ))
    .fetch_all(pool)
    .await
    .unwrap_or_else(|e| panic!("reads {table}: {e}"))
}

/// A content fingerprint of a table: changes when any value does.
pub async fn fingerprint(pool: &PgPool, table: &str) -> String {
    sqlx::query_scalar(&format!(
        "SELECT coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM {table} t"
    ))
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A jobledger server on `db` (which it migrates), on 127.0.0.1:0.
pub struct Server {
    pub client: JobLedgerClient<Channel>,
    server: InProcessServer,
}

impl Server {
    pub async fn start(db: &ScratchDb) -> Server {
        LazyLock::force(&TRACING);
        let mut config = Config::for_database(&db.url()).unwrap();
        config.probe_interval = Duration::from_millis(100);
        config.drain_timeout = Duration::from_secs(2);
        let server = InProcessServer::start(config)
            .await
            .expect("application builds");
        let channel = server.channel().await.expect("client connects");
        Server {
            client: JobLedgerClient::new(channel).max_decoding_message_size(16 * 1024 * 1024),
            server,
        }
    }

    pub async fn get(&self, id: Uuid) -> proto::Job {
        self.client
            .clone()
            .get_job(proto::GetJobRequest {
                job_id: id.to_string(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("GetJob {id}: {s:?}"))
            .into_inner()
            .job
            .expect("job")
    }

    pub async fn stop(mut self) {
        self.server.stop().await.expect("server stops cleanly");
    }
}

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// What the old REST API showed for a row, as GetJob shows it: status mapped, NULL
/// stage/error as "", NULL progress as 0, the result as stored (non-objects wrapped in
/// `{"value": ...}` by the Struct), the row's timestamps.
pub fn assert_old_view(job: &proto::Job, row: &LegacyRow) {
    let id = row.id;
    assert_eq!(job.id, id.to_string());
    assert_eq!(job.org_id, Uuid::nil().to_string(), "{id}");
    assert_eq!(job.r#type, "mock_process", "{id}");
    let status = row.status.as_deref().unwrap();
    assert_eq!(job.status, mapped_proto(status) as i32, "{id}");
    assert_eq!(job.stage, row.stage.clone().unwrap_or_default(), "{id}");
    assert_eq!(job.progress, row.progress.unwrap_or_default(), "{id}");
    assert_eq!(
        job.result,
        row.result().map(jobledger::proto::json::json_to_struct),
        "{id}"
    );
    assert_eq!(
        job.last_error_message,
        row.error.clone().unwrap_or_default(),
        "{id}"
    );
    assert_eq!(job.created_at, row.created_at.map(timestamp), "{id}");
    assert_eq!(job.updated_at, row.updated_at.map(timestamp), "{id}");
    let terminal = matches!(status, "completed" | "failed");
    assert_eq!(
        job.finished_at,
        if terminal {
            row.updated_at.map(timestamp)
        } else {
            None
        },
        "{id}"
    );
}
