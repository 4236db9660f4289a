//! A client's deadline (grpc-timeout) ends the database work done for it: a call blocked
//! in PostgreSQL past its deadline is cancelled there, not only abandoned by tonic, so
//! it writes nothing and its backend is free again.

use std::time::Duration;

use jobledger::proto::{self, JobStatus as S};
use sqlx::{PgPool, Postgres, Transaction};
use tonic::{Code, Request};

use crate::helpers::{spawn_app, spawn_app_with, TestApp};

fn within<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

/// The ledger server's backends waiting on a lock in this database.
async fn waiting_on_locks(db: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'jobledger'
           AND wait_event_type = 'Lock'",
    )
    .fetch_one(db)
    .await
    .unwrap()
}

/// Until the server's backends stop waiting on locks: how long it took, or a panic after 3 s.
async fn assert_lock_waits_end(db: &PgPool, what: &str) {
    let started = std::time::Instant::now();
    while waiting_on_locks(db).await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{what}: the server still waits on the lock 3 s after the client's deadline"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn lock_job_table(app: &TestApp) -> Transaction<'static, Postgres> {
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE job IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    lock
}

fn gave_up(status: &tonic::Status) {
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
}

async fn transition_behind_a_row_lock_is_cancelled(app: TestApp) {
    let job = app.create("locked").await;
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("SELECT id FROM job WHERE id = $1::uuid FOR UPDATE")
        .bind(&job.id)
        .execute(&mut *lock)
        .await
        .unwrap();
    let request = proto::TransitionJobRequest {
        job_id: job.id.clone(),
        to_status: S::Running as i32,
        ..Default::default()
    };
    let late = app
        .client
        .clone()
        .transition_job(within(request, Duration::from_millis(150)))
        .await
        .unwrap_err();
    gave_up(&late);
    // Well before the lock is released, the server has stopped waiting for it.
    assert_lock_waits_end(&app.db, "TransitionJob").await;
    lock.rollback().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.get(&job.id).await.unwrap().status, S::Queued as i32);
    assert_eq!(
        app.count("job_event").await,
        1,
        "the cancelled call wrote nothing"
    );
}

#[tokio::test]
async fn a_transition_past_its_deadline_is_cancelled_in_the_database() {
    transition_behind_a_row_lock_is_cancelled(spawn_app().await).await;
}

#[tokio::test]
async fn without_group_commit_too() {
    transition_behind_a_row_lock_is_cancelled(
        spawn_app_with(|args| args.group_commit = None).await,
    )
    .await;
}

#[tokio::test]
async fn count_and_list_past_their_deadline_are_cancelled_in_the_database() {
    let app = spawn_app().await;
    app.create("counted").await;
    let lock = lock_job_table(&app).await;
    let count = app
        .client
        .clone()
        .count_jobs(within(
            proto::CountJobsRequest::default(),
            Duration::from_millis(150),
        ))
        .await
        .unwrap_err();
    gave_up(&count);
    assert_lock_waits_end(&app.db, "CountJobs").await;
    let list = app
        .client
        .clone()
        .list_jobs(within(
            proto::ListJobsRequest::default(),
            Duration::from_millis(150),
        ))
        .await
        .unwrap_err();
    gave_up(&list);
    assert_lock_waits_end(&app.db, "ListJobs").await;
    lock.rollback().await.unwrap();

    // With time to spare the same calls work, deadline or not.
    let counted = app
        .client
        .clone()
        .count_jobs(within(
            proto::CountJobsRequest::default(),
            Duration::from_secs(5),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counted.total, 1, "{counted:?}");
    let listed = app
        .client
        .clone()
        .list_jobs(within(
            proto::ListJobsRequest::default(),
            Duration::from_secs(5),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.jobs.len(), 1);
}

#[tokio::test]
async fn a_deadline_longer_than_the_statement_timeout_does_not_extend_it() {
    let app =
        spawn_app_with(|args| args.statement_timeout = std::time::Duration::from_millis(300)).await;
    let lock = lock_job_table(&app).await;
    let started = std::time::Instant::now();
    let status = app
        .client
        .clone()
        .count_jobs(within(
            proto::CountJobsRequest::default(),
            Duration::from_secs(30),
        ))
        .await
        .unwrap_err();
    let took = started.elapsed();
    lock.rollback().await.unwrap();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}
