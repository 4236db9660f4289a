//! The load side of `scripts/soak.sh`: `--concurrency` workers each walk jobs through a
//! worker's life (create, get, claim, progress, sometimes fail and retry, succeed, get)
//! for `--seconds`, through whatever faults the script injects, and count every call's
//! outcome by gRPC code and ErrorInfo reason.
//!
//! It retries like a careful client: a create with the same idempotency key, a
//! transition with the same request_id, after UNAVAILABLE / a deadline / a transport
//! error (at most `--retries` times, with a short backoff). Those retries are safe by the
//! contract, so anything else (ABORTED, FAILED_PRECONDITION, ALREADY_EXISTS, INTERNAL, a
//! job not SUCCEEDED after its success was acknowledged, a create that made a second
//! job) is an anomaly and is reported.
//!
//! `jobledger bench` does the same mixed walk but counts errors without their codes and
//! does not retry, so it cannot tell a fault's expected UNAVAILABLE from a bug.
//!
//! Output: progress lines on stderr every `--report-every` seconds, one JSON summary on
//! stdout at the end. Exit code 0, or 1 when there were anomalies.

use std::{
    collections::BTreeMap,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use clap::Parser;
use jobledger::proto::{self, job_ledger_client::JobLedgerClient, json::json_to_struct, JobStatus as S};
use serde_json::json;
use tonic::{transport::Channel, Code, Status};
use tonic_types::StatusExt;

#[derive(Parser, Debug)]
#[command(about = "Mixed gRPC load for scripts/soak.sh, counting outcomes by code")]
struct Args {
    /// The server, e.g. http://127.0.0.1:50051.
    #[arg(long)]
    addr: String,
    /// How long to load.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Concurrent workers.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// HTTP/2 connections the workers are spread over.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Seconds between progress lines on stderr.
    #[arg(long, default_value_t = 10)]
    report_every: u64,
    /// Deadline of each call (sent as grpc-timeout, and enforced here).
    #[arg(long, default_value_t = 5000)]
    deadline_ms: u64,
    /// Retries of one call after UNAVAILABLE, a deadline or a transport error.
    #[arg(long, default_value_t = 5)]
    retries: u32,
}

/// Every call's outcome, by method and by `Code/REASON`.
#[derive(Default)]
struct Counts {
    calls: u64,
    ok: u64,
    by_outcome: BTreeMap<String, u64>,
    by_method: BTreeMap<&'static str, BTreeMap<String, u64>>,
    retries: u64,
    lives_started: u64,
    lives_succeeded: u64,
    lives_failed_once: u64,
    lives_abandoned: u64,
    anomalies: u64,
    anomaly_examples: Vec<String>,
}

impl Counts {
    fn anomaly(&mut self, what: String) {
        self.anomalies += 1;
        if self.anomaly_examples.len() < 20 {
            eprintln!("anomaly: {what}");
            self.anomaly_examples.push(what);
        }
    }
}

/// `OK`, or the code and ErrorInfo reason of an error; errors without an ErrorInfo did not
/// come from the ledger (the connection failed, the client's deadline passed).
fn outcome(result: &Result<(), Status>) -> String {
    match result {
        Ok(()) => "OK".into(),
        Err(status) => {
            let reason = status
                .get_details_error_info()
                .map(|i| i.reason)
                .unwrap_or_else(|| "no ErrorInfo (transport / client)".into());
            format!("{:?}/{reason}", status.code())
        }
    }
}

/// Worth retrying: the server or the path to it was down, or the call ran out of time.
/// An error without an ErrorInfo never reached the ledger (a refused or broken
/// connection: tonic reports those as UNAVAILABLE, UNKNOWN, INTERNAL or CANCELLED).
fn retryable(status: &Status) -> bool {
    status.get_details_error_info().is_none()
        || matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded)
}

struct Worker {
    id: usize,
    client: JobLedgerClient<Channel>,
    counts: Arc<Mutex<Counts>>,
    deadline: Duration,
    retries: u32,
    run: String,
}

impl Worker {
    fn record(&self, method: &'static str, result: &Result<(), Status>) {
        let key = outcome(result);
        let mut c = self.counts.lock().unwrap();
        c.calls += 1;
        if result.is_ok() {
            c.ok += 1;
        }
        *c.by_outcome.entry(key.clone()).or_default() += 1;
        *c.by_method
            .entry(method)
            .or_default()
            .entry(key)
            .or_default() += 1;
    }

