//! The Python library (`clients/python`, package `jobledger`) against the real `jobledger`
//! binary and PostgreSQL: its generated code is current, it installs with pip, it is
//! `mypy --strict` and ruff clean, the README's quick start runs, every client call works,
//! every exception class comes from a real server error, and its `Worker` holds up under
//! faults — SIGTERM with jobs in hand (handed back, finished by another worker), the
//! server killed and restarted under a running worker and under event streams (they
//! carry on, nothing duplicated), a canceled job stops an async handler, and processes ×
//! threads never run one attempt twice. (tests/python.rs runs the examples on it.)
//!
//! The venv (`target/python-client-venv`, clients/python/requirements-dev.txt pinned, the
//! package editable) is made by `clients/python/setup.sh` on first use, then reused.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant, SystemTime},
};

use chrono::{DateTime, Utc};
use jobledger::testkit::{cluster::free_port, ScratchDb, ServerProcess};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, Row};
use tonic::transport::Channel;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

const BIN: &str = env!("CARGO_BIN_EXE_jobledger");
const LIMIT: Duration = Duration::from_secs(60);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn library_dir() -> PathBuf {
    repo().join("clients/python")
}

fn target_dir() -> &'static Path {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is inside the target directory")
}

/// `clients/python/setup.sh` (installs into `target/python-client-venv` unless there
/// already); the venv's python.
fn python() -> PathBuf {
    let venv = target_dir().join("python-client-venv");
    let output = Command::new("bash")
        .arg(library_dir().join("setup.sh"))
        .arg(&venv)
        .output()
        .expect("run clients/python/setup.sh (needs bash)");
    assert!(
        output.status.success(),
        "could not prepare {} (needs python3 >= 3.10 with venv, and PyPI on the first run):\n{}",
        venv.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    venv.join("bin/python")
}

/// Python scripts of this test, their logs in a scratch directory of its own.
struct Py {
    python: PathBuf,
    scratch: tempfile::TempDir,
}

impl Py {
    fn new() -> Py {
        Py {
            python: python(),
            scratch: tempfile::Builder::new()
                .prefix("python-client-")
                .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
                .unwrap(),
        }
    }

    fn tool(&self, name: &str) -> PathBuf {
        self.python.with_file_name(name)
    }

    /// Starts `script` (a path under the repository, or absolute) with `args`; output to
    /// a log file.
    fn spawn(&self, name: &str, script: &str, args: &[&str]) -> Script {
        let log = self.scratch.path().join(format!("{name}.log"));
        let out = File::create(&log).unwrap();
        let child = Command::new(&self.python)
            .arg(repo().join(script))
            .args(args)
            .current_dir(self.scratch.path())
            .env("PYTHONUNBUFFERED", "1")
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

    async fn run(&self, name: &str, script: &str, args: &[&str]) -> Finished {
        self.spawn(name, script, args).finish(LIMIT).await
    }

    /// A worker.py of the examples: the library's Worker running the mock job.
    fn worker(&self, addr: &str, id: &str, extra: &[&str]) -> Script {
        let mut args = vec!["--addr", addr, "--worker-id", id];
        args.extend_from_slice(extra);
        self.spawn(id, "examples/python/worker.py", &args)
    }

    /// api.py creating `count` jobs PREFIX-1..N of `step_ms` per stage, and following them.
    fn api(&self, addr: &str, prefix: &str, count: usize, step_ms: u32) -> Script {
        let (count, step) = (count.to_string(), step_ms.to_string());
        self.spawn(
            &format!("api-{prefix}"),
            "examples/python/api.py",
            &[
                "--addr",
                addr,
                "--prefix",
                prefix,
                "--count",
                &count,
                "--step-ms",
                &step,
                "--max-attempts",
                "3",
            ],
        )
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
    async fn finish(mut self, limit: Duration) -> Finished {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Finished {
                    code: status.code(),
                    output: self.output(),
                };
            }
            assert!(
                started.elapsed() < limit,
                "{} did not finish within {limit:?}:\n{}",
                self.name,
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} {}", self.name);
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

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

fn line<'a>(output: &'a str, prefix: &str) -> &'a str {
    let found: Vec<&str> = output.lines().filter(|l| l.starts_with(prefix)).collect();
    match found.as_slice() {
        [one] => one,
        other => panic!("expected one line starting {prefix:?}, got {other:?} in\n{output}"),
    }
}

/// `jobledger serve` on a scratch database with few connections and a quick rescuer.
async fn server(db: &ScratchDb, extra: &[&str]) -> ServerProcess {
    ServerProcess::command(BIN, &db.url())
        .args(&["--pool-size", "5", "--rescue-interval-ms", "100"])
        .args(extra)
        .start()
        .await
        .expect("jobledger serve")
}

/// A server on a port that stays the same across restarts, so clients reconnect to it
/// (testkit's ServerProcess takes a fresh port each start).
struct RestartableServer {
    database_url: String,
    port: u16,
    child: Option<Child>,
}

impl RestartableServer {
    async fn start(database_url: &str) -> RestartableServer {
        let mut server = RestartableServer {
            database_url: database_url.to_owned(),
            port: free_port().unwrap(),
            child: None,
        };
        server.restart().await;
        server
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the binary (again) on the same port and waits until it is SERVING; tries
    /// again while the port is not free yet.
    async fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let started = Instant::now();
        loop {
            let mut child = Command::new(BIN)
                .args(["serve", "--database-url", &self.database_url])
                .args(["--listen-addr", &self.addr(), "--http-addr", "off"])
                .args(["--pool-size", "5", "--rescue-interval-ms", "100"])
                .args(["--probe-interval-ms", "100", "--drain-timeout-ms", "3000"])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start jobledger serve");
            loop {
                if child.try_wait().unwrap().is_some() {
                    break; // exited: the port was still taken
                }
                if self.serving().await {
                    self.child = Some(child);
                    return;
                }
                assert!(started.elapsed() < LIMIT, "the server did not come up");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(started.elapsed() < LIMIT, "the server could not bind");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn serving(&self) -> bool {
        let Ok(channel) = Channel::from_shared(format!("http://{}", self.addr()))
            .unwrap()
            .connect()
            .await
        else {
            return false;
        };
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .is_ok_and(|r| r.into_inner().status == 1)
    }

    /// Stops it with a signal (`KILL`: no drain; `TERM`: streams end with UNAVAILABLE).
    async fn stop(&mut self, signal: &str) {
        let mut child = self.child.take().expect("the server is running");
        let status = Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            assert!(started.elapsed() < LIMIT, "the server did not stop");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RestartableServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One stored event: `prev->next` (lowercase, `-` for none), attempt, actor, error code.
#[derive(Debug, Clone)]
struct Event {
    step: String,
    attempt: i32,
    actor: String,
    error_code: String,
    ts: DateTime<Utc>,
}

/// Every event of the jobs whose key starts with `prefix`, per key, in order.
async fn events(conn: &mut PgConnection, prefix: &str) -> BTreeMap<String, Vec<Event>> {
    let rows = sqlx::query(
        "SELECT j.idempotency_key, coalesce(e.prev_status, '-'), e.next_status, e.attempt, \
                e.detail_json, e.ts \
         FROM job_event e JOIN job j ON j.id = e.job_id \
         WHERE j.idempotency_key LIKE $1 || '%' ORDER BY j.idempotency_key, e.seq",
    )
    .bind(prefix)
    .fetch_all(conn)
    .await
    .unwrap();
    let mut out: BTreeMap<String, Vec<Event>> = BTreeMap::new();
    for row in rows {
        let detail: Value = row.get::<Option<Value>, _>(4).unwrap_or(json!({}));
        let text = |k: &str| detail[k].as_str().unwrap_or_default().to_owned();
        let key: String = row.get(0);
        out.entry(key).or_default().push(Event {
            step: format!("{}->{}", row.get::<String, _>(1), row.get::<String, _>(2)),
            attempt: row.get(3),
            actor: text("actor"),
            error_code: text("error_code"),
            ts: row.get(5),
        });
    }
    out
}

async fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(conn).await.unwrap()
}

/// Polls until `sql` (a count) reaches `at_least`.
async fn wait_for_count(conn: &mut PgConnection, sql: &str, at_least: i64) {
    let started = Instant::now();
    loop {
        let n = count(conn, sql).await;
        if n >= at_least {
            return;
        }
        assert!(
            started.elapsed() < LIMIT,
            "{sql}: {n} < {at_least} after {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `jobledger check` on the database: every invariant holds.
fn check(database_url: &str) {
    let out = Command::new(BIN)
        .args(["check", "--database-url", database_url])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "jobledger check:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

// --- the package -----------------------------------------------------------------------

#[test]
fn the_committed_generated_code_is_what_generate_sh_writes() {
    let python = python();
    let out = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    run(Command::new("bash")
        .arg(library_dir().join("generate.sh"))
        .arg(out.path())
        .env("PYTHON", &python));
    let committed = library_dir().join("src/jobledger/v1");
    let generated = out.path().join("jobledger/v1");
    let names = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "__pycache__")
            .collect()
    };
    assert_eq!(names(&committed), names(&generated), "the generated files");
    for name in names(&generated) {
        let want = std::fs::read_to_string(generated.join(&name)).unwrap();
        let have = std::fs::read_to_string(committed.join(&name)).unwrap();
        assert!(
            want == have,
            "clients/python/src/jobledger/v1/{name} is stale: run clients/python/generate.sh \
             and commit the result"
        );
    }
}

#[test]
fn mypy_strict_and_ruff_pass_on_the_library_its_tests_and_the_examples() {
    let py = Py::new();
    let caches = target_dir().join("python-client-caches");
    let in_library = |tool: &str| {
        let mut command = Command::new(py.tool(tool));
        command
            .current_dir(library_dir())
            .env("MYPY_CACHE_DIR", caches.join("mypy"))
            .env("RUFF_CACHE_DIR", caches.join("ruff"));
        command
    };
    // pyproject.toml names the files: the package, bench.py, tests/ and examples/python.
    let mypy = run(in_library("mypy").arg("--strict"));
    let said = String::from_utf8_lossy(&mypy.stdout);
    assert!(said.starts_with("Success: no issues found"), "{said}");
    run(in_library("ruff").args(["check", ".", "../../examples/python"]));
    run(in_library("ruff").args(["format", "--check", ".", "../../examples/python"]));
}

#[test]
fn pip_installs_the_package_with_its_generated_code_and_types() {
    let py = Py::new();
    let into = py.scratch.path().join("site");
    run(Command::new(&py.python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
        ])
        .arg("--target")
        .arg(&into)
        .arg(library_dir()));
    for file in [
        "py.typed",
        "__init__.py",
        "worker.py",
        "v1/ledger_pb2.py",
        "v1/ledger_pb2.pyi",
        "v1/ledger_pb2_grpc.py",
        "v1/ledger_pb2_grpc.pyi",
    ] {
        assert!(
            into.join("jobledger").join(file).is_file(),
            "{file} installed"
        );
    }
    // Imported from the install, not the working tree.
    let out = run(Command::new(&py.python)
        .args([
            "-c",
            "import jobledger, jobledger.v1.ledger_pb2 as pb; print(jobledger.__file__, pb.DESCRIPTOR.package)",
        ])
        .env("PYTHONPATH", &into));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with(&into.join("jobledger/__init__.py").display().to_string()),
        "{said}"
    );
    assert!(said.trim_end().ends_with(" jobledger.v1"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_quick_start_runs() {
    let py = Py::new();
    let db = ScratchDb::new();
    let server = server(&db, &[]).await;
    let readme = std::fs::read_to_string(library_dir().join("README.md")).unwrap();
    let start = readme
        .find("## Quick start")
        .expect("a Quick start section");
    let code = readme[start..]
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("a python block in the quick start");
    assert!(
        code.lines().count() <= 12,
        "a ten-line quick start:\n{code}"
    );
    let script = py.scratch.path().join("quick_start.py");
    let addr = format!("127.0.0.1:{}", server.port);
    std::fs::write(&script, code.replace("127.0.0.1:50051", &addr)).unwrap();
    let quick = py.spawn("quick-start", script.to_str().unwrap(), &[]);
    let mut conn = PgConnection::connect(&db.url()).await.unwrap();
    wait_for_count(
        &mut conn,
        "SELECT count(*) FROM job WHERE idempotency_key = 'upload-42' AND status = 'succeeded' \
         AND result = '{\"rows\": 1000}'",
        1,
    )
    .await;
    quick.signal("TERM");
    let done = quick.finish(LIMIT).await;
    assert_eq!(done.code, Some(0), "{}", done.output);
}

// --- the client ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_call_works_against_the_server() {
    let py = Py::new();
    let db = ScratchDb::new();
    let server = server(&db, &[]).await;
    let addr = format!("127.0.0.1:{}", server.port);
    let flow = py
        .run("flow", "clients/python/tests/client_flow.py", &[&addr])
        .await;
    assert_eq!(flow.code, Some(0), "{}", flow.output);
    for check in [
        "health",
        "create",
        "create_many",
        "get",
        "list",
        "count",
        "transition",
        "events",
        "cancel",
        "claim",
        "async create, get, list, count",
        "async events",
        "async errors, claim, cancel",
    ] {
        assert!(
            flow.output.lines().any(|l| l == format!("ok {check}")),
            "no ok {check}:\n{}",
            flow.output
        );
    }
    line(&flow.output, "all ok");

    // What the library sent is what the ledger stored.
    let id = line(&flow.output, "created flow-1 ")
        .rsplit(' ')
        .next()
        .unwrap();
    let mut conn = PgConnection::connect(&db.url()).await.unwrap();
    let row = sqlx::query(
        "SELECT type, status, priority, max_attempts, requested_by, params, \
                run_after > now() + interval '59 minutes', retry_initial_backoff_ms, \
                retry_max_backoff_ms \
         FROM job WHERE id = $1::uuid",
    )
    .bind(id)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>(0), "flow");
    assert_eq!(row.get::<String, _>(1), "queued");
    assert_eq!(row.get::<i32, _>(2), 7);
    assert_eq!(row.get::<i32, _>(3), 3);
    assert_eq!(
        row.get::<Option<String>, _>(4).as_deref(),
        Some("client_flow")
    );
    assert_eq!(
        row.get::<Option<Value>, _>(5),
        Some(json!({"file": "a.csv", "rows": 3, "nested": {"x": [1, 2.5, "y", null, true]}}))
    );
    assert_eq!(
        row.get::<Option<bool>, _>(6),
        Some(true),
        "run_after an hour ahead"
    );
    assert_eq!(
        row.get::<Option<i64>, _>(7),
        Some(500),
        "initial_backoff 0.5 s"
    );
    assert_eq!(
        row.get::<Option<i64>, _>(8),
        Some(120_000),
        "max_backoff 2 min"
    );
    // Each batch entry made one job with its key; the refused one made none.
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) FROM job WHERE idempotency_key LIKE 'batch-%'"
        )
        .await,
        3
    );
    // The replayed request_id wrote one event, not two.
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) FROM job_event WHERE detail_json->>'request_id' = 'flow-report-1'"
        )
        .await,
        1
    );
    conn.close().await.unwrap();
    check(&db.url());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exception_class_comes_from_a_real_server_error() {
    let py = Py::new();
    let (db, auth_db) = (ScratchDb::new(), ScratchDb::new());
    let limited = server(
        &db,
        &[
            "--max-streams",
            "1",
            "--max-waiting-claims",
            "1",
            "--max-request-bytes",
            "100000",
        ],
    )
    .await;
    let secret = "python-client-test-secret-0123456789abcdef";
    let org = uuid::Uuid::new_v4().to_string();
    let authed = ServerProcess::command(BIN, &auth_db.url())
        .args(&["--pool-size", "5", "--max-inflight-requests", "1"])
        .env("JOBLEDGER_AUTH_HS256_SECRET", secret)
        .start()
        .await
        .expect("jobledger serve with auth");
    let (addr, auth_addr) = (
        format!("127.0.0.1:{}", limited.port),
        format!("127.0.0.1:{}", authed.port),
    );
    let probe = "clients/python/tests/errors_probe.py";

    // A job FAILED on its last attempt without being dead-lettered cannot be reached
    // through the API (failing the last attempt dead-letters); the row is moved there.
    let prepared = py.run("prepare", probe, &["prepare", &addr]).await;
    assert_eq!(prepared.code, Some(0), "{}", prepared.output);
    let exhausted = prepared.output.trim().to_owned();
    let mut conn = PgConnection::connect(&db.url()).await.unwrap();
    sqlx::query("UPDATE job SET attempt = max_attempts WHERE id = $1::uuid AND status = 'failed'")
        .bind(&exhausted)
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    let ran = py
        .run(
            "probe",
            probe,
            &["probe", &addr, &auth_addr, secret, &org, &exhausted],
        )
        .await;
    assert_eq!(ran.code, Some(0), "{}", ran.output);
    let raised: BTreeMap<&str, &str> = ran
        .output
        .lines()
        .filter_map(|l| l.strip_prefix("raised "))
        .map(|l| {
            let mut words = l.split(' ');
            (words.next().unwrap(), words.next().unwrap())
        })
        .collect();
    let classes: Vec<&str> = line(&ran.output, "reason classes: ")
        .trim_start_matches("reason classes: ")
        .split(' ')
        .collect();
    assert!(classes.len() >= 20, "{classes:?}");
    for class in &classes {
        assert!(
            raised.contains_key(class),
            "{class} was never raised:\n{}",
            ran.output
        );
    }
    // And the ones without a reason of their own: the connection, the deadline, a cancel.
    for (class, reason) in [
        ("Unavailable", "-"),
        ("DeadlineExceeded", "-"),
        ("Cancelled", "-"),
        ("Unauthenticated", "TOKEN_EXPIRED"),
        ("TooManyRequests", "TOO_MANY_REQUESTS"),
    ] {
        assert_eq!(raised.get(class), Some(&reason), "{}", ran.output);
    }
}

/// A job's row as a handler's outcome left it.
#[derive(Debug, Clone)]
struct Outcome {
    status: String,
    attempt: i32,
    result: Option<Value>,
    code: String,
    message: String,
    stage: String,
}

/// A child process killed (and reaped) when the test ends, whichever way it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A certificate signed by `issuer` for `sans` with `usage`: (certificate, key) as PEM.
fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let names = sans.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut params = CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "python-client-test");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_speaks_tls_and_mutual_tls() {
    let py = Py::new();
    let db = ScratchDb::new();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "python-client-test CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let server_pem = leaf(
        &ca,
        &["127.0.0.1", "localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let client_pem = leaf(&ca, &[], ExtendedKeyUsagePurpose::ClientAuth);
    let dir = py.scratch.path();
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    let ca_file = write("ca.pem", &ca.pem());
    let (server_cert, server_key) = (
        write("server.pem", &server_pem.0),
        write("server.key", &server_pem.1),
    );
    let (client_cert, client_key) = (
        write("client.pem", &client_pem.0),
        write("client.key", &client_pem.1),
    );
    // testkit's ServerProcess checks health in plaintext: this one is started by hand,
    // and the script waits for it over TLS.
    let port = free_port().unwrap().to_string();
    let server = Command::new(BIN)
        .args(["serve", "--database-url", &db.url(), "--http-addr", "off"])
        .args([
            "--listen-addr",
            &format!("127.0.0.1:{port}"),
            "--pool-size",
            "5",
        ])
        .args([
            "--probe-interval-ms",
            "100",
            "--tls-cert-file",
            &server_cert,
        ])
        .args([
            "--tls-key-file",
            &server_key,
            "--tls-client-ca-file",
            &ca_file,
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("jobledger serve with TLS");
    let _server = KillOnDrop(server);
    let probe = py
        .run(
            "tls",
            "clients/python/tests/tls_probe.py",
            &[&port, &ca_file, &client_cert, &client_key],
        )
        .await;
    assert_eq!(probe.code, Some(0), "{}", probe.output);
    assert!(
        probe.output.contains("ok mutual TLS: created "),
        "{}",
        probe.output
    );
    line(
        &probe.output,
        "ok refused without a client certificate: Unavailable",
    );
    line(&probe.output, "ok refused in plaintext: Unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handlers_outcome_is_its_jobs_result_failure_retry_or_dead_letter() {
    let py = Py::new();
    let db = ScratchDb::new();
    let server = server(&db, &[]).await;
    let addr = format!("127.0.0.1:{}", server.port);
    let ran = py
        .run(
            "outcomes",
            "clients/python/tests/worker_outcomes.py",
            &[&addr],
        )
        .await;
    assert_eq!(ran.code, Some(0), "{}", ran.output);
    line(&ran.output, "done");

    let mut conn = PgConnection::connect(&db.url()).await.unwrap();
    let rows = sqlx::query(
        "SELECT idempotency_key, status, attempt, result, last_error_code, last_error_message, stage \
         FROM job WHERE idempotency_key LIKE 'outcome-%'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let jobs: BTreeMap<String, Outcome> = rows
        .iter()
        .map(|r| {
            let text = |i: usize| r.get::<Option<String>, _>(i).unwrap_or_default();
            let outcome = Outcome {
                status: text(1),
                attempt: r.get(2),
                result: r.get(3),
                code: text(4),
                message: text(5),
                stage: text(6),
            };
            (text(0), outcome)
        })
        .collect();
    let job = |key: &str| jobs[&format!("outcome-{key}")].clone();
    // The return value is the result; a value that is not an object is wrapped.
    let ok = job("ok");
    assert_eq!(
        (ok.status.as_str(), ok.attempt, ok.code.as_str()),
        ("succeeded", 1, "")
    );
    assert_eq!(
        ok.result,
        Some(json!({"params": {"case": "ok"}, "attempt": 1}))
    );
    let async_ok = job("async-ok");
    assert_eq!(async_ok.status, "succeeded");
    assert_eq!(async_ok.result, Some(json!({"async": true})));
    assert_eq!(async_ok.stage, "only");
    assert_eq!(job("scalar").result, Some(json!({"value": 42})));
    // An exception: its class name (or its error_code) and its message.
    let boom = job("boom");
    assert_eq!(
        (boom.code.as_str(), boom.message.as_str()),
        ("ValueError", "bad input")
    );
    let quota = job("quota");
    assert_eq!(
        (quota.code.as_str(), quota.message.as_str()),
        ("QUOTA", "over the daily quota")
    );
    let unjson = job("unjson");
    assert!(
        ["TypeError", "ValueError"].contains(&unjson.code.as_str()),
        "{unjson:?}"
    );
    assert_ne!(unjson.status, "succeeded");
    // Retry(after=0.3): failed with RETRY, claimable 300 ms later, then succeeded.
    let later = job("later");
    assert_eq!(
        (later.status.as_str(), later.attempt),
        ("succeeded", 2),
        "{later:?}"
    );
    assert_eq!(later.result, Some(json!({"retried": true})));
    let all = events(&mut conn, "outcome-").await;
    let failed = all["outcome-later"]
        .iter()
        .find(|e| e.step == "running->failed")
        .expect("the retried attempt failed first");
    assert_eq!(failed.error_code, "RETRY");
    let due: DateTime<Utc> = sqlx::query_scalar(
        "SELECT (e.detail_json->>'run_after')::timestamptz FROM job_event e JOIN job j ON j.id = e.job_id \
         WHERE j.idempotency_key = 'outcome-later' AND e.next_status = 'failed'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let delay = (due - failed.ts).num_milliseconds();
    assert!(
        (290..=400).contains(&delay),
        "retried {delay} ms after the failure"
    );
    // Fail(retry=False): dead-lettered on the first of 3 attempts, in one transaction.
    let dead = job("dead");
    assert_eq!(
        (dead.status.as_str(), dead.attempt, dead.code.as_str()),
        ("dead_letter", 1, "NO_FILE")
    );
    let steps: Vec<&str> = all["outcome-dead"]
        .iter()
        .map(|e| e.step.as_str())
        .collect();
    assert_eq!(
        steps,
        [
            "-->queued",
            "queued->running",
            "running->failed",
            "failed->dead_letter"
        ]
    );
    let (fail, dead_letter) = (&all["outcome-dead"][2], &all["outcome-dead"][3]);
    assert_eq!(fail.ts, dead_letter.ts, "one transaction");
    assert_eq!(dead_letter.actor, "outcomes");
    // detail(...) and progress(..., **detail) are events with the fields.
    let details: Vec<Value> = sqlx::query_scalar(
        "SELECT e.detail_json FROM job_event e JOIN job j ON j.id = e.job_id \
         WHERE j.idempotency_key = 'outcome-detail' AND e.prev_status = 'running' \
           AND e.next_status = 'running' ORDER BY e.seq",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(details.len(), 2, "{details:?}");
    assert_eq!(details[0]["rows_seen"], 7);
    assert_eq!(
        (
            &details[1]["stage"],
            &details[1]["progress"],
            &details[1]["note"]
        ),
        (&json!("end"), &json!(90), &json!("almost"))
    );
    conn.close().await.unwrap();
    check(&db.url());
}

// --- the worker under faults ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_what_fits_in_the_grace_period_and_hands_back_the_rest() {
    let py = Py::new();
    let db = ScratchDb::new();
    let server = server(&db, &[]).await;
    let addr = format!("127.0.0.1:{}", server.port);
    let mut conn = PgConnection::connect(&db.url()).await.unwrap();

    // Two slots, a 2.5 s grace period: `short-1` (4 x 0.3 s) finishes within it,
    // `long-1` (4 x 1.5 s) does not.
    let a = py.worker(
        &addr,
        "a",
        &[
            "--slots", "2", "--lease", "3", "--wait", "5", "--grace", "2.5",
        ],
    );
    let long = py.api(&addr, "long", 1, 1500);
    let short = py.api(&addr, "short", 1, 300);
    wait_for_count(
        &mut conn,
        "SELECT count(*) FROM job WHERE lease_holder = 'a' AND stage IS NOT NULL",
        2,
    )
    .await;
    let b = py.worker(&addr, "b", &["--lease", "3", "--wait", "5"]);
    b.wait_for_line("b: claiming mock_process jobs", LIMIT)
        .await;
    let term: DateTime<Utc> = SystemTime::now().into();
    let sent = Instant::now();
    a.signal("TERM");
    let a = a.finish(LIMIT).await;
    let a_took = sent.elapsed();
    assert_eq!(a.code, Some(0), "{}", a.output);
    line(&a.output, "a: finishing 2 job(s) in hand within 2.5s");
    line(&a.output, "a: short-1 attempt 1 succeeded");
    line(&a.output, "a: handed back long-1 attempt 1 -> QUEUED");
    assert!(
        line(&a.output, "a: stopped: ").ends_with(
            "2 attempts claimed, 1 succeeded, 0 failed, 0 lost (canceled, rescued or superseded), 1 handed back"
        ),
        "{}",
        a.output
    );
    assert!(
        a_took < Duration::from_secs(10),
        "a exited {a_took:?} after SIGTERM"
    );
    for api in [long, short] {
        let api = api.finish(LIMIT).await;
        assert_eq!(api.code, Some(0), "{}", api.output);
    }
    b.signal("TERM");
    let b = b.finish(LIMIT).await;
    assert_eq!(b.code, Some(0), "{}", b.output);
    line(&b.output, "b: long-1 attempt 2 succeeded");

    let all = events(&mut conn, "").await;
    let short = &all["short-1"];
    assert!(short
        .iter()
        .all(|e| e.attempt <= 1 && e.step != "running->failed"));
    let done = short.last().unwrap();
    assert_eq!(
        (done.step.as_str(), done.actor.as_str()),
        ("running->succeeded", "a")
    );
    assert!(
        done.ts > term,
        "short-1 finished after SIGTERM, in the grace period"
    );

    // long-1: a's attempt 1, handed back at the end of the grace period (no lease ran
    // out, nothing failed), then b's attempt 2 to the end. No attempt was wasted beyond
    // the one in hand.
    let long = &all["long-1"];
    let steps: Vec<(String, i32, &str)> = long
        .iter()
        .map(|e| (e.step.clone(), e.attempt, e.actor.as_str()))
        .collect();
    let back = long
        .iter()
        .position(|e| e.step == "running->queued")
        .unwrap_or_else(|| panic!("not handed back: {steps:?}"));
    assert!(
        long[1..back]
            .iter()
            .all(|e| e.actor == "a" && e.attempt == 1),
        "{steps:?}"
    );
    assert_eq!(long[back].actor, "a");
    let after: Vec<(&str, i32, &str)> = long[back + 1..]
        .iter()
        .map(|e| (e.step.as_str(), e.attempt, e.actor.as_str()))
        .collect();
    let mut expected = vec![("queued->running", 2, "b")];
    expected.extend([("running->running", 2, "b"); 4]);
    expected.push(("running->succeeded", 2, "b"));
    assert_eq!(after, expected, "{steps:?}");
    assert!(
        long.iter().all(|e| e.step != "running->failed"),
        "{steps:?}"
    );
    let handed_back_in = (long[back].ts - term).num_milliseconds();
    assert!(
        (2_400..=6_000).contains(&handed_back_in),
        "handed back {handed_back_in} ms after SIGTERM (grace 2.5 s)"
    );
    let claimed_in = (long[back + 1].ts - long[back].ts).num_milliseconds();
    assert!(
        claimed_in < 3_000,
        "b claimed it {claimed_in} ms after the hand-back"
    );
    eprintln!(
        "SIGTERM: short-1 finished in the grace period; long-1 handed back {handed_back_in} ms \
         after SIGTERM, claimed by the other worker {claimed_in} ms later; a exited after {a_took:?}"
    );
    conn.close().await.unwrap();
    check(&db.url());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_and_event_streams_carry_on_across_a_server_killed_and_restarted() {
    let py = Py::new();
    let db = ScratchDb::new();
    let mut server = RestartableServer::start(&db.url()).await;
    let addr = server.addr();
    let mut conn = PgConnection::connect(&db.url()).await.unwrap();

    // 12 jobs of 4 x 0.3 s, four at a time; api.py follows each job's event stream.
    let worker = py.worker(&addr, "w", &["--slots", "4", "--lease", "8", "--wait", "5"]);
    let api = py.api(&addr, "restart", 12, 300);
    wait_for_count(
        &mut conn,
        "SELECT count(*) FROM job WHERE status = 'succeeded'",
        2,
    )
    .await;
    server.stop("KILL").await;
    let killed: DateTime<Utc> = SystemTime::now().into();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    server.restart().await;
    let back: DateTime<Utc> = SystemTime::now().into();

    let api = api.finish(LIMIT).await;
    assert_eq!(api.code, Some(0), "{}", api.output);
    line(&api.output, "12 of 12 jobs succeeded");
    worker.signal("TERM");
    let worker = worker.finish(LIMIT).await;
    assert_eq!(worker.code, Some(0), "{}", worker.output);

    let all = events(&mut conn, "restart-").await;
    assert_eq!(all.len(), 12);
    let mut rescued = 0;
    for (key, events) in &all {
        let steps: Vec<(&str, i32, &str)> = events
            .iter()
            .map(|e| (e.step.as_str(), e.attempt, e.actor.as_str()))
            .collect();
        let successes = events
            .iter()
            .filter(|e| e.step == "running->succeeded")
            .count();
        assert_eq!(successes, 1, "{key}: finished once: {steps:?}");
        // A claim committed just as the server died never reached the worker: its lease
        // ran out and the job was rescued. Anything else would be a lost or repeated step.
        let failures: Vec<&Event> = events
            .iter()
            .filter(|e| e.step == "running->failed")
            .collect();
        assert!(
            failures.iter().all(|e| e.error_code == "LEASE_EXPIRED"),
            "{key}: {steps:?}"
        );
        rescued += failures.len();
        let last = events.last().unwrap();
        assert_eq!(
            last.attempt as usize,
            1 + failures.len(),
            "{key}: {steps:?}"
        );
        // The stream api.py printed: every stored event once, in order.
        let printed: Vec<&str> = api
            .output
            .lines()
            .filter(|l| l.starts_with(&format!("event {key} ")))
            .collect();
        assert_eq!(
            printed.len(),
            events.len(),
            "{key}: {printed:#?}\n{steps:?}"
        );
    }
    assert!(
        !worker.output.contains(": lost ") && !worker.output.contains("could not report"),
        "{}",
        worker.output
    );
    let stopped = line(&worker.output, "w: stopped: ");
    assert!(
        stopped.contains("12 succeeded, 0 failed, 0 lost"),
        "{stopped}"
    );
    let during = all
        .values()
        .flatten()
        .filter(|e| e.ts > killed && e.ts < back)
        .count();
    assert_eq!(during, 0, "nothing was written while the server was down");
    eprintln!(
        "server killed and restarted: 12 jobs finished once each; {rescued} rescued \
         (a claim committed as the server died)"
    );
    conn.close().await.unwrap();
    check(&db.url());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_event_stream_resumes_across_restarts_without_a_gap_or_a_repeat() {
    let py = Py::new();
    let db = ScratchDb::new();
    let mut server = RestartableServer::start(&db.url()).await;
    let addr = server.addr();
    let follower = py.spawn(
        "follow",
        "clients/python/tests/follow_events.py",
        &[&addr, "9"],
    );
    follower.wait_for_line("following after ", LIMIT).await;
    let create = |i: usize| {
        run(Command::new(BIN).args([
            "job",
            "--addr",
            &format!("http://{addr}"),
            "create",
            "--type",
            "followed",
            "--idempotency-key",
            &format!("followed-{i}"),
        ]));
    };
    for i in 0..3 {
        create(i);
    }
    follower.wait_for_line("event ", LIMIT).await;
    // Killed: the stream breaks. Then drained (SIGTERM): the stream ends UNAVAILABLE.
    server.stop("KILL").await;
    server.restart().await;
    for i in 3..6 {
        create(i);
    }
    server.stop("TERM").await;
    server.restart().await;
    for i in 6..9 {
        create(i);
    }
    let follower = follower.finish(LIMIT).await;
    assert_eq!(follower.code, Some(0), "{}", follower.output);
    let printed: Vec<&str> = follower
        .output
        .lines()
        .filter_map(|l| l.strip_prefix("event "))
        .collect();

    let mut conn = PgConnection::connect(&db.url()).await.unwrap();
    let stored: Vec<String> = sqlx::query(
        "SELECT e.job_id::text FROM job_event e JOIN job j ON j.id = e.job_id \
         WHERE j.type = 'followed' ORDER BY e.seq",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect();
    assert_eq!(stored.len(), 9);
    let ids: Vec<&str> = printed
        .iter()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        ids, stored,
        "every event once, in order:\n{}",
        follower.output
    );
    assert!(printed
        .iter()
        .all(|l| l.contains(" UNSPECIFIED->QUEUED a0 ")));
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canceled_job_stops_its_async_handler() {
    let py = Py::new();
    let db = ScratchDb::new();
    let server = server(&db, &[]).await;
    let addr = format!("127.0.0.1:{}", server.port);
    let worker = py.worker(&addr, "w", &["--async", "--lease", "2", "--wait", "5"]);
    let api = py.api(&addr, "cancel", 1, 3000);
    let mut conn = PgConnection::connect(&db.url()).await.unwrap();
    wait_for_count(
        &mut conn,
        "SELECT count(*) FROM job WHERE lease_holder = 'w' AND stage = 'download'",
        1,
    )
    .await;
    let id: String =
        sqlx::query_scalar("SELECT id::text FROM job WHERE idempotency_key = 'cancel-1'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    run(Command::new(BIN).args(["job", "--addr", &format!("http://{addr}"), "cancel", &id]));
    let canceled = Instant::now();
    let lost = worker
        .wait_for_line("w: lost cancel-1 attempt 1: ", Duration::from_secs(5))
        .await;
    // Told by a heartbeat (every 0.67 s), not by the next report (3 s after the first).
    assert!(
        lost.contains("heartbeat refused: FAILED_PRECONDITION"),
        "{lost}"
    );
    assert!(lost.contains("reason=JOB_NOT_RUNNING"), "{lost}");
    assert!(
        canceled.elapsed() < Duration::from_secs(3),
        "{:?}",
        canceled.elapsed()
    );
    let api = api.finish(LIMIT).await;
    assert_eq!(api.code, Some(3), "{}", api.output);
    // Past when the next stage would have been reported: nothing was.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let steps: Vec<String> = events(&mut conn, "cancel-1").await["cancel-1"]
        .iter()
        .map(|e| e.step.clone())
        .collect();
    assert_eq!(
        steps,
        [
            "-->queued",
            "queued->running",
            "running->running",
            "running->canceled"
        ]
    );
    worker.signal("TERM");
    let worker = worker.finish(LIMIT).await;
    assert_eq!(worker.code, Some(0), "{}", worker.output);
    assert!(
        line(&worker.output, "w: stopped: ").contains("0 succeeded, 0 failed, 1 lost"),
        "{}",
        worker.output
    );
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_and_threads_never_run_one_attempt_twice() {
    let py = Py::new();
    let db = ScratchDb::new();
    let server = server(&db, &[]).await;
    let addr = format!("127.0.0.1:{}", server.port);
    let workers: Vec<(&str, Script)> = ["p1", "p2", "p3"]
        .into_iter()
        .map(|id| {
            let args = ["--slots", "8", "--lease", "5", "--wait", "2"];
            (id, py.worker(&addr, id, &args))
        })
        .collect();
    let api = py.api(&addr, "many", 60, 10).finish(LIMIT).await;
    assert_eq!(api.code, Some(0), "{}", api.output);
    line(&api.output, "60 of 60 jobs succeeded");
    let mut succeeded = 0;
    for (id, worker) in workers {
        worker.signal("TERM");
        let done = worker.finish(LIMIT).await;
        assert_eq!(done.code, Some(0), "{}", done.output);
        let stopped = line(&done.output, &format!("{id}: stopped: "));
        assert!(stopped.contains(" 0 failed, 0 lost"), "{stopped}");
        let n: i64 = stopped
            .split(" succeeded")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        succeeded += n;
    }
    assert_eq!(succeeded, 60, "each job succeeded in exactly one worker");
    let mut conn = PgConnection::connect(&db.url()).await.unwrap();
    for (key, events) in events(&mut conn, "many-").await {
        let steps: Vec<(&str, i32, &str)> = events
            .iter()
            .map(|e| (e.step.as_str(), e.attempt, e.actor.as_str()))
            .collect();
        // One attempt, run by the worker that claimed it, to one success.
        assert!(events.iter().all(|e| e.attempt <= 1), "{key}: {steps:?}");
        let claimer = &events[1].actor;
        assert!(
            events[1..].iter().all(|e| &e.actor == claimer),
            "{key}: {steps:?}"
        );
        assert_eq!(
            events
                .iter()
                .filter(|e| e.step == "running->succeeded")
                .count(),
            1,
            "{key}"
        );
    }
    conn.close().await.unwrap();
    check(&db.url());
}
