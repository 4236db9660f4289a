//! StreamEvents benchmark (not a test): commit-to-delivery latency with 1, 100 and 1000
//! concurrent subscribers, and server memory per open stream.
//!
//! `cargo bench --bench stream_latency` — starts the release `jobledger` binary on a
//! fresh database of the PostgreSQL at BENCH_DATABASE_URL (default
//! postgres://postgres@127.0.0.1:5432), drives it over gRPC, prints a table, and drops
//! the database. Latency = the subscriber's clock at receipt minus the event's `ts`
//! (the database's clock when the writing transaction took the job's lock, so it
//! includes the write and the commit). Same machine, same clock.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use jobledger::{
    proto::{self, job_ledger_client::JobLedgerClient, JobStatus as S},
    testkit::{ScratchDb, ServerProcess},
};
use tokio::sync::{mpsc, Barrier};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_jobledger");
const CONNECTIONS: usize = 8;
const ORG: &str = "0be0c0de-0000-4000-8000-00000000be0c";

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn millis_since(ts: &Option<prost_types::Timestamp>) -> f64 {
    let ts = ts.as_ref().expect("ts");
    let sent = SystemTime::UNIX_EPOCH + Duration::new(ts.seconds as u64, ts.nanos as u32);
    SystemTime::now()
        .duration_since(sent)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

async fn start_server(database_url: &str) -> ServerProcess {
    ServerProcess::command(BIN, database_url)
        .args(&["--max-streams", "20000", "--log-format", "json"])
        .show_logs(true)
        .env("RUST_LOG", "warn")
        .start()
        .await
        .expect("jobledger serve")
}

async fn clients(addr: &str) -> Vec<JobLedgerClient<Channel>> {
    let mut out = Vec::new();
    for _ in 0..CONNECTIONS {
        let channel = Channel::from_shared(addr.to_owned())
            .unwrap()
            .connect()
            .await
            .unwrap();
        out.push(JobLedgerClient::new(channel));
    }
    out
}

async fn create_running(client: &mut JobLedgerClient<Channel>) -> String {
    let job = client
        .create_job(proto::CreateJobRequest {
            org_id: ORG.into(),
            r#type: "bench".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    client
        .transition_job(proto::TransitionJobRequest {
            org_id: ORG.into(),
            job_id: job.id.clone(),
            to_status: S::Running as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    job.id
}

async fn report(client: &mut JobLedgerClient<Channel>, job_id: &str, progress: i32) {
    client
        .transition_job(proto::TransitionJobRequest {
            org_id: ORG.into(),
            job_id: job_id.to_owned(),
            to_status: S::Running as i32,
            progress: Some(progress % 101),
            ..Default::default()
        })
        .await
        .unwrap();
}

struct Row {
    scope: &'static str,
    subscribers: usize,
    events: usize,
    deliveries: usize,
    p50: f64,
    p99: f64,
    max: f64,
    kib_per_stream: f64,
}

/// `subscribers` streams, each on its own job (job scope) or all on the org (org scope);
/// `writes` progress reports paced at about 200/s; latencies of every delivery.
async fn run(server: &ServerProcess, org_scope: bool, subscribers: usize, writes: usize) -> Row {
    let clients = clients(&server.addr).await;
    let mut jobs = Vec::new();
    for i in 0..subscribers.max(if org_scope { 20 } else { 0 }) {
        jobs.push(create_running(&mut clients[i % CONNECTIONS].clone()).await);
    }
    let rss_before = rss_kib(server.child.id());
    let (tx, mut rx) = mpsc::unbounded_channel::<f64>();
    let ready = Arc::new(Barrier::new(subscribers + 1));
    let mut tasks = Vec::new();
    for i in 0..subscribers {
        let mut client = clients[i % CONNECTIONS].clone();
        let request = proto::StreamEventsRequest {
            org_id: ORG.into(),
            job_id: if org_scope {
                String::new()
            } else {
                jobs[i].clone()
            },
            ..Default::default()
        };
        let tx = tx.clone();
        let ready = ready.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = client.stream_events(request).await.unwrap().into_inner();
            if !org_scope {
                // The job's history: created, started.
                for _ in 0..2 {
                    stream.next().await.unwrap().unwrap();
                }
            }
            ready.wait().await;
            while let Some(Ok(event)) = stream.next().await {
                let _ = tx.send(millis_since(&event.ts));
            }
        }));
    }
    drop(tx);
    ready.wait().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_open = rss_kib(server.child.id());

    let targets: Vec<String> = if org_scope {
        jobs[..20].to_vec()
    } else {
        jobs.clone()
    };
    let expected = if org_scope {
        writes * subscribers
    } else {
        writes
    };
    let mut writer = clients[0].clone();
    let pace = tokio::time::interval(Duration::from_millis(5));
    tokio::pin!(pace);
    for k in 0..writes {
        pace.as_mut().tick().await;
        report(&mut writer, &targets[k % targets.len()], k as i32).await;
    }
    let mut latencies = Vec::with_capacity(expected);
    let deadline = Instant::now() + Duration::from_secs(60);
    while latencies.len() < expected && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(ms)) => latencies.push(ms),
            _ => break,
        }
    }
    for t in tasks {
        t.abort();
    }
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Row {
        scope: if org_scope { "org (fan-out)" } else { "job" },
        subscribers,
        events: writes,
        deliveries: latencies.len(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        max: latencies.last().copied().unwrap_or(f64::NAN),
        kib_per_stream: (rss_open as f64 - rss_before as f64) / subscribers as f64,
    }
}

#[tokio::main]
async fn main() {
    let base = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    // Dropped (with the database) at the end.
    let db = ScratchDb::on(&base, "jl_bench_");
    let server = start_server(&db.url()).await;
    let idle = rss_kib(server.child.id());

    let mut rows = Vec::new();
    for subscribers in [1, 100, 1000] {
        rows.push(run(&server, false, subscribers, 400).await);
    }
    for subscribers in [1, 100, 1000] {
        let writes = if subscribers >= 1000 { 50 } else { 200 };
        rows.push(run(&server, true, subscribers, writes).await);
    }
    let rss_end = rss_kib(server.child.id());
    drop(server);

    println!("StreamEvents commit-to-delivery latency (writes paced at ~200/s)");
    println!(
        "server RSS: {:.1} MiB idle at start, {:.1} MiB at the end",
        idle as f64 / 1024.0,
        rss_end as f64 / 1024.0
    );
    println!("| scope | subscribers | events written | deliveries | p50 ms | p99 ms | max ms | server KiB per open stream |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.scope, r.subscribers, r.events, r.deliveries, r.p50, r.p99, r.max, r.kib_per_stream
        );
    }
}
