//! Rescue (spec §7): a RUNNING job whose lease expired is moved to FAILED
//! (LEASE_EXPIRED, actor `jobledger`) within 2 s, exactly once however many servers look,
//! through the state machine (the last attempt dead-letters); and the race that bit
//! River: the worker that lost its lease comes back after the job was rescued and claimed
//! by another, and nothing it reports is recorded.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use jobledger::proto::{self, JobStatus as S};
use tonic::Code;

use crate::dispatch_support::*;
use crate::helpers::{base_url, spawn_app_on, spawn_app_with, TestApp};

const RESCUE_EVERY: Duration = Duration::from_millis(100);

async fn rescuing_app() -> TestApp {
    spawn_app_with(|c| {
        c.dispatch.rescue_interval = RESCUE_EVERY;
        c.pool_size = 6;
    })
    .await
}

/// Waits until the job is no longer RUNNING; its row then.
async fn until_rescued(app: &TestApp, id: &str) -> JobRow {
    eventually(Duration::from_secs(10), "the rescue", || async {
        let row = job_row(&app.db, id).await;
        (row.status != "running").then_some(row)
    })
    .await
}

/// The job's RUNNING → FAILED events.
async fn failures(app: &TestApp, id: &str) -> Vec<EventRow> {
    events(&app.db, id)
        .await
        .into_iter()
        .filter(|e| e.step() == "running->failed")
        .collect()
}

fn claim_with_lease(
    job_type: &str,
    worker: &str,
    lease_ms: u64,
    max_jobs: i32,
) -> proto::ClaimJobsRequest {
    proto::ClaimJobsRequest {
        lease: Some(ms(lease_ms)),
        ..claim_of(&[job_type], worker, max_jobs)
    }
}

