//! The invariant checker (`jobledger::check`, `jobledger check`): it finds nothing after
//! a realistic mix of API activity, and names the invariant and the job when one is
//! broken on purpose with SQL.

use std::process::Command;

use jobledger::{
    proto::{self, JobStatus as S},
    tools::check::{check, names, CheckReport},
};
use serde_json::json;
use tonic::Code;
use uuid::Uuid;

use crate::helpers::{object, spawn_app, TestApp};

const BIN: &str = env!("CARGO_BIN_EXE_jobledger");

async fn report(app: &TestApp) -> CheckReport {
    check(&app.db).await.expect("the checker runs")
}

async fn assert_all_hold(app: &TestApp) -> CheckReport {
    let r = report(app).await;
    assert!(r.ok, "invariants violated:\n{}", r.to_text());
    assert_eq!(r.invariants.len(), 9);
    r
}

/// `name` is violated, by `job_ids` among others; every other invariant holds.
async fn assert_violated(app: &TestApp, name: &str, job_ids: &[&str]) -> CheckReport {
    let r = report(app).await;
    assert!(!r.ok, "{}", r.to_text());
    let broken: Vec<&str> = r.violated().map(|i| i.name).collect();
    assert_eq!(broken, [name], "only {name} is violated:\n{}", r.to_text());
    let result = r.invariant(name).unwrap();
    assert_eq!(result.violations as usize, job_ids.len(), "{}", r.to_text());
    for id in job_ids {
        let id = Uuid::parse_str(id).unwrap();
        assert!(
            result.examples.contains(&id),
            "{name} does not name {id}:\n{}",
            r.to_text()
        );
    }
    r
}

async fn create_in(
    app: &TestApp,
    org: &str,
    key: &str,
    max_attempts: i32,
) -> proto::CreateJobResponse {
    app.client
        .clone()
        .create_job(proto::CreateJobRequest {
            org_id: org.to_owned(),
            r#type: "invariants".into(),
            idempotency_key: key.to_owned(),
            max_attempts,
            params: Some(object(json!({ "key": key }))),
            ..Default::default()
        })
        .await
        .expect("create_job")
        .into_inner()
}

async fn new_job(app: &TestApp, org: &str, max_attempts: i32) -> String {
    create_in(app, org, "", max_attempts).await.job.unwrap().id
}

fn to(org: &str, id: &str, status: S) -> proto::TransitionJobRequest {
    proto::TransitionJobRequest {
        org_id: org.to_owned(),
        job_id: id.to_owned(),
        to_status: status as i32,
        ..Default::default()
    }
}

async fn go(app: &TestApp, request: proto::TransitionJobRequest) -> proto::TransitionJobResponse {
    let what = format!("{request:?}");
    app.transition_with(request)
        .await
        .unwrap_or_else(|s| panic!("{what} refused: {s:?}"))
}

/// Moves `id` through `path`, one plain transition each.
async fn walk(app: &TestApp, org: &str, id: &str, path: &[S]) {
    for status in path {
        go(app, to(org, id, *status)).await;
    }
}

