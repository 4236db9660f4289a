//! The Python example (`examples/python`) end to end against the real `jobledger`
//! binary, on the `jobledger` library (`clients/python`): `api.py` creating jobs and
//! streaming their events, `worker.py` processes (the library's `Worker`) claiming them
//! with `ClaimJobs` (long-poll, lease, heartbeats), failing deterministically and
//! retrying, and `health.py`. Asserts on what the scripts print and on the
//! rows they leave, then runs `jobledger check`. Dispatch under failure: a worker killed
//! with SIGKILL mid-job (its job rescued by the server and finished, once, by another
//! worker), a worker paused with SIGSTOP past its lease (it stops when it wakes up), and
//! a job canceled under its worker (the worker stops its work).
//!
//! The library and its pinned packages (clients/python/requirements-dev.txt) are installed
//! from PyPI on first use into `target/python-client-venv` by `clients/python/setup.sh`,
//! then reused; tests/python_client.rs tests the library itself.

use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use chrono::{DateTime, Utc};

use jobledger::testkit::{cluster::free_port, ScratchDb, ServerProcess};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, Row};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_jobledger");
/// The mock job's stages, as worker.py runs them.
const STAGES: [&str; 4] = ["download", "parse", "transform", "upload"];

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python")
}

/// Runs `clients/python/setup.sh` (installs into `target/python-client-venv` unless
/// already there) and returns the venv's python.
fn python_venv() -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is inside the target directory");
    let venv = target.join("python-client-venv");
    let started = Instant::now();
    let setup = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python/setup.sh");
    let output = Command::new("bash")
        .arg(setup)
        .arg(&venv)
        .output()
        .expect("run clients/python/setup.sh (needs bash)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "could not prepare the Python library's virtualenv {} (needs python3 with venv, \
         and PyPI reachable on the first run):\n{stderr}",
        venv.display()
    );
    if stderr.contains("installing") {
        eprintln!(
            "installed the Python library and its packages into {} in {:.1} s",
            venv.display(),
            started.elapsed().as_secs_f64()
        );
    }
    venv.join("bin/python")
}

/// The example's scripts, run with the venv's python (the library installed editable).
struct Python {
    python: PathBuf,
    scratch: tempfile::TempDir,
}

impl Python {
    fn new() -> Python {
        let scratch = tempfile::Builder::new()
            .prefix("python-example-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        Python {
            python: python_venv(),
            scratch,
        }
    }

    /// Starts `script` with `args`; its stdout and stderr go to a file of its own.
    fn spawn(&self, name: &str, script: &str, args: &[&str]) -> Script {
        let log = self.scratch.path().join(format!("{name}.log"));
        let out = File::create(&log).unwrap();
        let child = Command::new(&self.python)
            .arg(example_dir().join(script))
            .args(args)
            .current_dir(example_dir())
            .env("PYTHONUNBUFFERED", "1")
            // No __pycache__ in the source tree.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {script}: {e}"));
        Script {
            name: name.to_owned(),
            child,
            log,
        }
    }

    /// Runs `script` to its end (at most `limit`): its exit code and output.
    async fn run(&self, name: &str, script: &str, args: &[&str], limit: Duration) -> Finished {
        self.spawn(name, script, args).finish(limit).await
    }
}

/// A running script, killed if the test ends first.
struct Script {
    name: String,
    child: Child,
    log: PathBuf,
}

struct Finished {
    code: Option<i32>,
    output: String,
}

impl Script {
    /// Waits up to `limit` for the script to exit (panicking with its output if not).
    async fn finish(mut self, limit: Duration) -> Finished {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Finished {
                    code: status.code(),
                    output: std::fs::read_to_string(&self.log).unwrap(),
                };
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} did not finish within {limit:?}; its output:\n{}",
                    self.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends a signal (`TERM`, `KILL`, `STOP`, `CONT`).
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} {}", self.name);
    }

    /// What the script printed so far.
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `limit` for a line containing `needle`; returns it.
    async fn wait_for_line(&self, needle: &str, limit: Duration) -> String {
        let started = Instant::now();
        loop {
            let output = self.output();
            if let Some(found) = output.lines().find(|l| l.contains(needle)) {
                return found.to_owned();
            }
            assert!(
                started.elapsed() < limit,
                "{} printed no line with {needle:?} within {limit:?}:\n{output}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `jobledger serve` process on a free port: few connections (the shared PostgreSQL
/// allows 100), a quick first probe; killed when dropped.
async fn start_server(database_url: &str) -> ServerProcess {
    start_server_with(database_url, &[]).await
}

/// As [`start_server`], with `extra` flags.
async fn start_server_with(database_url: &str, extra: &[&str]) -> ServerProcess {
    ServerProcess::command(BIN, database_url)
        .args(&["--pool-size", "5"])
        .args(extra)
        .start()
        .await
        .expect("jobledger serve")
}

/// The lines of `output` that start with `prefix`.
fn lines<'a>(output: &'a str, prefix: &str) -> Vec<&'a str> {
    output.lines().filter(|l| l.starts_with(prefix)).collect()
}

/// The one line of `output` that starts with `prefix`.
fn line<'a>(output: &'a str, prefix: &str) -> &'a str {
    match lines(output, prefix).as_slice() {
        [one] => one,
        other => panic!("expected one line starting {prefix:?}, got {other:?} in\n{output}"),
    }
}

/// One event in a form both the printed events and the rows can be brought to:
/// `PREV->NEXT aN`, plus stage and progress of a report, the error code of a failure,
/// the reason of an automatic dead-lettering.
fn step(prev: &str, next: &str, attempt: i64, detail: &BTreeMap<String, String>) -> String {
    let mut step = format!("{prev}->{next} a{attempt}");
    let extra = match (prev, next) {
        ("RUNNING", "RUNNING") => vec!["stage", "progress"],
        (_, "FAILED") => vec!["error_code"],
        ("FAILED", "DEAD_LETTER") => vec!["reason"],
        _ => vec![],
    };
    for key in extra {
        step.push(' ');
        step.push_str(detail.get(key).map_or("-", String::as_str));
    }
    step
}

