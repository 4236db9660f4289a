//! Group commit of TransitionJob: concurrent calls written in one transaction must each
//! get exactly the outcome a call of its own would have had. One writer task makes
//! batches certain under concurrency; each test proves that batches formed (several
//! jobs' events under one transaction id) before trusting what it checks.

use std::time::Duration;

use futures::future::join_all;
use jobledger::proto::{self, JobStatus as S};
use tonic::Code;

use crate::helpers::{reason, spawn_app_with, TestApp};

async fn one_writer() -> TestApp {
    spawn_app_with(|args| {
        args.group_commit = Some(jobledger::server::config::GroupCommitConfig {
            writers: 1,
            ..Default::default()
        });
    })
    .await
}

fn start(job_id: &str) -> proto::TransitionJobRequest {
    proto::TransitionJobRequest {
        job_id: job_id.to_owned(),
        to_status: S::Running as i32,
        expected_status: Some(S::Queued as i32),
        ..Default::default()
    }
}

/// Sends every request at once, spread over four connections; answers in request order.
async fn send_all(
    app: &TestApp,
    requests: Vec<proto::TransitionJobRequest>,
) -> Vec<Result<proto::TransitionJobResponse, tonic::Status>> {
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(app.new_client().await);
    }
    join_all(requests.into_iter().enumerate().map(|(i, r)| {
        let mut client = clients[i % clients.len()].clone();
        async move { client.transition_job(r).await.map(|r| r.into_inner()) }
    }))
    .await
}

/// The most jobs whose transitions one transaction wrote.
async fn largest_batch(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(max(jobs), 0) FROM (
            SELECT count(DISTINCT job_id) AS jobs FROM job_event
            WHERE prev_status IS NOT NULL GROUP BY xid) AS per_transaction",
    )
    .fetch_one(&app.db)
    .await
    .unwrap()
}

