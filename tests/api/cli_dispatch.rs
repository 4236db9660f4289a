//! The worker side of the CLI: `job claim` (long-poll past --timeout-ms, the claimed job
//! and its start event), `job heartbeat` (refusals exit 3 naming the reason) and `queue
//! list|pause|resume|limit` — the real binary against a real server.

use std::time::{Duration, Instant};

use crate::cli::{created_id, job, ok, run, Run};
use crate::helpers::{spawn_app, spawn_app_with, TestApp, BIN};

/// `jobledger queue <args> --addr <app>`.
fn queue(app: &TestApp, args: &[&str]) -> Run {
    let mut all = vec!["queue"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--addr", &app.addr]);
    run(&all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_waits_past_the_call_timeout_takes_a_job_and_heartbeats_it() {
    let app = spawn_app().await;
    // Nothing to claim: the claim waits its --wait-ms, longer than --timeout-ms, and
    // answers empty (the wait is added to the call's deadline).
    let started = Instant::now();
    let empty = ok(job(
        &app,
        &[
            "claim",
            "--type",
            "cli-work",
            "--worker",
            "w1",
            "--wait-ms",
            "1500",
            "--timeout-ms",
            "1000",
        ],
    ));
    let took = started.elapsed();
    assert!(empty.out.contains("No job was claimable."), "{empty:?}");
    assert!(
        took >= Duration::from_millis(1400),
        "answered after {took:?}"
    );

    let id = created_id(&ok(job(&app, &["create", "--type", "cli-work"])));
    let claimed = ok(job(
        &app,
        &[
            "claim",
            "--type",
            "cli-work",
            "--worker",
            "w1",
            "--lease-ms",
            "60000",
            "-o",
            "json",
        ],
    ))
    .json();
    let jobs = claimed["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 1, "{claimed}");
    let (claimed_job, event) = (&jobs[0]["job"], &jobs[0]["event"]);
    assert_eq!(claimed_job["id"], id.as_str());
    assert_eq!(claimed_job["status"], "RUNNING");
    assert_eq!(claimed_job["attempt"], 1);
    assert_eq!(claimed_job["lease_holder"], "w1");
    assert_eq!(event["prev_status"], "QUEUED");
    assert_eq!(event["next_status"], "RUNNING");
    assert_eq!(event["detail"]["actor"], "w1");

    let beat = ok(job(
        &app,
        &["heartbeat", &id, "--attempt", "1", "-o", "json"],
    ))
    .json();
    assert!(
        beat["lease_expires_at"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{beat}"
    );
    let table = ok(job(&app, &["heartbeat", &id, "--attempt", "1"]));
    assert!(
        table.out.starts_with(&format!(
            "The lease of job {id} (attempt 1) now expires at "
        )),
        "{table:?}"
    );
    // Another attempt's heartbeat is refused: exit 3, the reason on stderr.
    let stale = job(&app, &["heartbeat", &id, "--attempt", "2", "-o", "json"]);
    assert_eq!(stale.code, Some(3), "{stale:?}");
    assert!(stale.err.contains("STALE_ATTEMPT"), "{stale:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_pause_limit_and_resume_steer_claims_and_list_shows_them() {
    let app = spawn_app().await;
    for _ in 0..3 {
        ok(job(&app, &["create", "--type", "cli-queue"]));
    }
    let paused = ok(queue(&app, &["pause", "cli-queue", "-o", "json"])).json();
    assert_eq!(paused["queue"]["paused"], true, "{paused}");
    assert_eq!(paused["queue"]["ready"], 3, "{paused}");
    let none = ok(job(
        &app,
        &["claim", "--type", "cli-queue", "--worker", "w"],
    ));
    assert!(none.out.contains("No job was claimable."), "{none:?}");

    let listed = ok(queue(&app, &["list"]));
    let row = listed
        .out
        .lines()
        .find(|l| l.starts_with("cli-queue"))
        .unwrap_or_else(|| panic!("no cli-queue row: {listed:?}"));
    assert!(row.contains("paused"), "{row}");

    ok(queue(&app, &["limit", "cli-queue", "2"]));
    ok(queue(&app, &["resume", "cli-queue"]));
    let claimed = ok(job(
        &app,
        &[
            "claim",
            "--type",
            "cli-queue",
            "--worker",
            "w",
            "--max-jobs",
            "3",
            "-o",
            "json",
        ],
    ))
    .json();
    assert_eq!(
        claimed["jobs"].as_array().map(Vec::len),
        Some(2),
        "a limit of 2: {claimed}"
    );
    let listed = ok(queue(&app, &["list", "--type", "cli-queue", "-o", "json"])).json();
    let q = &listed["queues"][0];
    assert_eq!(
        (&q["ready"], &q["running"], &q["max_running"], &q["paused"]),
        (&1.into(), &2.into(), &2.into(), &false.into()),
        "{listed}"
    );

    let bad = run(&[
        "queue",
        "limit",
        "--addr",
        &app.addr,
        "cli-queue",
        "--",
        "-1",
    ]);
    assert_eq!(bad.code, Some(3), "{bad:?}");
    assert!(bad.err.contains("max_running"), "{bad:?}");
}

/// The race that bit River, with real processes: worker A (a shell running the CLI)
/// claims under a 1 s lease and is stopped with SIGSTOP before it reports; the job is
/// rescued and claimed by worker B; A is resumed and reports success for its attempt —
/// refused (STALE_ATTEMPT, exit 3). The job ends SUCCEEDED once, by B, and the
/// invariants hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_past_its_lease_reports_too_late_and_the_job_succeeds_once_by_the_next() {
    use std::os::unix::process::CommandExt;
    let app = spawn_app_with(|c| c.dispatch.rescue_interval = Duration::from_millis(100)).await;
    let id = created_id(&ok(job(
        &app,
        &[
            "create",
            "--type",
            "river-race",
            "--initial-backoff-ms",
            "100",
        ],
    )));
    let dir = tempfile::tempdir().unwrap();
    let (claimed, code) = (dir.path().join("claimed"), dir.path().join("code"));
    let script = format!(
        "{bin} job claim --addr {addr} --type river-race --worker A --lease-ms 1000 -o json > {claimed}.tmp \
         && mv {claimed}.tmp {claimed}; sleep 1.5; \
         {bin} job transition {id} --to succeeded --attempt 1 --addr {addr} 2> {code}.err; \
         echo $? > {code}",
        bin = BIN,
        addr = app.addr,
        claimed = claimed.display(),
        code = code.display(),
    );
    let mut worker_a = std::process::Command::new("sh")
        .args(["-c", &script])
        .process_group(0)
        .spawn()
        .unwrap();
    let group = worker_a.id().to_string();
    let until = Instant::now() + Duration::from_secs(10);
    while !claimed.exists() {
        assert!(Instant::now() < until, "worker A never claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, "--", &format!("-{group}")])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig}");
    };
    signal("-STOP");
    let a_claim: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&claimed).unwrap()).unwrap();
    assert_eq!(a_claim["jobs"][0]["job"]["id"], id.as_str());
    assert_eq!(a_claim["jobs"][0]["job"]["attempt"], 1);

    // Rescued when the lease runs out; B's waiting claim gets the retry once it is due.
    let b = ok(job(
        &app,
        &[
            "claim",
            "--type",
            "river-race",
            "--worker",
            "B",
            "--wait-ms",
            "10000",
            "-o",
            "json",
        ],
    ))
    .json();
    assert_eq!(b["jobs"][0]["job"]["id"], id.as_str(), "{b}");
    assert_eq!(b["jobs"][0]["job"]["attempt"], 2, "{b}");

    // A wakes up and reports success for attempt 1: refused, nothing written.
    signal("-CONT");
    let exited = tokio::task::spawn_blocking(move || worker_a.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exited.success());
    let a_code = std::fs::read_to_string(&code).unwrap();
    let a_err = std::fs::read_to_string(dir.path().join("code.err")).unwrap();
    assert_eq!(a_code.trim(), "3", "{a_err}");
    assert!(a_err.contains("STALE_ATTEMPT"), "{a_err}");

    ok(job(
        &app,
        &["transition", &id, "--to", "succeeded", "--attempt", "2"],
    ));
    let events: Vec<(String, Option<String>, i32)> = sqlx::query_as(
        "SELECT next_status, detail_json->>'actor', attempt FROM job_event
         WHERE job_id = $1::uuid ORDER BY ts, seq",
    )
    .bind(&id)
    .fetch_all(&app.db)
    .await
    .unwrap();
    let statuses: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        statuses,
        ["queued", "running", "failed", "running", "succeeded"],
        "{events:?}"
    );
    assert_eq!(events[1].1.as_deref(), Some("A"));
    assert_eq!(events[2].1.as_deref(), Some("jobledger"), "the rescue");
    assert_eq!(events[3].1.as_deref(), Some("B"));
    assert_eq!(events[4].2, 2, "succeeded by B's attempt");
    let report = jobledger::tools::check::check(&app.db).await.unwrap();
    assert!(report.ok, "{}", report.to_text());
}
