//! `jobledger bench`: a load generator over real gRPC, and `jobledger bench compare`,
//! which runs the SQL of each RPC with pgbench (bench/*.sql) on the same fresh database
//! right before the gRPC load, for the ceiling a one-transaction-per-request service can
//! approach (BENCHMARKS.md).
//!
//! Every RPC is timed on its own (microsecond histograms, hdrhistogram); a workload's
//! throughput is RPCs (or, for `create-batch`, jobs) per second of the measured window,
//! which starts after a warm-up (the server's pool connects lazily; pgbench excludes its
//! connection time too). With `--spawn` the server is this binary on a database of its
//! own, so its CPU time (utime + stime of /proc/<pid>/stat) and peak RSS (VmHWM, reset
//! through /proc/<pid>/clear_refs before each measurement) are read.

use std::{
    path::PathBuf,
    process::{Child, Command, ExitCode, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;
use sqlx::{postgres::PgConnectOptions, Connection, Executor, PgConnection};
use tonic::transport::Channel;

use crate::api::convert::json_to_struct;
use crate::proto::{self, job_ledger_client::JobLedgerClient, JobStatus as S};

const SCRIPTS: [(&str, &str); 3] = [
    ("create.sql", include_str!("../bench/create.sql")),
    ("get.sql", include_str!("../bench/get.sql")),
    ("transition.sql", include_str!("../bench/transition.sql")),
];

/// Jobs `bench compare` puts in the table for the pgbench GetJob and TransitionJob scripts.
const PGBENCH_JOBS: i64 = 10_000;
/// Jobs the GetJob workload reads (created before it starts).
const GET_JOBS: usize = 1_000;

#[derive(Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug, Clone)]
pub enum BenchCommand {
    /// On one fresh database: pgbench running each RPC's SQL (bench/*.sql), then the same
    /// workload over gRPC, at each concurrency; prints both and their ratio.
    Compare(CompareArgs),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// CreateJob with a fresh idempotency key.
    Create,
    /// GetJob of a random job.
    Get,
    /// TransitionJob: start, progress, succeed of fresh jobs (each call counts).
    Transition,
    /// A job's life: create, get, start, get, progress, succeed, get (each call counts).
    Mixed,
    /// CreateJobs with --batch-size jobs per call (throughput counts jobs).
    CreateBatch,
}

impl Workload {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Create => "create",
            Workload::Get => "get",
            Workload::Transition => "transition",
            Workload::Mixed => "mixed",
            Workload::CreateBatch => "create-batch",
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// What to run, shared by `bench` and `bench compare`.
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// Workloads to run, in order.
    #[arg(long, value_enum, value_delimiter = ',',
          default_values_t = [Workload::Create, Workload::Get, Workload::Transition, Workload::Mixed])]
    pub workloads: Vec<Workload>,
    /// Concurrent callers (a list runs each in turn).
    #[arg(long, value_delimiter = ',', default_value = "16")]
    pub concurrency: Vec<usize>,
    /// Measured seconds per workload and concurrency.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Unmeasured seconds before each measurement.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// HTTP/2 connections the callers are spread over.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub connections: u16,
    /// Jobs per CreateJobs call (workload create-batch).
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// `table` (readable) or `json` (one object on stdout).
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Args, Debug, Clone)]
pub struct SpawnArgs {
    /// PostgreSQL server on which a spawned server's fresh database is created (and
    /// dropped afterwards).
    #[arg(
        long = "database-url",
        env = "BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pub base_url: String,
    /// Request pool of the spawned server. Default: the concurrency, at least 15 (the
    /// server's default); a spawned server is started per concurrency.
    #[arg(long)]
    pub pool_size: Option<u32>,
    /// The server binary to spawn (default: this one).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// A running server to load.
    #[arg(
        long,
        env = "JOBLEDGER_ADDR",
        conflicts_with = "spawn",
        required_unless_present = "spawn"
    )]
    pub addr: Option<String>,
    /// Start this binary as `serve` on a fresh database instead (reports its CPU and RSS).
    #[arg(long)]
    pub spawn: bool,
    #[command(flatten)]
    pub server: SpawnArgs,
}

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub server: SpawnArgs,
    /// The pgbench binary.
    #[arg(long, default_value = "pgbench")]
    pub pgbench: PathBuf,
}

