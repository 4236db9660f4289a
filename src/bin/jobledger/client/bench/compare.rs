//! `jobledger bench compare`: pgbench running each RPC's SQL (bench/*.sql) on the same
//! fresh database right before the same workload over gRPC, and their ratio.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context};
use jobledger::testkit::ScratchDb;
use sqlx::{postgres::PgConnectOptions, Connection, Executor, PgConnection};

use super::load::{measure, rss_mib, Target};
use super::report::{print_comparison, print_comparison_row};
use super::{CompareArgs, Comparison, ComparisonRow, LoadArgs, Output, Workload};

const SCRIPTS: [(&str, &str); 5] = [
    (
        "create.sql",
        include_str!("../../../../../bench/create.sql"),
    ),
    ("get.sql", include_str!("../../../../../bench/get.sql")),
    (
        "transition.sql",
        include_str!("../../../../../bench/transition.sql"),
    ),
    ("work.sql", include_str!("../../../../../bench/work.sql")),
    (
        "produce.sql",
        include_str!("../../../../../bench/produce.sql"),
    ),
];

/// QUEUED `bench-work` jobs for the pgbench side of workload work: a backlog that
/// produce.sql refills as fast as work.sql drains it.
const PGBENCH_WORK_JOBS: i64 = 100_000;

/// Jobs one run of produce.sql creates (as one CreateJobs call of the gRPC producer).
const PRODUCE_BATCH: u32 = 1000;

/// Jobs `bench compare` puts in the table for the pgbench GetJob and TransitionJob scripts.
const PGBENCH_JOBS: i64 = 10_000;

/// `jobledger bench compare`.
pub async fn compare(args: CompareArgs) -> anyhow::Result<Comparison> {
    let database = ScratchDb::on(&args.server.base_url, "jl_bench_");
    database.create().await?;
    let scripts = std::env::temp_dir().join(format!("jobledger-bench-{}", std::process::id()));
    // The database (when `database` drops) and the scripts go away whether the run
    // succeeded or not.
    let result = compare_on(&args, &database, &scripts).await;
    std::fs::remove_dir_all(&scripts).ok();
    result
}

async fn compare_on(
    args: &CompareArgs,
    database: &ScratchDb,
    scripts: &Path,
) -> anyhow::Result<Comparison> {
    let load = &args.load;
    write_scripts(scripts)?;
    let options = database.options()?;
    jobledger::store::prepare_database(&options).await?;
    populate_for_pgbench(&options).await?;
    let mut comparison = Comparison {
        idle_rss_mib: None,
        pool_sizes: Vec::new(),
        rows: Vec::new(),
    };
    for &c in &load.concurrency {
        let pool = args.server.pool_size.unwrap_or((c as u32).max(15));
        comparison.pool_sizes.push(pool);
        for &w in &load.workloads {
            let Some(files) = pgbench_files(w, load.claim_batch) else {
                continue;
            };
            // A server per row: idle while pgbench runs (its event listener is awake for
            // both), and stopped afterwards so its pool's connections do not count
            // against max_connections in the next pgbench run.
            let server = args.server.spawn(&database.url(), pool).await?;
            let mut target =
                Target::connect(&server.addr, load.connections, Some(server.pid())).await?;
            target.touch().await?;
            comparison
                .idle_rss_mib
                .get_or_insert(rss_mib(server.pid(), "VmRSS:"));
            // GetJob over gRPC reads the same rows the pgbench script reads.
            target.get_ids = (1..=PGBENCH_JOBS).map(numbered_job_id).collect();
            vacuum(&options).await?;
            let tps = pgbench(&args.pgbench, &options, scripts, &files, c, load)?;
            let tps = per_second_as_grpc_counts(w, tps, load);
            vacuum(&options).await?;
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
    print_comparison(&comparison, load.output);
    Ok(comparison)
}

/// The pgbench scripts (bench/*.sql), where pgbench runs.
fn write_scripts(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, text) in SCRIPTS {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(())
}

/// pgbench's transactions per second in what the gRPC side counts: jobs worked for
/// workload work (a work.sql run works claim_batch jobs, and runs PRODUCE_BATCH times
/// out of PRODUCE_BATCH + claim_batch), calls otherwise.
fn per_second_as_grpc_counts(w: Workload, tps: f64, load: &LoadArgs) -> f64 {
    if w != Workload::Work {
        return tps;
    }
    let batch = f64::from(load.claim_batch);
    let produce = f64::from(PRODUCE_BATCH);
    tps * batch * produce / (produce + batch)
}

/// The pgbench scripts (with weights) that run what a workload's calls run.
fn pgbench_files(w: Workload, claim_batch: i32) -> Option<Vec<String>> {
    let files: &[&str] = match w {
        Workload::Create => &["create.sql"],
        Workload::Get => &["get.sql"],
        Workload::Transition => &["transition.sql"],
        // create, 3 gets, 3 transitions: the calls of one mixed iteration.
        Workload::Mixed => &["create.sql@1", "get.sql@3", "transition.sql@3"],
        // A 1,000-job batch created per 1,000 / claim_batch rounds of work.
        Workload::Work => {
            return Some(vec![
                format!("work.sql@{PRODUCE_BATCH}"),
                format!("produce.sql@{claim_batch}"),
            ])
        }
        Workload::CreateBatch => return None,
    };
    Some(files.iter().map(|f| f.to_string()).collect())
}

fn pgbench(
    bin: &PathBuf,
    options: &PgConnectOptions,
    scripts: &Path,
    files: &[String],
    concurrency: usize,
    load: &LoadArgs,
) -> anyhow::Result<f64> {
    let threads = concurrency.min(std::thread::available_parallelism().map_or(2, |n| n.get()));
    let mut command = Command::new(bin);
    command
        .current_dir(scripts)
        .args(["-n", "-M", "prepared", "-D"])
        .arg(format!("njobs={PGBENCH_JOBS}"))
        .args(["-D", &format!("claim_batch={}", load.claim_batch)])
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

/// PGBENCH_JOBS RUNNING jobs numbered 1.. (ids lpad(to_hex(n), 32, '0')), each with its
/// creation event, for the GetJob and TransitionJob scripts.
async fn populate_for_pgbench(options: &PgConnectOptions) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect_with(options).await?;
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
    sqlx::query(
        "INSERT INTO job (org_id, type, status, max_attempts, params)
         SELECT '00000000-0000-0000-0000-000000000000', 'bench-work', 'queued', 5,
                '{\"bench\": true}'
         FROM generate_series(1, $1::int8)",
    )
    .bind(PGBENCH_WORK_JOBS)
    .execute(&mut conn)
    .await?;
    conn.close().await.ok();
    vacuum(options).await
}

/// VACUUM ANALYZE of the tables both sides write, before each side's run: each starts
/// from a table without the other's dead rows (the PostgreSQL here runs with autovacuum
/// off, where they would pile up and slow whichever side runs second).
async fn vacuum(options: &PgConnectOptions) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect_with(options).await?;
    conn.execute("VACUUM ANALYZE job, job_event").await?;
    conn.close().await.ok();
    Ok(())
}
