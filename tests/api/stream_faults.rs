//! StreamEvents under faults and load: out-of-order commits with random resumes, a second
//! server process, a killed listener connection, lost notifications, a slow consumer of
//! 50k events, shutdown under load, org isolation under load, the stream cap.
//!
//! Some checks use the event table itself as the referee: the feed's documented order is
//! `(xid, seq)` (migration 0002), so each connection must deliver a gapless, increasing
//! run of that order after its cursor.

use std::{
    collections::{HashMap, HashSet},
    process::Command,
    time::{Duration, Instant},
};

use jobledger::proto::{self, job_ledger_client::JobLedgerClient, JobStatus as S};
use rand::{rngs::StdRng, Rng, SeedableRng};
use sqlx::{postgres::PgPoolOptions, PgPool};
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::{transport::Channel, Code, Status, Streaming};

use crate::helpers::{reason, spawn_app, spawn_app_with, to_json, ServerProcess, TestApp, BIN};

const ORG_A: &str = "a1a1a1a1-0000-4000-8000-00000000000a";
const ORG_B: &str = "b2b2b2b2-0000-4000-8000-00000000000b";
const ORG_C: &str = "c3c3c3c3-0000-4000-8000-00000000000c";

type Client = JobLedgerClient<Channel>;
type Event = proto::JobEvent;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn org_req(org: &str, after: &str) -> proto::StreamEventsRequest {
    proto::StreamEventsRequest {
        org_id: org.to_owned(),
        after_cursor: after.to_owned(),
        ..Default::default()
    }
}

fn job_req(org: &str, job_id: &str, after: &str) -> proto::StreamEventsRequest {
    proto::StreamEventsRequest {
        org_id: org.to_owned(),
        job_id: job_id.to_owned(),
        after_cursor: after.to_owned(),
        ..Default::default()
    }
}

async fn open(client: &Client, req: proto::StreamEventsRequest) -> Streaming<Event> {
    client
        .clone()
        .stream_events(req.clone())
        .await
        .unwrap_or_else(|s| panic!("stream {req:?} does not open: {s:?}"))
        .into_inner()
}

async fn connect(addr: &str) -> Client {
    let channel = Channel::from_shared(addr.to_owned())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("client connects");
    JobLedgerClient::new(channel)
}

/// What a stream gave within a wait.
#[derive(Debug)]
enum Item {
    Event(Box<Event>),
    /// Ended with OK.
    End,
    Failed(Status),
    /// Nothing within the wait.
    Quiet,
}

async fn next_item(stream: &mut Streaming<Event>, wait: Duration) -> Item {
    match tokio::time::timeout(wait, stream.next()).await {
        Err(_) => Item::Quiet,
        Ok(None) => Item::End,
        Ok(Some(Ok(e))) => Item::Event(Box::new(e)),
        Ok(Some(Err(s))) => Item::Failed(s),
    }
}

/// The next event within `wait`; panics on anything else.
async fn next_event(stream: &mut Streaming<Event>, wait: Duration, what: &str) -> Event {
    match next_item(stream, wait).await {
        Item::Event(e) => *e,
        other => panic!("{what}: expected an event within {wait:?}, got {other:?}"),
    }
}

async fn create_in(client: &Client, org: &str, job_type: &str) -> proto::Job {
    client
        .clone()
        .create_job(proto::CreateJobRequest {
            org_id: org.to_owned(),
            r#type: job_type.to_owned(),
            ..Default::default()
        })
        .await
        .expect("create_job")
        .into_inner()
        .job
        .expect("job")
}

async fn move_to(
    client: &Client,
    org: &str,
    job_id: &str,
    to: S,
) -> Result<proto::TransitionJobResponse, Status> {
    client
        .clone()
        .transition_job(proto::TransitionJobRequest {
            org_id: org.to_owned(),
            job_id: job_id.to_owned(),
            to_status: to as i32,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// A job of `org` moved to RUNNING; its id.
async fn create_running(client: &Client, org: &str, job_type: &str) -> String {
    let job = create_in(client, org, job_type).await;
    move_to(client, org, &job.id, S::Running)
        .await
        .expect("start");
    job.id
}

/// A RUNNING → RUNNING progress report; the id of the event it wrote.
async fn report(
    client: &Client,
    org: &str,
    job_id: &str,
    stage: String,
    progress: i32,
) -> Result<String, Status> {
    let response = client
        .clone()
        .transition_job(proto::TransitionJobRequest {
            org_id: org.to_owned(),
            job_id: job_id.to_owned(),
            to_status: S::Running as i32,
            stage,
            progress: Some(progress),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(response.events.len(), 1);
    Ok(response.events[0].id.clone())
}

/// A pool on the test database for writers of our own (`app.db` has only 5 connections).
async fn writer_pool(app: &TestApp, size: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&app.database_url)
        .await
        .expect("writer pool connects")
}

/// Writes one progress-like event of `job_id` straight into `job_event`, in a transaction
/// held open `hold` after the insert, so commits come out of `seq`/xid order.
async fn insert_event(pool: &PgPool, org: &str, job_id: &str, n: i32, hold: Duration) -> String {
    let mut tx = pool.begin().await.expect("begin");
    let id: String = sqlx::query_scalar(
        "INSERT INTO job_event (job_id, org_id, prev_status, next_status, attempt, detail_json)
         VALUES ($1::uuid, $2::uuid, 'running', 'running', 1, jsonb_build_object('n', $3::int))
         RETURNING id::text",
    )
    .bind(job_id)
    .bind(org)
    .bind(n)
    .fetch_one(&mut *tx)
    .await
    .expect("insert event");
    if !hold.is_zero() {
        sqlx::query("SELECT pg_sleep($1)")
            .bind(hold.as_secs_f64())
            .execute(&mut *tx)
            .await
            .expect("sleep in transaction");
    }
    tx.commit().await.expect("commit");
    COMMIT_LOG.lock().unwrap().push(id.clone());
    id
}

/// Ids of the events written by `insert_event`, in the order their commits returned.
static COMMIT_LOG: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// How many events committed after an event that sorts after them in the feed.
fn commit_inversions(keys: &HashMap<String, (i64, i64)>) -> usize {
    let log = COMMIT_LOG.lock().unwrap();
    let mut highest = None;
    let mut inversions = 0;
    for key in log.iter().filter_map(|id| keys.get(id)) {
        if highest.is_some_and(|h| h > key) {
            inversions += 1;
        }
        highest = highest.max(Some(key));
    }
    inversions
}

/// `n` events of `job_id`, each its own transaction with a random hold of 0–50 ms.
async fn sql_writer(pool: PgPool, org: String, job_id: String, n: i32, seed: u64) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ids = Vec::new();
    for i in 1..=n {
        let pause = Duration::from_millis(rng.random_range(0..10));
        let hold = Duration::from_millis(rng.random_range(0..=50));
        tokio::time::sleep(pause).await;
        ids.push(insert_event(&pool, &org, &job_id, i, hold).await);
    }
    ids
}

/// `n` progress reports of `job_id` through gRPC, with random pauses.
async fn grpc_writer(
    client: Client,
    org: String,
    job_id: String,
    n: i32,
    seed: u64,
) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ids = Vec::new();
    for i in 1..=n {
        let pause = Duration::from_millis(rng.random_range(0..20));
        tokio::time::sleep(pause).await;
        let id = report(&client, &org, &job_id, format!("step-{i}"), i % 101)
            .await
            .expect("progress report");
        ids.push(id);
    }
    ids
}

/// Feed position `(xid, seq)` of every event of `org`, read from the table.
async fn positions(db: &PgPool, org: &str) -> HashMap<String, (i64, i64)> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT id::text, xid::text::int8, seq FROM job_event WHERE org_id = $1::uuid",
    )
    .bind(org)
    .fetch_all(db)
    .await
    .expect("positions");
    rows.into_iter().map(|(id, x, s)| (id, (x, s))).collect()
}

