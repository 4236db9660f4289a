//! `GET /metrics`: what Prometheus scrapes, checked against calls, transitions, streams
//! and rows the test made itself.

use std::{
    collections::HashSet,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use http::uri::PathAndQuery;
use jobledger::{
    proto::{self, JobStatus},
    server::{config::MetricsAddr, Application, Config},
};
use sqlx::{Connection, Executor, PgConnection};
use tonic::{transport::Channel, Code};
use uuid::Uuid;

use crate::helpers::{base_url, spawn_app_with, ScratchDb, ServerProcess, TestApp, BIN};

const CREATE_JOB: &str = "jobledger.v1.JobLedger/CreateJob";
const GET_JOB: &str = "jobledger.v1.JobLedger/GetJob";
const STREAM_EVENTS: &str = "jobledger.v1.JobLedger/StreamEvents";

// ---------------------------------------------------------------------------------------
// A scrape, over plain HTTP/1.1.

struct HttpResponse {
    status: u16,
    content_type: String,
    body: String,
}

fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let raw = String::from_utf8(raw).expect("the response is UTF-8");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let content_type = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    Ok(HttpResponse {
        status,
        content_type,
        body: body.to_owned(),
    })
}

/// `GET /metrics`, which must answer 200 with the exposition.
async fn scrape(addr: SocketAddr) -> Exposition {
    let response = tokio::task::spawn_blocking(move || http(addr, "GET", "/metrics"))
        .await
        .unwrap()
        .expect("GET /metrics");
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(
        response
            .content_type
            .starts_with("application/openmetrics-text"),
        "{}",
        response.content_type
    );
    assert!(response.body.ends_with("# EOF\n"), "{}", response.body);
    Exposition(response.body)
}

/// A scraped exposition.
struct Exposition(String);

/// A sample's labels, in order.
type Labels = Vec<(String, String)>;

impl Exposition {
    /// The samples: (name, labels in order, value).
    fn samples(&self) -> Vec<(String, Labels, f64)> {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(parse_sample)
            .collect()
    }

    /// The value of the series `name` whose labels include `labels` (there must be at
    /// most one); None if there is none.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self
            .samples()
            .into_iter()
            .filter(|(n, ls, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| v)
            .collect();
        assert!(
            found.len() <= 1,
            "{name}{labels:?} matches {} series",
            found.len()
        );
        found.first().copied()
    }

    /// Like `get`, 0 when the series does not exist (yet).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// Every series of `name`.
    fn series(&self, name: &str) -> Vec<(Labels, f64)> {
        self.samples()
            .into_iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, ls, v)| (ls, v))
            .collect()
    }
}

/// `name{k="v",...} value` (label values with OpenMetrics escapes).
fn parse_sample(line: &str) -> (String, Labels, f64) {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => panic!("not a sample: {line}"),
    };
    let mut labels = Vec::new();
    let mut rest = rest;
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            inner = inner.trim_start_matches(',');
            let (key, after) = inner.split_once("=\"").expect("label=\"value\"");
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next().expect("closing quote") {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().expect("escape").1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.push((key.to_owned(), value));
            inner = &after[end + 1..];
        }
    }
    let value = rest
        .split_whitespace()
        .next()
        .expect("a value")
        .parse()
        .unwrap_or_else(|_| panic!("not a number in {line}"));
    (name.to_owned(), labels, value)
}

// ---------------------------------------------------------------------------------------
// Servers with metrics on a port the test knows.

/// A free port on loopback (the same small race ServerProcess accepts for its gRPC port).
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn spawn_metered(configure: impl FnOnce(&mut Config)) -> (TestApp, SocketAddr) {
    let addr = free_addr();
    let app = spawn_app_with(|args| {
        args.metrics.addr = MetricsAddr::At(addr);
        configure(args);
    })
    .await;
    (app, addr)
}

async fn create(app: &TestApp, job_type: &str, max_attempts: i32) -> proto::Job {
    app.client
        .clone()
        .create_job(proto::CreateJobRequest {
            r#type: job_type.to_owned(),
            max_attempts,
            ..Default::default()
        })
        .await
        .expect("create_job")
        .into_inner()
        .job
        .expect("job")
}