async fn status_of(app: &TestApp, id: &str) -> String {
    sqlx::query_scalar("SELECT status FROM job WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

async fn exec(app: &TestApp, sql: &str, id: &str) {
    sqlx::query(sql)
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[tokio::test]
async fn every_invariant_holds_after_a_realistic_mix_of_activity() {
    let app = spawn_app().await;
    let a = "";
    let b = Uuid::new_v4().to_string();
    let b = b.as_str();
    // An empty database: nothing to violate.
    let empty = assert_all_hold(&app).await;
    assert_eq!((empty.jobs, empty.events), (0, 0));

    // Every edge of the table, in both orgs.
    for org in [a, b] {
        // Created, canceled while queued.
        let id = new_job(&app, org, 0).await;
        walk(&app, org, &id, &[S::Canceled]).await;
        // Start, progress reports, success.
        let id = new_job(&app, org, 0).await;
        go(&app, to(org, &id, S::Running)).await;
        go(
            &app,
            proto::TransitionJobRequest {
                stage: "parse".into(),
                progress: Some(40),
                attempt: Some(1),
                ..to(org, &id, S::Running)
            },
        )
        .await;
        go(
            &app,
            proto::TransitionJobRequest {
                result: Some(object(json!({"rows": 3}))),
                ..to(org, &id, S::Succeeded)
            },
        )
        .await;
        // Requeue, restart, fail, retry straight into RUNNING, fail, retry via QUEUED,
        // cancel while running.
        let id = new_job(&app, org, 0).await;
        walk(
            &app,
            org,
            &id,
            &[
                S::Running,
                S::Queued,
                S::Running,
                S::Failed,
                S::Running,
                S::Failed,
                S::Queued,
                S::Running,
                S::Canceled,
            ],
        )
        .await;
        // Failed, then canceled; failed, then buried by hand; failed and left there.
        for last in [Some(S::Canceled), Some(S::DeadLetter), None] {
            let id = new_job(&app, org, 0).await;
            walk(&app, org, &id, &[S::Running, S::Failed]).await;
            if let Some(last) = last {
                walk(&app, org, &id, &[last]).await;
            }
        }
        // The automatic dead-letter of the last attempt, a redrive, a fresh budget used up
        // again, another redrive, and a success.
        let id = new_job(&app, org, 2).await;
        walk(
            &app,
            org,
            &id,
            &[S::Running, S::Failed, S::Running, S::Failed],
        )
        .await;
        assert_eq!(status_of(&app, &id).await, "dead_letter");
        walk(&app, org, &id, &[S::Queued, S::Running]).await;
        let failed = go(&app, to(org, &id, S::Failed)).await;
        assert_eq!(failed.events.len(), 1, "attempt 1 of 2 after a redrive");
        walk(&app, org, &id, &[S::Running, S::Failed, S::Queued]).await;
        walk(&app, org, &id, &[S::Running, S::Succeeded]).await;
        assert_eq!(status_of(&app, &id).await, "succeeded");
        // max_attempts 1: the first failure dead-letters.
        let id = new_job(&app, org, 1).await;
        let r = go(&app, to(org, &id, S::Running)).await;
        assert_eq!(r.job.unwrap().attempt, 1);
        let r = go(&app, to(org, &id, S::Failed)).await;
        assert_eq!(r.events.len(), 2);
        // Idempotent creates: a repeat, and one key per org.
        let first = create_in(&app, org, "shared-key", 0).await;
        let again = create_in(&app, org, "shared-key", 0).await;
        assert!(first.created && !again.created);
        assert_eq!(first.job.unwrap().id, again.job.unwrap().id);
    }

    // request_id replays, including after the job moved on, and a reuse that is refused.
    let id = new_job(&app, a, 0).await;
    let start = proto::TransitionJobRequest {
        request_id: "start-1".into(),
        ..to(a, &id, S::Running)
    };
    let first = go(&app, start.clone()).await;
    assert_eq!(go(&app, start.clone()).await, first);
    walk(&app, a, &id, &[S::Failed]).await;
    assert_eq!(go(&app, start.clone()).await, first);
    let reused = app
        .transition_with(proto::TransitionJobRequest {
            request_id: "start-1".into(),
            ..to(a, &id, S::Canceled)
        })
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists);

    // Refused transitions write nothing: illegal, stale attempt, CAS mismatch, no budget.
    let id = new_job(&app, a, 1).await;
    walk(&app, a, &id, &[S::Running, S::Succeeded]).await;
    for bad in [
        to(a, &id, S::Running),
        proto::TransitionJobRequest {
            attempt: Some(7),
            ..to(a, &id, S::Canceled)
        },
        proto::TransitionJobRequest {
            expected_status: Some(S::Queued as i32),
            ..to(a, &id, S::Canceled)
        },
    ] {
        app.transition_with(bad).await.unwrap_err();
    }

    // Concurrent claims of one job: exactly one wins.
    let id = new_job(&app, a, 0).await;
    let claims = (0..8).map(|i| {
        let mut client = app.client.clone();
        let request = proto::TransitionJobRequest {
            expected_status: Some(S::Queued as i32),
            actor: format!("worker-{i}"),
            ..to(a, &id, S::Running)
        };
        tokio::spawn(async move { client.transition_job(request).await })
    });
    let outcomes = futures::future::join_all(claims).await;
    let won = outcomes
        .iter()
        .filter(|o| o.as_ref().unwrap().is_ok())
        .count();
    assert_eq!(won, 1);
    // Concurrent progress reports and a finish racing on one job.
    let reports = (0..8).map(|i| {
        let mut client = app.client.clone();
        let request = proto::TransitionJobRequest {
            progress: Some(i * 10),
            attempt: Some(1),
            ..to(a, &id, if i == 7 { S::Succeeded } else { S::Running })
        };
        tokio::spawn(async move { client.transition_job(request).await })
    });
    futures::future::join_all(reports).await;

    // Concurrent creates with one key, and concurrent creates without keys.
    let creates = (0..8).map(|i| {
        let mut client = app.client.clone();
        let key = if i % 2 == 0 { "race-key" } else { "" };
        tokio::spawn(async move {
            client
                .create_job(proto::CreateJobRequest {
                    r#type: "race".into(),
                    idempotency_key: key.into(),
                    ..Default::default()
                })
                .await
        })
    });
    for created in futures::future::join_all(creates).await {
        created.unwrap().expect("create");
    }

    // A batch, with a key repeated inside it and one already held.
    let batch = app
        .client
        .clone()
        .create_jobs(proto::CreateJobsRequest {
            jobs: ["b1", "b2", "b1", "race-key", ""]
                .into_iter()
                .map(|key| proto::CreateJobRequest {
                    r#type: "race".into(),
                    idempotency_key: key.into(),
                    ..Default::default()
                })
                .collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(batch.results.iter().all(|r| r.error.is_none()));

    let r = assert_all_hold(&app).await;
    assert_eq!(r.jobs, app.count("job").await);
    assert_eq!(r.events, app.count("job_event").await);
    assert!(r.jobs >= 25 && r.events >= 100, "{}", r.to_text());
}

#[tokio::test]
async fn a_job_without_events_is_named() {
    let app = spawn_app().await;
    let victim = new_job(&app, "", 0).await;
    walk(&app, "", &victim, &[S::Running]).await;
    let bystander = new_job(&app, "", 0).await;
    walk(&app, "", &bystander, &[S::Running]).await;
    assert_all_hold(&app).await;

    exec(
        &app,
        "DELETE FROM job_event WHERE job_id = $1::uuid",
        &victim,
    )
    .await;
    assert_violated(&app, names::EVERY_JOB_HAS_AN_EVENT, &[&victim]).await;
}

#[tokio::test]
async fn a_status_that_is_not_the_newest_events_is_named() {
    let app = spawn_app().await;
    let victim = new_job(&app, "", 0).await;
    walk(&app, "", &victim, &[S::Running]).await;
    new_job(&app, "", 0).await;
    assert_all_hold(&app).await;

    exec(
        &app,
        "UPDATE job SET status = 'queued' WHERE id = $1::uuid",
        &victim,
    )
    .await;
    assert_violated(&app, names::STATUS_IS_NEWEST_EVENT, &[&victim]).await;
}

#[tokio::test]
async fn finished_at_on_a_queued_job_or_missing_on_a_final_one_is_named() {
    let app = spawn_app().await;
    let queued = new_job(&app, "", 0).await;
    let done = new_job(&app, "", 0).await;
    walk(&app, "", &done, &[S::Running, S::Succeeded]).await;
    let fine = new_job(&app, "", 0).await;
    walk(&app, "", &fine, &[S::Canceled]).await;
    assert_all_hold(&app).await;

    exec(
        &app,
        "UPDATE job SET finished_at = now() WHERE id = $1::uuid",
        &queued,
    )
    .await;
    assert_violated(&app, names::FINISHED_AT_IFF_FINAL, &[&queued]).await;
    exec(
        &app,
        "UPDATE job SET finished_at = NULL WHERE id = $1::uuid",
        &done,
    )
    .await;
    assert_violated(&app, names::FINISHED_AT_IFF_FINAL, &[&queued, &done]).await;
}

#[tokio::test]
async fn leases_and_run_after_out_of_place_and_an_expired_lease_left_running_are_named() {
    // No rescuer (it would fix the expired lease before the checker sees it).
    let app = crate::helpers::spawn_app_with(|c| {
        c.dispatch.rescue_interval = std::time::Duration::from_secs(3600)
    })
    .await;
    let queued = new_job(&app, "", 0).await;
    let done = new_job(&app, "", 0).await;
    walk(&app, "", &done, &[S::Running, S::Succeeded]).await;
    let running = new_job(&app, "", 0).await;
    walk(&app, "", &running, &[S::Running]).await;
    assert_all_hold(&app).await;

    exec(
        &app,
        "UPDATE job SET lease_expires_at = now() + interval '1 minute', lease_ms = 60000,
                        lease_holder = 'w' WHERE id = $1::uuid",
        &queued,
    )
    .await;
    assert_violated(&app, names::LEASE_ONLY_WHILE_RUNNING, &[&queued]).await;
    exec(
        &app,
        "UPDATE job SET lease_expires_at = NULL, lease_ms = NULL, lease_holder = NULL
         WHERE id = $1::uuid",
        &queued,
    )
    .await;
    exec(
        &app,
        "UPDATE job SET run_after = now() WHERE id = $1::uuid",
        &done,
    )
    .await;
    assert_violated(&app, names::RUN_AFTER_ONLY_WHILE_WAITING, &[&done]).await;
    exec(
        &app,
        "UPDATE job SET run_after = NULL WHERE id = $1::uuid",
        &done,
    )
    .await;
    // A lease that expired a minute ago on a RUNNING job: past any rescue window.
    exec(
        &app,
        "UPDATE job SET lease_expires_at = now() - interval '1 minute', lease_ms = 1000,
                        lease_holder = 'w' WHERE id = $1::uuid",
        &running,
    )
    .await;
    assert_violated(&app, names::EXPIRED_LEASES_RESCUED, &[&running]).await;
    // Within the window it is not (yet) a violation.
    exec(
        &app,
        "UPDATE job SET lease_expires_at = now() - interval '1 second' WHERE id = $1::uuid",
        &running,
    )
    .await;
    let r = report(&app).await;
    let expired = r.invariant(names::EXPIRED_LEASES_RESCUED).unwrap();
    assert!(expired.holds(), "{}", r.to_text());
}

#[tokio::test]
async fn an_illegal_event_chain_is_named() {
    let app = spawn_app().await;
    // A pair the table does not allow (QUEUED → SUCCEEDED), with the job row made to
    // agree, so only the chain is wrong.
    let skipped = new_job(&app, "", 0).await;
    // A chain that does not connect: the second event starts from RUNNING although
    // the first ended in QUEUED.
    let disconnected = new_job(&app, "", 0).await;
    // A first event that is not a creation.
    let headless = new_job(&app, "", 0).await;
    // A job the legacy import wrote starts in any status: legal.
    let imported = Uuid::new_v4().to_string();
    let untouched = new_job(&app, "", 0).await;
    walk(
        &app,
        "",
        &untouched,
        &[S::Running, S::Failed, S::DeadLetter],
    )
    .await;
    assert_all_hold(&app).await;

    exec(
        &app,
        "WITH e AS (INSERT INTO job_event (job_id, org_id, prev_status, next_status, attempt)
                    SELECT id, org_id, 'queued', 'succeeded', 0 FROM job WHERE id = $1::uuid)
         UPDATE job SET status = 'succeeded', finished_at = now() WHERE id = $1::uuid",
        &skipped,
    )
    .await;
    exec(
        &app,
        "WITH e AS (INSERT INTO job_event (job_id, org_id, prev_status, next_status, attempt)
                    SELECT id, org_id, 'running', 'queued', 0 FROM job WHERE id = $1::uuid)
         UPDATE job SET updated_at = now() WHERE id = $1::uuid",
        &disconnected,
    )
    .await;
    exec(
        &app,
        "UPDATE job_event SET prev_status = 'running' WHERE job_id = $1::uuid",
        &headless,
    )
    .await;
    exec(
        &app,
        "WITH j AS (INSERT INTO job (id, org_id, type, status, attempt, started_at)
                    VALUES ($1::uuid, '00000000-0000-0000-0000-000000000000', 'mock_process',
                            'running', 1, now()) RETURNING id, org_id)
         INSERT INTO job_event (job_id, org_id, prev_status, next_status, attempt, detail_json)
         SELECT id, org_id, NULL, 'running', 1,
                '{\"imported\": true, \"legacy_status\": \"processing\"}' FROM j",
        &imported,
    )
    .await;
    assert_violated(
        &app,
        names::LEGAL_EVENT_CHAIN,
        &[&skipped, &disconnected, &headless],
    )
    .await;
    // The imported job goes on under the machine like any other.
    walk(&app, "", &imported, &[S::Succeeded]).await;
    assert_violated(
        &app,
        names::LEGAL_EVENT_CHAIN,
        &[&skipped, &disconnected, &headless],
    )
    .await;
}

#[tokio::test]
async fn attempts_that_disagree_with_the_events_are_named() {
    let app = spawn_app().await;
    // job.attempt differs from its newest event's.
    let row = new_job(&app, "", 0).await;
    walk(&app, "", &row, &[S::Running]).await;
    // An event's attempt jumps by 2 on a start (row and newest event agree).
    let jump = new_job(&app, "", 0).await;
    walk(&app, "", &jump, &[S::Running, S::Running]).await;
    // A redrive that did not reset.
    let redrive = new_job(&app, "", 1).await;
    walk(&app, "", &redrive, &[S::Running, S::Failed, S::Queued]).await;
    let fine = new_job(&app, "", 0).await;
    walk(&app, "", &fine, &[S::Running, S::Queued, S::Running]).await;
    assert_all_hold(&app).await;

    exec(&app, "UPDATE job SET attempt = 7 WHERE id = $1::uuid", &row).await;
    exec(
        &app,
        "WITH e AS (UPDATE job_event SET attempt = 2
                    WHERE job_id = $1::uuid AND prev_status IS NOT NULL)
         UPDATE job SET attempt = 2 WHERE id = $1::uuid",
        &jump,
    )
    .await;
    exec(
        &app,
        "WITH e AS (UPDATE job_event SET attempt = 1
                    WHERE job_id = $1::uuid AND prev_status = 'dead_letter')
         UPDATE job SET attempt = 1 WHERE id = $1::uuid",
        &redrive,
    )
    .await;
    assert_violated(
        &app,
        names::ATTEMPTS_AGREE_WITH_EVENTS,
        &[&row, &jump, &redrive],
    )
    .await;
}

