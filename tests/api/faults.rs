//! Fault tests (issue 6, item 2): PostgreSQL stopped (`fast`, `immediate`), the server
//! SIGKILLed, pool connections terminated, a held row lock against a short client
//! deadline, a statement timeout. Each runs on a private cluster of its own under
//! bounded concurrent load from client tasks that record every ACKNOWLEDGED write; after
//! the fault every acknowledged job row and event id must be in the database and the
//! invariant checker must report that everything holds.
//!
//! Codes: a server that stays up must answer a call it could not serve with UNAVAILABLE
//! (never INTERNAL/UNKNOWN) well inside the client's 5 s deadline; no DEADLINE_EXCEEDED
//! is accepted there. When the server process itself is killed the client sees transport
//! errors (whatever h2/tonic make of a reset connection): those calls are in doubt and
//! are retried with the same idempotency key / request_id.
//!
//! A 100 ms client deadline surfaces as CANCELLED on the client (tonic's own timeout),
//! which the row-lock test accepts alongside DEADLINE_EXCEEDED.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use jobledger::proto::{self, job_ledger_client::JobLedgerClient, JobStatus as S};
use serde_json::json;
use sqlx::{postgres::PgPoolOptions, PgPool};
use tokio::sync::watch;
use tonic::{transport::Channel, Code, Request, Status};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use crate::helpers::{object, reason, spawn_app_on, ServerProcess, TestApp, BIN};
use jobledger::testkit::cluster::PrivateCluster;

/// Every load call's client deadline.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long PostgreSQL stays down in the outage tests.
const OUTAGE: Duration = Duration::from_secs(10);
/// Load tasks per test.
const WORKERS: usize = 6;
/// The pool size of the servers under test (the helper's).
const POOL_SIZE: i64 = 10;

type Client = JobLedgerClient<Channel>;

fn with_timeout<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

async fn connect(addr: &str) -> Client {
    let channel = Channel::from_shared(addr.to_owned())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    JobLedgerClient::new(channel)
}

/// An acknowledged TransitionJob: the request as sent and the event ids it returned.
#[derive(Debug, Clone)]
struct AckedTransition {
    request: proto::TransitionJobRequest,
    event_ids: Vec<String>,
}

/// What one load task saw.
#[derive(Debug, Default)]
struct Record {
    /// Acknowledged creates: (idempotency key, job id, the request).
    creates: Vec<(String, String, proto::CreateJobRequest)>,
    transitions: Vec<AckedTransition>,
    /// Failed calls by code.
    errors: BTreeMap<String, usize>,
    /// Failures with a code the test does not allow.
    unexpected: Vec<String>,
    /// The slowest failed call.
    slowest_error: Duration,
    /// When the last acknowledgement arrived.
    last_ack: Option<Instant>,
}

impl Record {
    fn failed(&mut self, status: &Status, took: Duration, allowed: &[Code]) {
        *self
            .errors
            .entry(format!("{:?}", status.code()))
            .or_default() += 1;
        self.slowest_error = self.slowest_error.max(took);
        if !allowed.contains(&status.code()) {
            self.unexpected.push(format!("{status:?}"));
        } else if status.code() == Code::Unavailable && allowed.len() == 1 {
            // The server answered (it stayed up): the documented reason.
            let why = status
                .metadata()
                .get("grpc-status-details-bin")
                .map(|_| reason(status));
            if let Some(why) = why {
                if why != "DATABASE_UNAVAILABLE" && why != "SHUTTING_DOWN" {
                    self.unexpected.push(format!("reason {why}: {status:?}"));
                }
            }
        }
    }
}

