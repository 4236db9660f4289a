//! TransitionJob: the state machine of spec §3, through the real API, checked against
//! what a client sees (codes, ErrorInfo, PreconditionFailure, the returned job and
//! events) and against the rows in PostgreSQL.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use jobledger::proto::{self, JobStatus as S};
use serde_json::{json, Value};
use sqlx::{types::Json, FromRow};
use tonic::{Code, Status};
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::helpers::{object, reason, spawn_app, to_json, violated_fields, TestApp};

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

const ALL: [S; 6] = [
    S::Queued,
    S::Running,
    S::Succeeded,
    S::Failed,
    S::Canceled,
    S::DeadLetter,
];

/// The spec's table, written out here independently of the server's.
fn allowed_from(from: S) -> Vec<S> {
    match from {
        S::Queued => vec![S::Running, S::Canceled],
        S::Running => vec![S::Queued, S::Running, S::Succeeded, S::Failed, S::Canceled],
        S::Failed => vec![S::Queued, S::Running, S::Canceled, S::DeadLetter],
        S::DeadLetter => vec![S::Queued],
        S::Succeeded | S::Canceled => vec![],
        S::Unspecified => unreachable!(),
    }
}

/// The name a client sees in error details.
fn api(s: S) -> &'static str {
    match s {
        S::Queued => "QUEUED",
        S::Running => "RUNNING",
        S::Succeeded => "SUCCEEDED",
        S::Failed => "FAILED",
        S::Canceled => "CANCELED",
        S::DeadLetter => "DEAD_LETTER",
        S::Unspecified => "UNSPECIFIED",
    }
}

/// The spelling in `job.status` / `job_event.*_status`.
fn db(s: S) -> &'static str {
    match s {
        S::Queued => "queued",
        S::Running => "running",
        S::Succeeded => "succeeded",
        S::Failed => "failed",
        S::Canceled => "canceled",
        S::DeadLetter => "dead_letter",
        S::Unspecified => unreachable!(),
    }
}

fn st(v: i32) -> S {
    S::try_from(v).unwrap_or_else(|_| panic!("{v} is not a JobStatus"))
}

fn uuid(id: &str) -> Uuid {
    Uuid::parse_str(id).unwrap_or_else(|_| panic!("{id:?} is not a UUID"))
}

fn ts(t: &prost_types::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(t.seconds, t.nanos as u32).expect("valid timestamp")
}

#[derive(Debug, Clone, PartialEq, FromRow)]
struct JobRow {
    status: String,
    attempt: i32,
    max_attempts: i32,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
    last_error_code: Option<String>,
    last_error_message: Option<String>,
}

async fn job_row(app: &TestApp, id: &str) -> JobRow {
    sqlx::query_as(
        "SELECT status, attempt, max_attempts, started_at, finished_at, updated_at, \
                last_error_code, last_error_message \
         FROM job WHERE id = $1",
    )
    .bind(uuid(id))
    .fetch_one(&app.db)
    .await
    .expect("job row")
}

#[derive(Debug, Clone, PartialEq, FromRow)]
struct EventRow {
    id: Uuid,
    job_id: Uuid,
    ts: DateTime<Utc>,
    prev_status: Option<String>,
    next_status: String,
    attempt: Option<i32>,
    detail_json: Option<Json<Value>>,
    seq: i64,
}

impl EventRow {
    fn detail(&self) -> Value {
        self.detail_json
            .as_ref()
            .map(|j| j.0.clone())
            .unwrap_or(Value::Null)
    }
}

/// The job's events in the database, oldest first.
async fn events(app: &TestApp, id: &str) -> Vec<EventRow> {
    sqlx::query_as(
        "SELECT id, job_id, ts, prev_status, next_status, attempt, detail_json, seq \
         FROM job_event WHERE job_id = $1 ORDER BY seq",
    )
    .bind(uuid(id))
    .fetch_all(&app.db)
    .await
    .expect("events")
}

/// `job.status` equals the `next_status` of the job's newest event.
async fn assert_consistent(app: &TestApp, id: &str) {
    let job = job_row(app, id).await;
    let evs = events(app, id).await;
    let newest = evs.last().expect("a job has at least its creation event");
    assert_eq!(
        job.status, newest.next_status,
        "job.status must equal the newest event's next_status"
    );
}

/// A job in the default org with `max_attempts` (0 = default).
async fn create_with(app: &TestApp, max_attempts: i32) -> proto::Job {
    app.client
        .clone()
        .create_job(proto::CreateJobRequest {
            r#type: "transition_test".into(),
            max_attempts,
            ..Default::default()
        })
        .await
        .expect("create_job")
        .into_inner()
        .job
        .expect("job")
}

fn req(id: &str, to: S) -> proto::TransitionJobRequest {
    proto::TransitionJobRequest {
        job_id: id.to_owned(),
        to_status: to as i32,
        ..Default::default()
    }
}

/// A transition that must succeed.
async fn ok(app: &TestApp, id: &str, to: S) -> proto::TransitionJobResponse {
    app.transition(id, to)
        .await
        .unwrap_or_else(|s| panic!("transition to {to:?} refused: {s:?}"))
}

async fn ok_with(app: &TestApp, r: proto::TransitionJobRequest) -> proto::TransitionJobResponse {
    let to = r.to_status;
    app.transition_with(r)
        .await
        .unwrap_or_else(|s| panic!("transition to {to} refused: {s:?}"))
}

fn job_of(resp: &proto::TransitionJobResponse) -> &proto::Job {
    resp.job.as_ref().expect("response has a job")
}

/// A new job driven through the API into `status`.
async fn drive_to(app: &TestApp, status: S) -> String {
    let max = if status == S::DeadLetter { 1 } else { 5 };
    let id = create_with(app, max).await.id;
    match status {
        S::Queued => {}
        S::Running => {
            ok(app, &id, S::Running).await;
        }
        S::Succeeded => {
            ok(app, &id, S::Running).await;
            ok(app, &id, S::Succeeded).await;
        }
        S::Failed => {
            ok(app, &id, S::Running).await;
            ok(app, &id, S::Failed).await;
        }
        S::Canceled => {
            ok(app, &id, S::Canceled).await;
        }
        S::DeadLetter => {
            ok(app, &id, S::Running).await;
            let r = ok(app, &id, S::Failed).await;
            assert_eq!(st(job_of(&r).status), S::DeadLetter);
        }
        S::Unspecified => unreachable!(),
    }
    assert_eq!(job_row(app, &id).await.status, db(status));
    id
}

fn error_metadata(status: &Status, key: &str) -> String {
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo on {status:?}"));
    info.metadata
        .get(key)
        .unwrap_or_else(|| panic!("no ErrorInfo metadata {key:?} on {status:?}"))
        .clone()
}