/// The steps of one attempt: the claim from `from`, the stage reports, then success or
/// the failure at `fail_at`.
fn attempt(n: i64, from: &str, fail_at: Option<&str>) -> Vec<String> {
    let mut steps = vec![format!("{from}->RUNNING a{n}")];
    for (i, stage) in STAGES.iter().enumerate() {
        steps.push(format!("RUNNING->RUNNING a{n} {stage} {}", i * 25));
        if fail_at == Some(*stage) {
            steps.push(format!("RUNNING->FAILED a{n} MOCK_STAGE_FAILED"));
            return steps;
        }
    }
    steps.push(format!("RUNNING->SUCCEEDED a{n}"));
    steps
}

fn created() -> Vec<String> {
    vec!["(created)->QUEUED a0".to_owned()]
}

/// The events api.py printed, per job key, as steps.
fn printed_steps(output: &str) -> BTreeMap<String, Vec<String>> {
    let mut steps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in lines(output, "event ") {
        // event KEY PREV -> NEXT attempt=N name=value ...
        let words: Vec<&str> = line.split(' ').collect();
        assert!(
            words.len() >= 6 && words[3] == "->",
            "odd event line {line:?}"
        );
        let attempt = words[5]
            .strip_prefix("attempt=")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no attempt in {line:?}"));
        let detail = words[6..]
            .iter()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let step = step(words[2], words[4], attempt, &detail);
        steps.entry(words[1].to_owned()).or_default().push(step);
    }
    steps
}

/// A stored status (`dead_letter`) as the scripts print it (`DEAD_LETTER`).
fn shown(status: Option<String>) -> String {
    status.map_or("(created)".to_owned(), |s| s.to_uppercase())
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Runs `jobledger check` on the database: it must exit 0 and report ok. Its report.
fn check(database_url: &str) -> Value {
    let check = Command::new(BIN)
        .args(["check", "--database-url", database_url, "--output", "json"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&check.stdout).unwrap_or_else(|e| {
        panic!(
            "jobledger check printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&check.stderr)
        )
    });
    assert_eq!(check.status.code(), Some(0), "{report:#}");
    assert_eq!(report["ok"], true, "{report:#}");
    report
}

/// A worker.py for the dispatch tests: 2 s leases (a heartbeat every 0.67 s), one slot.
fn lease_worker(py: &Python, addr: &str, id: &str) -> Script {
    py.spawn(
        id,
        "worker.py",
        &[
            "--addr",
            addr,
            "--worker-id",
            id,
            "--lease",
            "2",
            "--wait",
            "10",
        ],
    )
}

/// api.py creating one job `PREFIX-1` whose stages take `step_ms` each, and following it.
fn one_job(py: &Python, addr: &str, prefix: &str, step_ms: &str) -> Script {
    py.spawn(
        &format!("api-{prefix}"),
        "api.py",
        &[
            "--addr",
            addr,
            "--prefix",
            prefix,
            "--count",
            "1",
            "--max-attempts",
            "3",
            "--step-ms",
            step_ms,
        ],
    )
}

/// A job's row as the dispatch tests follow it.
#[derive(Debug, Clone)]
struct JobRow {
    id: Uuid,
    status: String,
    attempt: i32,
    stage: Option<String>,
    lease_holder: Option<String>,
    lease_expires_at: Option<DateTime<Utc>>,
    run_after: Option<DateTime<Utc>>,
}

/// One stored event of a job.
#[derive(Debug, Clone)]
struct EventRow {
    ts: DateTime<Utc>,
    prev: String,
    next: String,
    attempt: i64,
    detail: BTreeMap<String, String>,
}

impl EventRow {
    fn actor(&self) -> &str {
        self.detail.get("actor").map_or("", String::as_str)
    }

    /// As [`step`] writes it.
    fn step(&self) -> String {
        step(&self.prev, &self.next, self.attempt, &self.detail)
    }
}

/// The job with idempotency key `key` and its events in order, if it exists yet.
async fn job_and_events(conn: &mut PgConnection, key: &str) -> Option<(JobRow, Vec<EventRow>)> {
    let row = sqlx::query(
        "SELECT id, status, attempt, stage, lease_holder, lease_expires_at, run_after \
         FROM job WHERE idempotency_key = $1",
    )
    .bind(key)
    .fetch_optional(&mut *conn)
    .await
    .unwrap()?;
    let job = JobRow {
        id: row.get(0),
        status: row.get(1),
        attempt: row.get(2),
        stage: row.get(3),
        lease_holder: row.get(4),
        lease_expires_at: row.get(5),
        run_after: row.get(6),
    };
    let events = sqlx::query(
        "SELECT ts, prev_status, next_status, attempt, detail_json FROM job_event \
         WHERE job_id = $1 ORDER BY seq",
    )
    .bind(job.id)
    .fetch_all(&mut *conn)
    .await
    .unwrap()
    .iter()
    .map(|row| EventRow {
        ts: row.get(0),
        prev: shown(row.get(1)),
        next: shown(Some(row.get(2))),
        attempt: i64::from(row.get::<i32, _>(3)),
        detail: row
            .get::<Option<Value>, _>(4)
            .unwrap_or(json!({}))
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), scalar(v)))
            .collect(),
    })
    .collect();
    Some((job, events))
}

