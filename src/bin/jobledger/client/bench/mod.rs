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

mod compare;
mod load;
mod report;

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Subcommand, ValueEnum};
use jobledger::testkit::{ScratchDb, ServerProcess};
use serde::Serialize;

use load::{measure, rss_mib, Target};
use report::print_report;

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
    /// Jobs worked end to end: a producer creates them with CreateJobs (1,000 per call);
    /// each caller is a worker that claims --claim-batch at a time and completes them
    /// (one TransitionJobs per claim, or one TransitionJob per job with --complete one).
    /// Throughput counts jobs completed.
    Work,
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
            Workload::Work => "work",
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Complete {
    Batch,
    One,
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
    /// Jobs per ClaimJobs call (workload work).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i32).range(1..=100))]
    pub claim_batch: i32,
    /// How a worker completes what it claimed (workload work): `batch`, one TransitionJobs
    /// call per claim; `one`, one TransitionJob per job.
    #[arg(long, value_enum, default_value = "batch")]
    pub complete: Complete,
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

/// `jobledger bench ...`: runs, prints, exit code 1 on failure or on any failed call.
pub async fn run(args: BenchArgs) -> ExitCode {
    let result = match args.command {
        Some(BenchCommand::Compare(compare_args)) => {
            compare::compare(compare_args).await.map(|_| true)
        }
        None => {
            let output = args.run.load.output;
            run_load(args.run).await.map(|report| {
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
async fn run_load(args: RunArgs) -> anyhow::Result<Report> {
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
    let database = ScratchDb::on(&args.server.base_url, "jl_bench_");
    database.create().await?;
    for &c in &load.concurrency {
        let pool = args.server.pool_size.unwrap_or((c as u32).max(15));
        let server = args.server.spawn(&database.url(), pool).await?;
        let target = Target::connect(&server.addr, load.connections, Some(server.pid())).await?;
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
    // The database is dropped with `database`, whether the run succeeded or not.
    Ok(report)
}

impl SpawnArgs {
    /// `jobledger serve` (this binary unless --server-bin) on `database_url`.
    async fn spawn(&self, database_url: &str, pool_size: u32) -> anyhow::Result<ServerProcess> {
        let bin = match &self.server_bin {
            Some(bin) => bin.clone(),
            None => std::env::current_exe()?,
        };
        ServerProcess::command(bin, database_url)
            .arg("--pool-size", pool_size)
            .arg("--log-format", "json")
            // Warnings and errors on stderr, where a person running a benchmark sees them.
            .show_logs(true)
            .env("RUST_LOG", "warn")
            .start()
            .await
    }
}