/// One measurement of one workload at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub workload: Workload,
    pub concurrency: usize,
    pub connections: u16,
    pub seconds: f64,
    /// Successful calls in the measured window.
    pub requests: u64,
    pub errors: u64,
    /// The first error seen, if any.
    pub first_error: Option<String>,
    /// Calls per second (jobs per second for create-batch).
    pub throughput: f64,
    pub latency_ms: Latency,
    /// Seconds of CPU the bench client itself used.
    pub client_cpu_seconds: f64,
    /// The spawned server's usage during the measured window.
    pub server: Option<ServerUsage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerUsage {
    pub cpu_seconds: f64,
    pub peak_rss_mib: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// RSS of the spawned server after start-up and one call of each kind, before load.
    pub idle_rss_mib: Option<f64>,
    pub pool_size: Option<u32>,
    pub measurements: Vec<Measurement>,
}

/// `jobledger bench ...`: runs, prints, exit code 1 on failure or on any failed call.
pub async fn main(args: BenchArgs) -> ExitCode {
    let result = match args.command {
        Some(BenchCommand::Compare(compare_args)) => compare(compare_args).await.map(|_| true),
        None => {
            let output = args.run.load.output;
            run(args.run).await.map(|report| {
                print_report(&report, output);
                report.measurements.iter().all(|m| m.errors == 0)
            })
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("some calls failed");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `jobledger bench`: every workload at every concurrency, against `--addr` or a
/// spawned server (a fresh one per concurrency, so each level's peak RSS is its own).
pub async fn run(args: RunArgs) -> anyhow::Result<Report> {
    let load = &args.load;
    let mut report = Report {
        idle_rss_mib: None,
        pool_size: None,
        measurements: Vec::new(),
    };
    if let Some(addr) = &args.addr {
        let target = Target::connect(addr, load.connections, None).await?;
        for &c in &load.concurrency {
            for &w in &load.workloads {
                report
                    .measurements
                    .push(measure(&target, w, c, load).await?);
            }
        }
        return Ok(report);
    }
    let database = Database::create(&args.server.base_url).await?;
    // The database goes away whether the run succeeded or not.
    let result = async {
        for &c in &load.concurrency {
            let pool = args.server.pool_size.unwrap_or((c as u32).max(15));
            let server = Server::spawn(&args.server, &database.url, pool).await?;
            let target =
                Target::connect(&server.addr, load.connections, Some(server.pid())).await?;
            target.touch().await?;
            report
                .idle_rss_mib
                .get_or_insert(rss_mib(server.pid(), "VmRSS:"));
            report.pool_size.get_or_insert(pool);
            for &w in &load.workloads {
                report
                    .measurements
                    .push(measure(&target, w, c, load).await?);
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    database.drop_now().await;
    result.map(|()| report)
}

/// One row of `bench compare`.
#[derive(Debug, Clone, Serialize)]
pub struct ComparisonRow {
    pub workload: Workload,
    pub concurrency: usize,
    pub pgbench_tps: f64,
    pub grpc: Measurement,
    pub ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub idle_rss_mib: Option<f64>,
    pub pool_sizes: Vec<u32>,
    pub rows: Vec<ComparisonRow>,
}

/// `jobledger bench compare`.
pub async fn compare(args: CompareArgs) -> anyhow::Result<Comparison> {
    let database = Database::create(&args.server.base_url).await?;
    let scripts = std::env::temp_dir().join(format!("jobledger-bench-{}", std::process::id()));
    // The database and the scripts go away whether the run succeeded or not.
    let result = compare_on(&args, &database, &scripts).await;
    database.drop_now().await;
    std::fs::remove_dir_all(&scripts).ok();
    result
}

async fn compare_on(
    args: &CompareArgs,
    database: &Database,
    scripts: &std::path::Path,
) -> anyhow::Result<Comparison> {
    let load = &args.load;
    std::fs::create_dir_all(scripts)?;
    for (name, text) in SCRIPTS {
        std::fs::write(scripts.join(name), text)?;
    }
    crate::store::prepare_database(&database.options).await?;
    database.populate_for_pgbench().await?;
    let mut comparison = Comparison {
        idle_rss_mib: None,
        pool_sizes: Vec::new(),
        rows: Vec::new(),
    };
    for &c in &load.concurrency {
        let pool = args.server.pool_size.unwrap_or((c as u32).max(15));
        comparison.pool_sizes.push(pool);
        for &w in &load.workloads {
            let Some(files) = pgbench_files(w) else {
                continue;
            };
            // A server per row: idle while pgbench runs (its event listener is awake for
            // both), and stopped afterwards so its pool's connections do not count
            // against max_connections in the next pgbench run.
            let server = Server::spawn(&args.server, &database.url, pool).await?;
            let mut target =
                Target::connect(&server.addr, load.connections, Some(server.pid())).await?;
            target.touch().await?;
            comparison
                .idle_rss_mib
                .get_or_insert(rss_mib(server.pid(), "VmRSS:"));
            // GetJob over gRPC reads the same rows the pgbench script reads.
            target.get_ids = (1..=PGBENCH_JOBS).map(numbered_job_id).collect();
            let tps = pgbench(&args.pgbench, &database.options, scripts, &files, c, load)?;
            let grpc = measure(&target, w, c, load).await?;
            drop(target);
            drop(server);
            let row = ComparisonRow {
                workload: w,
                concurrency: c,
                pgbench_tps: tps,
                ratio: grpc.throughput / tps,
                grpc,
            };
            if load.output == Output::Table {
                print_comparison_row(&row, comparison.rows.is_empty());
            }
            comparison.rows.push(row);
        }
    }
    match load.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&comparison)?),
        Output::Table => println!(
            "\nserver idle RSS {:.1} MiB; pool sizes {:?}",
            comparison.idle_rss_mib.unwrap_or(f64::NAN),
            comparison.pool_sizes
        ),
    }
    Ok(comparison)
}

/// The pgbench scripts (with weights) that run what a workload's calls run.
fn pgbench_files(w: Workload) -> Option<Vec<&'static str>> {
    Some(match w {
        Workload::Create => vec!["create.sql"],
        Workload::Get => vec!["get.sql"],
        Workload::Transition => vec!["transition.sql"],
        // create, 3 gets, 3 transitions: the calls of one mixed iteration.
        Workload::Mixed => vec!["create.sql@1", "get.sql@3", "transition.sql@3"],
        Workload::CreateBatch => return None,
    })
}

fn pgbench(
    bin: &PathBuf,
    options: &PgConnectOptions,
    scripts: &std::path::Path,
    files: &[&str],
    concurrency: usize,
    load: &LoadArgs,
) -> anyhow::Result<f64> {
    let threads = concurrency.min(std::thread::available_parallelism().map_or(2, |n| n.get()));
    let mut command = Command::new(bin);
    command
        .current_dir(scripts)
        .args(["-n", "-M", "prepared", "-D"])
        .arg(format!("njobs={PGBENCH_JOBS}"))
        .args(["-c", &concurrency.to_string(), "-j", &threads.to_string()])
        .args(["-T", &(load.duration.round().max(1.0) as u64).to_string()])
        .args([
            "-h",
            options.get_host(),
            "-p",
            &options.get_port().to_string(),
        ])
        .args(["-U", options.get_username()]);
    for f in files {
        command.args(["-f", f]);
    }
    command.arg(options.get_database().unwrap_or("postgres"));
    let mut tries = 0;
    let out = loop {
        let out = command
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        // A shared PostgreSQL may be near max_connections for a moment (the connections
        // of the server that just stopped, other clients): wait and try again.
        let busy = String::from_utf8_lossy(&out.stderr).contains("too many clients");
        if out.status.success() || !busy || tries == 10 {
            break out;
        }
        tries += 1;
        std::thread::sleep(Duration::from_secs(2));
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no tps in pgbench's output: {stdout}"))
}

/// The id of pgbench's job number `n`: lpad(to_hex(n), 32, '0')::uuid.
fn numbered_job_id(n: i64) -> String {
    uuid::Uuid::from_u128(n as u128).to_string()
}

/// Where the load goes: clients over `connections` HTTP/2 connections.
struct Target {
    clients: Vec<JobLedgerClient<Channel>>,
    pid: Option<u32>,
    /// Jobs the GetJob workload reads (created on first use unless set).
    get_ids: Vec<String>,
    run: String,
}

impl Target {
    async fn connect(addr: &str, connections: u16, pid: Option<u32>) -> anyhow::Result<Target> {
        let mut clients = Vec::new();
        for _ in 0..connections {
            let channel = Channel::from_shared(addr.to_owned())
                .with_context(|| format!("{addr:?} is not a URI"))?
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            clients.push(JobLedgerClient::new(channel));
        }
        Ok(Target {
            clients,
            pid,
            get_ids: Vec::new(),
            run: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
        })
    }

    /// One call of each kind, so idle memory is measured on a server that has served.
    async fn touch(&self) -> anyhow::Result<()> {
        let mut client = self.clients[0].clone();
        let job = client
            .create_job(create_request(format!("{}-touch", self.run)))
            .await?
            .into_inner()
            .job
            .context("no job")?;
        client.get_job(get_request(&job.id)).await?;
        client
            .transition_job(transition_request(&job.id, S::Running, None))
            .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(())
    }

    /// `n` new QUEUED jobs, made with CreateJobs.
    async fn create_queued(&self, n: usize, tag: &str) -> anyhow::Result<Vec<String>> {
        let mut ids = Vec::with_capacity(n);
        let mut client = self.clients[0].clone();
        let mut made = 0;
        while made < n {
            let size = (n - made).min(1000);
            let jobs = (made..made + size)
                .map(|i| create_request(format!("{}-{tag}-{i}", self.run)))
                .collect();
            let response = client
                .create_jobs(proto::CreateJobsRequest { jobs })
                .await
                .context("creating jobs for the workload")?
                .into_inner();
            for r in response.results {
                ids.push(r.job.context("a setup job failed")?.id);
            }
            made += size;
        }
        Ok(ids)
    }
}

fn create_request(key: String) -> proto::CreateJobRequest {
    proto::CreateJobRequest {
        r#type: "bench".into(),
        idempotency_key: key,
        requested_by: "bench".into(),
        params: Some(json_to_struct(&serde_json::json!({"bench": true}))),
        ..Default::default()
    }
}

fn get_request(id: &str) -> proto::GetJobRequest {
    proto::GetJobRequest {
        job_id: id.to_owned(),
        ..Default::default()
    }
}

fn transition_request(id: &str, to: S, attempt: Option<i32>) -> proto::TransitionJobRequest {
    let mut request = proto::TransitionJobRequest {
        job_id: id.to_owned(),
        to_status: to as i32,
        attempt,
        actor: "bench".into(),
        ..Default::default()
    };
    match (to, attempt) {
        (S::Running, None) => request.expected_status = Some(S::Queued as i32),
        (S::Running, Some(_)) => {
            request.stage = "bench".into();
            request.progress = Some(50);
        }
        (S::Succeeded, _) => {
            request.result = Some(json_to_struct(&serde_json::json!({"bench": true})))
        }
        _ => {}
    }
    request
}

/// What one caller saw.
struct Tally {
    latency_us: Histogram<u64>,
    requests: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latency_us: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
            requests: 0,
            errors: 0,
            first_error: None,
        }
    }
}

/// Times one call; counts it only if it started inside the measured window.
struct Clock {
    measure_from: Instant,
    end: Instant,
}

impl Clock {
    fn running(&self) -> bool {
        Instant::now() < self.end
    }

    async fn call<T>(
        &self,
        tally: &mut Tally,
        call: impl std::future::Future<Output = Result<T, tonic::Status>>,
    ) -> Option<T> {
        let started = Instant::now();
        let result = call.await;
        let counted = started >= self.measure_from;
        match result {
            Ok(value) => {
                if counted {
                    let us = started.elapsed().as_micros() as u64;
                    tally.latency_us.saturating_record(us.max(1));
                    tally.requests += 1;
                }
                Some(value)
            }
            Err(status) => {
                if counted {
                    tally.errors += 1;
                }
                tally
                    .first_error
                    .get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
                None
            }
        }
    }
}

async fn measure(
    target: &Target,
    workload: Workload,
    concurrency: usize,
    load: &LoadArgs,
) -> anyhow::Result<Measurement> {
    let total = load.warmup + load.duration;
    let tag = format!("{}-{concurrency}", workload.name());
    let get_ids = Arc::new(match workload {
        Workload::Get if target.get_ids.is_empty() => {
            target
                .create_queued(GET_JOBS, &format!("{tag}-get"))
                .await?
        }
        Workload::Get => target.get_ids.clone(),
        _ => Vec::new(),
    });
    // Fresh QUEUED jobs for the transition and mixed workloads to start (more are made
    // on the way if they run out; those creates are not counted).
    let queued = if workload == Workload::Transition {
        let estimate = (total * 400.0 + 20.0 * concurrency as f64) as usize;
        target.create_queued(estimate, &format!("{tag}-q")).await?
    } else {
        Vec::new()
    };
    let queued = Arc::new(Mutex::new(queued));
    let started = Instant::now();
    let clock = Arc::new(Clock {
        measure_from: started + Duration::from_secs_f64(load.warmup),
        end: started + Duration::from_secs_f64(total),
    });
    let server_before = {
        let pid = target.pid;
        let measure_from = clock.measure_from;
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            let client_cpu = cpu_seconds("self");
            pid.map(|pid| {
                reset_peak_rss(pid);
                cpu_seconds(&pid.to_string())
            })
            .map_or((client_cpu, None), |cpu| (client_cpu, Some(cpu)))
        })
    };
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let mut client = target.clients[w % target.clients.len()].clone();
        let clock = clock.clone();
        let get_ids = get_ids.clone();
        let queued = queued.clone();
        let key_prefix = format!("{}-{tag}-{w}", target.run);
        let batch_size = load.batch_size;
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            let mut rng = XorShift::new(w as u64 + 1);
            let mut i = 0u64;
            while clock.running() {
                i += 1;
                let key = format!("{key_prefix}-{i}");
                match workload {
                    Workload::Create => {
                        clock
                            .call(&mut tally, client.create_job(create_request(key)))
                            .await;
                    }
                    Workload::Get => {
                        let id = &get_ids[rng.below(get_ids.len())];
                        clock
                            .call(&mut tally, client.get_job(get_request(id)))
                            .await;
                    }
                    Workload::CreateBatch => {
                        let jobs = (0..batch_size)
                            .map(|j| create_request(format!("{key}-{j}")))
                            .collect();
                        let calls = tally.requests;
                        clock
                            .call(
                                &mut tally,
                                client.create_jobs(proto::CreateJobsRequest { jobs }),
                            )
                            .await;
                        // Count jobs, not calls.
                        if tally.requests > calls {
                            tally.requests += batch_size as u64 - 1;
                        }
                    }
                    Workload::Transition => {
                        let next = queued.lock().expect("queue lock").pop();
                        let id = match next {
                            Some(id) => id,
                            None => match client.create_job(create_request(key)).await {
                                Ok(r) => r.into_inner().job.map(|j| j.id).unwrap_or_default(),
                                Err(_) => continue,
                            },
                        };
                        life_after_create(&clock, &mut tally, &mut client, &id, false).await;
                    }
                    Workload::Mixed => {
                        let created = clock
                            .call(&mut tally, client.create_job(create_request(key)))
                            .await;
                        let Some(id) = created.and_then(|r| r.into_inner().job).map(|j| j.id)
                        else {
                            continue;
                        };
                        life_after_create(&clock, &mut tally, &mut client, &id, true).await;
                    }
                }
            }
            tally
        }));
    }
    let mut tally = Tally::new();
    for worker in workers {
        let t = worker.await?;
        tally.latency_us.add(&t.latency_us).ok();
        tally.requests += t.requests;
        tally.errors += t.errors;
        if tally.first_error.is_none() {
            tally.first_error = t.first_error;
        }
    }
    let (client_cpu_before, server_cpu_before) = server_before.await?;
    let seconds = load.duration;
    let h = &tally.latency_us;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(Measurement {
        workload,
        concurrency,
        connections: load.connections,
        seconds,
        requests: tally.requests,
        errors: tally.errors,
        first_error: tally.first_error,
        throughput: tally.requests as f64 / seconds,
        latency_ms: Latency {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1000.0,
        },
        client_cpu_seconds: cpu_seconds("self") - client_cpu_before,
        server: target
            .pid
            .zip(server_cpu_before)
            .map(|(pid, before)| ServerUsage {
                cpu_seconds: cpu_seconds(&pid.to_string()) - before,
                peak_rss_mib: rss_mib(pid, "VmHWM:"),
            }),
    })
}

