//! Protection settings, seen from a client: the in-flight cap sheds load at once with
//! RESOURCE_EXHAUSTED, the per-connection stream cap makes further calls wait, keepalive
//! PINGs close silent connections, and the maximum connection age moves clients to a new
//! connection (GOAWAY) and, after the grace, cuts the calls still open.
//!
//! A relay between client and server counts the connections the client opens and can
//! go silent (forward nothing, like a peer that vanished) while noticing when the server
//! closes its side.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use jobledger::proto::{self, job_ledger_client::JobLedgerClient, JobStatus as S};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{tcp::OwnedReadHalf, tcp::OwnedWriteHalf, TcpListener, TcpStream},
    task::{JoinHandle, JoinSet},
};
use tokio_stream::StreamExt;
use tonic::{transport::Channel, Code};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
use tonic_types::StatusExt;

use crate::helpers::{reason, spawn_app_with, TestApp};

const ORG: &str = "0c0c0c0c-0000-4000-8000-00000000000c";

/// A TCP relay in front of a server.
struct Relay {
    addr: String,
    accepted: Arc<AtomicUsize>,
    silent: Arc<AtomicBool>,
    /// When the server closed each relayed connection (EOF or error on its side).
    server_closed: Arc<Mutex<Vec<Instant>>>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(server_port: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let silent = Arc::new(AtomicBool::new(false));
        let server_closed = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (accepted, silent, server_closed) =
                (accepted.clone(), silent.clone(), server_closed.clone());
            async move {
                // Dropped with this task: aborts every pump.
                let mut pumps = JoinSet::new();
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let Ok(server) = TcpStream::connect(("127.0.0.1", server_port)).await else {
                        continue;
                    };
                    client.set_nodelay(true).unwrap();
                    server.set_nodelay(true).unwrap();
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    pumps.spawn(pump(client_read, server_write, silent.clone(), None));
                    pumps.spawn(pump(
                        server_read,
                        client_write,
                        silent.clone(),
                        Some(server_closed.clone()),
                    ));
                }
            }
        });
        Relay {
            addr,
            accepted,
            silent,
            server_closed,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// From now on nothing is forwarded in either direction.
    fn go_silent(&self) {
        self.silent.store(true, Ordering::SeqCst);
    }

    fn server_closed(&self) -> Vec<Instant> {
        self.server_closed.lock().unwrap().clone()
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(self.addr.clone())
            .unwrap()
            .connect()
            .await
            .expect("connects through the relay")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` until EOF (dropping the bytes while silent); records the
/// moment `from` ended when `closed` is given.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    silent: Arc<AtomicBool>,
    closed: Option<Arc<Mutex<Vec<Instant>>>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !silent.load(Ordering::SeqCst) && to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    if let Some(closed) = closed {
        closed.lock().unwrap().push(Instant::now());
    }
    let _ = to.shutdown().await;
}

async fn get(
    client: &mut JobLedgerClient<Channel>,
    job_id: &str,
) -> Result<proto::Job, tonic::Status> {
    client
        .get_job(proto::GetJobRequest {
            job_id: job_id.to_owned(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().job.unwrap())
}

async fn org_stream(client: &mut JobLedgerClient<Channel>) -> tonic::Streaming<proto::JobEvent> {
    client
        .stream_events(proto::StreamEventsRequest {
            org_id: ORG.to_owned(),
            ..Default::default()
        })
        .await
        .expect("stream opens")
        .into_inner()
}

async fn try_create_in_org(
    client: &mut JobLedgerClient<Channel>,
) -> Result<proto::Job, tonic::Status> {
    client
        .create_job(proto::CreateJobRequest {
            org_id: ORG.to_owned(),
            r#type: "protected".to_owned(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().job.unwrap())
}

async fn create_in_org(client: &mut JobLedgerClient<Channel>) -> proto::Job {
    try_create_in_org(client).await.unwrap()
}

/// Waits until `n` sessions of the test database wait for a lock.
async fn wait_for_lock_waiters(app: &TestApp, n: i64) {
    let started = Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&app.db)
        .await
        .unwrap();
        if waiting >= n {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "only {waiting} of {n} calls reached the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_inflight_cap_are_refused_at_once_and_succeed_after() {
    const CAP: usize = 3;
    let app = spawn_app_with(|a| a.connections.max_inflight_requests = Some(CAP as u32)).await;
    let job = app.create("held").await;

    // The test holds the job's row lock: CAP transitions of it block in the database.
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("SELECT id FROM job WHERE id = $1::uuid FOR UPDATE")
        .bind(&job.id)
        .execute(&mut *lock)
        .await
        .unwrap();
    let mut held = JoinSet::new();
    for i in 0..CAP {
        let mut client = app.client.clone();
        let job_id = job.id.clone();
        held.spawn(async move {
            client
                .transition_job(proto::TransitionJobRequest {
                    job_id,
                    to_status: S::Running as i32,
                    stage: format!("held-{i}"),
                    ..Default::default()
                })
                .await
        });
    }
    wait_for_lock_waiters(&app, CAP as i64).await;

    // One more unary call, of any method and on any connection, is refused at once.
    let mut other_connection = app.new_client().await;
    let sent = Instant::now();
    let refused = get(&mut other_connection, &job.id).await.unwrap_err();
    let took = sent.elapsed();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(reason(&refused), "TOO_MANY_REQUESTS");
    assert!(
        refused.message().contains("--max-inflight-requests"),
        "{refused:?}"
    );
    let info = refused.get_details_error_info().unwrap();
    assert_eq!(info.metadata.get("limit").map(String::as_str), Some("3"));
    assert!(
        took < Duration::from_millis(500),
        "refused after {took:?}: not shed at once"
    );
    let create = app
        .client
        .clone()
        .create_job(proto::CreateJobRequest {
            r#type: "refused".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(create.code(), Code::ResourceExhausted);

    // Health and streams do not count: probes answer, followers connect.
    let health = app
        .health
        .clone()
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers at the cap");
    assert_eq!(health.into_inner().status, 1);
    let mut stream = app
        .client
        .clone()
        .stream_events(proto::StreamEventsRequest {
            job_id: job.id.clone(),
            history_only: true,
            ..Default::default()
        })
        .await
        .expect("a stream opens at the cap")
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.next_status, S::Queued as i32);

    // Released: the held calls complete, and new calls are served again.
    lock.commit().await.unwrap();
    let mut done = 0;
    while let Some(result) = held.join_next().await {
        result
            .unwrap()
            .expect("a held transition succeeds once the lock is gone");
        done += 1;
    }
    assert_eq!(done, CAP);
    let now = get(&mut other_connection, &job.id).await.unwrap();
    assert_eq!(now.status, S::Running as i32);
    assert_eq!(now.attempt, 1);
    assert_eq!(
        app.count("job").await,
        1,
        "the refused create wrote nothing"
    );
}

#[tokio::test]
async fn an_inflight_cap_of_zero_is_no_cap() {
    let app = spawn_app_with(|a| a.connections.max_inflight_requests = None).await;
    let job = app.create("uncapped").await;
    let mut calls = JoinSet::new();
    for _ in 0..20 {
        let mut client = app.client.clone();
        let id = job.id.clone();
        calls.spawn(async move { get(&mut client, &id).await });
    }
    while let Some(r) = calls.join_next().await {
        r.unwrap().expect("no call is refused without a cap");
    }
}

/// Calls that meet a GOAWAY. tonic's client does not retry a call it had dispatched to a
/// connection the server is closing, as other gRPC clients do: it fails it with
/// CANCELLED ("operation was canceled") or, when the stream was refused by the GOAWAY,
/// with a client-made INTERNAL ("h2 protocol error", GoAway NO_ERROR). The server never
/// ran such a call.
fn refused_by_a_closing_connection(status: &tonic::Status) -> bool {
    match status.code() {
        Code::Cancelled | Code::Unavailable => true,
        Code::Internal => format!("{status:?}").contains("GoAway("),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_move_to_new_connections_at_the_maximum_age_and_no_call_runs_twice() {
    let app = spawn_app_with(|a| {
        a.connections.max_connection_age = Some(std::time::Duration::from_millis(300))
    })
    .await;
    let relay = Relay::start(app.port).await;
    let client = JobLedgerClient::new(relay.channel().await);

    // Eight callers create jobs over one channel for 2 s: about seven GOAWAYs.
    let mut callers = JoinSet::new();
    for _ in 0..8 {
        let mut client = client.clone();
        callers.spawn(async move {
            let started = Instant::now();
            let (mut created, mut refused) = (0i64, 0i64);
            while started.elapsed() < Duration::from_secs(2) {
                match client
                    .create_job(proto::CreateJobRequest {
                        r#type: "aged".into(),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(_) => created += 1,
                    Err(e) if refused_by_a_closing_connection(&e) => refused += 1,
                    Err(e) => panic!("unexpected error across a GOAWAY: {e:?}"),
                }
            }
            (created, refused)
        });
    }
    let (mut created, mut refused) = (0, 0);
    while let Some(r) = callers.join_next().await {
        let (c, r) = r.unwrap();
        created += c;
        refused += r;
    }
    // One connection per 300 ms (exactly one without a maximum age), each closed by the
    // server once its calls were done.
    let connections = relay.accepted();
    assert!(
        connections >= 4,
        "{created} calls over {connections} connection(s) in 2 s with a 300 ms maximum age"
    );
    assert!(
        relay.server_closed().len() >= connections - 1,
        "the server closed {} of {connections} connections",
        relay.server_closed().len()
    );
    // Every acknowledged create is stored, and no refused one ran.
    assert_eq!(
        app.count("job").await,
        created,
        "{refused} calls were refused"
    );
    eprintln!(
        "{created} creates acknowledged, {refused} refused by closing connections, \
         over {connections} connections"
    );
    assert!(
        created > 5 * refused,
        "{created} created, {refused} refused"
    );
}

#[tokio::test]
async fn a_stream_outliving_the_maximum_age_is_cut_after_the_grace() {
    let app = spawn_app_with(|a| {
        a.connections.max_connection_age = Some(std::time::Duration::from_millis(300));
        a.connections.max_connection_age_grace = Some(std::time::Duration::from_millis(500));
    })
    .await;
    let relay = Relay::start(app.port).await;
    let connected = Instant::now();
    let mut client = JobLedgerClient::new(relay.channel().await);
    let mut stream = org_stream(&mut client).await;

    // Past the age, within the grace: the stream still delivers, and a new call goes
    // over a new connection.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let job = match try_create_in_org(&mut client).await {
        Err(e) if refused_by_a_closing_connection(&e) => {
            try_create_in_org(&mut client).await.unwrap()
        }
        other => other.unwrap(),
    };
    assert_eq!(
        relay.accepted(),
        2,
        "the call after GOAWAY opened a new connection"
    );
    let event = tokio::time::timeout(Duration::from_millis(300), stream.next())
        .await
        .expect("the stream delivers within the grace")
        .unwrap()
        .unwrap();
    assert_eq!(event.job_id, job.id);

    // At age + grace the connection is closed under the stream.
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the stream is cut")
        .expect("with an error, not a clean end");
    let cut_after = connected.elapsed();
    let status = end.unwrap_err();
    assert!(
        matches!(status.code(), Code::Unavailable | Code::Unknown),
        "{status:?}"
    );
    assert!(
        cut_after >= Duration::from_millis(750) && cut_after < Duration::from_millis(2000),
        "cut {cut_after:?} after connecting; age + grace is 800 ms"
    );
    // The client carries on over a new connection.
    let mut stream = org_stream(&mut client).await;
    let job = create_in_org(&mut app.client.clone()).await;
    let event = tokio::time::timeout(Duration::from_secs(2), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.job_id, job.id);
}

#[tokio::test]
async fn without_a_grace_a_stream_outlives_the_maximum_age() {
    let app = spawn_app_with(|a| {
        a.connections.max_connection_age = Some(std::time::Duration::from_millis(300))
    })
    .await;
    let relay = Relay::start(app.port).await;
    let mut client = JobLedgerClient::new(relay.channel().await);
    let mut stream = org_stream(&mut client).await;

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let job = create_in_org(&mut app.client.clone()).await;
    let event = tokio::time::timeout(Duration::from_secs(2), stream.next())
        .await
        .expect("the stream is still open five ages later")
        .unwrap()
        .unwrap();
    assert_eq!(event.job_id, job.id);
    assert_eq!(relay.accepted(), 1);
    assert!(
        relay.server_closed().is_empty(),
        "the server closed the connection"
    );
}

#[tokio::test]
async fn keepalive_pings_close_a_silent_connection_and_keep_a_live_one() {
    let app = spawn_app_with(|a| {
        a.connections.http2_keepalive_interval = Some(std::time::Duration::from_millis(200));
        a.connections.http2_keepalive_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let relay = Relay::start(app.port).await;
    let channel = relay.channel().await;
    let mut health = HealthClient::new(channel);
    let check = HealthCheckRequest {
        service: "liveness".into(),
    };
    health.check(check.clone()).await.unwrap();

    // An idle client that answers PINGs keeps its connection.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    health.check(check.clone()).await.unwrap();
    assert_eq!(relay.accepted(), 1);
    assert!(relay.server_closed().is_empty());

    // A peer that stops answering is dropped after interval + timeout.
    relay.go_silent();
    let silent_since = Instant::now();
    while relay.server_closed().is_empty() {
        assert!(
            silent_since.elapsed() < Duration::from_secs(5),
            "the server kept a connection whose PINGs went unanswered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let closed_after = relay.server_closed()[0] - silent_since;
    assert!(
        closed_after < Duration::from_millis(2000),
        "closed {closed_after:?} after the peer went silent (interval 200 ms + timeout 300 ms)"
    );
}

#[tokio::test]
async fn without_keepalive_a_silent_connection_stays_open() {
    let app = spawn_app_with(|a| a.connections.http2_keepalive_interval = None).await;
    let relay = Relay::start(app.port).await;
    let mut health = HealthClient::new(relay.channel().await);
    health
        .check(HealthCheckRequest {
            service: "liveness".into(),
        })
        .await
        .unwrap();
    relay.go_silent();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(relay.server_closed().is_empty());
}

#[tokio::test]
async fn calls_beyond_the_streams_per_connection_wait_for_a_free_slot() {
    let app = spawn_app_with(|a| a.connections.max_concurrent_streams_per_connection = 2).await;
    let job = app.create("slots").await;
    let mut client = app.new_client().await;
    // The first call carries the server's SETTINGS to the client.
    get(&mut client, &job.id).await.unwrap();
    let first = org_stream(&mut client).await;
    let _second = org_stream(&mut client).await;

    let waiting = tokio::spawn({
        let mut client = client.clone();
        let id = job.id.clone();
        async move { get(&mut client, &id).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a third call ran beside two open streams"
    );
    // Another connection has slots of its own.
    get(&mut app.new_client().await, &job.id).await.unwrap();

    drop(first);
    let got = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting call runs once a stream ends")
        .unwrap()
        .unwrap();
    assert_eq!(got.id, job.id);
}