/// A job's event ids in commit (seq) order.
async fn job_event_ids(db: &PgPool, job_id: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT id::text FROM job_event WHERE job_id = $1::uuid ORDER BY seq")
        .bind(job_id)
        .fetch_all(db)
        .await
        .expect("job events")
}

/// This process's resident set size in KiB (the server under test runs in-process).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Opens a stream, retrying while the stream cap refuses it, for up to `limit`.
async fn open_when_free(
    client: &Client,
    req: proto::StreamEventsRequest,
    limit: Duration,
) -> Streaming<Event> {
    let started = Instant::now();
    loop {
        match client.clone().stream_events(req.clone()).await {
            Ok(s) => return s.into_inner(),
            Err(s) if s.code() == Code::ResourceExhausted && started.elapsed() < limit => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(s) => panic!("a slot did not come back within {limit:?}: {s:?}"),
        }
    }
}

/// Pids of this database's listener connections (application_name `jobledger-listener`).
async fn listener_pids(db: &PgPool) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
         WHERE application_name = 'jobledger-listener' AND datname = current_database()
         ORDER BY pid",
    )
    .fetch_all(db)
    .await
    .expect("pg_stat_activity")
}

/// Waits up to `limit` for `check` to hold.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One connection of a resuming subscriber: the cursor event it resumed after (None: the
/// first connection, "from now" / "from the start") and what it delivered.
#[derive(Debug)]
struct Connection {
    after: Option<String>,
    events: Vec<Event>,
    /// The connection ended by itself (job scope: OK after the final event).
    ended: bool,
}

/// How a resuming subscriber picks its next cursor.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Resume {
    /// Always the last event received.
    Last,
    /// Mostly the last; sometimes (30 %) a random earlier one it received.
    SometimesEarlier,
    /// Any cursor received so far, or the very start (job scope).
    Anywhere,
}

/// Reads `first`, and at random points drops the stream and reopens it with a cursor
/// chosen by `resume`, until `target` (set once the writers are done) has been received,
/// the stream ends by itself (`until_end`) or `deadline` passes.
#[allow(clippy::too_many_arguments)]
async fn resuming_subscriber(
    client: Client,
    reopen: impl Fn(&str) -> proto::StreamEventsRequest,
    first: Streaming<Event>,
    resume: Resume,
    seed: u64,
    target: watch::Receiver<Option<HashSet<String>>>,
    until_end: bool,
    deadline: Instant,
) -> Vec<Connection> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut connections = Vec::new();
    // (id, cursor) of everything received, in order of arrival.
    let mut log: Vec<(String, String)> = Vec::new();
    let mut seen = HashSet::new();
    let mut stream = first;
    let mut after: Option<(String, String)> = None;
    loop {
        let max = rng.random_range(1..=120);
        let budget = Duration::from_millis(rng.random_range(20..400));
        let started = Instant::now();
        let mut events = Vec::new();
        let mut ended = false;
        loop {
            // An org stream "from now" is kept until it delivered something: reopening
            // it "from now" would skip what was committed in between.
            let left = if after.is_none() && log.is_empty() && events.is_empty() {
                deadline.saturating_duration_since(Instant::now())
            } else {
                budget.saturating_sub(started.elapsed())
            };
            if events.len() >= max || left.is_zero() {
                break;
            }
            match next_item(&mut stream, left).await {
                Item::Event(e) => events.push(*e),
                Item::Quiet => break,
                Item::End => {
                    ended = true;
                    break;
                }
                Item::Failed(s) => panic!("stream failed: {s:?}"),
            }
        }
        drop(stream);
        for e in &events {
            log.push((e.id.clone(), e.cursor.clone()));
            seen.insert(e.id.clone());
        }
        connections.push(Connection {
            after: after.as_ref().map(|(id, _)| id.clone()),
            events,
            ended,
        });
        let covered = match &*target.borrow() {
            Some(t) => t.iter().all(|id| seen.contains(id)),
            None => false,
        };
        let finished = if until_end { ended && covered } else { covered };
        if finished || Instant::now() > deadline {
            return connections;
        }
        after = match resume {
            Resume::Last => log.last().cloned(),
            Resume::SometimesEarlier if !log.is_empty() && rng.random_bool(0.3) => {
                let low = log.len().saturating_sub(150);
                Some(log[rng.random_range(low..log.len())].clone())
            }
            Resume::SometimesEarlier => log.last().cloned(),
            Resume::Anywhere => {
                let pick = rng.random_range(0..=log.len());
                if pick == log.len() {
                    None
                } else {
                    Some(log[pick].clone())
                }
            }
        };
        let cursor = after.as_ref().map(|(_, c)| c.as_str()).unwrap_or("");
        if resume != Resume::Anywhere && after.is_none() {
            // Nothing received and the first connection gave up: only the deadline does that.
            return connections;
        }
        stream = open(&client, reopen(cursor)).await;
    }
}

