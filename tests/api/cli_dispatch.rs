//! The worker side of the CLI: `job claim` (long-poll past --timeout-ms, the claimed job
//! and its start event), `job heartbeat` (refusals exit 3 naming the reason) and `queue
//! list|pause|resume|limit` — the real binary against a real server.

use std::time::{Duration, Instant};

use crate::cli::{created_id, job, ok, run, Run};
use crate::helpers::{spawn_app, TestApp};

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