/// start, progress, succeed (with a GetJob after each step but the first when `reads`).
async fn life_after_create(
    clock: &Clock,
    tally: &mut Tally,
    client: &mut JobLedgerClient<Channel>,
    id: &str,
    reads: bool,
) {
    let steps = [
        (S::Running, None),
        (S::Running, Some(1)),
        (S::Succeeded, Some(1)),
    ];
    for (n, (to, attempt)) in steps.into_iter().enumerate() {
        // Mixed: create, get, start, get, progress, succeed, get.
        if reads && n < 2 {
            clock.call(tally, client.get_job(get_request(id))).await;
        }
        let done = clock
            .call(
                tally,
                client.transition_job(transition_request(id, to, attempt)),
            )
            .await;
        if done.is_none() {
            return;
        }
    }
    if reads {
        clock.call(tally, client.get_job(get_request(id))).await;
    }
}

/// A small, fast generator for picking jobs (no cryptographic needs).
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// utime + stime of a process (`self` or a pid), in seconds (USER_HZ = 100 on Linux).
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// A `/proc/<pid>/status` memory line (`VmRSS:`, `VmHWM:`) in MiB.
fn rss_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Resets VmHWM to the current RSS, so the next reading is this measurement's peak.
fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// A fresh database on the PostgreSQL at a base URL, dropped by `drop_now`.
struct Database {
    url: String,
    options: PgConnectOptions,
    admin: PgConnectOptions,
    name: String,
}