#[tokio::test]
async fn a_shared_idempotency_key_is_named_once_the_unique_index_is_gone() {
    let app = spawn_app().await;
    let holder = create_in(&app, "", "k1", 0).await.job.unwrap().id;
    create_in(&app, &Uuid::new_v4().to_string(), "k1", 0).await;
    assert_all_hold(&app).await;

    // While uq_job_org_idempotency exists, the database itself refuses a duplicate.
    let refused = sqlx::query(
        "INSERT INTO job (org_id, type, idempotency_key)
         VALUES ('00000000-0000-0000-0000-000000000000', 't', 'k1')",
    )
    .execute(&app.db)
    .await;
    assert!(refused.is_err(), "the unique index refuses a duplicate");

    sqlx::query("DROP INDEX uq_job_org_idempotency")
        .execute(&app.db)
        .await
        .unwrap();
    let duplicate = Uuid::new_v4().to_string();
    exec(
        &app,
        "WITH j AS (INSERT INTO job (id, org_id, type, idempotency_key)
                    VALUES ($1::uuid, '00000000-0000-0000-0000-000000000000', 't', 'k1')
                    RETURNING id, org_id, created_at)
         INSERT INTO job_event (job_id, org_id, ts, prev_status, next_status, attempt)
         SELECT id, org_id, created_at, NULL, 'queued', 0 FROM j",
        &duplicate,
    )
    .await;
    assert_violated(&app, names::UNIQUE_IDEMPOTENCY_KEY, &[&holder, &duplicate]).await;
}