/// Checks an org subscriber's connections against the table: every connection delivers a
/// gapless, strictly increasing run (in feed order) of `expected` after its cursor, with
/// per-job `seq` order; their union is exactly `expected`.
fn check_org_connections(
    name: &str,
    org: &str,
    connections: &[Connection],
    keys: &HashMap<String, (i64, i64)>,
    expected: &HashSet<String>,
) {
    let mut sorted: Vec<((i64, i64), &String)> = expected.iter().map(|id| (keys[id], id)).collect();
    sorted.sort();
    let mut union = HashSet::new();
    for (i, c) in connections.iter().enumerate() {
        for e in &c.events {
            assert_eq!(
                e.org_id, org,
                "{name} conn {i}: an event of another org: {e:?}"
            );
            assert!(
                expected.contains(&e.id),
                "{name} conn {i}: event {} was not committed by this run's writers ({:?})",
                e.id,
                keys.get(&e.id)
            );
            union.insert(e.id.clone());
        }
        let got: Vec<(i64, i64)> = c.events.iter().map(|e| keys[&e.id]).collect();
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "{name} conn {i}: not strictly increasing (duplicate or reordered): {got:?}"
        );
        let low = c.after.as_ref().map(|id| keys[id]);
        if let (Some(low), Some(first)) = (low, got.first()) {
            assert!(
                *first > low,
                "{name} conn {i}: delivered {first:?}, not after its cursor {low:?}"
            );
        }
        if let Some(last) = got.last() {
            let want: Vec<(i64, i64)> = sorted
                .iter()
                .map(|(k, _)| *k)
                .filter(|k| low.is_none_or(|low| *k > low) && k <= last)
                .collect();
            assert_eq!(
                got, want,
                "{name} conn {i} (after {low:?}): a gap in what it delivered"
            );
        }
        let mut per_job: HashMap<&str, i64> = HashMap::new();
        for e in &c.events {
            let seq = keys[&e.id].1;
            if let Some(prev) = per_job.insert(&e.job_id, seq) {
                assert!(prev < seq, "{name} conn {i}: job {} out of order", e.job_id);
            }
        }
    }
    let missing: Vec<_> = expected.difference(&union).collect();
    assert!(
        missing.is_empty(),
        "{name}: {} of {} committed events never delivered, e.g. {:?}",
        missing.len(),
        expected.len(),
        &missing[..missing.len().min(5)]
    );
}