/// Polls the job `key` every 20 ms until `done` holds; panics after `limit`.
async fn wait_for_job(
    conn: &mut PgConnection,
    key: &str,
    what: &str,
    limit: Duration,
    done: impl Fn(&JobRow, &[EventRow]) -> bool,
) -> (JobRow, Vec<EventRow>) {
    let started = Instant::now();
    loop {
        let found = job_and_events(conn, key).await;
        if let Some((job, events)) = &found {
            if done(job, events) {
                return found.unwrap();
            }
        }
        assert!(
            started.elapsed() < limit,
            "{key} not {what} within {limit:?}: {found:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many SUCCEEDED events the database holds.
async fn successes(conn: &mut PgConnection) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM job_event WHERE next_status = 'succeeded'")
        .fetch_one(conn)
        .await
        .unwrap()
}

fn ms(d: chrono::TimeDelta) -> i64 {
    d.num_milliseconds()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_workers_run_mock_jobs_with_retries_end_to_end() {
    let py = Python::new();
    let db = ScratchDb::new();
    let server = start_server(&db.url()).await;
    // host:port, as the Python scripts take it.
    let host_port = format!("127.0.0.1:{}", server.port);
    let started = Instant::now();
    let addr = host_port.as_str();

    // Two workers claiming every job (ClaimJobs long-polls, 5 s leases). `retry-2` fails
    // in `transform` on attempts 1 and 2 and succeeds on 3 (budget 3), each retry 0.2 s
    // after its failure (retry_after); `dl-1` fails the same way with a budget of 2 and
    // is dead-lettered by the server.
    let worker = |id: &str| {
        py.spawn(
            id,
            "worker.py",
            &[
                "--addr",
                addr,
                "--worker-id",
                id,
                "--fail-at-stage",
                "transform",
                "--fail-attempts",
                "2",
                "--fail-jobs",
                "retry-2,dl-*",
                "--retry-delay",
                "0.2",
                "--lease",
                "5",
            ],
        )
    };
    let workers = [worker("worker-a"), worker("worker-b")];
    let retry_args = [
        "--addr",
        addr,
        "--prefix",
        "retry",
        "--count",
        "3",
        "--max-attempts",
        "3",
        "--step-ms",
        "100",
    ];
    let with_errors: Vec<&str> = retry_args
        .iter()
        .copied()
        .chain(["--demo-errors"])
        .collect();
    let retry = py.spawn("api-retry", "api.py", &with_errors);
    let dead = py.spawn(
        "api-dl",
        "api.py",
        &[
            "--addr",
            addr,
            "--prefix",
            "dl",
            "--count",
            "1",
            "--max-attempts",
            "2",
            "--step-ms",
            "100",
        ],
    );
    let limit = Duration::from_secs(60);
    let retry = retry.finish(limit).await;
    let dead = dead.finish(limit).await;
    assert_eq!(retry.code, Some(0), "api.py (retry)\n{}", retry.output);
    assert_eq!(
        dead.code,
        Some(3),
        "api.py (dl): 3 = not every job succeeded\n{}",
        dead.output
    );

    // The same keys again: nothing is created, the stored events are streamed again.
    let again = py.run("api-again", "api.py", &retry_args, limit).await;
    assert_eq!(again.code, Some(0), "{}", again.output);

    let mut worker_logs = BTreeMap::new();
    for worker in &workers {
        worker.terminate();
    }
    for worker in workers {
        let name = worker.name.clone();
        let done = worker.finish(Duration::from_secs(20)).await;
        assert_eq!(done.code, Some(0), "{name} after SIGTERM\n{}", done.output);
        assert!(
            done.output.contains(&format!("{name}: stopped: ")),
            "{}",
            done.output
        );
        worker_logs.insert(name, done.output);
    }
    let elapsed = started.elapsed();

    // --- what api.py printed -------------------------------------------------------
    let mut ids = BTreeMap::new();
    for key in ["retry-1", "retry-2", "retry-3"] {
        let created = line(&retry.output, &format!("created {key} "));
        let id = created.split(' ').nth(2).unwrap().to_owned();
        assert!(Uuid::parse_str(&id).is_ok(), "{created}");
        assert!(created.ends_with("QUEUED max_attempts=3"), "{created}");
        let repeat = line(&again.output, &format!("exists  {key} "));
        assert!(
            repeat.starts_with(&format!("exists  {key} {id} SUCCEEDED")),
            "the repeat names the same job: {repeat}"
        );
        ids.insert(key.to_owned(), id);
    }
    assert!(
        lines(&again.output, "created ").is_empty(),
        "{}",
        again.output
    );
    let dl_created = line(&dead.output, "created dl-1 ");
    ids.insert(
        "dl-1".to_owned(),
        dl_created.split(' ').nth(2).unwrap().to_owned(),
    );

    // The rich error details, decoded from grpc-status-details-bin.
    let reused = line(&retry.output, "refused same key, other params: ");
    assert!(reused.contains("ALREADY_EXISTS: "), "{reused}");
    assert!(reused.contains("reason=IDEMPOTENCY_KEY_REUSED"), "{reused}");
    assert!(
        reused.contains(&format!("job_id={}", ids["retry-1"])),
        "{reused}"
    );
    let invalid = line(&retry.output, "refused no type, negative max_attempts: ");
    assert!(invalid.contains("INVALID_ARGUMENT: "), "{invalid}");
    assert!(invalid.contains("reason=INVALID_ARGUMENT"), "{invalid}");
    assert!(invalid.contains("field 'type': "), "{invalid}");
    assert!(invalid.contains("field 'max_attempts': "), "{invalid}");

    // GetJob's view at the end.
    for (output, expected) in [
        (
            &retry.output,
            r#"job retry-1 SUCCEEDED attempt=1/3 stage=upload progress=100 result={"output":"uploads/retry-1.csv.parquet","rows":1000}"#,
        ),
        (
            &retry.output,
            r#"job retry-2 SUCCEEDED attempt=3/3 stage=upload progress=100 result={"output":"uploads/retry-2.csv.parquet","rows":2000} last_error="MOCK_STAGE_FAILED: mock failure in stage transform (attempt 2)""#,
        ),
        (
            &retry.output,
            r#"job retry-3 SUCCEEDED attempt=1/3 stage=upload progress=100 result={"output":"uploads/retry-3.csv.parquet","rows":3000}"#,
        ),
        (
            &dead.output,
            r#"job dl-1 DEAD_LETTER attempt=2/2 stage=transform progress=50 last_error="MOCK_STAGE_FAILED: mock failure in stage transform (attempt 2)""#,
        ),
    ] {
        assert!(
            output.lines().any(|l| l == expected),
            "no line {expected:?} in\n{output}"
        );
    }
    line(&retry.output, "3 of 3 jobs succeeded");
    line(&again.output, "3 of 3 jobs succeeded");
    line(&dead.output, "0 of 1 jobs succeeded");

    // --- the events: designed, stored, and streamed alike ----------------------------
    let expected: BTreeMap<String, Vec<String>> = [
        ("retry-1", [created(), attempt(1, "QUEUED", None)].concat()),
        (
            "retry-2",
            [
                created(),
                attempt(1, "QUEUED", Some("transform")),
                attempt(2, "FAILED", Some("transform")),
                attempt(3, "FAILED", None),
            ]
            .concat(),
        ),
        ("retry-3", [created(), attempt(1, "QUEUED", None)].concat()),
        (
            "dl-1",
            [
                created(),
                attempt(1, "QUEUED", Some("transform")),
                attempt(2, "FAILED", Some("transform")),
                vec!["FAILED->DEAD_LETTER a2 max_attempts_exhausted".to_owned()],
            ]
            .concat(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();

    let mut conn = PgConnection::connect(&db.url()).await.unwrap();
    let rows = sqlx::query(
        "SELECT j.idempotency_key, e.prev_status, e.next_status, e.attempt, e.detail_json, e.ts \
         FROM job_event e JOIN job j ON j.id = e.job_id ORDER BY j.idempotency_key, e.seq",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut stored: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // Per job: (attempt, actor, request_id) of each worker report (claims aside).
    let mut actors: BTreeMap<String, Vec<(i64, String, String)>> = BTreeMap::new();
    // Per job: (attempt, actor) of each claim.
    let mut claimers: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    // Per job: when its last failure said it may be retried (run_after).
    let mut retry_due: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
    for row in &rows {
        let key: String = row.get(0);
        let detail: Value = row.get::<Option<Value>, _>(4).unwrap_or(json!({}));
        let fields = detail
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), scalar(v)))
            .collect::<BTreeMap<_, _>>();
        let prev = shown(row.get(1));
        let next = shown(Some(row.get(2)));
        let attempt = i64::from(row.get::<i32, _>(3));
        let ts: DateTime<Utc> = row.get(5);
        stored
            .entry(key.clone())
            .or_default()
            .push(step(&prev, &next, attempt, &fields));
        if next == "RUNNING" && prev != "RUNNING" {
            // A claim: ClaimJobs' start or retry, actor = the worker_id, no request_id;
            // a retry only once the failure's run_after has passed.
            let actor = fields.get("actor").cloned().unwrap_or_default();
            assert!(
                !fields.contains_key("request_id"),
                "{key}: a claim has no request_id: {detail}"
            );
            if let Some(due) = retry_due.remove(&key) {
                assert!(
                    ts >= due,
                    "{key} attempt {attempt} claimed at {ts}, before {due}"
                );
            }
            claimers.entry(key).or_default().push((attempt, actor));
            continue;
        }
        if next == "FAILED"
            && fields.get("error_code").map(String::as_str) == Some("MOCK_STAGE_FAILED")
        {
            // worker.py --retry-delay 0.2: retry_after 200 ms, not the backoff (≥ 500 ms).
            // The last attempt dead-letters: no run_after.
            if let Some(due) = fields.get("run_after") {
                let due: DateTime<Utc> = due.parse().unwrap_or_else(|e| panic!("{due}: {e}"));
                let delay = (due - ts).num_milliseconds();
                assert!(
                    (190..=260).contains(&delay),
                    "{key} attempt {attempt}: run_after {delay} ms after the failure"
                );
                retry_due.insert(key.clone(), due);
            } else {
                assert_eq!(
                    key, "dl-1",
                    "{key} attempt {attempt} failed with no run_after: {detail}"
                );
            }
        }
        if prev != "(created)" && !(prev == "FAILED" && next == "DEAD_LETTER") {
            let actor = fields.get("actor").cloned().unwrap_or_default();
            let request_id = fields.get("request_id").cloned().unwrap_or_default();
            actors
                .entry(key)
                .or_default()
                .push((attempt, actor, request_id));
        }
    }
    assert_eq!(stored, expected, "the events stored");
    assert_eq!(
        printed_steps(&retry.output)
            .into_iter()
            .chain(printed_steps(&dead.output))
            .collect::<BTreeMap<_, _>>(),
        expected,
        "the events api.py streamed"
    );
    let replayed = printed_steps(&again.output);
    let retry_expected: BTreeMap<_, _> = expected
        .iter()
        .filter(|(k, _)| k.starts_with("retry-"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(
        replayed, retry_expected,
        "the events streamed to the repeat"
    );
    let total: usize = retry_expected.values().map(Vec::len).sum();
    line(&retry.output, &format!("streamed {total} events of 3 jobs"));

    // Every worker report names its worker and carries a request_id; an attempt is run
    // by the worker that claimed it (the claim's actor), which printed that claim.
    let mut claims = 0;
    for (key, events) in &actors {
        for (attempt, actor) in &claimers[key] {
            assert!(
                events
                    .iter()
                    .filter(|(a, _, _)| a == attempt)
                    .all(|(_, by, _)| by == actor),
                "{key} attempt {attempt} claimed by {actor} and reported by another: {events:?}"
            );
        }
        let mut request_ids: Vec<&String> = events.iter().map(|(_, _, r)| r).collect();
        request_ids.sort();
        request_ids.dedup();
        assert_eq!(
            request_ids.len(),
            events.len(),
            "request_ids of {key} are unique"
        );
        for (attempt, actor, request_id) in events {
            assert!(
                actor == "worker-a" || actor == "worker-b",
                "{key} attempt {attempt}: actor {actor:?}"
            );
            assert!(
                request_id.starts_with(&format!("{actor}/{}/a{attempt}/", ids[key])),
                "{key}: request_id {request_id:?} of {actor} attempt {attempt}"
            );
            let claimer = events.iter().find(|(a, _, _)| a == attempt).unwrap();
            assert_eq!(&claimer.1, actor, "{key} attempt {attempt} has one worker");
        }
        let attempts: Vec<i64> = claimers[key].iter().map(|(a, _)| *a).collect();
        let expected_attempts: Vec<i64> = (1..=attempts.len() as i64).collect();
        assert_eq!(attempts, expected_attempts, "{key}: one claim per attempt");
        for (attempt, actor) in &claimers[key] {
            assert!(
                worker_logs.contains_key(actor),
                "{key} attempt {attempt} claimed by {actor:?}"
            );
            let claim = format!("{actor}: claimed {key} (");
            let printed = lines(&worker_logs[actor], &claim);
            assert!(
                printed
                    .iter()
                    .any(|l| l.contains(&format!(", attempt {attempt}/"))),
                "{actor} did not print its claim of {key} attempt {attempt}:\n{}",
                worker_logs[actor]
            );
            claims += 1;
        }
    }
    assert_eq!(claims, 1 + 3 + 1 + 2, "attempts claimed");
    let printed_claims: usize = worker_logs
        .values()
        .map(|log| log.lines().filter(|l| l.contains(": claimed ")).count())
        .sum();
    assert_eq!(printed_claims, claims, "claims printed\n{worker_logs:#?}");
    // Healthy workers under a lease never lose a job: nothing canceled, rescued or
    // superseded.
    for (name, log) in &worker_logs {
        assert!(
            !log.contains(&format!("{name}: lost ")),
            "{name} lost a job:\n{log}"
        );
        assert!(
            line(log, &format!("{name}: stopped: ")).contains(" 0 lost"),
            "{log}"
        );
    }
    let dead_lettered: usize = worker_logs
        .values()
        .map(|log| {
            log.lines()
                .filter(|l| {
                    l.contains(
                        "dl-1 attempt 2 failed: MOCK_STAGE_FAILED: mock failure in stage transform \
                         (attempt 2) -> DEAD_LETTER (no attempts left)",
                    )
                })
                .count()
        })
        .sum();
    assert_eq!(dead_lettered, 1, "{worker_logs:#?}");

    // --- the rows ----------------------------------------------------------------
    let jobs = sqlx::query(
        "SELECT idempotency_key, status, attempt, max_attempts, stage, progress, result, \
                params, requested_by, type, last_error_code, last_error_message, finished_at IS NOT NULL, \
                run_after IS NULL AND lease_expires_at IS NULL AND lease_holder IS NULL \
         FROM job ORDER BY idempotency_key",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(jobs.len(), 4, "jobs in the database");
    for job in &jobs {
        let key: String = job.get(0);
        let n: i64 = match key.as_str() {
            "retry-1" | "dl-1" => 1,
            "retry-2" => 2,
            "retry-3" => 3,
            other => panic!("unexpected job {other}"),
        };
        let (status, attempts, budget, stage, progress) = match key.as_str() {
            "retry-2" => ("succeeded", 3, 3, "upload", 100),
            "dl-1" => ("dead_letter", 2, 2, "transform", 50),
            _ => ("succeeded", 1, 3, "upload", 100),
        };
        assert_eq!(job.get::<String, _>(1), status, "{key}");
        assert_eq!(job.get::<i32, _>(2), attempts, "{key}");
        assert_eq!(job.get::<i32, _>(3), budget, "{key}");
        assert_eq!(
            job.get::<Option<String>, _>(4).as_deref(),
            Some(stage),
            "{key}"
        );
        assert_eq!(job.get::<Option<i32>, _>(5), Some(progress), "{key}");
        let result = job.get::<Option<Value>, _>(6);
        if status == "succeeded" {
            let rows = 1000 * n;
            assert_eq!(
                result,
                Some(json!({"rows": rows, "output": format!("uploads/{key}.csv.parquet")})),
                "{key}"
            );
        } else {
            assert_eq!(result, None, "{key}");
        }
        assert_eq!(
            job.get::<Option<Value>, _>(7),
            Some(json!({"file": format!("uploads/{key}.csv"), "rows": 1000 * n, "step_ms": 100})),
            "{key}: params as created"
        );
        assert_eq!(job.get::<Option<String>, _>(8).as_deref(), Some("api.py"));
        assert_eq!(job.get::<String, _>(9), "mock_process");
        let failed_before = key == "retry-2" || key == "dl-1";
        assert_eq!(
            job.get::<Option<String>, _>(10).as_deref(),
            failed_before.then_some("MOCK_STAGE_FAILED"),
            "{key}"
        );
        assert_eq!(
            job.get::<Option<String>, _>(11).as_deref(),
            failed_before.then_some("mock failure in stage transform (attempt 2)"),
            "{key}"
        );
        assert!(job.get::<bool, _>(12), "{key}: finished_at set");
        assert!(
            job.get::<bool, _>(13),
            "{key}: a finished job has no run_after and no lease"
        );
    }
    conn.close().await.unwrap();

    // --- the invariant checker agrees ---------------------------------------------
    let report = check(&db.url());
    assert_eq!(report["jobs"], 4, "{report:#}");
    assert_eq!(report["events"], rows.len(), "{report:#}");

    eprintln!(
        "the Python example ran {} jobs ({} events, {claims} attempts) in {:.1} s",
        jobs.len(),
        rows.len(),
        elapsed.as_secs_f64()
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_through_the_library() {
    let py = Python::new();
    let db = ScratchDb::new();
    let server = start_server(&db.url()).await;
    // host:port, as the Python scripts take it.
    let host_port = format!("127.0.0.1:{}", server.port);
    let limit = Duration::from_secs(30);
    let addr = format!("http://{host_port}");

    let all = py
        .run(
            "health-all",
            "health.py",
            &[
                "--addr",
                &addr,
                "",
                "liveness",
                "jobledger.v1.JobLedger",
                "no.such.Service",
            ],
            limit,
        )
        .await;
    let shown: Vec<&str> = all.output.lines().collect();
    assert_eq!(
        shown[..3],
        [
            "'' SERVING",
            "'liveness' SERVING",
            "'jobledger.v1.JobLedger' SERVING",
        ],
        "{}",
        all.output
    );
    // The message after the code is tonic-health's.
    assert_eq!(shown.len(), 4, "{}", all.output);
    assert!(
        shown[3].starts_with("'no.such.Service' NOT_FOUND: "),
        "{}",
        all.output
    );
    assert_eq!(all.code, Some(3), "an unknown service is a failed check");

    let defaults = py
        .run("health-defaults", "health.py", &["--addr", &addr], limit)
        .await;
    assert_eq!(defaults.output, "'' SERVING\n'liveness' SERVING\n");
    assert_eq!(defaults.code, Some(0));

    // Nothing listening: exit 2, as grpc-health-probe.
    let nowhere = format!("127.0.0.1:{}", free_port().unwrap());
    let down = py
        .run(
            "health-down",
            "health.py",
            &["--addr", &nowhere, "--timeout", "2", "liveness"],
            limit,
        )
        .await;
    assert_eq!(down.code, Some(2), "{}", down.output);
    assert!(
        down.output.starts_with("'liveness' UNAVAILABLE: "),
        "{}",
        down.output
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_job_is_rescued_and_finished_once_by_another_worker() {
    let py = Python::new();
    let db = ScratchDb::new();
    // The rescuer looks every 100 ms (the default is 500).
    let server = start_server_with(&db.url(), &["--rescue-interval-ms", "100"]).await;
    let host_port = format!("127.0.0.1:{}", server.port);
    let addr = host_port.as_str();
    let limit = Duration::from_secs(30);

    // Stages of 2.5 s under a 2 s lease: only the heartbeats keep the job.
    let doomed = lease_worker(&py, addr, "doomed");
    let api = one_job(&py, addr, "kill", "2500");
    let mut conn = PgConnection::connect(&db.url()).await.unwrap();
    wait_for_job(
        &mut conn,
        "kill-1",
        "RUNNING under doomed",
        limit,
        |job, _| job.status == "running" && job.lease_holder.as_deref() == Some("doomed"),
    )
    .await;
    // The second worker: idle, its claim long-polls.
    let rescuer = lease_worker(&py, addr, "rescuer");
    rescuer
        .wait_for_line("rescuer: claiming mock_process jobs", limit)
        .await;

    // Mid-job: the second stage reported, 2.5 s after the first, so past the lease the
    // first report left: heartbeats extended it, and nothing was rescued.
    let (job, events) = wait_for_job(&mut conn, "kill-1", "in stage parse", limit, |job, _| {
        job.stage.as_deref() == Some("parse")
    })
    .await;
    assert_eq!(job.status, "running", "{job:?}");
    assert_eq!(job.attempt, 1, "{job:?}");
    assert_eq!(job.lease_holder.as_deref(), Some("doomed"), "{job:?}");
    assert!(
        events.iter().all(|e| e.next != "FAILED"),
        "rescued while its worker heartbeated: {events:#?}"
    );
    // api.py --show prints who holds the lease, and until when.
    let shown = py
        .run(
            "api-show",
            "api.py",
            &["--addr", addr, "--prefix", "kill", "--count", "1", "--show"],
            limit,
        )
        .await;
    assert_eq!(shown.code, Some(0), "{}", shown.output);
    let held = line(&shown.output, "job kill-1 ");
    assert!(
        held.starts_with("job kill-1 RUNNING attempt=1/3 "),
        "{held}"
    );
    assert!(
        held.contains(" lease_holder=doomed lease_expires_at=20"),
        "{held}"
    );

    // SIGKILL: no goodbye, the lease is left to run out.
    let killed_at: DateTime<Utc> = SystemTime::now().into();
    doomed.signal("KILL");
    let doomed = doomed.finish(Duration::from_secs(5)).await;
    assert_eq!(doomed.code, None, "killed by a signal\n{}", doomed.output);
    assert!(
        !doomed.output.contains("doomed: stopped: "),
        "{}",
        doomed.output
    );

    let (job, events) = wait_for_job(&mut conn, "kill-1", "SUCCEEDED", limit, |job, _| {
        job.status == "succeeded"
    })
    .await;
    let api = api.finish(limit).await;
    assert_eq!(api.code, Some(0), "{}", api.output);

    // The events: doomed's attempt 1 up to where it died, the rescue, then attempt 2,
    // all of it by the rescuer, and nothing of doomed's after the rescue.
    let rescue_at = events
        .iter()
        .position(|e| e.next == "FAILED")
        .unwrap_or_else(|| panic!("no rescue: {events:#?}"));
    assert_eq!(events[0].step(), "(created)->QUEUED a0");
    let before = &events[1..rescue_at];
    let doomed_steps = attempt(1, "QUEUED", None);
    assert!(
        (3..doomed_steps.len()).contains(&before.len()),
        "doomed's claim, download and parse, and no success: {events:#?}"
    );
    for (event, expected) in before.iter().zip(&doomed_steps) {
        assert_eq!(&event.step(), expected, "{events:#?}");
        assert_eq!(event.actor(), "doomed", "{event:?}");
    }
    let rescue = &events[rescue_at];
    assert_eq!(
        rescue.step(),
        "RUNNING->FAILED a1 LEASE_EXPIRED",
        "{rescue:?}"
    );
    assert_eq!(rescue.actor(), "jobledger", "{rescue:?}");
    let message = &rescue.detail["error_message"];
    assert!(message.contains("held by doomed"), "{message}");
    let after = &events[rescue_at + 1..];
    let after_steps: Vec<String> = after.iter().map(EventRow::step).collect();
    assert_eq!(after_steps, attempt(2, "FAILED", None), "{events:#?}");
    assert!(after.iter().all(|e| e.actor() == "rescuer"), "{events:#?}");
    assert_eq!(successes(&mut conn).await, 1, "exactly one SUCCEEDED event");
    assert_eq!(job.attempt, 2, "{job:?}");
    assert_eq!(
        (
            job.lease_holder.clone(),
            job.lease_expires_at,
            job.run_after
        ),
        (None, None, None),
        "{job:?}"
    );

    // Timings. The rescue names the expiry it acted on.
    let expired: DateTime<Utc> = message
        .rsplit("expired at ")
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("no expiry in {message:?}: {e}"));
    let retry_due: DateTime<Utc> = rescue.detail["run_after"].parse().unwrap();
    let (claimed, succeeded) = (&after[0], after.last().unwrap());
    assert!(
        ms(expired - killed_at) <= 2_500,
        "a lease outlived its 2 s: expired {expired}, killed {killed_at}"
    );
    let rescue_delay = ms(rescue.ts - expired);
    assert!(
        (0..=2_000).contains(&rescue_delay),
        "rescued {rescue_delay} ms after the lease expired (at most 2 s)"
    );
    assert!(
        claimed.ts >= retry_due,
        "claimed before the backoff ran out"
    );
    let claim_delay = ms(claimed.ts - retry_due);
    assert!(
        claim_delay < 2_000,
        "the long-polling rescuer claimed {claim_delay} ms after the retry was due"
    );
    eprintln!(
        "SIGKILL: lease expired {} ms after the kill, rescued {rescue_delay} ms after expiry \
         ({} ms after the kill), backoff {} ms, claimed again {claim_delay} ms after it was \
         due ({} ms after the kill), SUCCEEDED {} ms after the kill",
        ms(expired - killed_at),
        ms(rescue.ts - killed_at),
        ms(retry_due - rescue.ts),
        ms(claimed.ts - killed_at),
        ms(succeeded.ts - killed_at),
    );

    // What the scripts printed.
    let finished = line(&api.output, "job kill-1 ");
    assert!(
        finished.starts_with(
            r#"job kill-1 SUCCEEDED attempt=2/3 stage=upload progress=100 result={"output":"uploads/kill-1.csv.parquet","rows":1000} last_error="LEASE_EXPIRED: the lease of attempt 1 held by doomed expired at "#
        ),
        "{finished}"
    );
    assert!(!finished.contains("lease_"), "{finished}");
    line(
        &api.output,
        "event kill-1 RUNNING -> FAILED attempt=1 error_code=LEASE_EXPIRED ",
    );
    rescuer.terminate();
    let rescuer = rescuer.finish(limit).await;
    assert_eq!(rescuer.code, Some(0), "{}", rescuer.output);
    line(
        &rescuer.output,
        "rescuer: claimed kill-1 (retry, attempt 2/3, ",
    );
    line(&rescuer.output, "rescuer: kill-1 attempt 2 succeeded");
    assert!(
        line(&rescuer.output, "rescuer: stopped: ").contains("1 succeeded, 0 failed, 0 lost"),
        "{}",
        rescuer.output
    );
    conn.close().await.unwrap();
    check(&db.url());
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_paused_past_its_lease_stops_when_it_wakes_and_the_job_succeeds_once() {
    let py = Python::new();
    let db = ScratchDb::new();
    let server = start_server_with(&db.url(), &["--rescue-interval-ms", "100"]).await;
    let host_port = format!("127.0.0.1:{}", server.port);
    let addr = host_port.as_str();
    let limit = Duration::from_secs(30);

    let sleepy = lease_worker(&py, addr, "sleepy");
    let api = one_job(&py, addr, "pause", "1500");
    let mut conn = PgConnection::connect(&db.url()).await.unwrap();
    wait_for_job(
        &mut conn,
        "pause-1",
        "in stage download",
        limit,
        |job, _| job.lease_holder.as_deref() == Some("sleepy") && job.stage.is_some(),
    )
    .await;
    let other = lease_worker(&py, addr, "other");

    // Paused past its lease (River's race): the job is rescued and claimed by the other
    // worker while sleepy still believes it holds attempt 1.
    sleepy.signal("STOP");
    wait_for_job(
        &mut conn,
        "pause-1",
        "claimed again by other",
        limit,
        |job, _| job.attempt == 2 && job.lease_holder.as_deref() == Some("other"),
    )
    .await;
    sleepy.signal("CONT");
    // Woken, its heartbeat (or its next report) is refused: it stops the work.
    let lost = sleepy
        .wait_for_line("sleepy: lost pause-1 attempt 1: ", Duration::from_secs(10))
        .await;
    assert!(lost.contains("ABORTED: "), "{lost}");
    assert!(lost.contains("reason=STALE_ATTEMPT"), "{lost}");

    let (job, events) = wait_for_job(&mut conn, "pause-1", "SUCCEEDED", limit, |job, _| {
        job.status == "succeeded"
    })
    .await;
    let api = api.finish(limit).await;
    assert_eq!(api.code, Some(0), "{}", api.output);
    let rescue_at = events
        .iter()
        .position(|e| e.next == "FAILED")
        .unwrap_or_else(|| panic!("no rescue: {events:#?}"));
    assert_eq!(
        events[rescue_at].step(),
        "RUNNING->FAILED a1 LEASE_EXPIRED",
        "{events:#?}"
    );
    assert_eq!(events[rescue_at].actor(), "jobledger");
    assert!(
        events[..rescue_at]
            .iter()
            .skip(1)
            .all(|e| e.actor() == "sleepy"),
        "{events:#?}"
    );
    let after: Vec<String> = events[rescue_at + 1..].iter().map(EventRow::step).collect();
    assert_eq!(after, attempt(2, "FAILED", None), "{events:#?}");
    assert!(
        events[rescue_at + 1..].iter().all(|e| e.actor() == "other"),
        "nothing of sleepy's recorded after the rescue: {events:#?}"
    );
    assert_eq!(successes(&mut conn).await, 1, "exactly one SUCCEEDED event");
    assert_eq!(job.attempt, 2);

    for worker in [&sleepy, &other] {
        worker.terminate();
    }
    let sleepy = sleepy.finish(limit).await;
    let other = other.finish(limit).await;
    assert_eq!(sleepy.code, Some(0), "{}", sleepy.output);
    assert_eq!(other.code, Some(0), "{}", other.output);
    assert!(
        line(&sleepy.output, "sleepy: stopped: ").contains("0 succeeded, 0 failed, 1 lost"),
        "{}",
        sleepy.output
    );
    assert!(
        line(&other.output, "other: stopped: ").contains("1 succeeded, 0 failed, 0 lost"),
        "{}",
        other.output
    );
    conn.close().await.unwrap();
    check(&db.url());
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_canceled_under_its_worker_stops_the_work() {
    let py = Python::new();
    let db = ScratchDb::new();
    let server = start_server(&db.url()).await;
    let host_port = format!("127.0.0.1:{}", server.port);
    let addr = host_port.as_str();
    let limit = Duration::from_secs(30);

    let worker = lease_worker(&py, addr, "w");
    let api = one_job(&py, addr, "cancel", "2500");
    let mut conn = PgConnection::connect(&db.url()).await.unwrap();
    let (job, _) = wait_for_job(
        &mut conn,
        "cancel-1",
        "in stage download",
        limit,
        |job, _| job.lease_holder.as_deref() == Some("w") && job.stage.is_some(),
    )
    .await;
    let cancel = Command::new(BIN)
        .args(["job", "--addr", &server.addr, "cancel", &job.id.to_string()])
        .args(["--actor", "operator", "--reason", "not needed any more"])
        .output()
        .unwrap();
    assert!(
        cancel.status.success(),
        "jobledger job cancel: {}",
        String::from_utf8_lossy(&cancel.stderr)
    );
    let canceled = Instant::now();
    // The next heartbeat (within a third of the lease), not the next report (2.5 s
    // after the first), tells the worker.
    let lost = worker
        .wait_for_line("w: lost cancel-1 attempt 1: ", Duration::from_secs(5))
        .await;
    let told_in = canceled.elapsed();
    assert!(
        lost.contains("heartbeat refused: FAILED_PRECONDITION: "),
        "{lost}"
    );
    assert!(lost.contains("reason=JOB_NOT_RUNNING"), "{lost}");
    assert!(lost.contains("status=CANCELED"), "{lost}");
    assert!(told_in < Duration::from_secs(2), "told after {told_in:?}");

    let api = api.finish(limit).await;
    assert_eq!(api.code, Some(3), "{}", api.output);
    line(
        &api.output,
        "job cancel-1 CANCELED attempt=1/3 stage=download progress=0",
    );
    // Past when the next stage would have been reported: nothing was.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(told_in)).await;
    let (_, events) = job_and_events(&mut conn, "cancel-1").await.unwrap();
    let steps: Vec<String> = events.iter().map(EventRow::step).collect();
    assert_eq!(
        steps,
        [
            "(created)->QUEUED a0",
            "QUEUED->RUNNING a1",
            "RUNNING->RUNNING a1 download 0",
            "RUNNING->CANCELED a1",
        ],
        "{events:#?}"
    );

    // Its slot is free again: the next job is claimed and done by the same worker.
    let next = py
        .run(
            "api-next",
            "api.py",
            &[
                "--addr",
                addr,
                "--prefix",
                "next",
                "--count",
                "1",
                "--step-ms",
                "50",
            ],
            limit,
        )
        .await;
    assert_eq!(next.code, Some(0), "{}", next.output);
    line(
        &next.output,
        "event next-1 QUEUED -> RUNNING attempt=1 actor=w",
    );

    // Shutdown: told once, the worker would finish the job in hand; told twice, it hands
    // the job back (RUNNING -> QUEUED, fenced by its attempt) for another worker to take
    // at once.
    let _back = one_job(&py, addr, "back", "2500");
    wait_for_job(&mut conn, "back-1", "in stage download", limit, |job, _| {
        job.lease_holder.as_deref() == Some("w") && job.stage.is_some()
    })
    .await;
    worker.terminate();
    worker
        .wait_for_line("w: finishing 1 job(s) in hand", limit)
        .await;
    worker.terminate();
    let worker = worker.finish(limit).await;
    assert_eq!(worker.code, Some(0), "{}", worker.output);
    line(&worker.output, "w: handed back back-1 attempt 1 -> QUEUED");
    assert!(
        line(&worker.output, "w: stopped: ").contains(
            "3 attempts claimed, 1 succeeded, 0 failed, 1 lost (canceled, rescued or superseded), 1 handed back"
        ),
        "{}",
        worker.output
    );
    let (back, events) = job_and_events(&mut conn, "back-1").await.unwrap();
    assert_eq!(back.status, "queued", "{back:?}");
    assert_eq!(
        (
            back.lease_holder.clone(),
            back.lease_expires_at,
            back.run_after
        ),
        (None, None, None),
        "{back:?}"
    );
    let last = events.last().unwrap();
    assert_eq!(last.step(), "RUNNING->QUEUED a1", "{events:#?}");
    assert_eq!(last.actor(), "w");
    conn.close().await.unwrap();
    check(&db.url());
    drop(server);
}