async fn assert_invariants_hold(app: &TestApp) {
    let report = jobledger::tools::check::check(&app.db).await.unwrap();
    assert!(report.ok, "{}", report.to_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_transitions_each_get_the_outcome_of_a_call_of_their_own() {
    let app = one_writer().await;
    let mut jobs = Vec::new();
    for _ in 0..60 {
        jobs.push(app.create("batched").await.id);
    }
    let mut requests = Vec::new();
    // 0..20: plain starts, all allowed.
    for id in &jobs[0..20] {
        requests.push(start(id));
    }
    // 20..30: a wrong expected status: refused, nothing written.
    for id in &jobs[20..30] {
        requests.push(proto::TransitionJobRequest {
            expected_status: Some(S::Running as i32),
            ..start(id)
        });
    }
    // 30..40: a transition the table does not have (QUEUED -> FAILED).
    for id in &jobs[30..40] {
        requests.push(proto::TransitionJobRequest {
            job_id: id.clone(),
            to_status: S::Failed as i32,
            ..Default::default()
        });
    }
    // 40..50: two competing compare-and-set starts each: exactly one wins.
    for id in &jobs[40..50] {
        requests.push(start(id));
        requests.push(start(id));
    }
    // 50..55: the same request_id twice: applied once, both get that outcome.
    for id in &jobs[50..55] {
        let r = proto::TransitionJobRequest {
            request_id: format!("twice-{id}"),
            ..start(id)
        };
        requests.push(r.clone());
        requests.push(r);
    }
    // 55..60: one request_id with two different targets: one applies, one is refused.
    for id in &jobs[55..60] {
        let r = proto::TransitionJobRequest {
            request_id: format!("reused-{id}"),
            ..start(id)
        };
        requests.push(r.clone());
        requests.push(proto::TransitionJobRequest {
            to_status: S::Canceled as i32,
            expected_status: None,
            ..r
        });
    }
    let answers = send_all(&app, requests).await;
    assert!(
        largest_batch(&app).await > 1,
        "no batch formed: the test proves nothing"
    );

    for (i, answer) in answers[0..20].iter().enumerate() {
        let response = answer.as_ref().unwrap();
        let job = response.job.as_ref().unwrap();
        assert_eq!(
            (job.id.as_str(), job.status),
            (jobs[i].as_str(), S::Running as i32)
        );
        assert_eq!(job.attempt, 1);
        assert_eq!(response.events.len(), 1);
        assert_eq!(response.events[0].job_id, jobs[i]);
    }
    for answer in &answers[20..30] {
        let status = answer.as_ref().unwrap_err();
        assert_eq!(status.code(), Code::Aborted, "{status:?}");
    }
    for answer in &answers[30..40] {
        let status = answer.as_ref().unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert_eq!(reason(status), "INVALID_TRANSITION");
    }
    for pair in answers[40..60].chunks(2) {
        let codes: Vec<Code> = pair
            .iter()
            .map(|a| a.as_ref().map(|_| Code::Ok).unwrap_or_else(|s| s.code()))
            .collect();
        assert!(
            codes.contains(&Code::Ok) && codes.contains(&Code::Aborted),
            "{pair:?}"
        );
    }
    for pair in answers[60..70].chunks(2) {
        let (a, b) = (pair[0].as_ref().unwrap(), pair[1].as_ref().unwrap());
        assert_eq!(a, b, "a replay answers exactly what was applied");
    }
    for pair in answers[70..80].chunks(2) {
        let oks = pair.iter().filter(|a| a.is_ok()).count();
        assert_eq!(oks, 1, "{pair:?}");
        let refused = pair.iter().find_map(|a| a.as_ref().err()).unwrap();
        assert_eq!(reason(refused), "REQUEST_ID_REUSED", "{refused:?}");
    }

    // In the database: one event per applied call and nothing for the refused ones.
    let transitions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM job_event WHERE prev_status IS NOT NULL")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(transitions, 20 + 10 + 5 + 5);
    for (range, status) in [(0..20, "running"), (20..40, "queued"), (40..55, "running")] {
        for id in &jobs[range] {
            let stored: String = sqlx::query_scalar("SELECT status FROM job WHERE id = $1::uuid")
                .bind(id)
                .fetch_one(&app.db)
                .await
                .unwrap();
            assert_eq!(stored, status, "job {id}");
        }
    }
    assert_invariants_hold(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_locked_by_another_transaction_does_not_hold_up_the_others() {
    let app = one_writer().await;
    let locked = app.create("locked").await.id;
    let mut others = Vec::new();
    for _ in 0..40 {
        others.push(app.create("free").await.id);
    }
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("SELECT id FROM job WHERE id = $1::uuid FOR UPDATE")
        .bind(&locked)
        .execute(&mut *lock)
        .await
        .unwrap();

    // Three competing starts of the locked job, sent with the others, to the one writer.
    let mut behind_the_lock = Vec::new();
    for _ in 0..3 {
        let mut client = app.new_client().await;
        let request = start(&locked);
        behind_the_lock.push(tokio::spawn(async move {
            client.transition_job(request).await.map(|r| r.into_inner())
        }));
    }
    let answers = tokio::time::timeout(
        Duration::from_secs(20),
        send_all(&app, others.iter().map(|id| start(id)).collect()),
    )
    .await
    .expect("the other jobs' calls waited for the locked job");
    for answer in &answers {
        assert_eq!(
            answer.as_ref().unwrap().job.as_ref().unwrap().status,
            S::Running as i32
        );
    }
    assert!(
        behind_the_lock.iter().all(|call| !call.is_finished()),
        "a call answered while its job was locked"
    );
    assert!(largest_batch(&app).await > 1, "no batch formed");

    lock.rollback().await.unwrap();
    let mut codes = Vec::new();
    for call in behind_the_lock {
        codes.push(match call.await.unwrap() {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        });
    }
    codes.sort_by_key(|c| *c as i32);
    assert_eq!(codes, [Code::Ok, Code::Aborted, Code::Aborted]);
    assert_invariants_hold(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_job_reported_on_many_times_at_once_keeps_every_report_in_order() {
    let app = one_writer().await;
    // Other jobs' starts travel with the reports, so batches are visible across jobs.
    let mut others = Vec::new();
    for _ in 0..20 {
        others.push(app.create("other").await.id);
    }
    let job = app.create("busy").await.id;
    app.transition_with(start(&job)).await.unwrap();
    let reports: Vec<proto::TransitionJobRequest> = (0..40)
        .map(|p| proto::TransitionJobRequest {
            job_id: job.clone(),
            to_status: S::Running as i32,
            attempt: Some(1),
            stage: format!("stage-{p}"),
            progress: Some(p),
            ..Default::default()
        })
        .collect();
    let mut requests = reports.clone();
    requests.extend(others.iter().map(|id| start(id)));
    let answers = send_all(&app, requests).await;
    assert!(largest_batch(&app).await > 1, "no batch formed");

    // Each caller sees the job as its own report left it.
    for (report, answer) in reports.iter().zip(&answers) {
        let response = answer.as_ref().unwrap();
        let seen = response.job.as_ref().unwrap();
        assert_eq!(Some(seen.progress), report.progress);
        assert_eq!(seen.stage, report.stage);
        assert_eq!(response.events.len(), 1);
    }
    // Stored: one event per report; the job holds the report committed last.
    let events: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT detail_json->>'stage', seq FROM job_event
         WHERE job_id = $1::uuid AND prev_status = 'running' ORDER BY xid::text::int8, seq",
    )
    .bind(&job)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(events.len(), 40);
    let (stage, progress): (Option<String>, Option<i32>) =
        sqlx::query_as("SELECT stage, progress FROM job WHERE id = $1::uuid")
            .bind(&job)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(stage, events.last().unwrap().0);
    let last: i32 = stage.unwrap().trim_start_matches("stage-").parse().unwrap();
    assert_eq!(progress, Some(last));
    assert_invariants_hold(&app).await;
}