impl Database {
    async fn create(base_url: &str) -> anyhow::Result<Database> {
        let base: PgConnectOptions = base_url
            .parse()
            .with_context(|| format!("{base_url:?} is not a PostgreSQL URL"))?;
        let name = format!("jl_bench_{}", uuid::Uuid::new_v4().simple());
        let admin = base.clone().database("postgres");
        let mut conn = PgConnection::connect_with(&admin)
            .await
            .context("connecting to PostgreSQL")?;
        conn.execute(format!("CREATE DATABASE \"{name}\"").as_str())
            .await?;
        conn.close().await.ok();
        let url = format!("{}/{name}", base_url.trim_end_matches('/'));
        Ok(Database {
            options: base.database(&name),
            url,
            admin,
            name,
        })
    }

    /// PGBENCH_JOBS RUNNING jobs numbered 1.. (ids lpad(to_hex(n), 32, '0')), each with its
    /// creation event, for the GetJob and TransitionJob scripts.
    async fn populate_for_pgbench(&self) -> anyhow::Result<()> {
        let mut conn = PgConnection::connect_with(&self.options).await?;
        sqlx::query(
            "INSERT INTO job (id, org_id, type, status, attempt, max_attempts, requested_by,
                              params, started_at)
             SELECT lpad(to_hex(n), 32, '0')::uuid, '00000000-0000-0000-0000-000000000000',
                    'bench', 'running', 1, 5, 'bench', '{\"bench\": true}', now()
             FROM generate_series(1, $1::int8) AS n",
        )
        .bind(PGBENCH_JOBS)
        .execute(&mut conn)
        .await?;
        conn.execute(
            "INSERT INTO job_event (job_id, org_id, ts, prev_status, next_status, attempt,
                                    detail_json)
             SELECT id, org_id, created_at, NULL, 'queued', 0, '{\"actor\": \"bench\"}'
             FROM job",
        )
        .await?;
        conn.execute("VACUUM ANALYZE job, job_event").await?;
        conn.close().await.ok();
        Ok(())
    }

    async fn drop_now(self) {
        if let Ok(mut conn) = PgConnection::connect_with(&self.admin).await {
            let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
            let _ = conn.execute(sql.as_str()).await;
            conn.close().await.ok();
        }
    }
}

