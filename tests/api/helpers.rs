//! `spawn_app()`: a server of our own on 127.0.0.1:0 against a database of our own.

#![allow(dead_code)]

use std::{
    process::{Child, Command, Stdio},
    sync::LazyLock,
    time::{Duration, Instant},
};

use jobledger::{
    config::ServeArgs,
    proto::{self, job_ledger_client::JobLedgerClient},
    startup::Application,
};
use sqlx::{postgres::PgPoolOptions, Connection, Executor, PgConnection, PgPool};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{transport::Channel, Code, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;
use uuid::Uuid;

/// The PostgreSQL server tests create their databases on.
pub fn base_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

static TRACING: LazyLock<()> = LazyLock::new(|| {
    if std::env::var_os("TEST_LOG").is_some() {
        jobledger::telemetry::init(Some(jobledger::config::LogFormat::Pretty));
    }
});

pub struct TestApp {
    pub addr: String,
    pub port: u16,
    pub client: JobLedgerClient<Channel>,
    pub health: HealthClient<Channel>,
    /// A pool on the test database, for asserting rows.
    pub db: PgPool,
    pub db_name: String,
    pub database_url: String,
    admin_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

/// A server on a fresh database on the shared PostgreSQL, default settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Like `spawn_app`, with settings changed by `configure` first.
pub async fn spawn_app_with(configure: impl FnOnce(&mut ServeArgs)) -> TestApp {
    let base = base_url();
    let db_name = format!("jl_test_{}", Uuid::new_v4().simple());
    spawn_app_on(&base, &db_name, configure).await
}

/// A server on database `db_name` of the PostgreSQL at `base` (created by the server).
pub async fn spawn_app_on(
    base: &str,
    db_name: &str,
    configure: impl FnOnce(&mut ServeArgs),
) -> TestApp {
    LazyLock::force(&TRACING);
    let database_url = format!("{base}/{db_name}");
    let mut args = ServeArgs::for_database(&database_url);
    args.listen_addr = "127.0.0.1:0".parse().unwrap();
    args.probe_interval_ms = 100;
    args.drain_timeout_ms = 5_000;
    // The shared PostgreSQL allows 100 connections and tests run 4 at a time, each with
    // a server (pool + listener + probe) and a pool of its own: keep them modest.
    args.pool_size = 10;
    configure(&mut args);
    let app = Application::build(args).await.expect("application builds");
    let port = app.port();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        rx.await.ok();
    }));
    let addr = format!("http://127.0.0.1:{port}");
    let channel = Channel::from_shared(addr.clone())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("client connects");
    let db = PgPoolOptions::new()
        .max_connections(3)
        .connect(&database_url)
        .await
        .expect("test pool connects");
    TestApp {
        addr,
        port,
        client: JobLedgerClient::new(channel.clone()),
        health: HealthClient::new(channel),
        db,
        db_name: db_name.to_owned(),
        database_url,
        admin_url: format!("{base}/postgres"),
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    /// A new client on its own connection.
    pub async fn new_client(&self) -> JobLedgerClient<Channel> {
        let channel = Channel::from_shared(self.addr.clone())
            .unwrap()
            .connect()
            .await
            .expect("client connects");
        JobLedgerClient::new(channel)
    }

    /// Creates a job of `job_type` in the default org.
    pub async fn create(&self, job_type: &str) -> proto::Job {
        self.client
            .clone()
            .create_job(proto::CreateJobRequest {
                r#type: job_type.to_owned(),
                ..Default::default()
            })
            .await
            .expect("create_job")
            .into_inner()
            .job
            .expect("job")
    }

    /// Moves `job_id` (default org) to `to` with nothing else set.
    pub async fn transition(
        &self,
        job_id: &str,
        to: proto::JobStatus,
    ) -> Result<proto::TransitionJobResponse, Status> {
        self.client
            .clone()
            .transition_job(proto::TransitionJobRequest {
                job_id: job_id.to_owned(),
                to_status: to as i32,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Sends a full TransitionJob request.
    pub async fn transition_with(
        &self,
        request: proto::TransitionJobRequest,
    ) -> Result<proto::TransitionJobResponse, Status> {
        self.client
            .clone()
            .transition_job(request)
            .await
            .map(|r| r.into_inner())
    }

    pub async fn get(&self, job_id: &str) -> Result<proto::Job, Status> {
        self.client
            .clone()
            .get_job(proto::GetJobRequest {
                job_id: job_id.to_owned(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().job.expect("job"))
    }

    /// Count of rows of `table` (`job`, `job_event`, ...) in the test database.
    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.db)
            .await
            .expect("count")
    }

    /// Stops the server (SIGTERM-like graceful shutdown) and waits for it.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.server.take() {
            Some(handle) => handle.await.expect("server task"),
            None => Ok(()),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
        drop_database(&self.admin_url, &self.db_name);
    }
}

/// The ErrorInfo reason of a status (panics if there is none: every error has one).
pub fn reason(status: &Status) -> String {
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo on {status:?}"));
    assert_eq!(info.domain, "jobledger");
    info.reason
}

/// The fields named by the BadRequest of an INVALID_ARGUMENT status.
pub fn violated_fields(status: &Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest on {status:?}"))
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

/// A Struct from a JSON object literal.
pub fn object(value: serde_json::Value) -> prost_types::Struct {
    jobledger::api::convert::json_to_struct(&value)
}

/// A Struct as JSON.
pub fn to_json(s: &prost_types::Struct) -> serde_json::Value {
    let mut v = jobledger::ledger::Violations::default();
    jobledger::api::convert::struct_to_json(&mut v, "x", s, &Default::default())
}

/// A database name of our own on the shared server (created by whoever uses it first),
/// dropped when this goes away.
pub struct ScratchDb {
    pub name: String,
}

impl ScratchDb {
    pub fn new() -> ScratchDb {
        ScratchDb {
            name: format!("jl_test_{}", Uuid::new_v4().simple()),
        }
    }

    pub fn url(&self) -> String {
        format!("{}/{}", base_url(), self.name)
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        drop_database(&format!("{}/postgres", base_url()), &self.name);
    }
}

/// `DROP DATABASE ... WITH (FORCE)` from a thread of its own: Drop cannot await, and the
/// test's runtime may already be shutting down.
fn drop_database(admin_url: &str, name: &str) {
    let admin = admin_url.to_owned();
    let name = name.to_owned();
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            if let Ok(mut conn) = PgConnection::connect(&admin).await {
                let _ = conn
                    .execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
                    .await;
                let _ = conn.close().await;
            }
        });
    })
    .join();
}