    fn anomaly(&self, what: String) {
        self.counts.lock().unwrap().anomaly(what);
    }

    /// One call with this worker's deadline, retried while retryable; its last result.
    async fn call<T, F, Fut>(&self, method: &'static str, mut f: F) -> Result<T, Status>
    where
        F: FnMut(JobLedgerClient<Channel>, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut tries = 0;
        loop {
            let result = match tokio::time::timeout(
                self.deadline + Duration::from_millis(500),
                f(self.client.clone(), self.deadline),
            )
            .await
            {
                Ok(r) => r.map(|r| r.into_inner()),
                Err(_) => Err(Status::deadline_exceeded("client-side timeout")),
            };
            self.record(method, &result.as_ref().map(|_| ()).map_err(Clone::clone));
            match result {
                Err(status) if retryable(&status) && tries < self.retries => {
                    tries += 1;
                    self.counts.lock().unwrap().retries += 1;
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(tries))).await;
                }
                Err(status) => {
                    if !retryable(&status) {
                        self.anomaly(format!(
                            "{method} of worker {}: {:?} {}",
                            self.id,
                            status.code(),
                            status.message()
                        ));
                    }
                    return Err(status);
                }
                Ok(v) => return Ok(v),
            }
        }
    }

    fn transition(job_id: &str, to: S, request_id: String) -> proto::TransitionJobRequest {
        proto::TransitionJobRequest {
            job_id: job_id.to_owned(),
            to_status: to as i32,
            request_id,
            ..Default::default()
        }
    }

    async fn transition_job(&self, req: proto::TransitionJobRequest) -> Result<proto::Job, Status> {
        let r = self
            .call("TransitionJob", |mut c, d| {
                let mut request = tonic::Request::new(req.clone());
                request.set_timeout(d);
                async move { c.transition_job(request).await }
            })
            .await?;
        Ok(r.job.unwrap_or_default())
    }

    async fn get_job(&self, id: &str) -> Result<proto::Job, Status> {
        let r = self
            .call("GetJob", |mut c, d| {
                let mut request = tonic::Request::new(proto::GetJobRequest {
                    job_id: id.to_owned(),
                    ..Default::default()
                });
                request.set_timeout(d);
                async move { c.get_job(request).await }
            })
            .await?;
        Ok(r.job.unwrap_or_default())
    }

    /// One job's life; `Err` when a call failed for good (the job is left as it is).
    async fn life(&self, n: u64) -> Result<(), Status> {
        let key = format!("soak-{}-{}-{n}", self.run, self.id);
        let create = proto::CreateJobRequest {
            r#type: "soak".into(),
            idempotency_key: key.clone(),
            requested_by: format!("soak-worker-{}", self.id),
            max_attempts: 3,
            params: Some(json_to_struct(&json!({"worker": self.id, "n": n}))),
            ..Default::default()
        };
        let created = self
            .call("CreateJob", |mut c, d| {
                let mut request = tonic::Request::new(create.clone());
                request.set_timeout(d);
                async move { c.create_job(request).await }
            })
            .await?;
        self.counts.lock().unwrap().lives_started += 1;
        let job = created.job.unwrap_or_default();
        let id = job.id.clone();
        if job.idempotency_key != key || job.status != S::Queued as i32 {
            self.anomaly(format!("create {key} returned {job:?}"));
        }
        self.get_job(&id).await?;

        // Claim (compare-and-set on QUEUED), report progress, maybe fail once and retry.
        let claim = proto::TransitionJobRequest {
            expected_status: Some(S::Queued as i32),
            actor: format!("soak-worker-{}", self.id),
            ..Self::transition(&id, S::Running, format!("{key}-claim"))
        };
        let mut attempt = self.transition_job(claim).await?.attempt;
        self.transition_job(proto::TransitionJobRequest {
            attempt: Some(attempt),
            stage: "work".into(),
            progress: Some(50),
            ..Self::transition(&id, S::Running, format!("{key}-progress"))
        })
        .await?;
        if n.is_multiple_of(10) {
            self.transition_job(proto::TransitionJobRequest {
                attempt: Some(attempt),
                error_code: "E_SOAK".into(),
                error_message: "a planned failure".into(),
                ..Self::transition(&id, S::Failed, format!("{key}-fail"))
            })
            .await?;
            attempt = self
                .transition_job(proto::TransitionJobRequest {
                    expected_status: Some(S::Failed as i32),
                    ..Self::transition(&id, S::Running, format!("{key}-retry"))
                })
                .await?
                .attempt;
            self.counts.lock().unwrap().lives_failed_once += 1;
        }
        let done = self
            .transition_job(proto::TransitionJobRequest {
                attempt: Some(attempt),
                result: Some(json_to_struct(&json!({"rows": n}))),
                ..Self::transition(&id, S::Succeeded, format!("{key}-succeed"))
            })
            .await?;
        if done.status != S::Succeeded as i32 {
            self.anomaly(format!("succeed of {id} answered {done:?}"));
        }
        let read = self.get_job(&id).await?;
        let expected_attempt = if n.is_multiple_of(10) { 2 } else { 1 };
        if read.status != S::Succeeded as i32 || read.attempt != expected_attempt {
            self.anomaly(format!(
                "{id} read back as status {} attempt {} after an acknowledged success on attempt {expected_attempt}",
                read.status, read.attempt
            ));
        }
        self.counts.lock().unwrap().lives_succeeded += 1;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        match Channel::from_shared(args.addr.clone()) {
            Ok(endpoint) => channels.push(
                endpoint
                    .connect_timeout(Duration::from_secs(2))
                    .tcp_nodelay(true)
                    .connect_lazy(),
            ),
            Err(e) => {
                eprintln!("error: --addr {:?} is not a URI: {e}", args.addr);
                return ExitCode::from(2);
            }
        }
    }
    let counts = Arc::new(Mutex::new(Counts::default()));
    let started = Instant::now();
    let end = started + Duration::from_secs(args.seconds);
    let run = format!("{:x}", std::process::id());
    let mut tasks = Vec::new();
    for w in 0..args.concurrency {
        let worker = Worker {
            id: w,
            client: JobLedgerClient::new(channels[w % channels.len()].clone()),
            counts: counts.clone(),
            deadline: Duration::from_millis(args.deadline_ms),
            retries: args.retries,
            run: run.clone(),
        };
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < end {
                n += 1;
                if worker.life(n).await.is_err() {
                    worker.counts.lock().unwrap().lives_abandoned += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }));
    }
    let reporter = {
        let counts = counts.clone();
        let every = Duration::from_secs(args.report_every.max(1));
        tokio::spawn(async move {
            let mut last = (0u64, 0u64);
            loop {
                tokio::time::sleep(every).await;
                let c = counts.lock().unwrap();
                let errors: Vec<String> = c
                    .by_outcome
                    .iter()
                    .filter(|(k, _)| *k != "OK")
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                eprintln!(
                    "t={:>4}s calls={} ok={} (+{} ok, +{} failed in the last {}s) errors: {}",
                    started.elapsed().as_secs(),
                    c.calls,
                    c.ok,
                    c.ok - last.0,
                    (c.calls - c.ok) - last.1,
                    every.as_secs(),
                    if errors.is_empty() {
                        "none".into()
                    } else {
                        errors.join(" ")
                    }
                );
                last = (c.ok, c.calls - c.ok);
            }
        })
    };
    for t in tasks {
        let _ = t.await;
    }
    reporter.abort();
    let seconds = started.elapsed().as_secs_f64();
    let c = counts.lock().unwrap();
    let summary = json!({
        "seconds": seconds,
        "concurrency": args.concurrency,
        "calls": c.calls,
        "ok": c.ok,
        "errors": c.calls - c.ok,
        "ok_per_second": c.ok as f64 / seconds,
        "by_outcome": c.by_outcome,
        "by_method": c.by_method,
        "retries": c.retries,
        "jobs": {
            "started": c.lives_started,
            "succeeded": c.lives_succeeded,
            "failed_once_then_succeeded_or_not": c.lives_failed_once,
            "abandoned_after_retries": c.lives_abandoned,
        },
        "anomalies": c.anomalies,
        "anomaly_examples": c.anomaly_examples,
    });
    println!("{}", serde_json::to_string_pretty(&summary).unwrap());
    if c.anomalies == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
