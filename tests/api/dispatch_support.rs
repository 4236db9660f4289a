//! What the dispatch tests share: building and sending ClaimJobs, reading a job's row and
//! events as the database holds them, the number of waiting claims a server reports
//! (`GET /metrics`), and polling a condition with a time limit.

#![allow(dead_code)]

use std::{
    future::Future,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use jobledger::proto::{self, job_ledger_client::JobLedgerClient, JobStatus as S};
use serde_json::Value;
use sqlx::{types::Json, FromRow, PgPool};
use tonic::{transport::Channel, Code, Status};
use uuid::Uuid;

use crate::helpers::TestApp;

pub type Client = JobLedgerClient<Channel>;

/// A protobuf Duration of `ms` milliseconds.
pub fn ms(ms: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

pub fn secs(s: u64) -> prost_types::Duration {
    ms(s * 1000)
}

/// A protobuf Timestamp as a chrono time.
pub fn time(t: &prost_types::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(t.seconds, t.nanos as u32).expect("a valid timestamp")
}

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn uuid(id: &str) -> Uuid {
    Uuid::parse_str(id).unwrap_or_else(|_| panic!("{id:?} is not a UUID"))
}

pub fn status_of(job: &proto::Job) -> S {
    S::try_from(job.status).expect("a JobStatus")
}

/// A claim of `types` (default org) by `worker`, taking up to `max_jobs`, answering at
/// once, with the server's default lease.
pub fn claim_of(types: &[&str], worker: &str, max_jobs: i32) -> proto::ClaimJobsRequest {
    proto::ClaimJobsRequest {
        types: types.iter().map(|t| (*t).to_owned()).collect(),
        worker_id: worker.to_owned(),
        max_jobs,
        ..Default::default()
    }
}

/// Sends a claim on `client`.
pub async fn claim_on(
    client: &mut Client,
    request: proto::ClaimJobsRequest,
) -> Result<Vec<proto::ClaimedJob>, Status> {
    client
        .claim_jobs(request)
        .await
        .map(|r| r.into_inner().jobs)
}

/// A claim that must be answered (possibly empty).
pub async fn claim(app: &TestApp, request: proto::ClaimJobsRequest) -> Vec<proto::ClaimedJob> {
    claim_on(&mut app.client.clone(), request)
        .await
        .unwrap_or_else(|s| panic!("claim_jobs refused: {s:?}"))
}

/// The jobs of a claim's answer.
pub fn jobs_of(claimed: &[proto::ClaimedJob]) -> Vec<proto::Job> {
    claimed
        .iter()
        .map(|c| c.job.clone().expect("a claimed job has its job"))
        .collect()
}

pub fn ids_of(claimed: &[proto::ClaimedJob]) -> Vec<String> {
    jobs_of(claimed).into_iter().map(|j| j.id).collect()
}

/// A CreateJob of `job_type` in the default org.
pub fn new_job(job_type: &str) -> proto::CreateJobRequest {
    proto::CreateJobRequest {
        r#type: job_type.to_owned(),
        ..Default::default()
    }
}

pub async fn create(app: &TestApp, request: proto::CreateJobRequest) -> proto::Job {
    create_on(&mut app.client.clone(), request).await
}

pub async fn create_on(client: &mut Client, request: proto::CreateJobRequest) -> proto::Job {
    client
        .create_job(request)
        .await
        .unwrap_or_else(|s| panic!("create_job refused: {s:?}"))
        .into_inner()
        .job
        .expect("job")
}

/// `n` jobs made from `template`, created with CreateJobs (up to 1000 a call).
pub async fn create_many(
    app: &TestApp,
    n: usize,
    template: proto::CreateJobRequest,
) -> Vec<proto::Job> {
    let mut jobs = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let batch = left.min(1000);
        let results = app
            .client
            .clone()
            .create_jobs(proto::CreateJobsRequest {
                jobs: vec![template.clone(); batch],
            })
            .await
            .expect("create_jobs")
            .into_inner()
            .results;
        for r in results {
            assert!(r.error.is_none(), "{:?}", r.error);
            jobs.push(r.job.expect("job"));
        }
        left -= batch;
    }
    jobs
}

/// A TransitionJob that must succeed.
pub async fn transition_ok(
    app: &TestApp,
    request: proto::TransitionJobRequest,
) -> proto::TransitionJobResponse {
    let to = request.to_status;
    app.transition_with(request)
        .await
        .unwrap_or_else(|s| panic!("transition to {to} refused: {s:?}"))
}

/// A report from the holder of `attempt` of job `id` (default org).
pub fn report(id: &str, to: S, attempt: i32) -> proto::TransitionJobRequest {
    proto::TransitionJobRequest {
        job_id: id.to_owned(),
        to_status: to as i32,
        attempt: Some(attempt),
        ..Default::default()
    }
}

/// The heartbeat of `attempt` of job `id` (default org).
pub fn heartbeat_of(id: &str, attempt: i32) -> proto::HeartbeatJobRequest {
    proto::HeartbeatJobRequest {
        job_id: id.to_owned(),
        attempt,
        ..Default::default()
    }
}

pub async fn heartbeat(
    app: &TestApp,
    request: proto::HeartbeatJobRequest,
) -> Result<DateTime<Utc>, Status> {
    app.client.clone().heartbeat_job(request).await.map(|r| {
        time(
            r.into_inner()
                .lease_expires_at
                .as_ref()
                .expect("a heartbeat answers the new expiry"),
        )
    })
}

/// Asserts a refusal's code and ErrorInfo reason.
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    why: &str,
) -> Status {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(crate::helpers::reason(&status), why, "{status:?}");
    status
}