fn precondition_subjects(status: &Status) -> Vec<String> {
    status
        .get_details_precondition_failure()
        .unwrap_or_else(|| panic!("no PreconditionFailure on {status:?}"))
        .violations
        .into_iter()
        .map(|v| v.subject)
        .collect()
}

/// What a refused request must leave behind: nothing.
struct Snapshot {
    job: JobRow,
    events: Vec<EventRow>,
    all_events: i64,
}

async fn snapshot(app: &TestApp, id: &str) -> Snapshot {
    Snapshot {
        job: job_row(app, id).await,
        events: events(app, id).await,
        all_events: app.count("job_event").await,
    }
}

async fn assert_unchanged(app: &TestApp, id: &str, before: &Snapshot, what: &str) {
    let after = snapshot(app, id).await;
    assert_eq!(after.job, before.job, "{what}: the job row changed");
    assert_eq!(
        after.events, before.events,
        "{what}: the job's events changed"
    );
    assert_eq!(
        after.all_events, before.all_events,
        "{what}: an event was written"
    );
}

/// An INVALID_ARGUMENT naming exactly `fields`, and nothing written.
async fn assert_invalid(app: &TestApp, r: proto::TransitionJobRequest, fields: &[&str]) {
    let what = format!("{r:?}");
    let before = match Uuid::parse_str(&r.job_id) {
        Ok(_) => Some((r.job_id.clone(), snapshot(app, &r.job_id).await)),
        Err(_) => None,
    };
    let count = app.count("job_event").await;
    let err = app
        .transition_with(r)
        .await
        .expect_err("an invalid request must be refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
    reason(&err);
    let mut got = violated_fields(&err);
    got.sort();
    let mut want: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
    want.sort();
    assert_eq!(got, want, "{what}: violated fields");
    assert_eq!(app.count("job_event").await, count, "{what}: event written");
    if let Some((id, before)) = before {
        assert_unchanged(app, &id, &before, &what).await;
    }
}

// ---------------------------------------------------------------------------------
// Every (from, to) pair
// ---------------------------------------------------------------------------------

async fn check_every_target_from(from: S) {
    let app = spawn_app().await;
    let allowed = allowed_from(from);
    for to in ALL {
        let id = drive_to(&app, from).await;
        let before = snapshot(&app, &id).await;
        let result = app.transition(&id, to).await;
        let pair = format!("{from:?} -> {to:?}");
        if allowed.contains(&to) {
            let resp = result.unwrap_or_else(|s| panic!("{pair} must be allowed: {s:?}"));
            let job = job_of(&resp);
            assert_eq!(st(job.status), to, "{pair}: returned job status");
            assert_eq!(resp.events.len(), 1, "{pair}: one event");
            let ev = &resp.events[0];
            assert_eq!(
                (st(ev.prev_status), st(ev.next_status)),
                (from, to),
                "{pair}: event"
            );
            let after = events(&app, &id).await;
            assert_eq!(
                after.len(),
                before.events.len() + 1,
                "{pair}: one event row"
            );
            let row = after.last().unwrap();
            assert_eq!(row.id, uuid(&ev.id), "{pair}: returned event is the row");
            assert_eq!(row.prev_status.as_deref(), Some(db(from)), "{pair}");
            assert_eq!(row.next_status, db(to), "{pair}");
            assert_eq!(job_row(&app, &id).await.status, db(to), "{pair}: job row");
        } else {
            let err = result.expect_err(&format!("{pair} must be refused"));
            assert_eq!(err.code(), Code::FailedPrecondition, "{pair}: {err:?}");
            assert_eq!(reason(&err), "INVALID_TRANSITION", "{pair}");
            assert_eq!(error_metadata(&err, "from"), api(from), "{pair}: from");
            assert_eq!(error_metadata(&err, "to"), api(to), "{pair}: to");
            let pf = err
                .get_details_precondition_failure()
                .unwrap_or_else(|| panic!("{pair}: no PreconditionFailure"));
            if allowed.is_empty() {
                assert_eq!(pf.violations.len(), 1, "{pair}: one violation: {pf:?}");
                assert_eq!(pf.violations[0].subject, api(from), "{pair}: {pf:?}");
                assert!(
                    pf.violations[0]
                        .description
                        .to_lowercase()
                        .contains("final"),
                    "{pair}: the violation says the state is final: {pf:?}"
                );
            } else {
                let subjects = precondition_subjects(&err);
                assert_eq!(subjects.len(), allowed.len(), "{pair}: {subjects:?}");
                let got: BTreeSet<String> = subjects.into_iter().collect();
                let want: BTreeSet<String> = allowed.iter().map(|s| api(*s).to_owned()).collect();
                assert_eq!(got, want, "{pair}: subjects are the allowed next statuses");
            }
            assert_unchanged(&app, &id, &before, &pair).await;
        }
        assert_consistent(&app, &id).await;
    }
}

#[tokio::test]
async fn every_target_from_queued() {
    check_every_target_from(S::Queued).await;
}

#[tokio::test]
async fn every_target_from_running() {
    check_every_target_from(S::Running).await;
}

#[tokio::test]
async fn every_target_from_succeeded() {
    check_every_target_from(S::Succeeded).await;
}

#[tokio::test]
async fn every_target_from_failed() {
    check_every_target_from(S::Failed).await;
}

#[tokio::test]
async fn every_target_from_canceled() {
    check_every_target_from(S::Canceled).await;
}

#[tokio::test]
async fn every_target_from_dead_letter() {
    check_every_target_from(S::DeadLetter).await;
}

// ---------------------------------------------------------------------------------
// Special rules of the steps
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn start_counts_an_attempt_sets_started_at_and_clears_finished_at() {
    let app = spawn_app().await;
    let id = create_with(&app, 0).await.id;
    let created = job_row(&app, &id).await;
    assert_eq!((created.attempt, created.started_at), (0, None));

    let r = ok(&app, &id, S::Running).await;
    let job = job_of(&r);
    assert_eq!(job.attempt, 1);
    assert_eq!(r.events[0].attempt, 1);
    assert!(job.finished_at.is_none());
    let row = job_row(&app, &id).await;
    assert_eq!(row.attempt, 1);
    let first_start = row.started_at.expect("started_at set by the start");
    assert_eq!(
        ts(job.started_at.as_ref().expect("started_at returned")),
        first_start
    );
    assert_eq!(row.finished_at, None);

    // Fail, then retry straight into RUNNING: another attempt, a new started_at,
    // finished_at cleared.
    ok(&app, &id, S::Failed).await;
    assert!(job_row(&app, &id).await.finished_at.is_some());
    let r = ok(&app, &id, S::Running).await;
    assert_eq!(job_of(&r).attempt, 2);
    assert_eq!(r.events[0].attempt, 2);
    assert!(job_of(&r).finished_at.is_none());
    let row = job_row(&app, &id).await;
    assert_eq!(row.attempt, 2);
    assert_eq!(row.finished_at, None);
    assert!(
        row.started_at.expect("started_at") > first_start,
        "new started_at"
    );
    assert_consistent(&app, &id).await;
}

#[tokio::test]
async fn progress_report_keeps_status_and_attempt_and_records_stage_and_progress() {
    let app = spawn_app().await;
    let id = create_with(&app, 0).await.id;
    ok(&app, &id, S::Running).await;
    let started = job_row(&app, &id).await;

    let r = ok_with(
        &app,
        proto::TransitionJobRequest {
            stage: "download".into(),
            progress: Some(40),
            detail: Some(object(json!({"bytes": 1024}))),
            ..req(&id, S::Running)
        },
    )
    .await;
    let job = job_of(&r);
    assert_eq!(st(job.status), S::Running);
    assert_eq!(job.attempt, 1);
    assert_eq!((job.stage.as_str(), job.progress), ("download", 40));
    assert_eq!(r.events.len(), 1);
    let ev = &r.events[0];
    assert_eq!(
        (st(ev.prev_status), st(ev.next_status)),
        (S::Running, S::Running)
    );
    assert_eq!(ev.attempt, 1);

    let row = job_row(&app, &id).await;
    assert_eq!(row.status, "running");
    assert_eq!(row.attempt, 1, "a progress report is not an attempt");
    assert_eq!(row.started_at, started.started_at, "nor a new start");
    assert_eq!(row.finished_at, None);

    let evs = events(&app, &id).await;
    assert_eq!(evs.len(), 3);
    let last = evs.last().unwrap();
    assert_eq!(last.prev_status.as_deref(), Some("running"));
    assert_eq!(last.next_status, "running");
    assert_eq!(last.attempt, Some(1));
    let d = last.detail();
    assert_eq!(d["stage"], json!("download"));
    assert_eq!(d["progress"], json!(40));
    assert_eq!(d["bytes"], json!(1024));

    let got = app.get(&id).await.expect("get");
    assert_eq!((got.stage.as_str(), got.progress), ("download", 40));

    // A later report replaces stage and progress in the read view.
    ok_with(
        &app,
        proto::TransitionJobRequest {
            stage: "upload".into(),
            progress: Some(90),
            ..req(&id, S::Running)
        },
    )
    .await;
    let got = app.get(&id).await.expect("get");
    assert_eq!(
        (got.stage.as_str(), got.progress, got.attempt),
        ("upload", 90, 1)
    );
    assert_consistent(&app, &id).await;
}

#[tokio::test]
async fn requeue_keeps_the_attempt_and_the_next_start_counts_another() {
    let app = spawn_app().await;
    let id = create_with(&app, 0).await.id;
    ok(&app, &id, S::Running).await;
    let r = ok(&app, &id, S::Queued).await;
    assert_eq!(st(job_of(&r).status), S::Queued);
    assert_eq!(job_of(&r).attempt, 1, "requeue keeps the attempt");
    assert_eq!(r.events[0].attempt, 1);
    assert!(job_of(&r).finished_at.is_none());
    let row = job_row(&app, &id).await;
    assert_eq!((row.status.as_str(), row.attempt), ("queued", 1));
    assert_eq!(row.finished_at, None);

    let r = ok(&app, &id, S::Running).await;
    assert_eq!(job_of(&r).attempt, 2);
    assert_eq!(job_row(&app, &id).await.attempt, 2);
    assert_consistent(&app, &id).await;
}

#[tokio::test]
async fn retry_from_failed_increments_the_attempt() {
    let app = spawn_app().await;
    let id = create_with(&app, 0).await.id;
    ok(&app, &id, S::Running).await;
    let r = ok_with(
        &app,
        proto::TransitionJobRequest {
            error_code: "E_IO".into(),
            error_message: "disk full".into(),
            ..req(&id, S::Failed)
        },
    )
    .await;
    assert_eq!(st(job_of(&r).status), S::Failed);
    assert_eq!(job_of(&r).attempt, 1);
    assert_eq!(r.events.len(), 1, "attempt 1 of 5: no dead-letter");
    let row = job_row(&app, &id).await;
    assert_eq!(row.last_error_code.as_deref(), Some("E_IO"));
    assert_eq!(row.last_error_message.as_deref(), Some("disk full"));

    // FAILED -> RUNNING: attempt 2.
    let r = ok(&app, &id, S::Running).await;
    assert_eq!(job_of(&r).attempt, 2);
    assert_eq!(r.events[0].attempt, 2);
    assert_eq!(job_row(&app, &id).await.attempt, 2);

    // FAILED -> QUEUED keeps the attempt; the next start counts attempt 3.
    ok(&app, &id, S::Failed).await;
    let r = ok(&app, &id, S::Queued).await;
    assert_eq!(job_of(&r).attempt, 2);
    assert_eq!(job_row(&app, &id).await.attempt, 2);
    let r = ok(&app, &id, S::Running).await;
    assert_eq!(job_of(&r).attempt, 3);
    assert_eq!(job_row(&app, &id).await.attempt, 3);
    assert_consistent(&app, &id).await;
}

#[tokio::test]
async fn failing_the_last_attempt_dead_letters_in_the_same_transaction() {
    let app = spawn_app().await;
    let id = create_with(&app, 2).await.id;
    ok(&app, &id, S::Running).await;
    let r = ok(&app, &id, S::Failed).await;
    assert_eq!(
        st(job_of(&r).status),
        S::Failed,
        "attempt 1 of 2 stays FAILED"
    );
    assert_eq!(r.events.len(), 1);
    assert_eq!(events(&app, &id).await.len(), 3);

    let r = ok(&app, &id, S::Running).await;
    assert_eq!(job_of(&r).attempt, 2);
    let r = ok_with(
        &app,
        proto::TransitionJobRequest {
            error_code: "E_LAST".into(),
            error_message: "boom".into(),
            ..req(&id, S::Failed)
        },
    )
    .await;
    let job = job_of(&r);
    assert_eq!(st(job.status), S::DeadLetter);
    assert_eq!(job.attempt, 2);
    assert!(job.finished_at.is_some());
    assert_eq!(job.last_error_code, "E_LAST");
    assert_eq!(r.events.len(), 2, "RUNNING->FAILED and FAILED->DEAD_LETTER");
    let (fail, dead) = (&r.events[0], &r.events[1]);
    assert_eq!(
        (st(fail.prev_status), st(fail.next_status)),
        (S::Running, S::Failed)
    );
    assert_eq!(
        (st(dead.prev_status), st(dead.next_status)),
        (S::Failed, S::DeadLetter)
    );
    assert_eq!((fail.attempt, dead.attempt), (2, 2));
    let dead_detail = to_json(dead.detail.as_ref().expect("detail"));
    assert_eq!(dead_detail["reason"], json!("max_attempts_exhausted"));
    assert_ne!(fail.cursor, dead.cursor);

    let row = job_row(&app, &id).await;
    assert_eq!(row.status, "dead_letter");
    assert!(row.finished_at.is_some());
    assert_eq!(row.last_error_code.as_deref(), Some("E_LAST"));
    assert_eq!(row.last_error_message.as_deref(), Some("boom"));
    let evs = events(&app, &id).await;
    assert_eq!(
        evs.len(),
        6,
        "create, start, fail, retry, fail, dead-letter"
    );
    let n = evs.len();
    let (db_fail, db_dead) = (&evs[n - 2], &evs[n - 1]);
    assert_eq!(db_fail.id, uuid(&fail.id));
    assert_eq!(db_dead.id, uuid(&dead.id));
    assert_eq!(
        (db_fail.prev_status.as_deref(), db_fail.next_status.as_str()),
        (Some("running"), "failed")
    );
    assert_eq!(
        (db_dead.prev_status.as_deref(), db_dead.next_status.as_str()),
        (Some("failed"), "dead_letter")
    );
    assert_eq!(db_dead.detail()["reason"], json!("max_attempts_exhausted"));
    assert_eq!(db_fail.detail()["error_code"], json!("E_LAST"));
    assert_eq!(row.status, evs.last().unwrap().next_status);
    assert_consistent(&app, &id).await;
}

#[tokio::test]
async fn redrive_gives_a_fresh_budget() {
    let app = spawn_app().await;
    let id = drive_to(&app, S::DeadLetter).await;
    assert_eq!(job_row(&app, &id).await.attempt, 1);

    let r = ok(&app, &id, S::Queued).await;
    let job = job_of(&r);
    assert_eq!(st(job.status), S::Queued);
    assert_eq!(job.attempt, 0);
    assert!(job.finished_at.is_none());
    assert_eq!(r.events[0].attempt, 0);
    assert_eq!(
        (st(r.events[0].prev_status), st(r.events[0].next_status)),
        (S::DeadLetter, S::Queued)
    );
    let row = job_row(&app, &id).await;
    assert_eq!((row.status.as_str(), row.attempt), ("queued", 0));
    assert_eq!(row.finished_at, None);
    assert_eq!(events(&app, &id).await.last().unwrap().attempt, Some(0));

    let r = ok(&app, &id, S::Running).await;
    assert_eq!(job_of(&r).attempt, 1);
    assert_eq!(job_row(&app, &id).await.attempt, 1);
    // The fresh budget is usable: max_attempts is 1, this failure dead-letters again.
    let r = ok(&app, &id, S::Failed).await;
    assert_eq!(st(job_of(&r).status), S::DeadLetter);
    assert_consistent(&app, &id).await;
}

#[tokio::test]
async fn retry_is_refused_once_attempts_are_exhausted() {
    let app = spawn_app().await;
    let exhaust = |id: String| {
        let db = app.db.clone();
        async move {
            sqlx::query(
                "UPDATE job SET status = 'failed', attempt = 5, finished_at = now() \
                 WHERE id = $1",
            )
            .bind(uuid(&id))
            .execute(&db)
            .await
            .expect("update");
            id
        }
    };
    let id = exhaust(drive_to(&app, S::Failed).await).await;
    assert_eq!(job_row(&app, &id).await.max_attempts, 5);
    for to in [S::Queued, S::Running] {
        let before = snapshot(&app, &id).await;
        let err = app
            .transition(&id, to)
            .await
            .expect_err("retry with no attempts left must be refused");
        assert_eq!(err.code(), Code::FailedPrecondition, "{to:?}: {err:?}");
        assert_eq!(reason(&err), "MAX_ATTEMPTS_EXHAUSTED", "{to:?}");
        if let Some(pf) = err.get_details_precondition_failure() {
            for v in pf.violations {
                assert!(
                    v.subject != "QUEUED" && v.subject != "RUNNING",
                    "a retry is not an allowed next status now: {v:?}"
                );
            }
        }
        assert_unchanged(&app, &id, &before, &format!("FAILED -> {to:?}")).await;
    }
    let r = ok(&app, &id, S::Canceled).await;
    assert_eq!(st(job_of(&r).status), S::Canceled);
    assert_eq!(job_row(&app, &id).await.status, "canceled");

    // Burying by hand is not a retry either.
    let id = exhaust(drive_to(&app, S::Failed).await).await;
    let r = ok(&app, &id, S::DeadLetter).await;
    assert_eq!(st(job_of(&r).status), S::DeadLetter);

    // One attempt left: the retry is allowed and uses it.
    let id = drive_to(&app, S::Failed).await;
    sqlx::query("UPDATE job SET attempt = 4 WHERE id = $1")
        .bind(uuid(&id))
        .execute(&app.db)
        .await
        .expect("update");
    let r = ok(&app, &id, S::Running).await;
    assert_eq!(job_of(&r).attempt, 5);
}

#[tokio::test]
async fn finished_at_is_set_on_entering_a_final_state_and_cleared_on_leaving() {
    let app = spawn_app().await;
    async fn step(app: &TestApp, id: &str, to: S, finished: bool) {
        let r = ok(app, id, to).await;
        let job = job_of(&r);
        assert_eq!(st(job.status), to);
        assert_eq!(
            job.finished_at.is_some(),
            finished,
            "returned job after {to:?}"
        );
        let row = job_row(app, id).await;
        assert_eq!(row.finished_at.is_some(), finished, "job row after {to:?}");
        if let Some(f) = row.finished_at {
            assert_eq!(ts(job.finished_at.as_ref().unwrap()), f);
            assert!(f >= row.started_at.unwrap_or(f));
        }
        let got = app.get(id).await.expect("get");
        assert_eq!(got.finished_at.is_some(), finished, "GetJob after {to:?}");
    }

    let a = create_with(&app, 0).await.id;
    assert!(job_row(&app, &a).await.finished_at.is_none());
    step(&app, &a, S::Running, false).await;
    step(&app, &a, S::Running, false).await;
    step(&app, &a, S::Failed, true).await;
    step(&app, &a, S::Queued, false).await;
    step(&app, &a, S::Running, false).await;
    step(&app, &a, S::Failed, true).await;
    step(&app, &a, S::Running, false).await;
    step(&app, &a, S::Queued, false).await;
    step(&app, &a, S::Running, false).await;
    step(&app, &a, S::Succeeded, true).await;

    let b = create_with(&app, 0).await.id;
    step(&app, &b, S::Canceled, true).await;

    let c = create_with(&app, 0).await.id;
    step(&app, &c, S::Running, false).await;
    step(&app, &c, S::Canceled, true).await;

    let d = create_with(&app, 0).await.id;
    step(&app, &d, S::Running, false).await;
    step(&app, &d, S::Failed, true).await;
    step(&app, &d, S::DeadLetter, true).await;
    step(&app, &d, S::Queued, false).await;

    let e = create_with(&app, 1).await.id;
    step(&app, &e, S::Running, false).await;
    // The failure dead-letters: finished_at set.
    let r = ok(&app, &e, S::Failed).await;
    assert_eq!(st(job_of(&r).status), S::DeadLetter);
    assert!(job_of(&r).finished_at.is_some());
    assert!(job_row(&app, &e).await.finished_at.is_some());
    step(&app, &e, S::Queued, false).await;
}

// ---------------------------------------------------------------------------------
// Request validation
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn result_is_accepted_only_with_succeeded_and_is_stored() {
    let app = spawn_app().await;
    let id = drive_to(&app, S::Running).await;
    let result = object(json!({"rows": 3, "files": ["a", "b"]}));
    for to in [S::Failed, S::Running, S::Queued, S::Canceled] {
        assert_invalid(
            &app,
            proto::TransitionJobRequest {
                result: Some(result.clone()),
                ..req(&id, to)
            },
            &["result"],
        )
        .await;
    }

    let r = ok_with(
        &app,
        proto::TransitionJobRequest {
            result: Some(result.clone()),
            ..req(&id, S::Succeeded)
        },
    )
    .await;
    let want = json!({"rows": 3, "files": ["a", "b"]});
    assert_eq!(to_json(job_of(&r).result.as_ref().expect("result")), want);
    assert_eq!(
        to_json(r.events[0].detail.as_ref().expect("detail"))["result"],
        want
    );
    let last = events(&app, &id).await.pop().unwrap();
    assert_eq!(last.next_status, "succeeded");
    assert_eq!(
        last.detail()["result"],
        want,
        "result in the SUCCEEDED event"
    );
    let got = app.get(&id).await.expect("get");
    assert_eq!(to_json(got.result.as_ref().expect("GetJob result")), want);
}

#[tokio::test]
async fn progress_must_be_0_to_100() {
    let app = spawn_app().await;
    let id = drive_to(&app, S::Running).await;
    for p in [101, -1, 1000, i32::MIN] {
        assert_invalid(
            &app,
            proto::TransitionJobRequest {
                progress: Some(p),
                ..req(&id, S::Running)
            },
            &["progress"],
        )
        .await;
    }
    for p in [0, 100] {
        let r = ok_with(
            &app,
            proto::TransitionJobRequest {
                progress: Some(p),
                ..req(&id, S::Running)
            },
        )
        .await;
        assert_eq!(job_of(&r).progress, p);
    }
}

#[tokio::test]
async fn to_status_must_be_a_status() {
    let app = spawn_app().await;
    let id = drive_to(&app, S::Running).await;
    for bad in [S::Unspecified as i32, 99, -1] {
        assert_invalid(
            &app,
            proto::TransitionJobRequest {
                job_id: id.clone(),
                to_status: bad,
                ..Default::default()
            },
            &["to_status"],
        )
        .await;
    }
}

#[tokio::test]
async fn expected_status_must_be_a_status() {
    let app = spawn_app().await;
    let id = drive_to(&app, S::Running).await;
    for bad in [99, -3] {
        assert_invalid(
            &app,
            proto::TransitionJobRequest {
                expected_status: Some(bad),
                ..req(&id, S::Succeeded)
            },
            &["expected_status"],
        )
        .await;
    }
}

#[tokio::test]
async fn job_id_must_be_a_uuid() {
    let app = spawn_app().await;
    drive_to(&app, S::Running).await;
    for bad in [
        "",
        "not-a-uuid",
        "123",
        "6b1e2f5c-4a51-4b0e-9d55-2f0e3c6a7b8",
    ] {
        assert_invalid(&app, req(bad, S::Succeeded), &["job_id"]).await;
    }
}

#[tokio::test]
async fn reserved_detail_keys_are_refused() {
    let app = spawn_app().await;
    let id = drive_to(&app, S::Running).await;
    for key in [
        "stage",
        "progress",
        "result",
        "error_code",
        "error_message",
        "actor",
    ] {
        let field = format!("detail.{key}");
        assert_invalid(
            &app,
            proto::TransitionJobRequest {
                detail: Some(object(json!({ key: "x", "ok": 1 }))),
                ..req(&id, S::Running)
            },
            &[field.as_str()],
        )
        .await;
    }
}

#[tokio::test]
async fn client_detail_is_stored_alongside_actor_and_error_fields() {
    let app = spawn_app().await;
    let id = drive_to(&app, S::Running).await;
    let r = ok_with(
        &app,
        proto::TransitionJobRequest {
            detail: Some(object(
                json!({"host": "h1", "tries": 3, "nested": {"a": [1, "x"]}}),
            )),
            actor: "worker-7".into(),
            error_code: "E_IO".into(),
            error_message: "disk full".into(),
            ..req(&id, S::Failed)
        },
    )
    .await;
    let last = events(&app, &id).await.pop().unwrap();
    let d = last.detail();
    assert_eq!(d["host"], json!("h1"));
    assert_eq!(d["tries"], json!(3));
    assert_eq!(d["nested"], json!({"a": [1, "x"]}));
    assert_eq!(d["actor"], json!("worker-7"));
    assert_eq!(d["error_code"], json!("E_IO"));
    assert_eq!(d["error_message"], json!("disk full"));
    assert_eq!(
        to_json(r.events[0].detail.as_ref().expect("detail")),
        d,
        "the returned event's detail is the stored one"
    );
    let got = app.get(&id).await.expect("get");
    assert_eq!(got.last_error_code, "E_IO");
    assert_eq!(got.last_error_message, "disk full");
}

// ---------------------------------------------------------------------------------
// Compare-and-set and fencing
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn expected_status_mismatch_is_aborted_and_writes_nothing() {
    let app = spawn_app().await;
    let id = drive_to(&app, S::Running).await;
    let before = snapshot(&app, &id).await;
    let err = app
        .transition_with(proto::TransitionJobRequest {
            expected_status: Some(S::Queued as i32),
            ..req(&id, S::Succeeded)
        })
        .await
        .expect_err("status mismatch");
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert_eq!(reason(&err), "STATUS_MISMATCH");
    assert_unchanged(&app, &id, &before, "status mismatch").await;

    let r = ok_with(
        &app,
        proto::TransitionJobRequest {
            expected_status: Some(S::Running as i32),
            ..req(&id, S::Succeeded)
        },
    )
    .await;
    assert_eq!(st(job_of(&r).status), S::Succeeded);
    assert_consistent(&app, &id).await;
}

#[tokio::test]
async fn stale_attempt_is_aborted_and_writes_nothing() {
    let app = spawn_app().await;
    let id = drive_to(&app, S::Running).await;
    ok(&app, &id, S::Failed).await;
    let r = ok(&app, &id, S::Running).await;
    assert_eq!(job_of(&r).attempt, 2);

    // The worker of attempt 1 reports late.
    for to in [S::Running, S::Succeeded, S::Failed] {
        let before = snapshot(&app, &id).await;
        let err = app
            .transition_with(proto::TransitionJobRequest {
                attempt: Some(1),
                stage: "late".into(),
                ..req(&id, to)
            })
            .await
            .expect_err("stale attempt");
        assert_eq!(err.code(), Code::Aborted, "{to:?}: {err:?}");
        assert_eq!(reason(&err), "STALE_ATTEMPT", "{to:?}");
        assert_unchanged(&app, &id, &before, "stale attempt").await;
    }
    let err = app
        .transition_with(proto::TransitionJobRequest {
            attempt: Some(3),
            ..req(&id, S::Running)
        })
        .await
        .expect_err("future attempt");
    assert_eq!(err.code(), Code::Aborted);
    assert_eq!(reason(&err), "STALE_ATTEMPT");

    let r = ok_with(
        &app,
        proto::TransitionJobRequest {
            attempt: Some(2),
            stage: "current".into(),
            ..req(&id, S::Running)
        },
    )
    .await;
    assert_eq!(job_of(&r).stage, "current");
    assert_eq!(job_of(&r).attempt, 2);
    assert_consistent(&app, &id).await;
}

// ---------------------------------------------------------------------------------
// Not found
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_job_is_not_found() {
    let app = spawn_app().await;
    drive_to(&app, S::Queued).await;
    let count = app.count("job_event").await;
    let unknown = Uuid::new_v4().to_string();
    let err = app
        .transition(&unknown, S::Running)
        .await
        .expect_err("unknown job");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    reason(&err);
    assert_eq!(app.count("job_event").await, count);
}

#[tokio::test]
async fn another_orgs_job_is_not_found_and_untouched() {
    let app = spawn_app().await;
    let org_b = Uuid::new_v4().to_string();
    let job_b = app
        .client
        .clone()
        .create_job(proto::CreateJobRequest {
            org_id: org_b.clone(),
            r#type: "transition_test".into(),
            ..Default::default()
        })
        .await
        .expect("create in org B")
        .into_inner()
        .job
        .expect("job");
    let before = snapshot(&app, &job_b.id).await;

    let unknown = Uuid::new_v4().to_string();
    let not_there = app
        .transition(&unknown, S::Running)
        .await
        .expect_err("unknown job");
    // The default org asks for org B's job.
    let foreign = app
        .transition(&job_b.id, S::Running)
        .await
        .expect_err("another org's job");
    assert_eq!(foreign.code(), Code::NotFound, "{foreign:?}");
    assert_eq!(reason(&foreign), reason(&not_there));
    assert_eq!(
        foreign.message().replace(&job_b.id, "<id>"),
        not_there.message().replace(&unknown, "<id>"),
        "indistinguishable from a job that does not exist"
    );
    let keys = |s: &Status| -> BTreeSet<String> {
        s.get_details_error_info()
            .map(|i| i.metadata.into_keys().collect())
            .unwrap_or_default()
    };
    assert_eq!(keys(&foreign), keys(&not_there));
    // Also with an explicit third org.
    let err = app
        .transition_with(proto::TransitionJobRequest {
            org_id: Uuid::new_v4().to_string(),
            ..req(&job_b.id, S::Canceled)
        })
        .await
        .expect_err("a third org");
    assert_eq!(err.code(), Code::NotFound);
    assert_unchanged(&app, &job_b.id, &before, "another org's job").await;

    // Its own org moves it.
    let r = ok_with(
        &app,
        proto::TransitionJobRequest {
            org_id: org_b.clone(),
            ..req(&job_b.id, S::Running)
        },
    )
    .await;
    assert_eq!(job_of(&r).org_id, org_b);
}

// ---------------------------------------------------------------------------------
// request_id replay
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn replaying_a_request_id_returns_the_original_outcome_and_writes_nothing() {
    let app = spawn_app().await;
    let id = drive_to(&app, S::Queued).await;
    let start = proto::TransitionJobRequest {
        request_id: "r1".into(),
        actor: "worker-1".into(),
        ..req(&id, S::Running)
    };
    let first = ok_with(&app, start.clone()).await;
    assert_eq!(first.events.len(), 1);
    let before = snapshot(&app, &id).await;
    for _ in 0..3 {
        let again = ok_with(&app, start.clone()).await;
        assert_eq!(again, first, "a replay returns the original response");
        assert_unchanged(&app, &id, &before, "replay").await;
    }
    assert_eq!(job_row(&app, &id).await.attempt, 1);
}

#[tokio::test]
async fn replay_after_the_job_moved_on_returns_the_outcome_as_it_was() {
    let app = spawn_app().await;
    let id = drive_to(&app, S::Queued).await;
    let start = proto::TransitionJobRequest {
        request_id: "r1".into(),
        ..req(&id, S::Running)
    };
    let first = ok_with(&app, start.clone()).await;
    let progress = proto::TransitionJobRequest {
        request_id: "r2".into(),
        stage: "half".into(),
        progress: Some(50),
        ..req(&id, S::Running)
    };
    let second = ok_with(&app, progress.clone()).await;
    assert_eq!(job_of(&second).progress, 50);

    let before = snapshot(&app, &id).await;
    let again = ok_with(&app, start.clone()).await;
    assert_eq!(again, first, "the start's response as it was then");
    let job = job_of(&again);
    assert_eq!(
        (st(job.status), job.attempt, job.progress),
        (S::Running, 1, 0)
    );
    assert_eq!(ok_with(&app, progress.clone()).await, second);
    assert_unchanged(&app, &id, &before, "replay after progress").await;

    // Even once the job is final, where a fresh start would be refused.
    ok(&app, &id, S::Succeeded).await;
    let before = snapshot(&app, &id).await;
    assert_eq!(ok_with(&app, start).await, first);
    assert_eq!(ok_with(&app, progress).await, second);
    assert_unchanged(&app, &id, &before, "replay after success").await;
    assert_eq!(job_row(&app, &id).await.status, "succeeded");
}

#[tokio::test]
async fn a_request_id_reused_with_a_different_to_status_is_already_exists() {
    let app = spawn_app().await;
    let id = drive_to(&app, S::Queued).await;
    ok_with(
        &app,
        proto::TransitionJobRequest {
            request_id: "r1".into(),
            ..req(&id, S::Running)
        },
    )
    .await;
    let before = snapshot(&app, &id).await;
    let err = app
        .transition_with(proto::TransitionJobRequest {
            request_id: "r1".into(),
            ..req(&id, S::Canceled)
        })
        .await
        .expect_err("request_id reused");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(reason(&err), "REQUEST_ID_REUSED");
    assert_unchanged(&app, &id, &before, "request_id reused").await;
    assert_eq!(job_row(&app, &id).await.status, "running");
}

#[tokio::test]
async fn a_request_id_is_scoped_to_its_job() {
    let app = spawn_app().await;
    let a = drive_to(&app, S::Queued).await;
    let b = drive_to(&app, S::Queued).await;
    let ra = ok_with(
        &app,
        proto::TransitionJobRequest {
            request_id: "r1".into(),
            ..req(&a, S::Running)
        },
    )
    .await;
    let count = app.count("job_event").await;
    let rb = ok_with(
        &app,
        proto::TransitionJobRequest {
            request_id: "r1".into(),
            ..req(&b, S::Running)
        },
    )
    .await;
    assert_eq!(job_of(&rb).id, b);
    assert_eq!(rb.events.len(), 1);
    assert_ne!(rb.events[0].id, ra.events[0].id);
    assert_eq!(rb.events[0].job_id, b);
    assert_eq!(app.count("job_event").await, count + 1);
    assert_eq!(job_row(&app, &b).await.status, "running");
    assert_eq!(job_row(&app, &b).await.attempt, 1);
    // A different to_status under the same id on B is B's own business: it is a
    // reuse on B, not something A's record decides.
    let err = app
        .transition_with(proto::TransitionJobRequest {
            request_id: "r1".into(),
            ..req(&b, S::Canceled)
        })
        .await
        .expect_err("reused on B");
    assert_eq!(reason(&err), "REQUEST_ID_REUSED");

    // Replaying A's request from another org finds no job, recorded or not.
    let before = snapshot(&app, &a).await;
    let err = app
        .transition_with(proto::TransitionJobRequest {
            org_id: Uuid::new_v4().to_string(),
            request_id: "r1".into(),
            ..req(&a, S::Running)
        })
        .await
        .expect_err("another org's replay");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_unchanged(&app, &a, &before, "replay from another org").await;
}

// ---------------------------------------------------------------------------------
// Events in the response
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn returned_events_carry_ids_job_org_ts_attempt_and_distinct_cursors() {
    let app = spawn_app().await;
    let org = Uuid::new_v4().to_string();
    let job = app
        .client
        .clone()
        .create_job(proto::CreateJobRequest {
            org_id: org.clone(),
            r#type: "transition_test".into(),
            max_attempts: 2,
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner()
        .job
        .expect("job");
    let with_org = |to: S| proto::TransitionJobRequest {
        org_id: org.clone(),
        ..req(&job.id, to)
    };
    let mut returned = Vec::new();
    let mut attempts_after = Vec::new();
    for to in [
        S::Running,
        S::Running,
        S::Failed,
        S::Running,
        S::Failed,
        S::Queued,
    ] {
        let r = ok_with(&app, with_org(to)).await;
        let attempt = job_of(&r).attempt;
        for e in r.events {
            attempts_after.push(attempt);
            returned.push(e);
        }
    }
    // The last failure dead-lettered (2 events), the redrive reset the attempt.
    assert_eq!(returned.len(), 7);
    assert_eq!(attempts_after, [1, 1, 1, 2, 2, 2, 0]);

    let rows = events(&app, &job.id).await;
    assert_eq!(rows.len(), 8, "the creation event and the 7 returned");
    let now = Utc::now();
    let mut cursors = BTreeSet::new();
    for (i, (e, row)) in returned.iter().zip(&rows[1..]).enumerate() {
        let id = Uuid::parse_str(&e.id).unwrap_or_else(|_| panic!("event id {:?}", e.id));
        assert_eq!(id, row.id, "event {i} is the row, in order");
        assert_eq!(e.job_id, job.id);
        assert_eq!(e.org_id, org);
        let t = ts(e.ts.as_ref().expect("ts set"));
        assert_eq!(t, row.ts, "event {i}: ts is the stored ts");
        assert!(
            (now - t).num_seconds().abs() < 60,
            "event {i}: ts is now-ish"
        );
        assert_eq!(e.attempt, attempts_after[i], "event {i}: attempt after it");
        assert_eq!(row.attempt, Some(e.attempt), "event {i}: stored attempt");
        assert_eq!(
            (Some(db(st(e.prev_status))), db(st(e.next_status))),
            (row.prev_status.as_deref(), row.next_status.as_str())
        );
        assert!(!e.cursor.is_empty(), "event {i}: cursor");
        assert!(
            cursors.insert(e.cursor.clone()),
            "event {i}: cursor distinct"
        );
    }
    assert_consistent(&app, &job.id).await;
}

// ---------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------

const RACERS: usize = 50;

type Outcome = Result<proto::TransitionJobResponse, Status>;

/// Sends every request at once (released together by a barrier), from several
/// connections; the tasks, in request order.
async fn launch(
    app: &TestApp,
    requests: Vec<proto::TransitionJobRequest>,
) -> Vec<tokio::task::JoinHandle<Outcome>> {
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(app.new_client().await);
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(requests.len()));
    requests
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let mut client = clients[i % clients.len()].clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                client.transition_job(r).await.map(|r| r.into_inner())
            })
        })
        .collect()
}