// ---------------------------------------------------------------------------------------
// 1. Out-of-order commits, random disconnects and resumes
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn org_feed_under_out_of_order_commits_and_random_resumes_loses_and_duplicates_nothing() {
    const SQL_WRITERS: usize = 20;
    const WRITERS: usize = 32;
    const EVENTS_EACH: i32 = 30;
    let app = spawn_app().await;
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");

    let mut jobs_a = Vec::new();
    for k in 0..WRITERS {
        jobs_a.push(create_running(&app.client, ORG_A, &format!("w{k}")).await);
    }
    let mut jobs_b = Vec::new();
    for k in 0..2 {
        jobs_b.push(create_running(&app.client, ORG_B, &format!("b{k}")).await);
    }
    let before: HashSet<String> = positions(&app.db, ORG_A).await.into_keys().collect();

    // Both subscribers start "from now", before any writer.
    let first_last = open(&app.client, org_req(ORG_A, "")).await;
    let first_mixed = open(&app.client, org_req(ORG_A, "")).await;

    let (target_tx, target) = watch::channel(None::<HashSet<String>>);
    let deadline = Instant::now() + Duration::from_secs(45);
    let reopen = |c: &str| org_req(ORG_A, c);
    let sub_last = tokio::spawn(resuming_subscriber(
        app.new_client().await,
        reopen,
        first_last,
        Resume::Last,
        seed ^ 1,
        target.clone(),
        false,
        deadline,
    ));
    let sub_mixed = tokio::spawn(resuming_subscriber(
        app.new_client().await,
        reopen,
        first_mixed,
        Resume::SometimesEarlier,
        seed ^ 2,
        target.clone(),
        false,
        deadline,
    ));

    let pool = writer_pool(&app, (SQL_WRITERS + jobs_b.len()) as u32).await;
    let mut writers = Vec::new();
    for (k, job) in jobs_a.iter().enumerate() {
        let s = seed.wrapping_add(100 + k as u64);
        writers.push(if k < SQL_WRITERS {
            tokio::spawn(sql_writer(
                pool.clone(),
                ORG_A.into(),
                job.clone(),
                EVENTS_EACH,
                s,
            ))
        } else {
            let client = app.client.clone();
            tokio::spawn(grpc_writer(
                client,
                ORG_A.into(),
                job.clone(),
                EVENTS_EACH,
                s,
            ))
        });
    }
    let mut noise = Vec::new();
    for (k, job) in jobs_b.iter().enumerate() {
        let s = seed.wrapping_add(1000 + k as u64);
        noise.push(tokio::spawn(sql_writer(
            pool.clone(),
            ORG_B.into(),
            job.clone(),
            EVENTS_EACH,
            s,
        )));
    }
    let mut committed = HashSet::new();
    for w in writers {
        committed.extend(w.await.expect("writer"));
    }
    for w in noise {
        w.await.expect("org B writer");
    }
    assert_eq!(committed.len(), WRITERS * EVENTS_EACH as usize);
    let keys = positions(&app.db, ORG_A).await;
    let in_table: HashSet<String> = keys
        .keys()
        .filter(|id| !before.contains(*id))
        .cloned()
        .collect();
    assert_eq!(
        in_table, committed,
        "the table holds exactly what the writers committed"
    );
    // The commits really came out of feed order.
    let inversions = commit_inversions(&keys);
    eprintln!("{inversions} events committed after an event that sorts after them");
    assert!(inversions > 0, "the writers did not commit out of order");
    target_tx.send_replace(Some(committed.clone()));

    let last = sub_last.await.expect("subscriber");
    let mixed = sub_mixed.await.expect("subscriber");
    eprintln!(
        "resume-from-last: {} connections; sometimes-earlier: {} connections",
        last.len(),
        mixed.len()
    );
    check_org_connections("resume-from-last", ORG_A, &last, &keys, &committed);
    check_org_connections("sometimes-earlier", ORG_A, &mixed, &keys, &committed);

    // Always resuming from the last cursor: nothing twice across all connections.
    let all: Vec<&String> = last
        .iter()
        .flat_map(|c| c.events.iter().map(|e| &e.id))
        .collect();
    assert_eq!(all.len(), committed.len(), "an event was delivered twice");
    // Per-job order across the whole run.
    let mut per_job: HashMap<&str, i64> = HashMap::new();
    for e in last.iter().flat_map(|c| c.events.iter()) {
        if let Some(prev) = per_job.insert(&e.job_id, keys[&e.id].1) {
            assert!(prev < keys[&e.id].1, "job {} out of order", e.job_id);
        }
    }
    // And nothing more comes after the last cursor.
    let last_cursor = last
        .iter()
        .rev()
        .find_map(|c| c.events.last())
        .map(|e| e.cursor.clone())
        .expect("something was received");
    let mut tail = open(&app.client, org_req(ORG_A, &last_cursor)).await;
    let quiet = next_item(&mut tail, Duration::from_millis(500)).await;
    assert!(
        matches!(quiet, Item::Quiet),
        "after the last cursor: {quiet:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 2. Job scope: random resumes under concurrent writers of that job
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn job_feed_resumed_at_random_cursors_while_the_job_is_written_is_its_events_in_order() {
    job_feed_under_random_resumes(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn job_feed_resumed_at_random_cursors_under_concurrent_writers_is_the_jobs_events_in_order() {
    job_feed_under_random_resumes(8).await;
}

/// How many of `job_id`'s events sort before an event committed earlier (lower seq) in
/// the feed's `(xid, seq)` order; printed as a diagnosis.
async fn xid_inversions(db: &PgPool, job_id: &str) -> Vec<(i64, i64)> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT seq, xid::text::int8 FROM job_event WHERE job_id = $1::uuid ORDER BY seq",
    )
    .bind(job_id)
    .fetch_all(db)
    .await
    .unwrap();
    let mut highest = i64::MIN;
    let mut out = Vec::new();
    for (seq, xid) in rows {
        if xid < highest {
            out.push((seq, xid));
        }
        highest = highest.max(xid);
    }
    out
}

/// `writers` tasks send progress reports of one job (25 each) while a subscriber
/// reconnects at random cursors; every connection must be a run of the job's events in
/// commit order right after its cursor, and their union all of them.
async fn job_feed_under_random_resumes(writers: u64) {
    let app = spawn_app().await;
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let job = create_running(&app.client, ORG_A, "contended").await;
    let first = open(&app.client, job_req(ORG_A, &job, "")).await;
    let (target_tx, target) = watch::channel(None::<HashSet<String>>);
    let job_ = job.clone();
    let subscriber = tokio::spawn(resuming_subscriber(
        app.new_client().await,
        move |c: &str| job_req(ORG_A, &job_, c),
        first,
        Resume::Anywhere,
        seed,
        target,
        true,
        Instant::now() + Duration::from_secs(45),
    ));
    let mut tasks = Vec::new();
    for k in 0..writers {
        let client = app.new_client().await;
        tasks.push(tokio::spawn(grpc_writer(
            client,
            ORG_A.into(),
            job.clone(),
            25,
            seed.wrapping_add(k),
        )));
    }
    for w in tasks {
        w.await.expect("writer");
    }
    move_to(&app.client, ORG_A, &job, S::Succeeded)
        .await
        .expect("success");
    let expected = job_event_ids(&app.db, &job).await;
    assert_eq!(expected.len(), 2 + writers as usize * 25 + 1);
    let inverted = xid_inversions(&app.db, &job).await;
    eprintln!("(seq, xid) of events with an xid below an earlier commit's: {inverted:?}");
    target_tx.send_replace(Some(expected.iter().cloned().collect()));
    let connections = subscriber.await.expect("subscriber");
    eprintln!("{} connections", connections.len());

    let index: HashMap<&str, usize> = expected
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let mut union = HashSet::new();
    for (i, c) in connections.iter().enumerate() {
        let start = c.after.as_ref().map_or(0, |id| index[id.as_str()] + 1);
        let got: Vec<&str> = c.events.iter().map(|e| e.id.as_str()).collect();
        let want: Vec<&str> = expected[start..(start + got.len()).min(expected.len())]
            .iter()
            .map(|s| s.as_str())
            .collect();
        assert_eq!(
            got, want,
            "conn {i} (after event #{start}) is not the job's events in order"
        );
        if c.ended {
            assert_eq!(
                start + got.len(),
                expected.len(),
                "conn {i} ended before the final event"
            );
        }
        union.extend(got.iter().map(|s| s.to_string()));
    }
    assert_eq!(union.len(), expected.len(), "some events never delivered");
    let last = connections.last().unwrap();
    assert!(last.ended, "the job stream did not end after SUCCEEDED");
}

// ---------------------------------------------------------------------------------------
// 3. A second server process on the same database
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_process_streams_what_the_first_one_writes_and_vice_versa() {
    // Poll intervals of a minute: what arrives within seconds came through NOTIFY.
    let app =
        spawn_app_with(|a| a.feed.poll_interval = std::time::Duration::from_millis(60_000)).await;
    let other = ServerProcess::start(
        BIN,
        &app.database_url,
        &["--stream-poll-interval-ms", "60000"],
    )
    .await;
    let remote = connect(&other.addr).await;
    let local = app.client.clone();

    for (name, writer, reader) in [
        ("in-process → process", &local, &remote),
        ("process → in-process", &remote, &local),
    ] {
        let job = create_running(writer, "", name).await;
        let mut job_stream = open(reader, job_req("", &job, "")).await;
        let mut org_stream = open(reader, org_req("", "")).await;
        for (i, status) in [(0, S::Queued), (1, S::Running)] {
            let e = next_event(&mut job_stream, Duration::from_secs(5), name).await;
            assert_eq!(e.next_status, status as i32, "{name}: replayed event {i}");
        }
        let mut latencies = Vec::new();
        for i in 0..5 {
            let wrote = Instant::now();
            let id = report(writer, "", &job, format!("{name} {i}"), i * 10)
                .await
                .unwrap();
            let e = next_event(&mut job_stream, Duration::from_secs(2), name).await;
            latencies.push(wrote.elapsed());
            assert_eq!(e.id, id, "{name}: job stream");
            let o = next_event(&mut org_stream, Duration::from_secs(10), name).await;
            assert_eq!(o.id, id, "{name}: org stream");
        }
        eprintln!("{name}: job-scope commit-to-delivery {latencies:?}");
        move_to(writer, "", &job, S::Succeeded).await.unwrap();
        let done = next_event(&mut job_stream, Duration::from_secs(2), name).await;
        assert_eq!(done.next_status, S::Succeeded as i32);
        let end = next_item(&mut job_stream, Duration::from_secs(2)).await;
        assert!(matches!(end, Item::End), "{name}: {end:?}");
        let o = next_event(&mut org_stream, Duration::from_secs(10), name).await;
        assert_eq!(o.id, done.id);
    }
}

// ---------------------------------------------------------------------------------------
// 4. A killed listener connection; lost notifications
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_listener_connection_reconnects_and_wakes_subscribers() {
    // No periodic re-read within the test: only the listener can deliver in time.
    let app =
        spawn_app_with(|a| a.feed.poll_interval = std::time::Duration::from_millis(60_000)).await;
    let job = create_running(&app.client, "", "listener").await;
    let mut stream = open(&app.client, job_req("", &job, "")).await;
    next_event(&mut stream, Duration::from_secs(5), "created").await;
    next_event(&mut stream, Duration::from_secs(5), "started").await;
    eventually(Duration::from_secs(5), "listener connected", || async {
        listener_pids(&app.db).await.len() == 1
    })
    .await;
    let id = report(&app.client, "", &job, "baseline".into(), 1)
        .await
        .unwrap();
    let e = next_event(&mut stream, Duration::from_secs(2), "baseline").await;
    assert_eq!(e.id, id);

    // Write right after the kill (while the listener is down or reconnecting), a little
    // later, and later still.
    for (round, delay_ms) in [0u64, 30, 150, 600].into_iter().enumerate() {
        let old = listener_pids(&app.db).await;
        assert_eq!(old.len(), 1, "one listener connection per process: {old:?}");
        let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(old[0])
            .fetch_one(&app.db)
            .await
            .unwrap();
        assert!(killed);
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let wrote = Instant::now();
        let id = report(&app.client, "", &job, format!("after kill {round}"), 2)
            .await
            .unwrap();
        let e = next_event(&mut stream, Duration::from_secs(5), "after the kill").await;
        assert_eq!(e.id, id, "round {round}");
        eprintln!(
            "round {round} (write {delay_ms} ms after the kill): delivered in {:?}",
            wrote.elapsed()
        );
        eventually(
            Duration::from_secs(5),
            "a new listener connection",
            || async {
                let now = listener_pids(&app.db).await;
                now.len() == 1 && now[0] != old[0]
            },
        )
        .await;
        // The new connection LISTENs: the next write is delivered promptly.
        let id = report(&app.client, "", &job, format!("reconnected {round}"), 3)
            .await
            .unwrap();
        let e = next_event(&mut stream, Duration::from_secs(2), "after reconnect").await;
        assert_eq!(e.id, id, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_without_a_notification_is_found_by_the_periodic_re_read() {
    let app =
        spawn_app_with(|a| a.feed.poll_interval = std::time::Duration::from_millis(200)).await;
    let job = create_running(&app.client, ORG_A, "silent").await;
    let mut job_stream = open(&app.client, job_req(ORG_A, &job, "")).await;
    next_event(&mut job_stream, Duration::from_secs(5), "created").await;
    next_event(&mut job_stream, Duration::from_secs(5), "started").await;
    let mut org_stream = open(&app.client, org_req(ORG_A, "")).await;
    let mut spy = sqlx::postgres::PgListener::connect(&app.database_url)
        .await
        .unwrap();
    spy.listen("jobledger_events").await.unwrap();

    // An event written by another program: nothing announces it.
    let id: String = sqlx::query_scalar(
        "INSERT INTO job_event (job_id, org_id, prev_status, next_status, attempt, detail_json)
         VALUES ($1::uuid, $2::uuid, 'running', 'running', 1, '{\"silent\": true}')
         RETURNING id::text",
    )
    .bind(&job)
    .bind(ORG_A)
    .fetch_one(&app.db)
    .await
    .unwrap();
    let committed = Instant::now();

    let e = next_event(&mut job_stream, Duration::from_secs(3), "job stream").await;
    assert_eq!(e.id, id);
    assert_eq!(to_json(e.detail.as_ref().unwrap())["silent"], true);
    let o = next_event(&mut org_stream, Duration::from_secs(3), "org stream").await;
    assert_eq!(o.id, id);
    eprintln!("delivered without NOTIFY after {:?}", committed.elapsed());
    // The insert really sent no notification.
    let heard = tokio::time::timeout(Duration::from_millis(300), spy.recv()).await;
    assert!(heard.is_err(), "a notification was sent: {heard:?}");
}

// ---------------------------------------------------------------------------------------
// 5. A slow consumer while 50,000 events are written
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_consumer_of_50k_events_is_caught_up_from_the_database_in_bounded_memory() {
    const JOBS: usize = 5;
    const PER_JOB: i32 = 10_000;
    let app = spawn_app().await;
    let mut jobs = Vec::new();
    for k in 0..JOBS {
        jobs.push(create_running(&app.client, ORG_A, &format!("bulk{k}")).await);
    }
    // Two streams nobody reads for now: the org's (from now) and job 0's (from its start).
    let mut org_stream = open(&app.client, org_req(ORG_A, "")).await;
    let mut job_stream = open(&app.client, job_req(ORG_A, &jobs[0], "")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib();

    // ~2 KiB of detail per event: 50k events are ~100 MiB as JSON, more in memory.
    let db = app.db.clone();
    let jobs_ = jobs.clone();
    let writer = tokio::spawn(async move {
        for job in &jobs_ {
            sqlx::query(
                "INSERT INTO job_event (job_id, org_id, prev_status, next_status, attempt, detail_json)
                 SELECT $1::uuid, $2::uuid, 'running', 'running', 1,
                        jsonb_build_object('n', g, 'pad', repeat(md5(g::text), 64))
                 FROM generate_series(1, $3::int) g",
            )
            .bind(job)
            .bind(ORG_A)
            .bind(PER_JOB)
            .execute(&db)
            .await
            .expect("bulk insert");
        }
    });
    let mut peak = before;
    while !writer.is_finished() {
        peak = peak.max(rss_kib());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writer.await.unwrap();
    // Give the server time to (wrongly) read ahead, sampling all along.
    for _ in 0..30 {
        peak = peak.max(rss_kib());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = rss_kib();
    eprintln!(
        "RSS while not reading: before {} MiB, peak {} MiB, after {} MiB (growth {} MiB)",
        before / 1024,
        peak / 1024,
        after / 1024,
        peak.saturating_sub(before) / 1024
    );
    assert!(
        peak.saturating_sub(before) < 150 * 1024,
        "memory grew by {} MiB while the consumer did not read",
        peak.saturating_sub(before) / 1024
    );

    // Now read everything.
    let read_started = Instant::now();
    let mut ids = HashSet::new();
    let mut last_n: HashMap<String, i64> = HashMap::new();
    let mut last_key = None;
    let keys = positions(&app.db, ORG_A).await;
    for i in 0..JOBS * PER_JOB as usize {
        let e = next_event(&mut org_stream, Duration::from_secs(10), "org stream").await;
        assert!(ids.insert(e.id.clone()), "event {i} delivered twice");
        let n = to_json(e.detail.as_ref().unwrap())["n"].as_i64().unwrap();
        let prev = last_n.insert(e.job_id.clone(), n);
        assert_eq!(prev.unwrap_or(0) + 1, n, "job {} out of order", e.job_id);
        let key = keys[&e.id];
        assert!(last_key < Some(key), "feed order broken at {i}");
        last_key = Some(key);
        if i % 10_000 == 0 {
            peak = peak.max(rss_kib());
        }
    }
    let quiet = next_item(&mut org_stream, Duration::from_millis(300)).await;
    assert!(matches!(quiet, Item::Quiet), "{quiet:?}");
    assert_eq!(ids.len(), JOBS * PER_JOB as usize);
    assert!(last_n.values().all(|n| *n == PER_JOB as i64));
    let read_time = read_started.elapsed();

    let expected = job_event_ids(&app.db, &jobs[0]).await;
    assert_eq!(expected.len(), PER_JOB as usize + 2);
    for (i, want) in expected.iter().enumerate() {
        let e = next_event(&mut job_stream, Duration::from_secs(10), "job stream").await;
        assert_eq!(&e.id, want, "job stream event {i}");
    }
    let quiet = next_item(&mut job_stream, Duration::from_millis(300)).await;
    assert!(matches!(quiet, Item::Quiet), "{quiet:?}");
    eprintln!(
        "read 50k org events in {read_time:?}; RSS after reading {} MiB (peak {} MiB)",
        rss_kib() / 1024,
        peak / 1024
    );
}

// ---------------------------------------------------------------------------------------
// 6. Shutdown with open streams under load
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_under_load_ends_every_open_stream_with_unavailable_within_the_drain_time() {
    let mut app = spawn_app().await;
    let mut jobs = Vec::new();
    for k in 0..4 {
        jobs.push(create_running(&app.client, ORG_A, &format!("busy{k}")).await);
    }
    let mut readers = Vec::new();
    let mut requests = vec![org_req(ORG_A, ""), org_req(ORG_A, ""), org_req(ORG_B, "")];
    requests.extend(jobs.iter().map(|j| job_req(ORG_A, j, "")));
    // How many of the org A streams have received an event (each counts itself once).
    let live = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let expect_live = requests.iter().filter(|r| r.org_id == ORG_A).count();
    for req in requests {
        let mut stream = open(&app.client, req.clone()).await;
        let live = live.clone();
        readers.push(tokio::spawn(async move {
            let mut count = 0;
            loop {
                match next_item(&mut stream, Duration::from_secs(30)).await {
                    Item::Event(_) => {
                        count += 1;
                        if count == 1 && req.org_id == ORG_A {
                            live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                    other => return (req, count, other),
                }
            }
        }));
    }
    let mut writers = Vec::new();
    for job in &jobs {
        let client = app.new_client().await;
        let job = job.clone();
        writers.push(tokio::spawn(async move {
            let mut ok = 0;
            loop {
                match report(&client, ORG_A, &job, "busy".into(), ok % 100).await {
                    Ok(_) => ok += 1,
                    Err(s) => return (ok, s),
                }
            }
        }));
    }
    // Shut down under load, once every org A stream is live (a generous bound: the
    // machine may be busy).
    let waiting = Instant::now();
    while live.load(std::sync::atomic::Ordering::SeqCst) < expect_live {
        assert!(
            waiting.elapsed() < Duration::from_secs(20),
            "not every stream received an event while the writers ran"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    app.stop().await.expect("clean stop");
    let took = started.elapsed();
    eprintln!("stop took {took:?}");
    assert!(
        took < Duration::from_secs(4),
        "shutdown waited for the drain timeout: {took:?}"
    );

    for reader in readers {
        let (req, count, end) = tokio::time::timeout(Duration::from_secs(3), reader)
            .await
            .expect("the stream ends")
            .unwrap();
        match end {
            Item::Failed(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{req:?}: {status:?}");
                assert_eq!(reason(&status), "SHUTTING_DOWN", "{req:?}");
            }
            other => panic!("{req:?} ended with {other:?} after {count} events"),
        }
        if req.org_id == ORG_A {
            assert!(count > 0, "{req:?} received nothing before the shutdown");
        }
    }
    for writer in writers {
        let (ok, status) = writer.await.unwrap();
        assert!(ok > 0);
        assert_ne!(status.code(), Code::Internal, "{status:?}");
    }
}

/// A reader that stopped reading (its HTTP/2 window full) cannot be sent the
/// UNAVAILABLE trailers: HTTP/2 delivers them only after the data queued before them.
/// What the server guarantees is the bound: shutdown completes at the drain timeout at
/// the latest, and the stalled stream then ends with an error, never silently as OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_reader_stalled_holds_shutdown_no_longer_than_the_drain_timeout() {
    let mut app = spawn_app().await;
    // A backlog bigger than the client's HTTP/2 stream window (2 MiB), never read.
    let backlog = create_running(&app.client, ORG_A, "backlog").await;
    sqlx::query(
        "INSERT INTO job_event (job_id, org_id, prev_status, next_status, attempt, detail_json)
         SELECT $1::uuid, $2::uuid, 'running', 'running', 1,
                jsonb_build_object('n', g, 'pad', repeat('x', 1000))
         FROM generate_series(1, 4000) g",
    )
    .bind(&backlog)
    .bind(ORG_A)
    .execute(&app.db)
    .await
    .unwrap();
    let mut unread = open(&app.new_client().await, job_req(ORG_A, &backlog, "")).await;
    next_event(&mut unread, Duration::from_secs(5), "first event").await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    app.stop().await.expect("clean stop");
    let took = started.elapsed();
    // Read out what was in flight; then the stream should end with UNAVAILABLE.
    let mut buffered = 0;
    let end = loop {
        match next_item(&mut unread, Duration::from_secs(3)).await {
            Item::Event(_) => buffered += 1,
            other => break other,
        }
    };
    eprintln!(
        "stop took {took:?}; the stalled stream had {buffered} events in flight, then {end:?}"
    );
    // spawn_app's drain timeout is 5 s.
    assert!(
        took < Duration::from_secs(6),
        "shutdown exceeded the drain timeout: {took:?}"
    );
    match end {
        Item::Failed(status) => assert_ne!(status.code(), Code::Ok, "{status:?}"),
        other => panic!("the stalled stream ended with {other:?}"),
    }
}

/// The same bound for the real process: SIGTERM with a stalled reader exits 0 by the
/// drain timeout, and the stalled stream ends with an error the client can resume from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_stalled_reader_exits_zero_within_the_drain_timeout() {
    let app = spawn_app().await;
    let backlog = create_running(&app.client, ORG_A, "backlog").await;
    sqlx::query(
        "INSERT INTO job_event (job_id, org_id, prev_status, next_status, attempt, detail_json)
         SELECT $1::uuid, $2::uuid, 'running', 'running', 1,
                jsonb_build_object('n', g, 'pad', repeat('x', 1000))
         FROM generate_series(1, 4000) g",
    )
    .bind(&backlog)
    .bind(ORG_A)
    .execute(&app.db)
    .await
    .unwrap();
    // The second process has a drain timeout of 3 s.
    let mut server = ServerProcess::start(BIN, &app.database_url, &[]).await;
    let remote = connect(&server.addr).await;
    let mut unread = open(&remote, job_req(ORG_A, &backlog, "")).await;
    next_event(&mut unread, Duration::from_secs(5), "first event").await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = started.elapsed();
    let mut buffered = 0;
    let end = loop {
        match next_item(&mut unread, Duration::from_secs(3)).await {
            Item::Event(_) => buffered += 1,
            other => break other,
        }
    };
    eprintln!(
        "exit {exited:?} after {took:?}; the stalled stream had {buffered} events in flight, \
         then {end:?}"
    );
    assert_eq!(exited, Some(0));
    assert!(
        took < Duration::from_secs(4),
        "exit exceeded the 3 s drain timeout: {took:?}"
    );
    match end {
        Item::Failed(status) => assert_ne!(status.code(), Code::Ok, "{status:?}"),
        other => panic!("the stalled stream ended with {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// 7. Org isolation under load
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn org_streams_under_concurrent_load_of_two_orgs_carry_only_their_own_events() {
    let app = spawn_app().await;
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut jobs: HashMap<&str, Vec<String>> = HashMap::new();
    for org in [ORG_A, ORG_B] {
        for k in 0..4 {
            let id = create_running(&app.client, org, &format!("{org}-{k}")).await;
            jobs.entry(org).or_default().push(id);
        }
    }
    let before_a: HashSet<String> = positions(&app.db, ORG_A).await.into_keys().collect();
    let before_b: HashSet<String> = positions(&app.db, ORG_B).await.into_keys().collect();
    let mut streams = HashMap::new();
    for org in [ORG_A, ORG_B, ORG_C, ""] {
        streams.insert(org, open(&app.client, org_req(org, "")).await);
    }
    let pool = writer_pool(&app, 6).await;
    let mut writers = Vec::new();
    for (i, org) in [ORG_A, ORG_B].into_iter().enumerate() {
        let org_jobs = &jobs[org];
        for (k, job) in org_jobs.iter().enumerate() {
            let s = seed.wrapping_add((i * 10 + k) as u64);
            writers.push(if k < 2 {
                tokio::spawn(sql_writer(pool.clone(), org.into(), job.clone(), 40, s))
            } else {
                tokio::spawn(grpc_writer(
                    app.client.clone(),
                    org.into(),
                    job.clone(),
                    40,
                    s,
                ))
            });
        }
        // And whole new jobs created, run and finished while the streams are open.
        let client = app.client.clone();
        writers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..10 {
                let job = create_in(&client, org, &format!("short-{n}")).await;
                for to in [S::Running, S::Succeeded] {
                    move_to(&client, org, &job.id, to).await.unwrap();
                }
                ids.push(job.id);
            }
            ids
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    for (org, before) in [(ORG_A, before_a), (ORG_B, before_b)] {
        let keys = positions(&app.db, org).await;
        let expected: HashSet<String> = keys
            .keys()
            .filter(|id| !before.contains(*id))
            .cloned()
            .collect();
        assert_eq!(expected.len(), 4 * 40 + 10 * 3);
        let stream = streams.get_mut(org).unwrap();
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let e = next_event(stream, Duration::from_secs(10), org).await;
            assert_eq!(e.org_id, org, "an event of another org: {e:?}");
            assert!(expected.contains(&e.id), "{org}: unexpected event {e:?}");
            got.push(e);
        }
        let quiet = next_item(stream, Duration::from_millis(300)).await;
        assert!(matches!(quiet, Item::Quiet), "{org}: {quiet:?}");
        let ids: HashSet<&String> = got.iter().map(|e| &e.id).collect();
        assert_eq!(ids.len(), got.len(), "{org}: duplicates");
        let connection = Connection {
            after: None,
            events: got,
            ended: false,
        };
        check_org_connections(org, org, &[connection], &keys, &expected);
    }
    for org in [ORG_C, ""] {
        let quiet = next_item(streams.get_mut(org).unwrap(), Duration::from_millis(300)).await;
        assert!(
            matches!(quiet, Item::Quiet),
            "org {org:?} received {quiet:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 8. The stream cap: slots of dropped streams come back, also from blocked subscribers
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_streams_free_their_slots_even_when_their_subscribers_were_blocked() {
    let app = spawn_app_with(|a| a.feed.max_streams = 5).await;
    let job = create_running(&app.client, ORG_A, "capped").await;
    sqlx::query(
        "INSERT INTO job_event (job_id, org_id, prev_status, next_status, attempt, detail_json)
         SELECT $1::uuid, $2::uuid, 'running', 'running', 1,
                jsonb_build_object('n', g, 'pad', repeat('x', 1000))
         FROM generate_series(1, 4000) g",
    )
    .bind(&job)
    .bind(ORG_A)
    .execute(&app.db)
    .await
    .unwrap();
    let refused = |client: Client| async move {
        let status = client
            .clone()
            .stream_events(org_req(ORG_A, ""))
            .await
            .expect_err("over the cap");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(reason(&status), "TOO_MANY_STREAMS");
    };

    for round in 0..3 {
        // Five streams: job streams whose subscribers block on full buffers (one event
        // read of ~4 MiB), an org stream waiting for events, a history-only stream read to
        // its end. Each unread stream on a connection of its own: unread data fills the
        // HTTP/2 connection window and would stall every other stream on that connection.
        let mut open_streams = Vec::new();
        for _ in 0..3 {
            let own = app.new_client().await;
            let mut s = open(&own, job_req(ORG_A, &job, "")).await;
            next_event(&mut s, Duration::from_secs(5), "first event").await;
            open_streams.push(s);
        }
        open_streams.push(open(&app.client, org_req(ORG_A, "")).await);
        let mut history = open(
            &app.client,
            proto::StreamEventsRequest {
                org_id: ORG_A.into(),
                job_id: job.clone(),
                history_only: true,
                ..Default::default()
            },
        )
        .await;
        refused(app.client.clone()).await;
        let mut n = 0;
        loop {
            match next_item(&mut history, Duration::from_secs(10)).await {
                Item::Event(_) => n += 1,
                Item::End => break,
                other => panic!("history: {other:?} after {n} events"),
            }
        }
        assert_eq!(n, 4002);
        // Its slot comes back once it ended by itself.
        let fifth = open_when_free(&app.client, org_req(ORG_B, ""), Duration::from_secs(3)).await;
        refused(app.client.clone()).await;
        drop(open_streams);
        drop(fifth);
        drop(history);
        // All five slots come back.
        let mut reopened = Vec::new();
        for _ in 0..5 {
            reopened.push(
                open_when_free(&app.client, org_req(ORG_C, ""), Duration::from_secs(5)).await,
            );
        }
        refused(app.client.clone()).await;
        drop(reopened);
        eprintln!("round {round}: slots recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------
// 9. A late commit of an older transaction (deterministic out-of-order case)
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_committed_late_by_an_older_transaction_is_not_skipped_on_resume() {
    let app = spawn_app().await;
    let x = create_running(&app.client, ORG_A, "older").await;
    let y = create_running(&app.client, ORG_A, "younger").await;
    let mut stream = open(&app.client, org_req(ORG_A, "")).await;

    // The older transaction writes first and commits last.
    let mut older = app.db.begin().await.unwrap();
    let x_event: String = sqlx::query_scalar(
        "INSERT INTO job_event (job_id, org_id, prev_status, next_status, attempt, detail_json)
         VALUES ($1::uuid, $2::uuid, 'running', 'running', 1, '{\"late\": true}')
         RETURNING id::text",
    )
    .bind(&x)
    .bind(ORG_A)
    .fetch_one(&mut *older)
    .await
    .unwrap();
    let y_event = report(&app.client, ORG_A, &y, "younger".into(), 50)
        .await
        .unwrap();
    // Whatever the stream sends meanwhile is kept and checked below.
    let mut got = Vec::new();
    if let Item::Event(e) = next_item(&mut stream, Duration::from_millis(500)).await {
        got.push(*e);
    }
    older.commit().await.unwrap();
    while got.len() < 2 {
        got.push(next_event(&mut stream, Duration::from_secs(3), "both events").await);
    }
    let ids: HashSet<&str> = got.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, HashSet::from([x_event.as_str(), y_event.as_str()]));
    // Resuming from the first delivered cursor gives the second; from the second, nothing.
    let history = |after: &str| proto::StreamEventsRequest {
        org_id: ORG_A.into(),
        after_cursor: after.to_owned(),
        history_only: true,
        ..Default::default()
    };
    let mut rest = open(&app.client, history(&got[0].cursor)).await;
    let e = next_event(&mut rest, Duration::from_secs(3), "resume after the first").await;
    assert_eq!(
        e.id, got[1].id,
        "resuming after the first delivered event skips the second"
    );
    let end = next_item(&mut rest, Duration::from_secs(3)).await;
    assert!(matches!(end, Item::End), "{end:?}");
    let mut rest = open(&app.client, history(&got[1].cursor)).await;
    let end = next_item(&mut rest, Duration::from_secs(3)).await;
    assert!(matches!(end, Item::End), "{end:?}");
}

// ---------------------------------------------------------------------------------------
// 10. An unrelated long write transaction
// ---------------------------------------------------------------------------------------

/// Transaction ids are cluster-wide: a write transaction open in *another database* of
/// the same PostgreSQL used to hold every org stream back until it ended. The org
/// horizon now skips transactions pg_stat_activity places in another database. (One
/// open in the ledger's own database still holds org streams back, by design: it might
/// write an event; see docs/streaming.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrelated_open_write_transaction_does_not_stall_org_streams() {
    let app = spawn_app().await;
    let job = create_running(&app.client, ORG_A, "stalled").await;
    let mut org_stream = open(&app.client, org_req(ORG_A, "")).await;
    let mut job_stream = open(&app.client, job_req(ORG_A, &job, "")).await;
    next_event(&mut job_stream, Duration::from_secs(5), "created").await;
    next_event(&mut job_stream, Duration::from_secs(5), "started").await;
    // Another application's batch in another database of the same cluster: a write
    // transaction (on a temporary table, rolled back: nothing is left behind).
    let other_db = format!("{}/postgres", crate::helpers::base_url());
    let mut other = <sqlx::PgConnection as sqlx::Connection>::connect(&other_db)
        .await
        .unwrap();
    let mut batch = sqlx::Connection::begin(&mut other).await.unwrap();
    sqlx::query("CREATE TEMPORARY TABLE unrelated_batch (n int)")
        .execute(&mut *batch)
        .await
        .unwrap();
    sqlx::query("INSERT INTO unrelated_batch VALUES (1)")
        .execute(&mut *batch)
        .await
        .unwrap();
    let id = report(&app.client, ORG_A, &job, "while a batch runs".into(), 5)
        .await
        .unwrap();
    let wrote = Instant::now();
    let e = next_event(&mut job_stream, Duration::from_secs(2), "job stream").await;
    assert_eq!(e.id, id);
    let org = next_item(&mut org_stream, Duration::from_secs(3)).await;
    let waited = wrote.elapsed();
    batch.rollback().await.unwrap();
    let late = match &org {
        Item::Quiet => Some(next_event(&mut org_stream, Duration::from_secs(3), "after").await),
        _ => None,
    };
    eprintln!(
        "org stream while the batch was open: {:?} after {waited:?}; after it ended: {:?}",
        matches!(org, Item::Event(_)),
        late.as_ref().map(|e| &e.id)
    );
    match org {
        Item::Event(e) => assert_eq!(e.id, id),
        other => panic!("the org stream got {other:?} within 3 s of the commit"),
    }
}
