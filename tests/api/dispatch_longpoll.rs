//! ClaimJobs with `wait` (spec §7, long-poll): answered as soon as a job of its types
//! becomes claimable on any replica (created here or on another server, or scheduled and
//! come due), empty when its wait or its call's deadline runs out, refused past the cap on
//! waiting claims, answered at once (empty) at shutdown, and gone when its caller cancels.
//!
//! Every server here rechecks only every 30 s: only the wake-ups under test can answer a
//! waiting claim in time.

use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use jobledger::proto;
use tonic::{Code, Request};
use uuid::Uuid;

use crate::dispatch_support::*;
use crate::helpers::{base_url, spawn_app_on, spawn_app_with, TestApp};

const RECHECK: Duration = Duration::from_secs(30);

async fn app_with(configure: impl FnOnce(&mut jobledger::server::Config)) -> TestApp {
    spawn_app_with(|c| {
        c.dispatch.recheck_interval = RECHECK;
        c.pool_size = 6;
        configure(c);
    })
    .await
}

/// A second server on `app`'s database.
async fn replica_of(app: &TestApp) -> TestApp {
    spawn_app_on(&base_url(), &app.db_name, |c| {
        c.dispatch.recheck_interval = RECHECK;
        c.pool_size = 6;
    })
    .await
}

fn waiting_claim(job_type: &str, worker: &str, wait: Duration) -> proto::ClaimJobsRequest {
    proto::ClaimJobsRequest {
        wait: Some(ms(wait.as_millis() as u64)),
        ..claim_of(&[job_type], worker, 1)
    }
}

type Answer = (Result<Vec<proto::ClaimedJob>, tonic::Status>, Instant);

