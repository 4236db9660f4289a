//! The terminal CLI as a person or a script uses it: the real binary against a real
//! server — tables and `--output json`, filters and paging, transitions and cancel,
//! `watch` (live events, exit codes, the progress bar on a terminal), errors and their
//! exit codes, tokens, client TLS, `--help` — and `jobledger dev` (a private cluster
//! created, served, and removed on SIGTERM or after a hard kill).
//!
//! Multi-threaded tests: the CLI runs as a blocking subprocess while this process serves.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use jobledger::{
    proto::{self, JobStatus},
    server::{
        config::{AuthConfig, Secret, TlsConfig},
        Application, Config,
    },
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{spawn_app, spawn_app_with, ScratchDb, TestApp, BIN};

/// What a CLI run printed and how it exited.
#[derive(Debug)]
pub(crate) struct Run {
    pub code: Option<i32>,
    pub out: String,
    pub err: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.out)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
    pub fn err_json(&self) -> Value {
        serde_json::from_str(self.err.trim())
            .unwrap_or_else(|e| panic!("stderr is not JSON ({e}): {self:?}"))
    }
}

/// The binary, without the CLI's variables of the environment running the tests.
fn jobledger() -> Command {
    let mut command = Command::new(BIN);
    for var in [
        "JOBLEDGER_ADDR",
        "JOBLEDGER_ORG",
        "JOBLEDGER_TOKEN",
        "JOBLEDGER_OUTPUT",
        "JOBLEDGER_TIMEOUT_MS",
    ] {
        command.env_remove(var);
    }
    command
}