/// How a load task treats a failed call.
#[derive(Clone, Copy)]
enum Mode {
    /// Server stays up: only these codes are allowed; a failed job is abandoned.
    Strict(&'static [Code]),
    /// Server may die: every failure is in doubt and retried with the same key /
    /// request_id (reconnecting to the current address) until it succeeds.
    Retry,
}

const ONLY_UNAVAILABLE: &[Code] = &[Code::Unavailable];

/// One call with the load's deadline; in `Retry` mode repeated until it succeeds (bounded).
async fn call<T, F, Fut>(
    clients: &watch::Receiver<Client>,
    record: &mut Record,
    mode: Mode,
    mut send: F,
) -> Option<T>
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let started = Instant::now();
    loop {
        let client = clients.borrow().clone();
        let sent = Instant::now();
        match send(client).await {
            Ok(v) => {
                record.last_ack = Some(Instant::now());
                return Some(v);
            }
            Err(status) => match mode {
                Mode::Strict(allowed) => {
                    record.failed(&status, sent.elapsed(), allowed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return None;
                }
                Mode::Retry => {
                    record.failed(&status, sent.elapsed(), &[]);
                    record.unexpected.pop(); // nothing is unexpected while in doubt
                    assert!(
                        started.elapsed() < Duration::from_secs(30),
                        "an in-doubt call did not succeed within 30 s: {status:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// A load task: create a job (idempotency key `w<id>-<n>`), claim it (QUEUED →
/// RUNNING), succeed it, repeat until `stop`. Every acknowledgement is recorded.
async fn worker(
    id: usize,
    clients: watch::Receiver<Client>,
    stop: Arc<AtomicBool>,
    mode: Mode,
) -> Record {
    let mut record = Record::default();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("w{id}-{n}");
        let create = proto::CreateJobRequest {
            r#type: "fault-load".into(),
            idempotency_key: key.clone(),
            params: Some(object(json!({"worker": id, "n": n}))),
            ..Default::default()
        };
        let Some(created) = call(&clients, &mut record, mode, |mut c| {
            let create = create.clone();
            async move {
                c.create_job(with_timeout(create, CALL_TIMEOUT))
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
        else {
            continue;
        };
        let job_id = created.job.expect("job").id;
        record.creates.push((key.clone(), job_id.clone(), create));

        let steps = [
            proto::TransitionJobRequest {
                job_id: job_id.clone(),
                to_status: S::Running as i32,
                expected_status: Some(S::Queued as i32),
                actor: format!("worker-{id}"),
                request_id: format!("{key}-claim"),
                ..Default::default()
            },
            proto::TransitionJobRequest {
                job_id: job_id.clone(),
                to_status: S::Succeeded as i32,
                attempt: Some(1),
                result: Some(object(json!({"n": n}))),
                request_id: format!("{key}-done"),
                ..Default::default()
            },
        ];
        for step in steps {
            let Some(response) = call(&clients, &mut record, mode, |mut c| {
                let step = step.clone();
                async move {
                    c.transition_job(with_timeout(step, CALL_TIMEOUT))
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await
            else {
                break;
            };
            record.transitions.push(AckedTransition {
                request: step,
                event_ids: response.events.iter().map(|e| e.id.clone()).collect(),
            });
        }
    }
    record
}

struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Record>>,
}

impl Load {
    fn start(clients: &watch::Receiver<Client>, mode: Mode) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..WORKERS)
            .map(|id| tokio::spawn(worker(id, clients.clone(), stop.clone(), mode)))
            .collect();
        Load { stop, tasks }
    }

    /// Stops the tasks (each finishes the call it is in) and merges their records.
    async fn finish(self) -> Record {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Record::default();
        for task in self.tasks {
            let r = tokio::time::timeout(Duration::from_secs(40), task)
                .await
                .expect("a load task finishes")
                .expect("a load task does not panic");
            all.creates.extend(r.creates);
            all.transitions.extend(r.transitions);
            for (code, count) in r.errors {
                *all.errors.entry(code).or_default() += count;
            }
            all.unexpected.extend(r.unexpected);
            all.slowest_error = all.slowest_error.max(r.slowest_error);
            all.last_ack = all.last_ack.max(r.last_ack);
        }
        all
    }
}

/// Every acknowledged create is a job row (same key) and every acknowledged
/// transition's events are rows of that job. Returns (creates, transitions, events).
async fn assert_acknowledged_present(db: &PgPool, record: &Record) -> (usize, usize, usize) {
    let jobs: HashMap<String, Option<String>> =
        sqlx::query_as::<_, (String, Option<String>)>("SELECT id::text, idempotency_key FROM job")
            .fetch_all(db)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let events: HashMap<String, String> =
        sqlx::query_as::<_, (String, String)>("SELECT id::text, job_id::text FROM job_event")
            .fetch_all(db)
            .await
            .unwrap()
            .into_iter()
            .collect();
    for (key, job_id, _) in &record.creates {
        assert_eq!(
            jobs.get(job_id),
            Some(&Some(key.clone())),
            "acknowledged job {job_id} ({key}) is missing"
        );
    }
    let mut event_count = 0;
    for t in &record.transitions {
        assert!(!t.event_ids.is_empty(), "{t:?}");
        for id in &t.event_ids {
            assert_eq!(
                events.get(id),
                Some(&t.request.job_id),
                "acknowledged event {id} of {t:?} is missing"
            );
            event_count += 1;
        }
    }
    (record.creates.len(), record.transitions.len(), event_count)
}

async fn assert_invariants_hold(db: &PgPool) -> jobledger::tools::check::CheckReport {
    let report = jobledger::tools::check::check(db)
        .await
        .expect("the checker runs");
    assert!(report.ok, "invariants violated:\n{}", report.to_text());
    assert_eq!(report.invariants.len(), 9);
    report
}

async fn health_of(health: &HealthClient<Channel>, service: &str) -> Option<ServingStatus> {
    let mut request = Request::new(HealthCheckRequest {
        service: service.to_owned(),
    });
    request.set_timeout(Duration::from_secs(1));
    health
        .clone()
        .check(request)
        .await
        .ok()
        .map(|r| r.into_inner().status())
}

/// Polls `service` until it reports `want` (asserting `limit`); how long that took.
async fn wait_for_health(
    health: &HealthClient<Channel>,
    service: &str,
    want: ServingStatus,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        if health_of(health, service).await == Some(want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{service:?} did not become {want:?} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` every 50 ms until it is true; panics after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what} not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn backends(db: &PgPool, application: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
         AND datname = current_database()",
    )
    .bind(application)
    .fetch_one(db)
    .await
    .unwrap()
}

/// A server on a private cluster's `jobledger` database with the production timing of
/// the health probe (1 s interval, 500 ms timeout) and a 1 s acquire timeout.
async fn app_on(cluster: &PrivateCluster, statement_timeout_ms: Option<u64>) -> TestApp {
    let app = spawn_app_on(&cluster.base_url(), "jobledger", |args| {
        args.probe_interval = std::time::Duration::from_millis(1000);
        args.probe_timeout = std::time::Duration::from_millis(500);
        args.db_acquire_timeout = std::time::Duration::from_millis(1000);
        args.pool_size = POOL_SIZE as u32;
        if let Some(ms) = statement_timeout_ms {
            args.statement_timeout = std::time::Duration::from_millis(ms);
        }
    })
    .await;
    wait_for_health(
        &app.health,
        "",
        ServingStatus::Serving,
        Duration::from_secs(5),
    )
    .await;
    app
}

/// Clients of `app`, one connection per load task is not needed: tonic multiplexes.
async fn clients_of(app: &TestApp) -> watch::Receiver<Client> {
    let (_tx, rx) = watch::channel(app.new_client().await);
    rx
}

// ---------------------------------------------------------------------------------
// 1 + 2: PostgreSQL stopped under load for 10 s (as the issue asks) and restarted.
// ---------------------------------------------------------------------------------

async fn database_outage_under_load(mode: &'static str) {
    let cluster = PrivateCluster::start();
    let app = app_on(&cluster, None).await;
    let clients = clients_of(&app).await;

    // Liveness must answer SERVING throughout, whatever the database does.
    let watching = Arc::new(AtomicBool::new(true));
    let liveness = {
        let health = app.health.clone();
        let watching = watching.clone();
        tokio::spawn(async move {
            let (mut polls, mut bad) = (0, Vec::new());
            while watching.load(Ordering::Relaxed) {
                let status = health_of(&health, "liveness").await;
                polls += 1;
                if status != Some(ServingStatus::Serving) {
                    bad.push(status);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (polls, bad)
        })
    };

    let load = Load::start(&clients, Mode::Strict(ONLY_UNAVAILABLE));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    tokio::task::block_in_place(|| cluster.stop(mode));
    let stopped = Instant::now();
    let down_after = wait_for_health(
        &app.health,
        "",
        ServingStatus::NotServing,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        health_of(&app.health, "jobledger.v1.JobLedger").await,
        Some(ServingStatus::NotServing)
    );
    // A call during the outage: UNAVAILABLE / DATABASE_UNAVAILABLE within its deadline.
    let sent = Instant::now();
    let refused = app
        .client
        .clone()
        .create_job(with_timeout(
            proto::CreateJobRequest {
                r#type: "during-outage".into(),
                ..Default::default()
            },
            CALL_TIMEOUT,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(reason(&refused), "DATABASE_UNAVAILABLE");
    eprintln!(
        "outage ({mode}): a create was refused in {:?}",
        sent.elapsed()
    );

    tokio::time::sleep(OUTAGE.saturating_sub(stopped.elapsed())).await;
    tokio::task::block_in_place(|| cluster.start_again());
    let restarted = Instant::now();
    let up_after = wait_for_health(
        &app.health,
        "",
        ServingStatus::Serving,
        Duration::from_secs(2),
    )
    .await;

    // Recovery without a server restart: the load's calls succeed again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let record = load.finish().await;
    watching.store(false, Ordering::Relaxed);
    let (polls, bad_liveness) = liveness.await.unwrap();
    assert!(
        bad_liveness.is_empty(),
        "liveness was not SERVING: {bad_liveness:?}"
    );
    app.create("after-outage").await;

    assert!(
        record.unexpected.is_empty(),
        "codes other than UNAVAILABLE/DATABASE_UNAVAILABLE: {:?}",
        record.unexpected
    );
    assert!(
        record.errors.get("Unavailable").copied().unwrap_or(0) > 0,
        "no load call hit the outage"
    );
    assert!(
        record.slowest_error < CALL_TIMEOUT,
        "a failed call took {:?}",
        record.slowest_error
    );
    assert!(
        record.last_ack.expect("acknowledgements") > restarted,
        "no call succeeded after the restart"
    );
    let (creates, transitions, events) = assert_acknowledged_present(&app.db, &record).await;
    let report = assert_invariants_hold(&app.db).await;
    eprintln!(
        "outage ({mode}): health NOT_SERVING {down_after:?} after the stop, SERVING \
         {up_after:?} after the restart; liveness SERVING in {polls} polls; \
         {creates} acknowledged creates, {transitions} transitions ({events} events), all \
         found; failed calls {:?}, slowest {:?}; checker: {} jobs, {} events, all hold",
        record.errors, record.slowest_error, report.jobs, report.events
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_stopped_fast_under_load_loses_nothing_acknowledged() {
    database_outage_under_load("fast").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_stopped_immediately_under_load_loses_nothing_acknowledged() {
    database_outage_under_load("immediate").await;
}

// ---------------------------------------------------------------------------------
// 3: the server SIGKILLed mid-load and restarted on the same database.
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_killed_mid_load_loses_nothing_and_retries_create_no_duplicates() {
    let cluster = PrivateCluster::start();
    let url = format!("{}/jobledger", cluster.base_url());
    let mut server = ServerProcess::start(BIN, &url, &[]).await;
    let db = PgPoolOptions::new()
        .max_connections(3)
        .connect(&url)
        .await
        .unwrap();
    let (clients_tx, clients) = watch::channel(connect(&server.addr).await);

    let load = Load::start(&clients, Mode::Retry);
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.child.kill().unwrap();
    let killed = Instant::now();
    server.child.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let server = ServerProcess::start(BIN, &url, &[]).await;
    clients_tx.send(connect(&server.addr).await).unwrap();
    let back_after = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let record = load.finish().await;

    let (creates, transitions, events) = assert_acknowledged_present(&db, &record).await;
    // Every task finishes each job it starts (retrying in-doubt calls), so each key is
    // one job with exactly its three events: create, claim, success.
    let per_key: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT j.idempotency_key, count(DISTINCT j.id), count(e.id) \
         FROM job j LEFT JOIN job_event e ON e.job_id = j.id GROUP BY j.idempotency_key",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(
        per_key.len(),
        creates,
        "one job per acknowledged key, no others"
    );
    for (key, jobs, events) in &per_key {
        assert_eq!((*jobs, *events), (1, 3), "key {key}");
    }
    assert_eq!(transitions, 2 * creates);

    // Replays return the recorded outcome and write nothing.
    let client = connect(&server.addr).await;
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM job_event")
        .fetch_one(&db)
        .await
        .unwrap();
    for (key, job_id, create) in &record.creates {
        let again = client
            .clone()
            .create_job(with_timeout(create.clone(), CALL_TIMEOUT))
            .await
            .unwrap()
            .into_inner();
        assert!(!again.created, "{key}");
        assert_eq!(&again.job.unwrap().id, job_id, "{key}");
    }
    for t in &record.transitions {
        let again = client
            .clone()
            .transition_job(with_timeout(t.request.clone(), CALL_TIMEOUT))
            .await
            .unwrap()
            .into_inner();
        let ids: Vec<String> = again.events.iter().map(|e| e.id.clone()).collect();
        assert_eq!(ids, t.event_ids, "replay of {}", t.request.request_id);
    }
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM job_event")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(before, after, "replays wrote events");
    let in_doubt: usize = record.errors.values().sum();
    assert!(in_doubt > 0, "the kill interrupted no call: {record:?}");
    let report = assert_invariants_hold(&db).await;
    eprintln!(
        "SIGKILL: serving again {back_after:?} after the kill; {creates} acknowledged creates, \
         {transitions} transitions ({events} events), all found once; in-doubt failures \
         retried: {:?}; checker: {} jobs, {} events, all hold",
        record.errors, report.jobs, report.events
    );
}

// ---------------------------------------------------------------------------------
// 4: pg_terminate_backend of the server's connections under load.
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn terminated_pool_connections_give_unavailable_and_the_pool_recovers() {
    let cluster = PrivateCluster::start();
    let app = app_on(&cluster, None).await;
    let clients = clients_of(&app).await;
    let load = Load::start(&clients, Mode::Strict(ONLY_UNAVAILABLE));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut terminated = 0i64;
    for _ in 0..6 {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name IN ('jobledger', 'jobledger-listener') \
             AND pid <> pg_backend_pid()",
        )
        .fetch_one(&app.db)
        .await
        .unwrap();
        terminated += n;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let last_kill = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let record = load.finish().await;

    assert!(terminated > 0, "no connection was terminated");
    assert!(
        record.errors.get("Unavailable").copied().unwrap_or(0) > 0,
        "no load call was affected by the terminations"
    );
    assert!(
        record.unexpected.is_empty(),
        "codes other than UNAVAILABLE: {:?}",
        record.unexpected
    );
    assert!(
        record.last_ack.expect("acknowledgements") > last_kill,
        "no call succeeded after the last termination"
    );
    app.create("after-terminations").await;
    let (creates, transitions, events) = assert_acknowledged_present(&app.db, &record).await;
    let report = assert_invariants_hold(&app.db).await;
    eventually(Duration::from_secs(10), "pool back to its size", || async {
        backends(&app.db, "jobledger").await <= POOL_SIZE
    })
    .await;
    eprintln!(
        "pg_terminate_backend: {terminated} backends terminated; {creates} acknowledged \
         creates, {transitions} transitions ({events} events), all found; failed calls {:?}; \
         jobledger backends now {}; checker: {} jobs, {} events, all hold",
        record.errors,
        backends(&app.db, "jobledger").await,
        report.jobs,
        report.events
    );
}

// ---------------------------------------------------------------------------------
// 5: a held row lock and a 100 ms client deadline.
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_deadline_cancels_the_database_work_of_a_transition_blocked_by_a_row_lock() {
    let cluster = PrivateCluster::start();
    let app = app_on(&cluster, None).await;
    let job = app.create("locked").await;

    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("SELECT id FROM job WHERE id = $1::uuid FOR UPDATE")
        .bind(&job.id)
        .execute(&mut *lock)
        .await
        .unwrap();
    let request = proto::TransitionJobRequest {
        job_id: job.id.clone(),
        to_status: S::Running as i32,
        expected_status: Some(S::Queued as i32),
        request_id: "behind-the-lock".into(),
        ..Default::default()
    };
    let sent = Instant::now();
    let late = app
        .client
        .clone()
        .transition_job(with_timeout(request.clone(), Duration::from_millis(100)))
        .await
        .unwrap_err();
    let took = sent.elapsed();
    assert!(
        matches!(late.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{late:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "the deadline fired after {took:?}"
    );

    // The server gives up the lock wait when the client does: its statement carries the
    // call's deadline as a statement timeout.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'jobledger' \
         AND wait_event_type = 'Lock'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(
        waiting, 0,
        "a server backend still waits on the lock 500 ms after the client's deadline"
    );
    lock.rollback().await.unwrap();

    // Quiet again: nothing of the server's still waits or sits in a transaction.
    eventually(
        Duration::from_secs(10),
        "the server's backends idle",
        || async {
            let busy: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'jobledger' \
             AND state <> 'idle'",
            )
            .fetch_one(&app.db)
            .await
            .unwrap();
            busy == 0
        },
    )
    .await;

    let events: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT id::text, detail_json->>'request_id' FROM job_event WHERE job_id = $1::uuid \
         ORDER BY seq",
    )
    .bind(&job.id)
    .fetch_all(&app.db)
    .await
    .unwrap();
    let status: String = sqlx::query_scalar("SELECT status FROM job WHERE id = $1::uuid")
        .bind(&job.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    // Cancelled, so never applied, even after the lock was released.
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(status, "queued");
    // The same request, sent again with time to spare, applies now, once.
    let retried = app.transition_with(request.clone()).await.unwrap();
    assert_eq!(retried.job.unwrap().status, S::Running as i32);
    assert_eq!(app.count("job_event").await, 2);

    // The pool is back to baseline and serves.
    assert!(backends(&app.db, "jobledger").await <= POOL_SIZE);
    assert_eq!(app.get(&job.id).await.unwrap().id, job.id);
    app.create("after-the-lock").await;
    assert_invariants_hold(&app.db).await;
    eprintln!(
        "row lock: client gave up with {:?} after {took:?}; server backends still waiting \
         on the lock 500 ms later: {waiting}; jobledger backends {}",
        late.code(),
        backends(&app.db, "jobledger").await
    );
}

// ---------------------------------------------------------------------------------
// 6: statement timeout.
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_statement_timeout_is_unavailable_and_writes_nothing() {
    let cluster = PrivateCluster::start();
    let app = app_on(&cluster, Some(200)).await;
    let job = app.create("slow").await;

    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("SELECT id FROM job WHERE id = $1::uuid FOR UPDATE")
        .bind(&job.id)
        .execute(&mut *lock)
        .await
        .unwrap();
    let sent = Instant::now();
    let timed_out = app
        .client
        .clone()
        .transition_job(with_timeout(
            proto::TransitionJobRequest {
                job_id: job.id.clone(),
                to_status: S::Running as i32,
                request_id: "statement-timeout".into(),
                ..Default::default()
            },
            CALL_TIMEOUT,
        ))
        .await
        .unwrap_err();
    let took = sent.elapsed();
    // Hold the lock well past the statement timeout before letting go.
    tokio::time::sleep(Duration::from_millis(500)).await;
    lock.rollback().await.unwrap();

    assert_eq!(timed_out.code(), Code::Unavailable, "{timed_out:?}");
    assert_eq!(reason(&timed_out), "DATABASE_UNAVAILABLE");
    assert!(took < CALL_TIMEOUT, "{took:?}");
    assert_eq!(app.count("job_event").await, 1, "nothing written");
    assert_eq!(app.count("job_transition_request").await, 0);
    let status: String = sqlx::query_scalar("SELECT status FROM job WHERE id = $1::uuid")
        .bind(&job.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(status, "queued");

    // Unlocked, the same call goes through.
    let moved = app.transition(&job.id, S::Running).await.unwrap();
    assert_eq!(moved.events.len(), 1);
    assert!(backends(&app.db, "jobledger").await <= POOL_SIZE);
    assert_invariants_hold(&app.db).await;
    eprintln!("statement timeout: UNAVAILABLE after {took:?}, nothing written");
}