async fn join(handles: Vec<tokio::task::JoinHandle<Outcome>>) -> Vec<Outcome> {
    let mut results = Vec::new();
    for h in handles {
        results.push(h.await.expect("task"));
    }
    results
}

async fn race(app: &TestApp, requests: Vec<proto::TransitionJobRequest>) -> Vec<Outcome> {
    join(launch(app, requests).await).await
}

/// Number of backends of the test database waiting on a lock.
async fn lock_waiters(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(&app.db)
    .await
    .expect("pg_stat_activity")
}

/// Runs `requests` while the test holds the job's row lock (as a slow transaction of
/// another client would), releasing it once at least `waiters` of them queue behind it.
async fn race_behind_a_held_lock(
    app: &TestApp,
    id: &str,
    requests: Vec<proto::TransitionJobRequest>,
    waiters: i64,
) -> Vec<Outcome> {
    let mut tx = app.db.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM job WHERE id = $1 FOR UPDATE")
        .bind(uuid(id))
        .execute(&mut *tx)
        .await
        .expect("lock the job row");
    let handles = launch(app, requests).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while lock_waiters(app).await < waiters {
        assert!(
            std::time::Instant::now() < deadline,
            "requests never queued behind the lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tx.rollback().await.expect("release the lock");
    join(handles).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_concurrent_compare_and_set_starts_exactly_one_wins() {
    let app = spawn_app().await;
    let id = drive_to(&app, S::Queued).await;
    let requests = (0..RACERS)
        .map(|_| proto::TransitionJobRequest {
            expected_status: Some(S::Queued as i32),
            ..req(&id, S::Running)
        })
        .collect();
    let results = race(&app, requests).await;
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "exactly one start wins");
    for r in &results {
        if let Err(e) = r {
            assert_eq!(e.code(), Code::Aborted, "{e:?}");
            assert_eq!(reason(e), "STATUS_MISMATCH");
        }
    }
    let row = job_row(&app, &id).await;
    assert_eq!((row.status.as_str(), row.attempt), ("running", 1));
    assert_eq!(events(&app, &id).await.len(), 2);
    assert_consistent(&app, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_concurrent_fenced_starts_exactly_one_wins() {
    let app = spawn_app().await;
    let id = drive_to(&app, S::Queued).await;
    let requests = (0..RACERS)
        .map(|_| proto::TransitionJobRequest {
            attempt: Some(0),
            ..req(&id, S::Running)
        })
        .collect();
    let results = race(&app, requests).await;
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "exactly one start wins");
    for r in &results {
        if let Err(e) = r {
            assert_eq!(e.code(), Code::Aborted, "{e:?}");
            assert_eq!(reason(e), "STALE_ATTEMPT");
        }
    }
    let row = job_row(&app, &id).await;
    assert_eq!((row.status.as_str(), row.attempt), ("running", 1));
    assert_eq!(events(&app, &id).await.len(), 2);
    assert_consistent(&app, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_progress_reports_are_all_recorded_in_a_consistent_order() {
    let app = spawn_app().await;
    let id = drive_to(&app, S::Running).await;
    let requests = (0..RACERS)
        .map(|i| proto::TransitionJobRequest {
            stage: format!("s{i}"),
            progress: Some(i as i32),
            ..req(&id, S::Running)
        })
        .collect();
    let results = race(&app, requests).await;
    let mut returned = BTreeSet::new();
    for r in results {
        let r = r.expect("every progress report succeeds");
        assert_eq!(r.events.len(), 1);
        assert_eq!(job_of(&r).attempt, 1);
        returned.insert(uuid(&r.events[0].id));
    }
    assert_eq!(returned.len(), RACERS, "distinct events");
    let evs = events(&app, &id).await;
    assert_eq!(evs.len(), 2 + RACERS);
    let stored: BTreeSet<Uuid> = evs[2..].iter().map(|e| e.id).collect();
    assert_eq!(stored, returned);
    for e in &evs[2..] {
        assert_eq!(
            (e.prev_status.as_deref(), e.next_status.as_str(), e.attempt),
            (Some("running"), "running", Some(1))
        );
    }
    // The read view is the newest event's report.
    let newest = evs.last().unwrap().detail();
    let got = app.get(&id).await.expect("get");
    assert_eq!(json!(got.stage), newest["stage"]);
    assert_eq!(json!(got.progress), newest["progress"]);
    let row = job_row(&app, &id).await;
    assert_eq!((row.status.as_str(), row.attempt), ("running", 1));
    assert_consistent(&app, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_replays_of_an_applied_request_id_return_the_same_outcome() {
    let app = spawn_app().await;
    let id = drive_to(&app, S::Queued).await;
    let start = proto::TransitionJobRequest {
        request_id: "once".into(),
        ..req(&id, S::Running)
    };
    let first = ok_with(&app, start.clone()).await;
    let before = snapshot(&app, &id).await;
    let results = race(&app, vec![start; RACERS]).await;
    for r in results {
        let r = r.expect("every replay succeeds");
        assert_eq!(r, first);
    }
    assert_unchanged(&app, &id, &before, "concurrent replays").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_uses_of_one_request_id_apply_it_once() {
    let app = spawn_app().await;
    let id = drive_to(&app, S::Queued).await;
    let start = proto::TransitionJobRequest {
        request_id: "once".into(),
        actor: "worker-1".into(),
        ..req(&id, S::Running)
    };
    // Held lock: the requests are all in flight before any of them is applied.
    let results = race_behind_a_held_lock(&app, &id, vec![start; RACERS], 3).await;
    let mut event_ids = BTreeSet::new();
    let mut failures = Vec::new();
    for r in results {
        match r {
            Ok(r) => {
                assert_eq!(r.events.len(), 1);
                assert_eq!(job_of(&r).attempt, 1);
                event_ids.insert(r.events[0].id.clone());
            }
            Err(e) => failures.push(format!("{:?} {}", e.code(), e.message())),
        }
    }
    assert!(
        failures.is_empty(),
        "every identical request succeeds: {} failed, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    assert_eq!(event_ids.len(), 1, "all see the same event");
    let evs = events(&app, &id).await;
    assert_eq!(evs.len(), 2, "exactly one event written: {evs:#?}");
    let row = job_row(&app, &id).await;
    assert_eq!((row.status.as_str(), row.attempt), ("running", 1));
    assert_consistent(&app, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn starts_queued_behind_a_held_lock_see_the_winner() {
    // Requests waiting for the row lock must decide on the row as the winner left it.
    let app = spawn_app().await;
    let id = drive_to(&app, S::Queued).await;
    let requests = (0..RACERS)
        .map(|i| proto::TransitionJobRequest {
            expected_status: (i % 2 == 0).then_some(S::Queued as i32),
            attempt: (i % 2 == 1).then_some(0),
            ..req(&id, S::Running)
        })
        .collect();
    let results = race_behind_a_held_lock(&app, &id, requests, 3).await;
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "exactly one start wins");
    for r in &results {
        if let Err(e) = r {
            assert_eq!(e.code(), Code::Aborted, "{e:?}");
        }
    }
    let row = job_row(&app, &id).await;
    assert_eq!((row.status.as_str(), row.attempt), ("running", 1));
    assert_eq!(events(&app, &id).await.len(), 2);
    assert_consistent(&app, &id).await;
}