/// The metadata of a status's ErrorInfo.
pub fn error_metadata(status: &Status) -> std::collections::HashMap<String, String> {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo on {status:?}"))
        .metadata
}

/// A per-entry error (google.rpc.Status) as the Status a call of its own would carry.
pub fn entry_status(error: &tonic_types::Status) -> Status {
    Status::with_details(
        Code::from(error.code),
        error.message.clone(),
        prost::Message::encode_to_vec(error).into(),
    )
}

// ---------------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct JobRow {
    pub status: String,
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_after: Option<DateTime<Utc>>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub lease_holder: Option<String>,
    pub last_error_code: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

pub async fn job_row(db: &PgPool, id: &str) -> JobRow {
    sqlx::query_as(
        "SELECT status, attempt, max_attempts, run_after, lease_expires_at, lease_holder, \
                last_error_code, finished_at, updated_at \
         FROM job WHERE id = $1",
    )
    .bind(uuid(id))
    .fetch_one(db)
    .await
    .expect("job row")
}

#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct EventRow {
    pub ts: DateTime<Utc>,
    pub prev_status: Option<String>,
    pub next_status: String,
    pub attempt: Option<i32>,
    pub detail_json: Option<Json<Value>>,
}

impl EventRow {
    fn detail(&self, key: &str) -> Option<String> {
        self.detail_json
            .as_ref()
            .and_then(|d| d.0.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    }

    pub fn actor(&self) -> Option<String> {
        self.detail("actor")
    }

    pub fn error_code(&self) -> Option<String> {
        self.detail("error_code")
    }

    /// `prev->next` in the database's spelling (`-` for the creation event's prev).
    pub fn step(&self) -> String {
        format!(
            "{}->{}",
            self.prev_status.as_deref().unwrap_or("-"),
            self.next_status
        )
    }
}

/// The job's events in the database, oldest first.
pub async fn events(db: &PgPool, id: &str) -> Vec<EventRow> {
    sqlx::query_as(
        "SELECT ts, prev_status, next_status, attempt, detail_json \
         FROM job_event WHERE job_id = $1 ORDER BY seq",
    )
    .bind(uuid(id))
    .fetch_all(db)
    .await
    .expect("events")
}

/// The steps of the job's events, oldest first (`-->queued`, `queued->running`, ...).
pub async fn steps(db: &PgPool, id: &str) -> Vec<String> {
    events(db, id).await.iter().map(EventRow::step).collect()
}

/// How many jobs of `job_type` are RUNNING now.
pub async fn running(db: &PgPool, job_type: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM job WHERE type = $1 AND status = 'running'")
        .bind(job_type)
        .fetch_one(db)
        .await
        .expect("count running")
}

/// The statuses of the jobs of `job_type`, with how many jobs are in each.
pub async fn statuses(db: &PgPool, job_type: &str) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT status, count(*) FROM job WHERE type = $1 GROUP BY status ORDER BY status",
    )
    .bind(job_type)
    .fetch_all(db)
    .await
    .expect("statuses")
}

pub async fn assert_invariants_hold(db: &PgPool) {
    let report = jobledger::tools::check::check(db)
        .await
        .expect("the checker runs");
    assert!(report.ok, "{}", report.to_text());
}

// ---------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------

/// Polls `check` every 20 ms until it gives a value; panics after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET /metrics` of the server at `addr`: the body.
fn scrape(addr: SocketAddr) -> String {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("metrics connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("a metrics response");
    raw.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// How many claims are waiting for work in `app` now, as its metrics say.
pub async fn waiting_claims(app: &TestApp) -> i64 {
    let addr = app.metrics_addr().expect("the test server serves metrics");
    let body = tokio::task::spawn_blocking(move || scrape(addr))
        .await
        .unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix("jobledger_waiting_claims "))
        .map(|v| v.trim().parse::<f64>().expect("a number") as i64)
        .unwrap_or_else(|| panic!("no jobledger_waiting_claims in:\n{body}"))
}

/// Waits until `app` has at least `n` claims waiting for work.
pub async fn until_waiting(app: &TestApp, n: i64) {
    eventually(
        Duration::from_secs(10),
        &format!("{n} waiting claims"),
        || async { (waiting_claims(app).await >= n).then_some(()) },
    )
    .await
}
