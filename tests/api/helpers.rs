//! `spawn_app()`: a server of our own on 127.0.0.1:0 against a database of our own, with
//! a client and a pool for asserting rows (on `jobledger::testkit`).

#![allow(dead_code)]

use std::{sync::LazyLock, time::Duration};

use jobledger::{
    proto::{self, job_ledger_client::JobLedgerClient},
    server::Config,
    testkit::InProcessServer,
};
use sqlx::{postgres::PgPoolOptions, PgPool};
use tonic::{transport::Channel, Code, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

pub use jobledger::testkit::{base_url, ScratchDb, ServerProcess};

/// The `jobledger` binary of this build.
pub const BIN: &str = env!("CARGO_BIN_EXE_jobledger");

static TRACING: LazyLock<()> = LazyLock::new(|| {
    if std::env::var_os("TEST_LOG").is_some() {
        jobledger::server::telemetry::init(Some(jobledger::server::telemetry::LogFormat::Pretty));
    }
});

pub struct TestApp {
    pub addr: String,
    pub port: u16,
    /// Where the HTTP/JSON API is served.
    pub http_addr: std::net::SocketAddr,
    pub client: JobLedgerClient<Channel>,
    pub health: HealthClient<Channel>,
    /// A pool on the test database, for asserting rows.
    pub db: PgPool,
    pub db_name: String,
    pub database_url: String,
    server: InProcessServer,
    /// Dropped last: the database goes away after the server.
    _scratch: Option<ScratchDb>,
}

/// A server on a fresh database on the shared PostgreSQL, default settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Like `spawn_app`, with settings changed by `configure` first.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    let scratch = ScratchDb::new();
    let mut app = spawn_app_on(&base_url(), &scratch.name, configure).await;
    app._scratch = Some(scratch);
    app
}

/// A server on database `db_name` of the PostgreSQL at `base` (created by the server).
pub async fn spawn_app_on(
    base: &str,
    db_name: &str,
    configure: impl FnOnce(&mut Config),
) -> TestApp {
    LazyLock::force(&TRACING);
    let database_url = format!("{base}/{db_name}");
    let mut config = Config::for_database(&database_url).expect("a database URL");
    config.probe_interval = Duration::from_millis(100);
    config.drain_timeout = Duration::from_secs(5);
    // The shared PostgreSQL allows 100 connections and tests run 4 at a time, each with
    // a server (pool + listener + probe) and a pool of its own: keep them modest.
    config.pool_size = 10;
    configure(&mut config);
    let server = InProcessServer::start(config)
        .await
        .expect("application builds");
    let channel = server.channel().await.expect("client connects");
    let db = PgPoolOptions::new()
        .max_connections(3)
        .connect(&database_url)
        .await
        .expect("test pool connects");
    TestApp {
        addr: server.addr.clone(),
        port: server.port,
        http_addr: server.http_addr.expect("the HTTP API is on in tests"),
        client: JobLedgerClient::new(channel.clone()),
        health: HealthClient::new(channel),
        db,
        db_name: db_name.to_owned(),
        database_url,
        server,
        _scratch: None,
    }
}

impl TestApp {
    /// A new client on its own connection.
    pub async fn new_client(&self) -> JobLedgerClient<Channel> {
        JobLedgerClient::new(self.server.channel().await.expect("client connects"))
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
        self.transition_with(proto::TransitionJobRequest {
            job_id: job_id.to_owned(),
            to_status: to as i32,
            ..Default::default()
        })
        .await
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

    /// Where `GET /metrics` is served.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.server.metrics_addr
    }

    /// Stops the server (SIGTERM-like graceful shutdown) and waits for it.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.server.stop().await
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
    proto::json::json_to_struct(&value)
}

/// A Struct as JSON.
pub fn to_json(s: &prost_types::Struct) -> serde_json::Value {
    proto::json::struct_to_json(s, "x", &mut |path, n| panic!("{path}: {n}"))
}

/// An HTTP answer of the JSON API, read whole.
pub struct HttpReply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

impl HttpReply {
    /// The body as JSON (panics, showing it, if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The ErrorInfo reason of a google.rpc.Status body (panics if it has none).
    pub fn reason(&self) -> String {
        let body = self.json();
        let info = body["details"]
            .as_array()
            .and_then(|d| {
                d.iter()
                    .find(|d| d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo")
            })
            .unwrap_or_else(|| panic!("no ErrorInfo in {body}"));
        assert_eq!(info["domain"], "jobledger", "{body}");
        info["reason"].as_str().unwrap().to_owned()
    }

    /// The fields a BadRequest of a google.rpc.Status body names.
    pub fn violated_fields(&self) -> Vec<String> {
        let body = self.json();
        body["details"]
            .as_array()
            .and_then(|d| {
                d.iter()
                    .find(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
            })
            .unwrap_or_else(|| panic!("no BadRequest in {body}"))["fieldViolations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["field"].as_str().unwrap().to_owned())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl TestApp {
    /// `method path` with `body` on the HTTP API.
    pub async fn http(&self, method: &str, path: &str, body: &str) -> HttpReply {
        self.http_with(method, path, &[], body.as_bytes().to_vec())
            .await
    }

    /// `method path` with request headers and a body of any bytes.
    pub async fn http_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> HttpReply {
        http_call(self.http_addr, method, path, headers, body).await
    }

    /// Sends a request; the response with its body still to be read (a stream).
    pub async fn http_send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> http::Response<hyper::body::Incoming> {
        http_send(self.http_addr, method, path, headers, body).await
    }
}

/// `method path` on the HTTP server at `addr`, read whole.
pub async fn http_call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> HttpReply {
    use http_body_util::BodyExt;
    let response = http_send(addr, method, path, headers, body).await;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("the body arrives").to_bytes();
    HttpReply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// Sends a request to the HTTP server at `addr` (HTTP/1.1, a connection of its own);
/// the response with its body still to be read.
pub async fn http_send(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> http::Response<hyper::body::Incoming> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .expect("a request");
    tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .expect("an answer within 30 s")
        .expect("the HTTP API answers")
}

/// One Server-Sent Event, or a comment line (`comment` set, the rest empty).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub comment: Option<String>,
}

impl SseEvent {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// Reads Server-Sent Events from a response body until `done` says so (given all read
/// so far), the body ends, or `limit` passes; what was read.
pub async fn read_sse(
    body: &mut hyper::body::Incoming,
    limit: Duration,
    done: impl Fn(&[SseEvent]) -> bool,
) -> Vec<SseEvent> {
    use http_body_util::BodyExt;
    let deadline = tokio::time::Instant::now() + limit;
    let mut text = String::new();
    let mut events = Vec::new();
    while !done(&events) {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(e))) => panic!("the event stream broke: {e}"),
            Ok(None) | Err(_) => break,
        };
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).expect("UTF-8 events"));
        }
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            events.push(parse_sse_block(&block));
        }
    }
    events
}

fn parse_sse_block(block: &str) -> SseEvent {
    let mut event = SseEvent::default();
    let mut data = Vec::new();
    for line in block.lines().filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match name {
            "" => event.comment = Some(value.to_owned()),
            "id" => event.id = Some(value.to_owned()),
            "event" => event.event = Some(value.to_owned()),
            "data" => data.push(value),
            other => panic!("unexpected SSE field {other:?} in {block:?}"),
        }
    }
    event.data = data.join("\n");
    event
}