/// Sends `request` on a connection of its own; the answer and when it came.
async fn start_claim(
    app: &TestApp,
    request: proto::ClaimJobsRequest,
) -> tokio::task::JoinHandle<Answer> {
    let mut client = app.new_client().await;
    tokio::spawn(async move {
        let answer = claim_on(&mut client, request).await;
        (answer, Instant::now())
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiting_claim_gets_a_job_created_on_its_server_or_another_at_once() {
    let a = app_with(|_| {}).await;
    let b = replica_of(&a).await;
    for (claims_on, creates_on, label) in [(&a, &a, "creating server"), (&b, &a, "other server")] {
        let mut latencies = Vec::new();
        for i in 0..8 {
            let worker = format!("waiter-{i}");
            let waiting = start_claim(
                claims_on,
                waiting_claim("lp", &worker, Duration::from_secs(20)),
            )
            .await;
            until_waiting(claims_on, 1).await;
            let job = create(creates_on, new_job("lp")).await;
            let created = Instant::now();
            let (answer, answered) = waiting.await.unwrap();
            let latency = answered.saturating_duration_since(created);
            let got = jobs_of(&answer.expect("the waiting claim is answered"));
            assert_eq!(got.len(), 1, "{label}: the waiting claim got nothing");
            assert_eq!(
                (got[0].id.as_str(), got[0].lease_holder.as_str()),
                (job.id.as_str(), worker.as_str())
            );
            latencies.push(latency);
        }
        latencies.sort();
        println!(
            "long-poll, claim waiting on the {label}: answered after the create in \
             min {:?}, median {:?}, max {:?} (all: {latencies:?})",
            latencies[0],
            percentile(&latencies, 0.5),
            latencies[latencies.len() - 1]
        );
        let worst = latencies[latencies.len() - 1];
        assert!(worst < Duration::from_secs(1), "{label}: {worst:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiting_claim_gets_a_job_scheduled_after_it_began_to_wait_when_it_comes_due() {
    let a = app_with(|_| {}).await;
    let b = replica_of(&a).await;
    for (claims_on, creates_on, label) in [(&a, &a, "same server"), (&b, &a, "another server")] {
        let waiting = start_claim(
            claims_on,
            waiting_claim("lp_sched", "w", Duration::from_secs(20)),
        )
        .await;
        until_waiting(claims_on, 1).await;
        let job = create(
            creates_on,
            proto::CreateJobRequest {
                run_after: Some(timestamp(Utc::now() + TimeDelta::milliseconds(1000))),
                ..new_job("lp_sched")
            },
        )
        .await;
        let run_after = time(job.run_after.as_ref().unwrap());
        let (answer, _) = waiting.await.unwrap();
        let answered = Utc::now();
        let got = jobs_of(&answer.unwrap());
        assert_eq!(got.len(), 1, "{label}");
        assert_eq!(got[0].id, job.id);
        let started = time(got[0].started_at.as_ref().unwrap());
        assert!(
            started >= run_after,
            "{label}: started {started} before {run_after}"
        );
        let late = answered - run_after;
        println!(
            "scheduled job, {label}: the waiting claim answered {} ms after run_after",
            late.num_milliseconds()
        );
        assert!(late < TimeDelta::seconds(1), "{label}: {late:?}");
    }
}

#[tokio::test]
async fn a_waiting_claim_with_nothing_to_do_answers_empty_after_its_wait() {
    let app = app_with(|_| {}).await;
    let started = Instant::now();
    let waiting = start_claim(
        &app,
        waiting_claim("idle", "w", Duration::from_millis(1500)),
    )
    .await;
    until_waiting(&app, 1).await;
    // Jobs it does not want: another type, the same type in another org.
    let other_type = create(&app, new_job("idle_other")).await;
    let other_org = create(
        &app,
        proto::CreateJobRequest {
            org_id: Uuid::new_v4().to_string(),
            ..new_job("idle")
        },
    )
    .await;
    let (answer, answered) = waiting.await.unwrap();
    let took = answered - started;
    println!("an idle claim with wait 1.5 s answered empty after {took:?}");
    assert!(answer.unwrap().is_empty());
    assert!(
        took >= Duration::from_millis(1400),
        "answered early: {took:?}"
    );
    assert!(took < Duration::from_secs(4), "answered late: {took:?}");
    for job in [other_type, other_org] {
        assert_eq!(job_row(&app.db, &job.id).await.status, "queued");
    }
}

#[tokio::test]
async fn a_claim_whose_deadline_is_shorter_than_its_wait_answers_empty_before_the_deadline() {
    let app = app_with(|_| {}).await;
    let mut client = app.new_client().await;
    for deadline in [Duration::from_millis(1000), Duration::from_millis(2000)] {
        // The deadline travels as grpc-timeout; the client enforces it as well, as gRPC
        // clients do: an answer after it would be DEADLINE_EXCEEDED to them.
        let mut request = Request::new(waiting_claim("deadline", "w", Duration::from_secs(30)));
        request.set_timeout(deadline);
        let sent = Instant::now();
        let answer = tokio::time::timeout(deadline, client.claim_jobs(request)).await;
        let took = sent.elapsed();
        println!("a claim with a {deadline:?} deadline and a 30 s wait answered after {took:?}");
        let answer = answer.unwrap_or_else(|_| {
            panic!("no answer within the {deadline:?} deadline: the client sees DEADLINE_EXCEEDED")
        });
        let jobs = answer
            .unwrap_or_else(|s| panic!("deadline {deadline:?}: {s:?} after {took:?}"))
            .into_inner()
            .jobs;
        assert!(jobs.is_empty());
        assert!(took >= deadline / 2, "it hardly waited: {took:?}");
    }
    // It took nothing after answering: a job created now is the next claim's.
    let job = create(&app, new_job("deadline")).await;
    assert_eq!(
        ids_of(&claim(&app, claim_of(&["deadline"], "w2", 1)).await),
        [job.id]
    );
}

#[tokio::test]
async fn a_claim_cancelled_by_its_caller_stops_waiting_and_takes_nothing() {
    let app = app_with(|_| {}).await;
    let waiting = start_claim(
        &app,
        waiting_claim("cancelled", "gone", Duration::from_secs(30)),
    )
    .await;
    until_waiting(&app, 1).await;
    waiting.abort();
    let _ = waiting.await;
    eventually(
        Duration::from_secs(5),
        "the cancelled claim to stop waiting",
        || async { (waiting_claims(&app).await == 0).then_some(()) },
    )
    .await;
    let job = create(&app, new_job("cancelled")).await;
    let got = jobs_of(&claim(&app, claim_of(&["cancelled"], "w2", 1)).await);
    assert_eq!(got.len(), 1, "the job went to the cancelled claim");
    assert_eq!(
        (got[0].id.as_str(), got[0].lease_holder.as_str()),
        (job.id.as_str(), "w2")
    );
}

#[tokio::test]
async fn past_the_cap_of_waiting_claims_a_claim_is_resource_exhausted() {
    let app = app_with(|c| c.dispatch.max_waiting_claims = 2).await;
    let first = start_claim(&app, waiting_claim("cap", "w1", Duration::from_secs(20))).await;
    let second = start_claim(&app, waiting_claim("cap", "w2", Duration::from_secs(20))).await;
    until_waiting(&app, 2).await;

    let sent = Instant::now();
    let third = claim_on(
        &mut app.client.clone(),
        waiting_claim("cap", "w3", Duration::from_secs(20)),
    )
    .await;
    let status = assert_refused(third, Code::ResourceExhausted, "TOO_MANY_WAITING_CLAIMS");
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "refused only after {:?}",
        sent.elapsed()
    );
    println!("third waiting claim: {}", status.message());
    // A claim that does not wait is not refused.
    assert!(claim(&app, claim_of(&["cap"], "w3", 1)).await.is_empty());

    // Work for both: they answer, and their places are free again.
    create_many(&app, 2, new_job("cap")).await;
    for waiting in [first, second] {
        let (answer, _) = waiting.await.unwrap();
        assert_eq!(answer.unwrap().len(), 1);
    }
    let again = start_claim(&app, waiting_claim("cap", "w4", Duration::from_secs(20))).await;
    until_waiting(&app, 1).await;
    let job = create(&app, new_job("cap")).await;
    let (answer, _) = again.await.unwrap();
    assert_eq!(ids_of(&answer.unwrap()), [job.id]);
}

#[tokio::test]
async fn shutdown_answers_waiting_claims_at_once_with_nothing() {
    let mut app = app_with(|_| {}).await;
    let mut waiting = Vec::new();
    for i in 0..3 {
        waiting.push(
            start_claim(
                &app,
                waiting_claim("shutdown", &format!("w{i}"), Duration::from_secs(30)),
            )
            .await,
        );
    }
    until_waiting(&app, 3).await;
    let stopping = Instant::now();
    app.stop().await.expect("the server stops cleanly");
    let stopped = stopping.elapsed();
    for claim in waiting {
        let (answer, answered) = claim.await.unwrap();
        let after = answered.saturating_duration_since(stopping);
        let jobs = answer.unwrap_or_else(|s| panic!("a waiting claim got {s:?} at shutdown"));
        assert!(jobs.is_empty());
        println!("shutdown: a waiting claim answered {after:?} after the stop began");
        assert!(after < Duration::from_secs(2), "{after:?}");
    }
    println!("shutdown with 3 waiting claims took {stopped:?}");
    // The drain timeout is 5 s: a stop that waited for the claims would take that long.
    assert!(stopped < Duration::from_secs(3), "{stopped:?}");
}

/// Ten claims wait, five on each server; one CreateJobs of ten jobs on one of them
/// answers all ten at once (no claim is left to its recheck).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_of_jobs_answers_as_many_waiting_claims_on_every_server() {
    let a = app_with(|_| {}).await;
    let b = replica_of(&a).await;
    let mut waiting = Vec::new();
    for i in 0..10 {
        let server = if i % 2 == 0 { &a } else { &b };
        waiting.push(
            start_claim(
                server,
                waiting_claim("lp_batch", &format!("w{i}"), Duration::from_secs(20)),
            )
            .await,
        );
    }
    until_waiting(&a, 5).await;
    until_waiting(&b, 5).await;
    create_many(&a, 10, new_job("lp_batch")).await;
    let created = Instant::now();
    let mut latencies = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    for claim in waiting {
        let (answer, answered) = claim.await.unwrap();
        let got = jobs_of(&answer.unwrap());
        assert_eq!(got.len(), 1, "a waiting claim got nothing");
        ids.insert(got[0].id.clone());
        latencies.push(answered.saturating_duration_since(created));
    }
    latencies.sort();
    println!(
        "10 waiting claims on 2 servers, 10 jobs created at once: answered after {latencies:?}"
    );
    assert_eq!(ids.len(), 10, "each job once");
    assert!(latencies[9] < Duration::from_secs(1), "{latencies:?}");
}

/// A claim of every org waits for a job of its types in any org.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiting_claim_of_every_org_gets_a_job_created_in_any_org() {
    let a = app_with(|_| {}).await;
    let b = replica_of(&a).await;
    for (claims_on, label) in [(&a, "creating server"), (&b, "other server")] {
        let request = proto::ClaimJobsRequest {
            all_orgs: true,
            ..waiting_claim("lp_all", "pool", Duration::from_secs(20))
        };
        let waiting = start_claim(claims_on, request).await;
        until_waiting(claims_on, 1).await;
        let org = Uuid::new_v4().to_string();
        let job = create(
            &a,
            proto::CreateJobRequest {
                org_id: org.clone(),
                ..new_job("lp_all")
            },
        )
        .await;
        let created = Instant::now();
        let (answer, answered) = waiting.await.unwrap();
        let latency = answered.saturating_duration_since(created);
        println!(
            "a waiting claim of every org on the {label}: answered {latency:?} after the create"
        );
        let got = jobs_of(&answer.unwrap());
        assert_eq!(ids_of_jobs(&got), [job.id]);
        assert_eq!(got[0].org_id, org);
        assert!(latency < Duration::from_secs(1), "{label}: {latency:?}");
    }
}

fn ids_of_jobs(jobs: &[proto::Job]) -> Vec<String> {
    jobs.iter().map(|j| j.id.clone()).collect()
}