fn run_with(args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = jobledger()
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run jobledger");
    Run {
        code: out.status.code(),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub(crate) fn run(args: &[&str]) -> Run {
    run_with(args, &[])
}

/// `jobledger job <args> --addr <app>`.
pub(crate) fn job(app: &TestApp, args: &[&str]) -> Run {
    let mut all = vec!["job"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--addr", &app.addr]);
    run(&all)
}

pub(crate) fn ok(run: Run) -> Run {
    assert_eq!(run.code, Some(0), "{run:?}");
    run
}

/// The id in "Created job <id>." (the table output of `job create`).
pub(crate) fn created_id(run: &Run) -> String {
    let line = run.out.lines().next().unwrap_or_default();
    let id = line
        .strip_prefix("Created job ")
        .and_then(|rest| rest.strip_suffix('.'))
        .unwrap_or_else(|| panic!("no 'Created job' line: {run:?}"));
    Uuid::parse_str(id).expect("a UUID").to_string()
}

/// The value of `field` in a `field  value` job view.
fn view_field(out: &str, field: &str) -> String {
    out.lines()
        .find_map(|line| {
            let (key, value) = line.split_once("  ")?;
            (key == field).then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no {field} in\n{out}"))
}

async fn move_to(app: &TestApp, id: &str, to: JobStatus, stage: &str, progress: Option<i32>) {
    app.transition_with(proto::TransitionJobRequest {
        job_id: id.to_owned(),
        to_status: to as i32,
        stage: stage.to_owned(),
        progress,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("transition to {to:?}: {e:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_transition_and_cancel_as_tables_and_json() {
    let app = spawn_app().await;

    let created = ok(job(
        &app,
        &[
            "create",
            "--type",
            "report",
            "--params",
            r#"{"month": "2026-05", "n": 5}"#,
            "--idempotency-key",
            "may",
            "--priority",
            "-3",
            "--max-attempts",
            "2",
        ],
    ));
    let id = created_id(&created);
    assert_eq!(view_field(&created.out, "status"), "QUEUED");
    assert_eq!(view_field(&created.out, "attempt"), "0 of 2");
    assert_eq!(view_field(&created.out, "priority"), "-3");
    assert_eq!(
        view_field(&created.out, "params"),
        r#"{"month":"2026-05","n":5}"#
    );
    let stored = app.get(&id).await.unwrap();
    assert_eq!(stored.idempotency_key, "may");
    assert_eq!(stored.max_attempts, 2);

    // The same key and input again: the existing job, said so, nothing created.
    let again = ok(job(
        &app,
        &[
            "create",
            "--type",
            "report",
            "--params",
            r#"{"n": 5, "month": "2026-05"}"#,
            "--idempotency-key",
            "may",
            "-o",
            "json",
        ],
    ))
    .json();
    assert_eq!(again["created"], false);
    assert_eq!(again["job"]["id"], id.as_str());
    assert_eq!(app.count("job").await, 1);

    // get: the view as a table, the GetJobResponse as JSON (proto field names).
    let got = ok(job(&app, &["get", &id]));
    assert_eq!(view_field(&got.out, "id"), id);
    assert_eq!(view_field(&got.out, "type"), "report");
    assert_eq!(view_field(&got.out, "idempotency_key"), "may");
    assert_eq!(view_field(&got.out, "started_at"), "-");
    let got = ok(job(&app, &["get", &id, "--output", "json"])).json();
    let j = &got["job"];
    assert_eq!(j["id"], id.as_str());
    assert_eq!(j["status"], "QUEUED");
    assert_eq!(j["params"], json!({"month": "2026-05", "n": 5}));
    assert_eq!(j["max_attempts"], 2);
    assert_eq!(j["org_id"], "00000000-0000-0000-0000-000000000000");
    assert_eq!(j["started_at"], Value::Null);
    let created_at = j["created_at"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(created_at).is_ok() && created_at.ends_with('Z'),
        "{created_at}"
    );

    // transition (global flags may come before the subcommand, as they always could).
    let claimed = ok(run(&[
        "job",
        "--addr",
        &app.addr,
        "transition",
        &id,
        "--to",
        "running",
        "--expected",
        "queued",
        "--actor",
        "worker-1",
    ]));
    assert_eq!(view_field(&claimed.out, "status"), "RUNNING");
    assert_eq!(view_field(&claimed.out, "attempt"), "1 of 2");
    let event_row = claimed
        .out
        .lines()
        .find(|l| l.contains("QUEUED -> RUNNING"))
        .unwrap_or_else(|| panic!("no event row: {claimed:?}"));
    assert!(event_row.contains("actor=worker-1"), "{event_row}");
    assert!(claimed.out.contains("TIME"), "{}", claimed.out);

    let progress = ok(job(
        &app,
        &[
            "transition",
            &id,
            "--to",
            "RUNNING",
            "--attempt",
            "1",
            "--stage",
            "parse",
            "--progress",
            "40",
            "--detail",
            r#"{"zone": "eu"}"#,
            "-o",
            "json",
        ],
    ))
    .json();
    assert_eq!(progress["job"]["stage"], "parse");
    assert_eq!(progress["job"]["progress"], 40);
    assert_eq!(progress["events"][0]["prev_status"], "RUNNING");
    assert_eq!(progress["events"][0]["detail"]["zone"], "eu");
    assert_eq!(progress["events"][0]["detail"]["progress"], 40);
    assert!(progress["events"][0]["cursor"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));

    // cancel: TransitionJob to CANCELED, the reason on the event.
    let canceled = ok(job(
        &app,
        &[
            "cancel",
            &id,
            "--reason",
            "superseded by june",
            "--actor",
            "alice",
            "-o",
            "json",
        ],
    ))
    .json();
    assert_eq!(canceled["job"]["status"], "CANCELED");
    assert!(canceled["job"]["finished_at"].is_string());
    let detail = &canceled["events"][0]["detail"];
    assert_eq!(detail["error_message"], "superseded by june");
    assert_eq!(detail["actor"], "alice");
    let (stored_detail,): (Value,) = sqlx::query_as(
        "SELECT detail_json FROM job_event WHERE job_id = $1 AND next_status = 'canceled'",
    )
    .bind(Uuid::parse_str(&id).unwrap())
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(stored_detail["error_message"], "superseded by june");

    // Cancelling again: the final status refuses it, exit 3 with the precondition.
    let refused = job(&app, &["cancel", &id]);
    assert_eq!(refused.code, Some(3), "{refused:?}");
    assert!(
        refused
            .err
            .starts_with("error: FAILED_PRECONDITION: cannot move a job from CANCELED to CANCELED"),
        "{refused:?}"
    );
    assert!(
        refused.err.contains("reason: INVALID_TRANSITION"),
        "{refused:?}"
    );
    assert!(refused.err.contains("precondition STATUS"), "{refused:?}");
    assert!(refused.out.is_empty(), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_and_follows_pages() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.create(if i % 2 == 0 { "even" } else { "odd" }).await.id);
    }
    move_to(&app, &ids[1], JobStatus::Running, "fetch", Some(10)).await;
    move_to(&app, &ids[2], JobStatus::Canceled, "", None).await;
    let keyed = app
        .client
        .clone()
        .create_job(proto::CreateJobRequest {
            r#type: "even".into(),
            idempotency_key: "the-key".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id;
    ids.push(keyed.clone());
    // What the server lists, newest first: the CLI must show exactly this.
    let newest_first: Vec<String> = app
        .client
        .clone()
        .list_jobs(proto::ListJobsRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(newest_first.len(), 6);

    let listed_ids = |run: &Run| -> Vec<String> {
        run.json()["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_owned())
            .collect()
    };

    // The table: a header, one row per job, columns aligned, newest first.
    let table = ok(job(&app, &["list"]));
    let lines: Vec<&str> = table.out.lines().collect();
    assert_eq!(lines.len(), 7, "{}", table.out);
    let header = lines[0];
    assert!(header.starts_with("ID "), "{header}");
    let status_column = header.find("STATUS").unwrap();
    let stage_column = header.find("STAGE").unwrap();
    for (line, id) in lines[1..].iter().zip(&newest_first) {
        assert!(line.starts_with(id.as_str()), "{line}");
        let status = line[status_column..].split_whitespace().next().unwrap();
        assert!(
            ["QUEUED", "RUNNING", "CANCELED"].contains(&status),
            "{line}"
        );
    }
    let running_row = lines.iter().find(|l| l.starts_with(&ids[1])).unwrap();
    assert_eq!(&running_row[status_column..status_column + 7], "RUNNING");
    assert_eq!(
        running_row[stage_column..].split_whitespace().next(),
        Some("fetch")
    );
    assert!(table.err.is_empty(), "one page: no hint {table:?}");

    // JSON: the ListJobsResponse.
    let all = ok(job(&app, &["list", "-o", "json"]));
    assert_eq!(listed_ids(&all), newest_first);
    assert_eq!(all.json()["next_page_token"], "");

    // Filters: type, statuses (repeated and comma-separated), key, times.
    let even = listed_ids(&ok(job(&app, &["list", "--type", "even", "-o", "json"])));
    assert_eq!(even.len(), 4);
    assert!(even.iter().all(|id| *id != ids[1] && *id != ids[3]));
    let running = listed_ids(&ok(job(
        &app,
        &["list", "--status", "running", "-o", "json"],
    )));
    assert_eq!(running, vec![ids[1].clone()]);
    let two = listed_ids(&ok(job(
        &app,
        &[
            "list", "--status", "running", "--status", "canceled", "-o", "json",
        ],
    )));
    let same = listed_ids(&ok(job(
        &app,
        &["list", "--status", "RUNNING,canceled", "-o", "json"],
    )));
    assert_eq!(two.len(), 2);
    assert_eq!(two, same);
    let by_key = listed_ids(&ok(job(
        &app,
        &["list", "--idempotency-key", "the-key", "-o", "json"],
    )));
    assert_eq!(by_key, vec![keyed]);
    let future = ok(job(&app, &["list", "--created-after", "2999-01-01"]));
    assert_eq!(future.out.trim(), "No jobs found.");
    let past = listed_ids(&ok(job(
        &app,
        &[
            "list",
            "--created-after",
            "2000-01-01T00:00:00Z",
            "--created-before",
            "2999-01-01T00:00:00+02:00",
            "-o",
            "json",
        ],
    )));
    assert_eq!(past, newest_first);

    // Paging by hand: a page of 2, its token in the JSON and (table) on stderr.
    let first = ok(job(&app, &["list", "--page-size", "2", "-o", "json"]));
    assert_eq!(listed_ids(&first), newest_first[..2]);
    let token = first.json()["next_page_token"].as_str().unwrap().to_owned();
    assert!(!token.is_empty());
    let hinted = ok(job(&app, &["list", "--page-size", "2"]));
    assert_eq!(hinted.out.lines().count(), 3, "{hinted:?}");
    assert!(
        hinted.err.contains(&format!("--page-token {token}")),
        "{hinted:?}"
    );
    let second = ok(job(
        &app,
        &[
            "list",
            "--page-size",
            "2",
            "--page-token",
            &token,
            "-o",
            "json",
        ],
    ));
    assert_eq!(listed_ids(&second), newest_first[2..4]);

    // --all follows every page: each job once, in order, and no token left.
    let everything = ok(job(
        &app,
        &["list", "--all", "--page-size", "2", "-o", "json"],
    ));
    assert_eq!(listed_ids(&everything), newest_first);
    assert_eq!(everything.json()["next_page_token"], "");
    let everything = ok(job(&app, &["list", "--all", "--page-size", "4"]));
    assert_eq!(everything.out.lines().count(), 7, "{everything:?}");
    assert!(everything.err.is_empty(), "{everything:?}");

    // A token with other filters is the server's INVALID_ARGUMENT on page_token.
    let mismatch = job(
        &app,
        &[
            "list",
            "--type",
            "odd",
            "--page-token",
            &token,
            "-o",
            "json",
        ],
    );
    assert_eq!(mismatch.code, Some(3), "{mismatch:?}");
    let error = &mismatch.err_json()["error"];
    assert_eq!(error["code"], "INVALID_ARGUMENT");
    assert_eq!(error["field_violations"][0]["field"], "page_token");
    assert_eq!(error["exit_code"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_by_type_and_status() {
    let app = spawn_app().await;
    let a = app.create("alpha").await.id;
    app.create("alpha").await;
    app.create("beta").await;
    move_to(&app, &a, JobStatus::Running, "", None).await;

    let table = ok(job(&app, &["count"]));
    let lines: Vec<&str> = table.out.lines().collect();
    let cells = |i: usize| lines[i].split_whitespace().collect::<Vec<_>>();
    assert_eq!(
        cells(0),
        [
            "TYPE",
            "QUEUED",
            "RUNNING",
            "SUCCEEDED",
            "FAILED",
            "CANCELED",
            "DEAD_LETTER",
            "TOTAL"
        ]
    );
    assert_eq!(cells(1), ["alpha", "1", "1", "0", "0", "0", "0", "2"]);
    assert_eq!(cells(2), ["beta", "1", "0", "0", "0", "0", "0", "1"]);
    assert_eq!(cells(3), ["(all)", "2", "1", "0", "0", "0", "0", "3"]);

    let counts = ok(job(&app, &["count", "--type", "alpha", "-o", "json"])).json();
    assert_eq!(counts["total"], 2);
    assert_eq!(
        counts["counts"],
        json!([
            {"type": "alpha", "status": "QUEUED", "count": 1},
            {"type": "alpha", "status": "RUNNING", "count": 1},
        ])
    );
    assert_eq!(counts["by_status"].as_array().unwrap().len(), 6);
    assert_eq!(
        counts["by_status"][1],
        json!({"status": "RUNNING", "count": 1})
    );
}

/// A `jobledger` child process whose stdout lines arrive on a channel; killed when
/// dropped (SIGTERM first, so a `dev` child can clean up).
struct Watched {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Watched {
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Watched {
        let mut child = jobledger()
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn jobledger");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Watched {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stdout line containing `needle`; returns it.
    fn line_with(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => {
                    let err = self.stderr_now();
                    panic!(
                        "no line with {needle:?} within {limit:?}; got {:#?}; stderr: {err}",
                        self.seen
                    )
                }
            }
        }
    }

    fn stderr_now(&mut self) -> String {
        if self.child.try_wait().ok().flatten().is_none() {
            return "(still running)".into();
        }
        let mut text = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut err, &mut text);
        }
        text
    }

    /// Waits for the exit; (code, every stdout line, stderr).
    fn finish(mut self, limit: Duration) -> (Option<i32>, Vec<String>, String) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < limit,
                "still running after {limit:?}: {:#?}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut lines = std::mem::take(&mut self.seen);
        // The reader thread ends at EOF.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            lines.push(line);
        }
        let err = self.stderr_now();
        (status.code(), lines, err)
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(15) {
                if self.child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_each_event_live_and_exits_0_when_the_job_succeeds() {
    let app = spawn_app().await;
    let id = app.create("watched").await.id;
    let mut watch = Watched::spawn(&["job", "watch", &id, "--addr", &app.addr], &[]);
    let mut json_watch = Watched::spawn(
        &["job", "watch", &id, "--addr", &app.addr, "--output", "json"],
        &[],
    );
    // Both are following before anything else happens: what comes next arrives live.
    watch.line_with("(new) -> QUEUED", Duration::from_secs(10));
    json_watch.line_with("\"next_status\":\"QUEUED\"", Duration::from_secs(10));

    move_to(&app, &id, JobStatus::Running, "", None).await;
    watch.line_with("QUEUED -> RUNNING", Duration::from_secs(10));
    move_to(&app, &id, JobStatus::Running, "parse", Some(50)).await;
    watch.line_with("progress=50%", Duration::from_secs(10));
    app.transition_with(proto::TransitionJobRequest {
        job_id: id.clone(),
        to_status: JobStatus::Succeeded as i32,
        result: Some(crate::helpers::object(json!({"rows": 3}))),
        ..Default::default()
    })
    .await
    .unwrap();

    let (code, lines, err) = watch.finish(Duration::from_secs(15));
    assert_eq!(code, Some(0), "{lines:#?} {err}");
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let expected = [
        ("(new) -> QUEUED", "attempt 0"),
        ("QUEUED -> RUNNING", "attempt 1"),
        ("RUNNING -> RUNNING", "stage=parse progress=50%"),
        ("RUNNING -> SUCCEEDED", r#"result={"rows":3}"#),
    ];
    for (line, (transition, detail)) in lines.iter().zip(expected) {
        // time, transition, attempt, detail
        let time = line.split_whitespace().next().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok(), "{line}");
        assert!(line.contains(transition), "{line}");
        assert!(line.contains(detail), "{line}");
    }
    // Not a terminal: plain lines, no progress bar.
    assert!(lines.iter().all(|l| !l.contains("[=")), "{lines:#?}");
    assert!(err.is_empty(), "{err}");

    let (code, lines, _) = json_watch.finish(Duration::from_secs(15));
    assert_eq!(code, Some(0));
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let statuses: Vec<&str> = events
        .iter()
        .map(|e| e["next_status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["QUEUED", "RUNNING", "RUNNING", "SUCCEEDED"]);
    assert_eq!(events[0]["prev_status"], "UNSPECIFIED");
    assert!(events.iter().all(|e| e["job_id"] == id.as_str()));
    assert_eq!(events[3]["detail"]["result"], json!({"rows": 3}));

    // From the last event's cursor nothing is left: the job's status decides, exit 0.
    let cursor = events[3]["cursor"].as_str().unwrap();
    let after = job(&app, &["watch", &id, "--after-cursor", cursor]);
    assert_eq!(after.code, Some(0), "{after:?}");
    assert!(after.out.is_empty(), "{after:?}");
    // From the second event's cursor: the two after it.
    let cursor = events[1]["cursor"].as_str().unwrap();
    let after = ok(job(&app, &["watch", &id, "--after-cursor", cursor]));
    assert_eq!(after.out.lines().count(), 2, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_exits_5_when_the_job_ends_without_succeeding() {
    let app = spawn_app().await;
    let id = app
        .client
        .clone()
        .create_job(proto::CreateJobRequest {
            r#type: "fragile".into(),
            max_attempts: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id;
    let mut watch = Watched::spawn(&["job", "watch", &id, "--addr", &app.addr], &[]);
    watch.line_with("(new) -> QUEUED", Duration::from_secs(10));
    move_to(&app, &id, JobStatus::Running, "", None).await;
    app.transition_with(proto::TransitionJobRequest {
        job_id: id.clone(),
        to_status: JobStatus::Failed as i32,
        error_code: "BOOM".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    // The last attempt failed: FAILED, then DEAD_LETTER in the same transaction.
    let (code, lines, err) = watch.finish(Duration::from_secs(15));
    assert_eq!(code, Some(5), "{lines:#?} {err}");
    assert!(lines[2].contains("RUNNING -> FAILED") && lines[2].contains("error_code=BOOM"));
    assert!(lines[3].contains("FAILED -> DEAD_LETTER"), "{lines:#?}");
    assert!(
        lines[3].contains("reason=max_attempts_exhausted"),
        "{lines:#?}"
    );
    assert!(
        err.contains(&format!("job {id} ended DEAD_LETTER, not SUCCEEDED")),
        "{err}"
    );

    // A canceled job: its history, then exit 5; as JSON the error says which status.
    let canceled = app.create("dropped").await.id;
    move_to(&app, &canceled, JobStatus::Canceled, "", None).await;
    let run = job(&app, &["watch", &canceled, "-o", "json"]);
    assert_eq!(run.code, Some(5), "{run:?}");
    assert_eq!(run.out.lines().count(), 2, "{run:?}");
    let error = &run.err_json()["error"];
    assert_eq!(error["status"], "CANCELED");
    assert_eq!(error["exit_code"], 5);

    // An unknown job: the RPC fails, exit 3.
    let missing = job(&app, &["watch", &Uuid::new_v4().to_string()]);
    assert_eq!(missing.code, Some(3), "{missing:?}");
    assert!(missing.err.contains("NOT_FOUND"), "{missing:?}");
    assert!(missing.err.contains("reason: JOB_NOT_FOUND"), "{missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_cut_by_a_shutdown_names_the_cursor_to_resume_from() {
    let mut first = spawn_app().await;
    let id = first.create("long").await.id;
    let mut watch = Watched::spawn(&["job", "watch", &id, "--addr", &first.addr], &[]);
    watch.line_with("(new) -> QUEUED", Duration::from_secs(10));
    move_to(&first, &id, JobStatus::Running, "", None).await;
    watch.line_with("QUEUED -> RUNNING", Duration::from_secs(10));

    // The server shuts down: the stream ends UNAVAILABLE, the RPC failed (exit 3).
    first.stop().await.unwrap();
    let (code, lines, err) = watch.finish(Duration::from_secs(15));
    assert_eq!(code, Some(3), "{lines:#?} {err}");
    assert!(err.contains("error: UNAVAILABLE: "), "{err}");
    assert!(err.contains("reason: SHUTTING_DOWN"), "{err}");
    let hint = format!("resume with: jobledger job watch {id} --after-cursor ");
    let cursor = err
        .lines()
        .find_map(|l| l.split_once(&hint).map(|(_, c)| c.trim().to_owned()))
        .unwrap_or_else(|| panic!("no resume hint: {err}"));

    // Another server on the same database: resuming there delivers only what came after.
    let second =
        crate::helpers::spawn_app_on(&crate::helpers::base_url(), &first.db_name, |_| {}).await;
    move_to(&second, &id, JobStatus::Succeeded, "", None).await;
    let resumed = ok(job(&second, &["watch", &id, "--after-cursor", &cursor]));
    let lines: Vec<&str> = resumed.out.lines().collect();
    assert_eq!(lines.len(), 1, "{resumed:?}");
    assert!(lines[0].contains("RUNNING -> SUCCEEDED"), "{resumed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_on_a_terminal_draws_a_progress_bar() {
    let app = spawn_app().await;
    let id = app.create("shown").await.id;
    move_to(&app, &id, JobStatus::Running, "load", Some(30)).await;
    move_to(&app, &id, JobStatus::Succeeded, "", None).await;
    // `script` gives the command a pseudo-terminal as stdout.
    let command = format!("{BIN} job watch {id} --addr {}", app.addr);
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_remove("JOBLEDGER_OUTPUT")
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("RUNNING -> SUCCEEDED"), "{text}");
    assert!(text.contains("stage=load progress=30%"), "{text}");
    // The bar, full, with the final status.
    assert!(
        text.contains("[========================================] 100%  SUCCEEDED"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_code_the_fields_and_exit_like_grpc_health_probe() {
    let app = spawn_app().await;

    // A malformed id: the server's INVALID_ARGUMENT, exit 3, the field named.
    let bad = job(&app, &["get", "not-a-uuid"]);
    assert_eq!(bad.code, Some(3), "{bad:?}");
    assert!(
        bad.err
            .starts_with("error: INVALID_ARGUMENT: invalid request: job_id"),
        "{bad:?}"
    );
    assert!(bad.err.contains("\n  field job_id: "), "{bad:?}");
    assert!(bad.out.is_empty());
    let bad = job(&app, &["get", "not-a-uuid", "--output", "json"]);
    assert_eq!(bad.code, Some(3));
    let error = &bad.err_json()["error"];
    assert_eq!(error["code"], "INVALID_ARGUMENT");
    assert_eq!(error["reason"], "INVALID_ARGUMENT");
    assert_eq!(error["domain"], "jobledger");
    assert_eq!(error["field_violations"][0]["field"], "job_id");
    assert!(error["message"].as_str().unwrap().contains("job_id"));

    // Every violated field is listed.
    let id = app.create("x").await.id;
    let bad = job(
        &app,
        &[
            "transition",
            &id,
            "--to",
            "running",
            "--progress",
            "101",
            "--attempt",
            "-1",
        ],
    );
    assert_eq!(bad.code, Some(3), "{bad:?}");
    assert!(
        bad.err.contains("field progress: must be 0..100"),
        "{bad:?}"
    );
    assert!(bad.err.contains("field attempt: "), "{bad:?}");

    // Another status than expected: ABORTED with its reason and metadata.
    let stale = job(
        &app,
        &["transition", &id, "--to", "running", "--expected", "failed"],
    );
    assert_eq!(stale.code, Some(3), "{stale:?}");
    assert!(stale.err.starts_with("error: ABORTED: "), "{stale:?}");
    assert!(stale.err.contains("reason: STATUS_MISMATCH"), "{stale:?}");

    // Nothing listening: exit 2, before any call.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("http://127.0.0.1:{closed}");
    for args in [
        vec!["job", "get", &id, "--addr", &addr],
        vec!["job", "list", "--addr", &addr],
        vec!["job", "watch", &id, "--addr", &addr],
        vec!["health", "--addr", &addr],
    ] {
        let unreachable = run(&args);
        assert_eq!(unreachable.code, Some(2), "{args:?}: {unreachable:?}");
        assert!(
            unreachable
                .err
                .starts_with(&format!("error: cannot connect to {addr}: ")),
            "{unreachable:?}"
        );
        assert!(unreachable.err.contains("refused"), "{unreachable:?}");
    }
    let unreachable = run(&["job", "list", "--addr", &addr, "-o", "json"]);
    assert_eq!(unreachable.err_json()["error"]["exit_code"], 2);

    // Invalid command lines: clap's usage error, exit 1 (2 would read as "connection
    // failed"), naming the flag; nothing is sent.
    let cases: [(&[&str], &str); 7] = [
        (&["job", "list", "--bogus"], "unexpected argument '--bogus'"),
        (
            &["job", "list", "--status", "done"],
            "invalid value 'done' for '--status",
        ),
        (
            &["job", "create", "--type", "t", "--params", "[1]"],
            "--params <JSON>",
        ),
        (
            &["job", "create", "--type", "t", "--params", "{"],
            "is not JSON",
        ),
        (
            &["job", "list", "--created-after", "yesterday"],
            "--created-after <TIME>",
        ),
        (
            &["job", "list", "--page-size=-1"],
            "for '--page-size <PAGE_SIZE>'",
        ),
        (&["health", "--nope"], "unexpected argument '--nope'"),
    ];
    for (args, message) in cases {
        let mut all = args.to_vec();
        all.extend(["--addr", &app.addr]);
        let usage = run(&all);
        assert_eq!(usage.code, Some(1), "{args:?}: {usage:?}");
        assert!(usage.err.contains(message), "{args:?}: {usage:?}");
        assert!(usage.err.starts_with("error: "), "{args:?}: {usage:?}");
        assert!(usage.err.contains("try '--help'"), "{args:?}: {usage:?}");
    }
    let missing = run(&["job", "transition", &id, "--addr", &app.addr]);
    assert_eq!(missing.code, Some(1), "{missing:?}");
    assert!(missing.err.contains("--to <TO>"), "{missing:?}");
    assert_eq!(app.count("job_event").await, 1, "nothing was sent");

    // TLS flags that cannot work: exit 1, the flag named.
    let https = run(&["job", "list", "--addr", "https://127.0.0.1:1"]);
    assert_eq!(https.code, Some(1), "{https:?}");
    assert!(https.err.contains("--tls-ca-file"), "{https:?}");
    let plain = run(&[
        "job",
        "list",
        "--addr",
        &app.addr,
        "--tls-ca-file",
        "/x.pem",
    ]);
    assert_eq!(plain.code, Some(1), "{plain:?}");
    assert!(
        plain.err.contains("--tls-ca-file needs an https:// --addr"),
        "{plain:?}"
    );
    let unreadable = run(&[
        "health",
        "--addr",
        "https://127.0.0.1:1",
        "--tls-ca-file",
        "/nonexistent/ca.pem",
    ]);
    assert_eq!(unreadable.code, Some(1), "{unreadable:?}");
    assert!(
        unreadable
            .err
            .contains("cannot read --tls-ca-file /nonexistent/ca.pem"),
        "{unreadable:?}"
    );
    let half = run(&[
        "job",
        "list",
        "--addr",
        "https://x:1",
        "--tls-cert-file",
        "c.pem",
    ]);
    assert_eq!(half.code, Some(1), "{half:?}");
    assert!(half.err.contains("--tls-key-file"), "{half:?}");

    // health as JSON.
    let health = ok(run(&["health", "--addr", &app.addr, "-o", "json"]));
    assert_eq!(health.json(), json!({"status": "SERVING"}));
}

const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!";

fn token(org: Uuid) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "cli", "org_id": org.to_string(),
                "exp": chrono::Utc::now().timestamp() + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_authenticates_against_a_server_with_auth_on() {
    let app = spawn_app_with(|a| {
        a.auth.get_or_insert_with(AuthConfig::new).hs256_secret = Some(Secret::new(SECRET))
    })
    .await;
    let org = Uuid::new_v4();
    let token = token(org);

    let anonymous = job(&app, &["create", "--type", "t"]);
    assert_eq!(anonymous.code, Some(3), "{anonymous:?}");
    assert!(
        anonymous.err.starts_with("error: UNAUTHENTICATED: "),
        "{anonymous:?}"
    );
    assert!(
        anonymous.err.contains("reason: MISSING_CREDENTIALS"),
        "{anonymous:?}"
    );

    // --token: the token's org owns the job.
    let created = ok(job(
        &app,
        &["create", "--type", "t", "--token", &token, "-o", "json"],
    ));
    let id = created.json()["job"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created.json()["job"]["org_id"], org.to_string());
    // JOBLEDGER_TOKEN works the same (and is the way that keeps it out of `ps`).
    let got = run_with(
        &["job", "get", &id, "--addr", &app.addr, "-o", "json"],
        &[("JOBLEDGER_TOKEN", &token)],
    );
    assert_eq!(got.code, Some(0), "{got:?}");
    assert_eq!(got.json()["job"]["id"], id.as_str());
    let listed = ok(job(&app, &["list", "--token", &token, "-o", "json"]));
    assert_eq!(listed.json()["jobs"].as_array().unwrap().len(), 1);

    // --org naming another org than the token's: PERMISSION_DENIED.
    let other = Uuid::new_v4().to_string();
    let denied = job(&app, &["get", &id, "--token", &token, "--org", &other]);
    assert_eq!(denied.code, Some(3), "{denied:?}");
    assert!(
        denied.err.starts_with("error: PERMISSION_DENIED: "),
        "{denied:?}"
    );
    assert!(denied.err.contains("reason: ORG_MISMATCH"), "{denied:?}");

    // A bad token is refused and never echoed.
    let forged = format!("{}x", &token[..token.len() - 1]);
    let refused = job(&app, &["get", &id, "--token", &forged]);
    assert_eq!(refused.code, Some(3), "{refused:?}");
    assert!(refused.err.contains("UNAUTHENTICATED"), "{refused:?}");
    assert!(!refused.err.contains(&forged), "{refused:?}");
    let unusable = job(&app, &["get", &id, "--token", "line\nbreak"]);
    assert_eq!(unusable.code, Some(1), "{unusable:?}");
    assert!(unusable.err.contains("--token"), "{unusable:?}");
    assert!(!unusable.err.contains("break"), "{unusable:?}");
    // transition and `watch` carry the token too.
    ok(job(
        &app,
        &["transition", &id, "--to", "running", "--token", &token],
    ));
    ok(job(
        &app,
        &["transition", &id, "--to", "succeeded", "--token", &token],
    ));
    let watched = ok(job(&app, &["watch", &id, "--token", &token]));
    assert_eq!(watched.out.lines().count(), 3, "{watched:?}");
    let watched = job(&app, &["watch", &id]);
    assert_eq!(watched.code, Some(3), "{watched:?}");
}

/// A CA of the test's own and a server certificate for 127.0.0.1 and localhost.
struct Pki {
    dir: tempfile::TempDir,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            issuer,
        };
        std::fs::write(pki.path("ca.pem"), pki.issuer.pem()).unwrap();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `<name>.pem` and `<name>.key`.
    fn leaf(&self, name: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tls_flags_reach_a_tls_server() {
    let pki = Pki::new("cli test CA");
    pki.leaf(
        "server",
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    pki.leaf("client", &[], ExtendedKeyUsagePurpose::ClientAuth);
    let stranger = Pki::new("another CA");
    let db = ScratchDb::new();
    let mut args = Config::for_database(&db.url()).unwrap();
    args.listen_addr = "127.0.0.1:0".parse().unwrap();
    args.probe_interval = std::time::Duration::from_millis(100);
    args.pool_size = 4;
    args.tls = Some(TlsConfig {
        // Mutual TLS: a client certificate from this CA is required.
        client_ca_file: Some(pki.path("ca.pem")),
        ..TlsConfig::new(pki.path("server.pem"), pki.path("server.key"))
    });
    let app = Application::build(args).await.expect("TLS server builds");
    let port = app.port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        stopped.await.ok();
    }));

    let ca = pki.path("ca.pem");
    let cert = pki.path("client.pem");
    let key = pki.path("client.key");
    let https = format!("https://localhost:{port}");
    let tls = [
        "--tls-ca-file",
        s(&ca),
        "--tls-cert-file",
        s(&cert),
        "--tls-key-file",
        s(&key),
    ];
    let with_tls = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--addr", &https]);
        all.extend(tls);
        run(&all)
    };
    // The first probe may not have run yet.
    let started = Instant::now();
    loop {
        let health = with_tls(&["health"]);
        if health.code == Some(0) {
            assert_eq!(health.out.trim(), "SERVING");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{health:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let created = with_tls(&["job", "create", "--type", "over-tls", "-o", "json"]);
    assert_eq!(created.code, Some(0), "{created:?}");
    let id = created.json()["job"]["id"].as_str().unwrap().to_owned();
    let got = with_tls(&["job", "get", &id]);
    assert_eq!(view_field(&got.out, "type"), "over-tls");

    // By IP, with the name the certificate carries given explicitly.
    let by_ip = run(&[
        "job",
        "get",
        &id,
        "--addr",
        &format!("https://127.0.0.1:{port}"),
        "--tls-server-name",
        "localhost",
        "--tls-ca-file",
        s(&ca),
        "--tls-cert-file",
        s(&cert),
        "--tls-key-file",
        s(&key),
    ]);
    assert_eq!(by_ip.code, Some(0), "{by_ip:?}");

    // Trusting another CA: the server's certificate is refused, a connection failure.
    let distrust = run(&[
        "health",
        "--addr",
        &https,
        "--tls-ca-file",
        s(&stranger.path("ca.pem")),
        "--tls-cert-file",
        s(&cert),
        "--tls-key-file",
        s(&key),
    ]);
    assert_eq!(distrust.code, Some(2), "{distrust:?}");
    assert!(distrust.err.contains("cannot connect"), "{distrust:?}");
    // No client certificate: the server refuses the handshake, no answer.
    let anonymous = run(&["health", "--addr", &https, "--tls-ca-file", s(&ca)]);
    assert_eq!(anonymous.code, Some(2), "{anonymous:?}");
    assert!(anonymous.err.contains("connect"), "{anonymous:?}");
    // Plaintext to the TLS port: no answer either.
    let plaintext = run(&["health", "--addr", &format!("http://127.0.0.1:{port}")]);
    assert!(matches!(plaintext.code, Some(2) | Some(3)), "{plaintext:?}");

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

// ---------------------------------------------------------------------------------
// jobledger dev

/// `jobledger dev` on a free port, no database configured; the banner read.
struct Dev {
    process: Watched,
    addr: String,
    dir: PathBuf,
    database_url: String,
}

impl Dev {
    fn start(extra: &[&str]) -> Dev {
        let mut args = vec!["dev", "--listen-addr", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut command_env: Vec<(&str, &str)> = vec![("RUST_LOG", "warn")];
        command_env.push(("JOBLEDGER_METRICS_ADDR", "off"));
        let mut process = Watched::spawn(&args, &command_env);
        // initdb, start, migrate: a few seconds on a busy machine.
        let addr = process
            .line_with("JOBLEDGER_ADDR=", Duration::from_secs(90))
            .trim()
            .trim_start_matches("JOBLEDGER_ADDR=")
            .to_owned();
        let database_url = after(
            &process.line_with("database:", Duration::from_secs(5)),
            "cluster: ",
        );
        let dir = PathBuf::from(
            after(
                &process.line_with("cluster directory:", Duration::from_secs(5)),
                "cluster directory:",
            )
            .split(" (")
            .next()
            .unwrap()
            .to_owned(),
        );
        Dev {
            process,
            addr,
            dir,
            database_url,
        }
    }

    /// The postmaster's pid (first line of postmaster.pid).
    fn postmaster(&self) -> u32 {
        let text = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).unwrap();
        text.lines().next().unwrap().trim().parse().unwrap()
    }
}

fn after(line: &str, marker: &str) -> String {
    line.split_once(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in {line:?}"))
        .1
        .trim()
        .to_owned()
}

/// Whether a process runs (a zombie waiting for its reaper does not count).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn dev_serves_on_a_private_cluster_and_removes_it_on_sigterm() {
    let mut dev = Dev::start(&[]);
    assert!(dev.dir.join("data/PG_VERSION").exists(), "{:?}", dev.dir);
    assert!(dev.dir.starts_with(std::env::temp_dir()), "{:?}", dev.dir);
    let postmaster = dev.postmaster();
    assert!(alive(postmaster));
    assert!(
        dev.database_url
            .starts_with("postgres://postgres@127.0.0.1:"),
        "{}",
        dev.database_url
    );
    dev.process
        .line_with("jobledger job create", Duration::from_secs(5));
    dev.process
        .line_with("grpcurl -plaintext", Duration::from_secs(5));

    // The printed address works, with the printed variable.
    let created = run_with(
        &["job", "create", "--type", "dev-job", "-o", "json"],
        &[("JOBLEDGER_ADDR", &dev.addr)],
    );
    assert_eq!(created.code, Some(0), "{created:?}");
    let id = created.json()["job"]["id"].as_str().unwrap().to_owned();
    let listed = run_with(&["job", "list"], &[("JOBLEDGER_ADDR", &dev.addr)]);
    assert!(listed.out.contains(&id), "{listed:?}");
    // ... and so does the printed database URL: the job is in the private cluster.
    let rows = Command::new("psql")
        .args([&dev.database_url, "-tAc", "SELECT type FROM job"])
        .output()
        .expect("psql");
    assert_eq!(String::from_utf8_lossy(&rows.stdout).trim(), "dev-job");

    dev.process.signal("TERM");
    let Dev { process, dir, .. } = dev;
    let (code, lines, err) = process.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{lines:#?} {err}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("removed the private cluster")),
        "{lines:#?}"
    );
    assert!(!dir.exists(), "{dir:?} is still there");
    wait_until("postgres exits", Duration::from_secs(10), || {
        !alive(postmaster)
    });
}

#[test]
fn dev_after_a_hard_kill_cleans_up_the_leftovers_and_keep_keeps_the_cluster() {
    let first = Dev::start(&[]);
    let orphan = first.postmaster();
    let first_dir = first.dir.clone();
    let first_pid = first.process.child.id();
    first.process.signal("KILL");
    // Not reaped yet: a zombie, as under a parent that never waits.
    wait_until("the first run is dead", Duration::from_secs(10), || {
        !alive(first_pid)
    });
    // The orphaned PostgreSQL still runs and the directory is still there.
    assert!(alive(orphan));
    assert!(first_dir.exists());

    // The next run is not confused: a directory of its own, the orphan stopped and its
    // directory removed.
    // Declared first, dropped last: removes the kept directory even when an assertion
    // fails (after the run's process is gone).
    let mut kept = RemoveDir(None);
    let second = Dev::start(&["--keep"]);
    kept.0 = Some(second.dir.clone());
    assert_ne!(second.dir, first_dir);
    wait_until("the orphan is stopped", Duration::from_secs(30), || {
        !alive(orphan) && !first_dir.exists()
    });
    // SERVING once its first database probe ran.
    wait_until("the second run is SERVING", Duration::from_secs(10), || {
        run(&["health", "--addr", &second.addr]).code == Some(0)
    });

    // --keep: stopped, but the directory stays (and the next run leaves it alone).
    let postmaster = second.postmaster();
    second.process.signal("INT");
    let Dev { process, dir, .. } = second;
    let (code, lines, err) = process.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{lines:#?} {err}");
    assert!(
        lines.iter().any(|l| l.contains("the cluster is kept in")),
        "{lines:#?}"
    );
    wait_until("postgres exits", Duration::from_secs(10), || {
        !alive(postmaster)
    });
    assert!(dir.join("data/PG_VERSION").exists());
    assert!(!dir.join("data/postmaster.pid").exists());
    let third = Dev::start(&[]);
    assert!(dir.exists(), "a kept cluster is not a leftover");
    drop(third);
    assert!(dir.exists());
    let (code, _, _) = first.process.finish(Duration::from_secs(10));
    assert_eq!(code, None, "killed by a signal");
}

struct RemoveDir(Option<PathBuf>);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_uses_a_configured_database_and_creates_no_cluster() {
    let db = ScratchDb::new();
    let mut process = Watched::spawn(
        &["dev", "--listen-addr", "127.0.0.1:0"],
        &[
            ("RUST_LOG", "warn"),
            ("JOBLEDGER_METRICS_ADDR", "off"),
            ("DATABASE_URL", &db.url()),
        ],
    );
    let addr = process
        .line_with("JOBLEDGER_ADDR=", Duration::from_secs(60))
        .trim()
        .trim_start_matches("JOBLEDGER_ADDR=")
        .to_owned();
    let database = process.line_with("database:", Duration::from_secs(5));
    assert!(
        database.contains(&format!("the configured database {}", db.name)),
        "{database}"
    );
    assert!(process
        .seen
        .iter()
        .all(|l| !l.contains("cluster directory")));
    let created = run(&["job", "create", "--type", "t", "--addr", &addr]);
    assert_eq!(created.code, Some(0), "{created:?}");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url())
        .await
        .unwrap();
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM job")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(jobs, 1);
    sqlx::Connection::close(conn).await.unwrap();
    let pid = process.child.id();
    process.signal("TERM");
    let (code, lines, err) = process.finish(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{lines:#?} {err}");
    let prefix = format!("jobledger-dev-{pid}-");
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