/// Polls the exposition until `done` holds (at most 10 s).
async fn scrape_until(
    addr: SocketAddr,
    what: &str,
    done: impl Fn(&Exposition) -> bool,
) -> Exposition {
    let started = Instant::now();
    loop {
        let exposition = scrape(addr).await;
        if done(&exposition) {
            return exposition;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: not reached; last scrape:\n{}",
            exposition.0
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn calls_are_counted_by_method_and_code_with_a_latency_histogram() {
    let (app, addr) = spawn_metered(|_| {}).await;
    let before = scrape(addr).await;

    for _ in 0..3 {
        create(&app, "metrics.calls", 0).await;
    }
    let refused = app
        .client
        .clone()
        .create_job(proto::CreateJobRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let missing = app.get(&Uuid::new_v4().to_string()).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    // A path no service has: one label for all of them, however many a client makes up.
    let channel = Channel::from_shared(app.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    for path in ["/jobledger.v1.JobLedger/Nope", "/made.up.Service/Call"] {
        grpc.ready().await.unwrap();
        let status = grpc
            .unary(
                tonic::Request::new(proto::GetJobRequest::default()),
                PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::<proto::GetJobRequest, proto::GetJobResponse>::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented, "{path}");
    }

    // Not a CreateJobRequest (a varint where `idempotency_key`, a string, is): tonic's
    // decoder fails with INTERNAL, which the client receives, and the metrics count, as
    // INVALID_ARGUMENT.
    grpc.ready().await.unwrap();
    let malformed = grpc
        .unary(
            tonic::Request::new(proto::StreamEventsRequest {
                history_only: true,
                ..Default::default()
            }),
            PathAndQuery::from_static("/jobledger.v1.JobLedger/CreateJob"),
            tonic_prost::ProstCodec::<proto::StreamEventsRequest, proto::CreateJobResponse>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument, "{malformed:?}");

    let after = scrape(addr).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    let requests = "jobledger_rpc_requests_total";
    assert_eq!(
        delta(requests, &[("method", CREATE_JOB), ("code", "OK")]),
        3.0
    );
    assert_eq!(
        delta(
            requests,
            &[("method", CREATE_JOB), ("code", "INVALID_ARGUMENT")]
        ),
        2.0
    );
    assert_eq!(
        delta(requests, &[("method", CREATE_JOB), ("code", "INTERNAL")]),
        0.0
    );
    assert_eq!(
        delta(requests, &[("method", GET_JOB), ("code", "NOT_FOUND")]),
        1.0
    );
    assert_eq!(delta(requests, &[("method", GET_JOB), ("code", "OK")]), 0.0);
    assert_eq!(
        delta(requests, &[("method", "other"), ("code", "UNIMPLEMENTED")]),
        2.0
    );
    assert!(
        after.series(requests).iter().all(|(labels, _)| labels
            .iter()
            .all(|(_, v)| !v.contains("Nope") && !v.contains("made.up"))),
        "made-up paths got labels of their own:\n{}",
        after.0
    );
    assert_eq!(
        delta("jobledger_rpc_started_total", &[("method", CREATE_JOB)]),
        5.0
    );

    // The histogram: every bucket, cumulative, +Inf equal to the count.
    let ok = [("method", CREATE_JOB), ("code", "OK")];
    assert_eq!(delta("jobledger_rpc_duration_seconds_count", &ok), 3.0);
    let buckets: Vec<(f64, f64)> = after
        .series("jobledger_rpc_duration_seconds_bucket")
        .into_iter()
        .filter(|(labels, _)| {
            ok.iter()
                .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(labels, count)| {
            let le = labels
                .iter()
                .find(|(k, _)| k == "le")
                .expect("le")
                .1
                .clone();
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            (le, count)
        })
        .collect();
    assert_eq!(buckets.len(), 15, "14 bounds and +Inf: {buckets:?}");
    assert!(buckets
        .windows(2)
        .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
    assert_eq!(
        buckets.last().unwrap(),
        &(
            f64::INFINITY,
            after.value("jobledger_rpc_duration_seconds_count", &ok)
        )
    );
    let sum = after.value("jobledger_rpc_duration_seconds_sum", &ok);
    assert!(sum > 0.0 && sum < 30.0, "{sum}");
    assert!(after
        .0
        .contains("# TYPE jobledger_rpc_duration_seconds histogram\n"));
    assert!(after.0.contains("# TYPE jobledger_rpc_requests counter\n"));
}

#[tokio::test]
async fn transitions_are_counted_by_from_to_and_type_with_types_capped() {
    let (app, addr) = spawn_metered(|args| args.metrics.max_job_types = 2).await;

    // One attempt: failing it dead-letters the job (two steps, both counted).
    let alpha = create(&app, "metrics.alpha", 1).await;
    app.transition(&alpha.id, JobStatus::Running).await.unwrap();
    let failed = app.transition(&alpha.id, JobStatus::Failed).await.unwrap();
    assert_eq!(failed.events.len(), 2);
    let beta = create(&app, "metrics.beta", 0).await;
    let cancel = proto::TransitionJobRequest {
        job_id: beta.id.clone(),
        to_status: JobStatus::Canceled as i32,
        request_id: "cancel-once".into(),
        ..Default::default()
    };
    app.transition_with(cancel.clone()).await.unwrap();
    // A retry with the same request_id writes nothing, so it counts nothing.
    app.transition_with(cancel).await.unwrap();
    // Refused: not a transition.
    let refused = app
        .transition(&beta.id, JobStatus::Running)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    // A third type: past the cap of 2.
    let gamma = create(&app, "metrics.gamma", 0).await;
    app.transition(&gamma.id, JobStatus::Running).await.unwrap();

    let m = scrape(addr).await;
    let t = |from: &str, to: &str, job_type: &str| {
        m.value(
            "jobledger_transitions_total",
            &[("from", from), ("to", to), ("type", job_type)],
        )
    };
    assert_eq!(t("queued", "running", "metrics.alpha"), 1.0);
    assert_eq!(t("running", "failed", "metrics.alpha"), 1.0);
    assert_eq!(t("failed", "dead_letter", "metrics.alpha"), 1.0);
    assert_eq!(t("queued", "canceled", "metrics.beta"), 1.0);
    assert_eq!(t("queued", "running", "(other)"), 1.0);
    let all = m.series("jobledger_transitions_total");
    assert_eq!(
        all.iter().map(|(_, v)| v).sum::<f64>(),
        5.0,
        "exactly the five steps written: {all:?}"
    );
    assert!(all
        .iter()
        .all(|(labels, _)| labels.iter().all(|(_, v)| v != "metrics.gamma")));
    // The events in the database are those five plus the three creations.
    assert_eq!(app.count("job_event").await, 8);
}

/// The job counts of the test database, by status.
async fn job_counts(app: &TestApp) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT status::text, count(*) FROM job GROUP BY status")
        .fetch_all(&app.db)
        .await
        .unwrap()
}

const STATUSES: [&str; 6] = [
    "queued",
    "running",
    "succeeded",
    "failed",
    "canceled",
    "dead_letter",
];

fn assert_jobs_match(m: &Exposition, counts: &[(String, i64)]) {
    for status in STATUSES {
        let expected = counts
            .iter()
            .find(|(s, _)| s == status)
            .map_or(0, |(_, n)| *n);
        assert_eq!(
            m.get("jobledger_jobs", &[("status", status)]),
            Some(expected as f64),
            "{status}"
        );
    }
}

#[tokio::test]
async fn the_jobs_gauge_is_the_exact_count_by_status_at_most_once_per_interval() {
    let interval = Duration::from_millis(2000);
    let (app, addr) = spawn_metered(|args| {
        args.metrics.job_count_interval = interval;
    })
    .await;
    let jobs: Vec<proto::Job> = {
        let mut jobs = Vec::new();
        for _ in 0..4 {
            jobs.push(create(&app, "metrics.count", 0).await);
        }
        jobs
    };
    app.transition(&jobs[0].id, JobStatus::Running)
        .await
        .unwrap();
    app.transition(&jobs[1].id, JobStatus::Canceled)
        .await
        .unwrap();
    app.transition(&jobs[2].id, JobStatus::Running)
        .await
        .unwrap();
    app.transition(&jobs[2].id, JobStatus::Succeeded)
        .await
        .unwrap();

    let first_at = Instant::now();
    let first = scrape(addr).await;
    let counts = job_counts(&app).await;
    assert_eq!(counts.iter().map(|(_, n)| n).sum::<i64>(), 4);
    assert_jobs_match(&first, &counts);
    let counted_at = first.value("jobledger_jobs_count_timestamp_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - counted_at).abs() < 30.0, "{counted_at} vs {now}");

    // Within the interval the count is not taken again.
    create(&app, "metrics.count", 0).await;
    let second = scrape(addr).await;
    if first_at.elapsed() < interval {
        assert_jobs_match(&second, &counts);
        assert_eq!(
            second.value("jobledger_jobs_count_timestamp_seconds", &[]),
            counted_at
        );
    }
    // After it, it is.
    tokio::time::sleep(interval.saturating_sub(first_at.elapsed()) + Duration::from_millis(100))
        .await;
    let third = scrape(addr).await;
    let counts = job_counts(&app).await;
    assert_eq!(counts.iter().map(|(_, n)| n).sum::<i64>(), 5);
    assert_jobs_match(&third, &counts);
    assert!(third.value("jobledger_jobs_count_timestamp_seconds", &[]) > counted_at);
}

#[tokio::test]
async fn a_job_count_stuck_behind_a_lock_does_not_hold_up_the_scrape() {
    let (app, addr) = spawn_metered(|args| {
        args.metrics.job_count_interval = std::time::Duration::from_millis(200)
    })
    .await;
    create(&app, "metrics.locked", 0).await;
    // Our own transaction holds the table: the count waits, until its timeout.
    let mut locker = PgConnection::connect(&app.database_url).await.unwrap();
    locker.execute("BEGIN").await.unwrap();
    locker
        .execute("LOCK TABLE job IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let started = Instant::now();
    let stuck = scrape(addr).await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(4000), "{took:?}");
    assert!(
        took >= Duration::from_millis(1500),
        "{took:?}: the count did not wait?"
    );
    // No count yet: no jobledger_jobs series, timestamp 0; everything else is there.
    assert!(stuck.series("jobledger_jobs").is_empty(), "{}", stuck.0);
    assert_eq!(
        stuck.get("jobledger_jobs_count_timestamp_seconds", &[]),
        Some(0.0)
    );
    assert!(stuck
        .get("jobledger_db_pool_max_connections", &[])
        .is_some());
    locker.execute("ROLLBACK").await.unwrap();
    locker.close().await.unwrap();

    tokio::time::sleep(Duration::from_millis(250)).await;
    let m = scrape(addr).await;
    assert_eq!(m.get("jobledger_jobs", &[("status", "queued")]), Some(1.0));
    assert!(m.value("jobledger_jobs_count_timestamp_seconds", &[]) > 0.0);
}

#[tokio::test]
async fn open_streams_go_up_and_down_and_end_with_their_code() {
    let (app, addr) = spawn_metered(|_| {}).await;
    let job = create(&app, "metrics.stream", 0).await;
    let before = scrape(addr).await;
    assert_eq!(before.get("jobledger_open_streams", &[]), Some(0.0));

    let org_stream = app
        .client
        .clone()
        .stream_events(proto::StreamEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let m = scrape(addr).await;
    assert_eq!(m.get("jobledger_open_streams", &[]), Some(1.0));
    let job_stream = app
        .client
        .clone()
        .stream_events(proto::StreamEventsRequest {
            job_id: job.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let open = scrape(addr).await;
    assert_eq!(open.get("jobledger_open_streams", &[]), Some(2.0));
    let stream_started = |m: &Exposition| {
        m.value("jobledger_rpc_started_total", &[("method", STREAM_EVENTS)])
            - before.value("jobledger_rpc_started_total", &[("method", STREAM_EVENTS)])
    };
    let stream_ended = |m: &Exposition, code: &str| {
        let labels = [("method", STREAM_EVENTS), ("code", code)];
        m.value("jobledger_rpc_requests_total", &labels)
            - before.value("jobledger_rpc_requests_total", &labels)
    };
    assert_eq!(stream_started(&open), 2.0);
    // Open streams have no code yet.
    assert!(open
        .series("jobledger_rpc_requests_total")
        .iter()
        .all(|(labels, _)| labels.iter().all(|(_, v)| v != STREAM_EVENTS)));

    // The client goes away: CANCELLED, and the streams are closed.
    drop(org_stream);
    drop(job_stream);
    let closed = scrape_until(addr, "streams closed", |m| {
        m.get("jobledger_open_streams", &[]) == Some(0.0) && stream_ended(m, "CANCELLED") == 2.0
    })
    .await;
    assert_eq!(stream_ended(&closed, "OK"), 0.0);

    // A stream that ends by itself: OK.
    let mut history = app
        .client
        .clone()
        .stream_events(proto::StreamEventsRequest {
            job_id: job.id.clone(),
            history_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = 0;
    while let Some(event) = history.message().await.unwrap() {
        assert_eq!(event.job_id, job.id);
        events += 1;
    }
    assert_eq!(events, 1);
    let ended = scrape_until(addr, "history stream counted", |m| {
        stream_ended(m, "OK") == 1.0
    })
    .await;
    assert_eq!(ended.get("jobledger_open_streams", &[]), Some(0.0));
    assert_eq!(stream_started(&ended), 3.0);
    assert_eq!(
        ended.value(
            "jobledger_rpc_duration_seconds_count",
            &[("method", STREAM_EVENTS), ("code", "CANCELLED")]
        ),
        2.0
    );
}

#[tokio::test]
async fn pool_connections_show_a_call_waiting_on_the_database() {
    let (app, addr) = spawn_metered(|args| args.pool_size = 4).await;
    let job = create(&app, "metrics.pool", 0).await;
    let rest = scrape_until(addr, "pool at rest", |m| {
        m.get("jobledger_db_pool_connections", &[("state", "in_use")]) == Some(0.0)
    })
    .await;
    assert_eq!(
        rest.get("jobledger_db_pool_max_connections", &[]),
        Some(4.0)
    );
    assert!(rest.value("jobledger_db_pool_connections", &[("state", "idle")]) <= 4.0);

    // Hold the job's row: a transition waits for it on a pool connection.
    let mut locker = PgConnection::connect(&app.database_url).await.unwrap();
    locker.execute("BEGIN").await.unwrap();
    sqlx::query("SELECT 1 FROM job WHERE id = $1::uuid FOR UPDATE")
        .bind(&job.id)
        .execute(&mut locker)
        .await
        .unwrap();
    let waiting = {
        let client = app.client.clone();
        let id = job.id.clone();
        tokio::spawn(async move {
            let mut client = client;
            client
                .transition_job(proto::TransitionJobRequest {
                    job_id: id,
                    to_status: JobStatus::Running as i32,
                    ..Default::default()
                })
                .await
        })
    };
    let busy = scrape_until(addr, "a connection in use", |m| {
        m.value("jobledger_db_pool_connections", &[("state", "in_use")]) >= 1.0
    })
    .await;
    let in_use = busy.value("jobledger_db_pool_connections", &[("state", "in_use")]);
    let idle = busy.value("jobledger_db_pool_connections", &[("state", "idle")]);
    assert!(in_use + idle <= 4.0, "{in_use} + {idle}");
    assert!(!waiting.is_finished());

    locker.execute("ROLLBACK").await.unwrap();
    locker.close().await.unwrap();
    waiting.await.unwrap().expect("the transition went through");
    scrape_until(addr, "the connection back in the pool", |m| {
        m.get("jobledger_db_pool_connections", &[("state", "in_use")]) == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn the_probe_is_up_with_its_latency_and_down_when_the_database_refuses() {
    let (app, addr) = spawn_metered(|_| {}).await;
    let up = scrape_until(addr, "probe up", |m| {
        m.get("jobledger_db_probe_up", &[]) == Some(1.0)
    })
    .await;
    let took = up.value("jobledger_db_probe_duration_seconds", &[]);
    assert!(took > 0.0 && took < 0.5, "{took}");

    // The database refuses new connections and the probe's is cut: down.
    let mut admin = PgConnection::connect(&format!("{}/postgres", base_url()))
        .await
        .unwrap();
    let name = &app.db_name;
    admin
        .execute(format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false").as_str())
        .await
        .unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = $1 AND application_name = 'jobledger-health'",
    )
    .bind(name)
    .execute(&mut admin)
    .await
    .unwrap();
    let down = scrape_until(addr, "probe down", |m| {
        m.get("jobledger_db_probe_up", &[]) == Some(0.0)
    })
    .await;
    assert!(down.value("jobledger_db_probe_duration_seconds", &[]) <= 0.6);
    admin
        .execute(format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true").as_str())
        .await
        .unwrap();
    admin.close().await.unwrap();
    scrape_until(addr, "probe up again", |m| {
        m.get("jobledger_db_probe_up", &[]) == Some(1.0)
    })
    .await;
}

#[tokio::test]
async fn only_get_metrics_is_served() {
    let (_app, addr) = spawn_metered(|_| {}).await;
    let cases = [
        ("GET", "/", 404),
        ("GET", "/metricsx", 404),
        ("GET", "/metrics/extra", 404),
        ("GET", "/healthz", 404),
        ("POST", "/metrics", 405),
        ("GET", "/metrics?format=text", 200),
    ];
    for (method, path, expected) in cases {
        let response = tokio::task::spawn_blocking(move || http(addr, method, path))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status, expected, "{method} {path}");
    }
}

#[tokio::test]
async fn the_application_reports_its_metrics_address_and_closes_it_on_shutdown() {
    let db = ScratchDb::new();
    let mut args = Config::for_database(&db.url()).unwrap();
    args.listen_addr = "127.0.0.1:0".parse().unwrap();
    args.pool_size = 3;
    // for_database: loopback, a free port.
    assert_eq!(
        args.metrics.addr,
        MetricsAddr::At("127.0.0.1:0".parse().unwrap())
    );
    let app = Application::build(args).await.unwrap();
    let addr = app.metrics_addr().expect("metrics on");
    assert!(addr.ip().is_loopback());
    assert_ne!(addr.port(), 0);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        rx.await.ok();
    }));
    let m = scrape(addr).await;
    assert_eq!(m.get("jobledger_db_pool_max_connections", &[]), Some(3.0));
    tx.send(()).unwrap();
    server.await.unwrap().unwrap();
    let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
    assert!(refused.is_err(), "the metrics port is still open");
}

#[tokio::test]
async fn an_explicit_metrics_address_in_use_stops_start_up() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // Refused before the database is reached.
    let mut args = Config::for_database("postgres://postgres@127.0.0.1:1/none").unwrap();
    args.listen_addr = "127.0.0.1:0".parse().unwrap();
    args.startup_timeout = std::time::Duration::from_millis(100);
    args.metrics.addr = MetricsAddr::At(taken.local_addr().unwrap());
    let err = match Application::build(args).await {
        Ok(_) => panic!("started on a taken metrics port"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("--metrics-addr"), "{err}");
    assert!(
        err.contains(&taken.local_addr().unwrap().to_string()),
        "{err}"
    );
}

/// The TCP ports process `pid` listens on (Linux: /proc).
fn listening_ports(pid: u32) -> HashSet<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let mut ports = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, state 0A = LISTEN, inode.
            if fields.len() > 9 && fields[3] == "0A" && inodes.contains(fields[9]) {
                let port = fields[1].rsplit(':').next().unwrap();
                ports.insert(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

fn port_of(server: &ServerProcess) -> u16 {
    server.addr.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn metrics_off_binds_no_port() {
    let db = ScratchDb::new();
    // Control: on, it is a second listening port that serves /metrics.
    let metrics = free_addr();
    let on = ServerProcess::start(BIN, &db.url(), &["--metrics-addr", &metrics.to_string()]).await;
    assert_eq!(
        listening_ports(on.child.id()),
        HashSet::from([port_of(&on), metrics.port()])
    );
    scrape(metrics).await;
    drop(on);

    let off = ServerProcess::start(BIN, &db.url(), &["--metrics-addr", "off"]).await;
    assert_eq!(
        listening_ports(off.child.id()),
        HashSet::from([port_of(&off)])
    );
    drop(off);

    // The variable, and its empty value, do the same.
    for value in ["off", ""] {
        let server = ServerProcess::command(BIN, &db.url())
            .env("JOBLEDGER_METRICS_ADDR", value)
            .start()
            .await
            .expect("jobledger serve");
        assert_eq!(
            listening_ports(server.child.id()),
            HashSet::from([server.port]),
            "JOBLEDGER_METRICS_ADDR={value:?}"
        );
    }
}