#[tokio::test]
async fn an_expired_lease_is_rescued_within_2_s_and_a_heartbeat_keeps_it() {
    let app = rescuing_app().await;
    let id = create(&app, new_job("rescue")).await.id;
    let kept = create(&app, new_job("rescue")).await.id;
    let claimed = jobs_of(&claim(&app, claim_with_lease("rescue", "sleepy", 1000, 2)).await);
    assert_eq!(claimed.len(), 2);
    let expires: DateTime<Utc> = time(
        claimed
            .iter()
            .find(|j| j.id == id)
            .unwrap()
            .lease_expires_at
            .as_ref()
            .unwrap(),
    );

    // One worker heartbeats `kept` for 2.5 s; the other (for `id`) has died.
    let beating = {
        let mut client = app.new_client().await;
        let kept = kept.clone();
        tokio::spawn(async move {
            let until = Instant::now() + Duration::from_millis(2500);
            while Instant::now() < until {
                client
                    .heartbeat_job(heartbeat_of(&kept, 1))
                    .await
                    .expect("the holder's heartbeat is accepted");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let row = until_rescued(&app, &id).await;
    let failed = failures(&app, &id).await;
    assert_eq!(failed.len(), 1, "one rescue: {failed:?}");
    let rescue = &failed[0];
    let delay = rescue.ts - expires;
    println!(
        "rescue: the job left RUNNING {} ms after its lease expired (rescue interval {RESCUE_EVERY:?})",
        delay.num_milliseconds()
    );
    assert!(
        delay >= TimeDelta::zero(),
        "rescued before its lease expired: {delay:?}"
    );
    assert!(
        delay < TimeDelta::seconds(2),
        "rescued {delay:?} after expiry"
    );
    assert_eq!(rescue.actor().as_deref(), Some("jobledger"));
    assert_eq!(rescue.error_code().as_deref(), Some("LEASE_EXPIRED"));
    assert_eq!(rescue.attempt, Some(1));
    assert_eq!(
        steps(&app.db, &id).await,
        ["-->queued", "queued->running", "running->failed"]
    );
    assert_eq!(row.status, "failed");
    assert_eq!(row.last_error_code.as_deref(), Some("LEASE_EXPIRED"));
    assert_eq!((row.lease_expires_at, row.lease_holder), (None, None));
    let run_after = row
        .run_after
        .expect("attempts left: the retry waits out its backoff");
    let backoff = run_after - row.finished_at.unwrap();
    assert!(
        backoff >= TimeDelta::milliseconds(499) && backoff <= TimeDelta::milliseconds(1000),
        "default backoff of attempt 1: {backoff:?}"
    );
    let shown = app.get(&id).await.unwrap();
    assert_eq!(
        (status_of(&shown), shown.last_error_code.as_str()),
        (S::Failed, "LEASE_EXPIRED")
    );

    // The dead worker, back: told to stop.
    let status = assert_refused(
        heartbeat(&app, heartbeat_of(&id, 1)).await,
        Code::FailedPrecondition,
        "JOB_NOT_RUNNING",
    );
    assert_eq!(error_metadata(&status)["status"], "FAILED");
    let late = app.transition_with(report(&id, S::Succeeded, 1)).await;
    assert_eq!(late.expect_err("refused").code(), Code::FailedPrecondition);

    // The heartbeated job was never rescued.
    beating.await.unwrap();
    let row = job_row(&app.db, &kept).await;
    assert_eq!(row.status, "running", "a heartbeated lease was rescued");
    assert!(failures(&app, &kept).await.is_empty());
    // Once the heartbeats stop, it is.
    until_rescued(&app, &kept).await;
    assert_eq!(failures(&app, &kept).await.len(), 1);
    assert_invariants_hold(&app.db).await;
}

#[tokio::test]
async fn the_rescue_of_the_last_attempt_dead_letters() {
    let app = rescuing_app().await;
    let id = create(
        &app,
        proto::CreateJobRequest {
            max_attempts: 1,
            ..new_job("rescue_last")
        },
    )
    .await
    .id;
    assert_eq!(
        claim(&app, claim_with_lease("rescue_last", "w", 1000, 1))
            .await
            .len(),
        1
    );
    let row = until_rescued(&app, &id).await;
    assert_eq!(row.status, "dead_letter");
    assert_eq!(row.run_after, None);
    assert_eq!(row.last_error_code.as_deref(), Some("LEASE_EXPIRED"));
    assert_eq!(
        steps(&app.db, &id).await,
        [
            "-->queued",
            "queued->running",
            "running->failed",
            "failed->dead_letter"
        ]
    );
    assert!(claim(&app, claim_of(&["rescue_last"], "w", 1))
        .await
        .is_empty());
    assert_invariants_hold(&app.db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_rescue_each_expired_lease_exactly_once() {
    let a = rescuing_app().await;
    let b = spawn_app_on(&base_url(), &a.db_name, |c| {
        c.dispatch.rescue_interval = RESCUE_EVERY;
        c.pool_size = 6;
    })
    .await;
    // More than one rescue batch (100).
    let jobs = create_many(&a, 150, new_job("rescue_twice")).await;
    // Half claimed on each server, all with a 1 s lease.
    let mut expiry = std::collections::HashMap::new();
    for (server, worker) in [(&a, "wa"), (&b, "wb")] {
        let claimed =
            jobs_of(&claim(server, claim_with_lease("rescue_twice", worker, 1000, 75)).await);
        assert_eq!(claimed.len(), 75);
        for job in claimed {
            expiry.insert(uuid(&job.id), time(job.lease_expires_at.as_ref().unwrap()));
        }
    }
    eventually(Duration::from_secs(15), "every lease rescued", || async {
        (running(&a.db, "rescue_twice").await == 0).then_some(())
    })
    .await;
    let per_job: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE e.prev_status = 'running' AND e.next_status = 'failed'),
                count(*)
         FROM job j JOIN job_event e ON e.job_id = j.id
         WHERE j.type = 'rescue_twice'
         GROUP BY j.id",
    )
    .fetch_all(&a.db)
    .await
    .unwrap();
    assert_eq!(per_job.len(), jobs.len());
    let rescued_at: Vec<(uuid::Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT job_id, ts FROM job_event WHERE prev_status = 'running' AND next_status = 'failed'",
    )
    .fetch_all(&a.db)
    .await
    .unwrap();
    let mut delays: Vec<i64> = rescued_at
        .iter()
        .map(|(id, ts)| (*ts - expiry[id]).num_milliseconds())
        .collect();
    delays.sort();
    println!(
        "rescue of 150 leases by 2 servers: after expiry min {} ms, median {} ms, max {} ms",
        delays[0],
        delays[delays.len() / 2],
        delays[delays.len() - 1]
    );
    assert!(delays[0] >= 0, "rescued before expiry: {delays:?}");
    assert!(delays[delays.len() - 1] < 2000, "{delays:?}");
    for (rescues, events) in &per_job {
        assert_eq!(
            (*rescues, *events),
            (1, 3),
            "each job: created, started, rescued once"
        );
    }
    // Another few rounds of both rescuers change nothing.
    let rescued_events: i64 = sqlx::query_scalar("SELECT count(*) FROM job_event")
        .fetch_one(&a.db)
        .await
        .unwrap();
    tokio::time::sleep(RESCUE_EVERY * 5).await;
    let later: i64 = sqlx::query_scalar("SELECT count(*) FROM job_event")
        .fetch_one(&a.db)
        .await
        .unwrap();
    assert_eq!(later, rescued_events);
    assert_invariants_hold(&a.db).await;
}

/// River #1302: worker A stalls past its lease, the job is rescued and claimed by worker
/// B, B finishes; A wakes and reports. Only B's work is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_that_stalled_past_its_lease_cannot_report_over_the_next_holder() {
    let app = rescuing_app().await;
    let id = create(
        &app,
        proto::CreateJobRequest {
            retry_policy: Some(proto::RetryPolicy {
                initial_backoff: Some(ms(100)),
                max_backoff: Some(ms(100)),
            }),
            ..new_job("river")
        },
    )
    .await
    .id;
    let a = jobs_of(&claim(&app, claim_with_lease("river", "worker-a", 1000, 1)).await);
    assert_eq!((a[0].id.as_str(), a[0].attempt), (id.as_str(), 1));
    let a_expires = time(a[0].lease_expires_at.as_ref().unwrap());

    // Worker A stalls. Worker B waits for work and gets the job once it is rescued and
    // its retry is due.
    let request = proto::ClaimJobsRequest {
        wait: Some(secs(10)),
        ..claim_with_lease("river", "worker-b", 30_000, 1)
    };
    let b = jobs_of(&claim(&app, request).await);
    let b_claimed = Utc::now();
    assert_eq!(b.len(), 1, "worker B never got the rescued job");
    assert_eq!(
        (b[0].id.as_str(), b[0].attempt, b[0].lease_holder.as_str()),
        (id.as_str(), 2, "worker-b")
    );
    println!(
        "river: worker B claimed the job {} ms after worker A's lease expired",
        (b_claimed - a_expires).num_milliseconds()
    );

    // A wakes while B holds the job: its heartbeat and progress are stale.
    assert_refused(
        heartbeat(&app, heartbeat_of(&id, 1)).await,
        Code::Aborted,
        "STALE_ATTEMPT",
    );
    assert_refused(
        app.transition_with(report(&id, S::Running, 1)).await,
        Code::Aborted,
        "STALE_ATTEMPT",
    );
    // B works and finishes.
    heartbeat(&app, heartbeat_of(&id, 2)).await.unwrap();
    transition_ok(
        &app,
        proto::TransitionJobRequest {
            progress: Some(50),
            actor: "worker-b".into(),
            ..report(&id, S::Running, 2)
        },
    )
    .await;
    transition_ok(
        &app,
        proto::TransitionJobRequest {
            actor: "worker-b".into(),
            result: Some(crate::helpers::object(serde_json::json!({"by": "b"}))),
            ..report(&id, S::Succeeded, 2)
        },
    )
    .await;
    // A reports success (and failure, and progress) for attempt 1: all refused.
    let a_says = |to: S| proto::TransitionJobRequest {
        actor: "worker-a".into(),
        ..report(&id, to, 1)
    };
    assert_refused(
        app.transition_with(a_says(S::Succeeded)).await,
        Code::Aborted,
        "STALE_ATTEMPT",
    );
    assert_refused(
        app.transition_with(a_says(S::Failed)).await,
        Code::Aborted,
        "STALE_ATTEMPT",
    );
    let status = assert_refused(
        app.transition_with(a_says(S::Running)).await,
        Code::FailedPrecondition,
        "JOB_NOT_RUNNING",
    );
    assert_eq!(error_metadata(&status)["status"], "SUCCEEDED");
    assert_refused(
        heartbeat(&app, heartbeat_of(&id, 1)).await,
        Code::FailedPrecondition,
        "JOB_NOT_RUNNING",
    );

    let history = events(&app.db, &id).await;
    let described: Vec<(String, Option<String>, Option<i32>)> = history
        .iter()
        .map(|e| (e.step(), e.actor(), e.attempt))
        .collect();
    let who = |s: &str| Some(s.to_owned());
    assert_eq!(
        described,
        [
            ("-->queued".to_owned(), None, Some(0)),
            ("queued->running".to_owned(), who("worker-a"), Some(1)),
            ("running->failed".to_owned(), who("jobledger"), Some(1)),
            ("failed->running".to_owned(), who("worker-b"), Some(2)),
            ("running->running".to_owned(), who("worker-b"), Some(2)),
            ("running->succeeded".to_owned(), who("worker-b"), Some(2)),
        ]
    );
    let row = job_row(&app.db, &id).await;
    assert_eq!((row.status.as_str(), row.attempt), ("succeeded", 2));
    let report = jobledger::tools::check::check(&app.db).await.unwrap();
    assert!(report.ok, "{}", report.to_text());
}

/// The invariant checker knows leases: a RUNNING job whose lease expired longer ago than
/// the rescue window (no rescuer ran) is a violation, named, with the job as example.
#[tokio::test]
async fn the_checker_reports_an_expired_lease_nobody_rescued() {
    use jobledger::tools::check::{check_with, names};
    // The rescuer looks once at start-up, then not for an hour.
    let app = spawn_app_with(|c| c.dispatch.rescue_interval = Duration::from_secs(3600)).await;
    let id = create(&app, new_job("unrescued")).await.id;
    assert_eq!(
        claim(&app, claim_with_lease("unrescued", "w", 1000, 1))
            .await
            .len(),
        1
    );
    let window = Duration::from_millis(500);
    let report = check_with(&app.db, window).await.unwrap();
    assert!(
        report.ok,
        "a live lease is no violation: {}",
        report.to_text()
    );
    let report = eventually(Duration::from_secs(10), "the violation", || async {
        let report = check_with(&app.db, window).await.unwrap();
        (!report.ok).then_some(report)
    })
    .await;
    let violated: Vec<&str> = report.violated().map(|v| v.name).collect();
    assert_eq!(
        violated,
        [names::EXPIRED_LEASES_RESCUED],
        "{}",
        report.to_text()
    );
    let expired = report.invariant(names::EXPIRED_LEASES_RESCUED).unwrap();
    assert_eq!(expired.examples, [uuid(&id)]);
    assert_eq!(job_row(&app.db, &id).await.status, "running");
}

/// The next event of a stream: (prev_status, next_status, actor).
async fn next_event(stream: &mut tonic::Streaming<proto::JobEvent>) -> (i32, i32, Option<String>) {
    let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event in time")
        .expect("the stream goes on")
        .expect("an event");
    let actor = event
        .detail
        .as_ref()
        .map(crate::helpers::to_json)
        .and_then(|d| d.get("actor").and_then(|a| a.as_str()).map(str::to_owned));
    (event.prev_status, event.next_status, actor)
}

/// A live stream of the job's events sees the claim's start (actor: the worker) and the
/// rescue (actor: jobledger), as they are written.
#[tokio::test]
async fn a_live_stream_sees_the_claim_and_the_rescue() {
    let app = rescuing_app().await;
    let id = create(&app, new_job("streamed")).await.id;
    let mut stream = app
        .client
        .clone()
        .stream_events(proto::StreamEventsRequest {
            job_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("stream_events")
        .into_inner();
    assert_eq!(next_event(&mut stream).await, (0, S::Queued as i32, None));
    assert_eq!(
        claim(&app, claim_with_lease("streamed", "streamer", 1000, 1))
            .await
            .len(),
        1
    );
    assert_eq!(
        next_event(&mut stream).await,
        (S::Queued as i32, S::Running as i32, Some("streamer".into()))
    );
    assert_eq!(
        next_event(&mut stream).await,
        (
            S::Running as i32,
            S::Failed as i32,
            Some("jobledger".into())
        )
    );
}