/// `jobledger serve` in a child process, killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    async fn spawn(args: &SpawnArgs, database_url: &str, pool_size: u32) -> anyhow::Result<Server> {
        let bin = match &args.server_bin {
            Some(bin) => bin.clone(),
            None => std::env::current_exe()?,
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(&bin)
            .args(["serve", "--database-url", database_url])
            .args(["--listen-addr", &format!("127.0.0.1:{port}")])
            .args([
                "--pool-size",
                &pool_size.to_string(),
                "--log-format",
                "json",
            ])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut server = Server {
            child,
            addr: format!("http://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        loop {
            if let Ok(channel) = Channel::from_shared(server.addr.clone())?.connect().await {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let serving = health
                    .check(tonic_health::pb::HealthCheckRequest::default())
                    .await
                    .is_ok_and(|r| r.into_inner().status == 1);
                if serving {
                    return Ok(server);
                }
            }
            if let Some(status) = server.child.try_wait()? {
                bail!("the server exited at start-up: {status}");
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("the server did not start within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn print_report(report: &Report, output: Output) {
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).unwrap_or_default()
        );
        return;
    }
    println!(
        "{:<13} {:>5} {:>10} {:>8} {:>7} {:>7} {:>7} {:>8} {:>9} {:>9} {:>8}",
        "workload",
        "conc",
        "per s",
        "errors",
        "p50 ms",
        "p90",
        "p99",
        "p99.9",
        "srv cpu s",
        "peak MiB",
        "cli cpu"
    );
    for m in &report.measurements {
        println!(
            "{:<13} {:>5} {:>10.0} {:>8} {:>7.2} {:>7.2} {:>7.2} {:>8.2} {:>9} {:>9} {:>8.1}",
            m.workload.name(),
            m.concurrency,
            m.throughput,
            m.errors,
            m.latency_ms.p50,
            m.latency_ms.p90,
            m.latency_ms.p99,
            m.latency_ms.p999,
            m.server
                .as_ref()
                .map_or("-".into(), |s| format!("{:.1}", s.cpu_seconds)),
            m.server
                .as_ref()
                .map_or("-".into(), |s| format!("{:.1}", s.peak_rss_mib)),
            m.client_cpu_seconds,
        );
        if let Some(e) = &m.first_error {
            println!("    first error: {e}");
        }
    }
    if let Some(rss) = report.idle_rss_mib {
        println!(
            "server idle RSS {rss:.1} MiB (pool size {:?})",
            report.pool_size
        );
    }
}

fn print_comparison_row(row: &ComparisonRow, header: bool) {
    if header {
        println!(
            "| {:<10} | {:>4} | {:>10} | {:>10} | {:>5} | {:>7} | {:>7} | {:>8} | {:>9} | {:>8} |",
            "workload",
            "conc",
            "pgbench/s",
            "gRPC/s",
            "ratio",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "srv cpu s",
            "peak MiB"
        );
        println!(
            "|{:-<12}|{:->6}|{:->12}|{:->12}|{:->7}|{:->9}|{:->9}|{:->10}|{:->11}|{:->10}|",
            "", "", "", "", "", "", "", "", "", ""
        );
    }
    let g = &row.grpc;
    println!(
        "| {:<10} | {:>4} | {:>10.0} | {:>10.0} | {:>5.2} | {:>7.2} | {:>7.2} | {:>8.2} | {:>9} | {:>8} |",
        row.workload.name(),
        row.concurrency,
        row.pgbench_tps,
        g.throughput,
        row.ratio,
        g.latency_ms.p50,
        g.latency_ms.p99,
        g.latency_ms.p999,
        g.server
            .as_ref()
            .map_or("-".into(), |s| format!("{:.1}", s.cpu_seconds)),
        g.server
            .as_ref()
            .map_or("-".into(), |s| format!("{:.1}", s.peak_rss_mib)),
    );
    if g.errors > 0 {
        println!(
            "    {} errors; first: {}",
            g.errors,
            g.first_error.as_deref().unwrap_or("")
        );
    }
}