/// `jobledger check` with `args`: exit code and stdout.
fn run_check(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN).arg("check").args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_check_subcommand_exits_0_when_clean_1_when_violated_2_when_unreachable() {
    let app = spawn_app().await;
    let id = new_job(&app, "", 0).await;
    walk(&app, "", &id, &[S::Running, S::Succeeded]).await;

    let (code, out, err) = run_check(&["--database-url", &app.database_url]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("all invariants hold"), "{out}");
    let (code, out, _) = run_check(&["--database-url", &app.database_url, "--output", "json"]);
    assert_eq!(code, Some(0));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["invariants"].as_array().unwrap().len(), 9);

    exec(
        &app,
        "UPDATE job SET finished_at = NULL WHERE id = $1::uuid",
        &id,
    )
    .await;
    let (code, out, _) = run_check(&["--database-url", &app.database_url]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("VIOLATED"), "{out}");
    assert!(out.contains(names::FINISHED_AT_IFF_FINAL), "{out}");
    assert!(out.contains(&id), "{out}");
    let (code, out, _) = run_check(&["--database-url", &app.database_url, "--output", "json"]);
    assert_eq!(code, Some(1));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["ok"], false);
    let broken: Vec<_> = json["invariants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["violations"] != 0)
        .collect();
    assert_eq!(broken.len(), 1, "{json:#}");
    assert_eq!(broken[0]["name"], names::FINISHED_AT_IFF_FINAL);
    assert_eq!(broken[0]["examples"], json!([id]));

    // DATABASE_URL works like the flag.
    let out = Command::new(BIN)
        .arg("check")
        .env("DATABASE_URL", &app.database_url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    // Nothing listening: exit 2, the reason on stderr.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, out, err) = run_check(&[
        "--database-url",
        &format!("postgres://postgres@127.0.0.1:{closed}/jobledger"),
        "--connect-timeout-ms",
        "2000",
    ]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("cannot connect"), "{err}");
    // A database that does not exist: also 2.
    let (code, _, err) = run_check(&[
        "--database-url",
        &format!(
            "{}/jl_no_such_db_{}",
            crate::helpers::base_url(),
            Uuid::new_v4().simple()
        ),
    ]);
    assert_eq!(code, Some(2), "{err}");
}