/// The `jobledger` binary of this build.
pub const BIN: &str = env!("CARGO_BIN_EXE_jobledger");

/// A `jobledger serve` process of its own on a free port, killed when dropped.
pub struct ServerProcess {
    pub child: Child,
    pub addr: String,
}

impl ServerProcess {
    /// Starts the binary on `database_url` with `extra` flags (by default: probe every
    /// 100 ms, drain timeout 3 s) and waits until it reports SERVING.
    pub async fn start(database_url: &str, extra: &[&str]) -> ServerProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--database-url", database_url])
            .args(["--listen-addr", &format!("127.0.0.1:{port}")]);
        // Defaults, unless `extra` sets them (a flag may be given only once).
        for (flag, value) in [
            ("--probe-interval-ms", "100"),
            ("--drain-timeout-ms", "3000"),
        ] {
            if !extra.contains(&flag) {
                command.args([flag, value]);
            }
        }
        let child = command
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn jobledger serve");
        let server = ServerProcess {
            child,
            addr: format!("http://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        loop {
            if let Ok(channel) = Channel::from_shared(server.addr.clone())
                .unwrap()
                .connect()
                .await
            {
                let serving = HealthClient::new(channel)
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .map(|r| r.into_inner().status == 1)
                    .unwrap_or(false);
                if serving {
                    return server;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the server process did not become healthy"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends a signal (`TERM`, `INT`, ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits up to `limit` for the process to exit; its exit code.
    pub async fn wait(&mut self, limit: Duration) -> Option<i32> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if started.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
