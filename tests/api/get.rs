//! GetJob: what CreateJob returned, NOT_FOUND across orgs, malformed ids, and the
//! compatibility view (stage, progress, result, last_error_*, timestamps) after
//! transitions.

use chrono::{DateTime, Utc};
use jobledger::proto::{self, JobStatus};
use serde_json::{json, Value};
use sqlx::types::Json;
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::helpers::{object, reason, spawn_app, to_json, violated_fields, TestApp};

fn ts(t: &prost_types::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(t.seconds, t.nanos as u32).expect("valid timestamp")
}

async fn get_in(app: &TestApp, org_id: &str, job_id: &str) -> Result<proto::Job, tonic::Status> {
    app.client
        .clone()
        .get_job(proto::GetJobRequest {
            org_id: org_id.to_owned(),
            job_id: job_id.to_owned(),
        })
        .await
        .map(|r| r.into_inner().job.expect("job"))
}

/// A transition of `job_id` in the default org.
fn to(job_id: &str, status: JobStatus) -> proto::TransitionJobRequest {
    proto::TransitionJobRequest {
        job_id: job_id.to_owned(),
        to_status: status as i32,
        ..Default::default()
    }
}

async fn step(app: &TestApp, request: proto::TransitionJobRequest) -> proto::Job {
    let what = format!("{request:?}");
    app.transition_with(request)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:?}"))
        .job
        .expect("job")
}

#[derive(sqlx::FromRow, Debug)]
struct Row {
    status: String,
    attempt: i32,
    updated_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    last_error_code: Option<String>,
    last_error_message: Option<String>,
}

async fn row(app: &TestApp, id: &str) -> Row {
    sqlx::query_as(
        "SELECT status, attempt, updated_at, started_at, finished_at, last_error_code,
                last_error_message
         FROM job WHERE id = $1",
    )
    .bind(Uuid::parse_str(id).unwrap())
    .fetch_one(&app.db)
    .await
    .expect("job row")
}

/// The detail of the job's newest event with `next_status`.
async fn last_detail(app: &TestApp, id: &str, next_status: &str) -> Value {
    let detail: Option<Json<Value>> = sqlx::query_scalar(
        "SELECT detail_json FROM job_event WHERE job_id = $1 AND next_status = $2
         ORDER BY seq DESC LIMIT 1",
    )
    .bind(Uuid::parse_str(id).unwrap())
    .bind(next_status)
    .fetch_one(&app.db)
    .await
    .expect("event");
    detail.map(|d| d.0).unwrap_or(Value::Null)
}

/// The job's status must be the next_status of its newest event.
async fn assert_status_matches_newest_event(app: &TestApp, id: &str) {
    let (status, newest): (String, String) = sqlx::query_as(
        "SELECT j.status, (SELECT e.next_status FROM job_event e WHERE e.job_id = j.id
                           ORDER BY e.seq DESC LIMIT 1)
         FROM job j WHERE j.id = $1",
    )
    .bind(Uuid::parse_str(id).unwrap())
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(status, newest);
}

// ---------------------------------------------------------------------------------
// Reading what was created
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn get_returns_what_create_returned() {
    let app = spawn_app().await;
    let org = Uuid::new_v4().to_string();
    let created = app
        .client
        .clone()
        .create_job(proto::CreateJobRequest {
            org_id: org.clone(),
            r#type: "render ☃".into(),
            priority: 9,
            idempotency_key: "idem".into(),
            requested_by: "svc-a".into(),
            max_attempts: 7,
            params: Some(object(
                json!({"n": 5, "f": 0.5, "l": [true, null, "x"], "o": {}}),
            )),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();

    let got = get_in(&app, &org, &created.id).await.unwrap();

    assert_eq!(got, created, "every field as CreateJob returned it");
    assert_eq!(got.priority, 9);
    assert_eq!(got.max_attempts, 7);
    assert_eq!(got.idempotency_key, "idem");
    assert_eq!(got.requested_by, "svc-a");
    assert_eq!(
        to_json(got.params.as_ref().unwrap()),
        json!({"n": 5, "f": 0.5, "l": [true, null, "x"], "o": {}})
    );

    // The default org, with the helper's empty org_id.
    let default_job = app.create("plain").await;
    assert_eq!(app.get(&default_job.id).await.unwrap(), default_job);
    assert_eq!(
        get_in(
            &app,
            "00000000-0000-0000-0000-000000000000",
            &default_job.id
        )
        .await
        .unwrap(),
        default_job,
        "the nil UUID is the default org"
    );
}

#[tokio::test]
async fn get_accepts_a_job_id_in_upper_case() {
    let app = spawn_app().await;
    let job = app.create("x").await;
    let got = app.get(&job.id.to_uppercase()).await.unwrap();
    assert_eq!(got.id, job.id, "ids are returned in canonical form");
}

#[tokio::test]
async fn get_reads_the_current_row() {
    let app = spawn_app().await;
    let job = app.create("x").await;
    // A change made behind the server's back (e.g. by the old stack) is visible.
    sqlx::query("UPDATE job SET priority = 77 WHERE id = $1")
        .bind(Uuid::parse_str(&job.id).unwrap())
        .execute(&app.db)
        .await
        .unwrap();
    assert_eq!(app.get(&job.id).await.unwrap().priority, 77);
}

// ---------------------------------------------------------------------------------
// NOT_FOUND and malformed ids
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn an_unknown_job_is_not_found() {
    let app = spawn_app().await;
    app.create("x").await;
    let missing = Uuid::new_v4().to_string();

    let status = app.get(&missing).await.expect_err("NOT_FOUND");

    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(reason(&status), "JOB_NOT_FOUND");
    assert!(
        status.get_details_bad_request().is_none(),
        "not a validation error"
    );
    assert!(!status.message().to_lowercase().contains("select"));
    assert_eq!(app.count("job").await, 1, "a read writes nothing");
    assert_eq!(app.count("job_event").await, 1);
}

#[tokio::test]
async fn a_job_of_another_org_is_indistinguishable_from_a_missing_one() {
    let app = spawn_app().await;
    let (org_a, org_b) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let job = app
        .client
        .clone()
        .create_job(proto::CreateJobRequest {
            org_id: org_a.clone(),
            r#type: "secret".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(get_in(&app, &org_a, &job.id).await.unwrap(), job);

    let other_org = get_in(&app, &org_b, &job.id).await.expect_err("NOT_FOUND");
    let default_org = get_in(&app, "", &job.id).await.expect_err("NOT_FOUND");
    let missing_id = Uuid::new_v4().to_string();
    let missing = get_in(&app, &org_b, &missing_id)
        .await
        .expect_err("NOT_FOUND");

    for (status, id) in [(&other_org, &job.id), (&default_org, &job.id)] {
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert_eq!(reason(status), reason(&missing));
        assert_eq!(
            status.message().replace(id.as_str(), "<id>"),
            missing.message().replace(missing_id.as_str(), "<id>"),
            "the same message as for a job that does not exist"
        );
        let info = status.get_details_error_info().unwrap();
        let missing_info = missing.get_details_error_info().unwrap();
        let mut keys: Vec<_> = info.metadata.keys().collect();
        let mut missing_keys: Vec<_> = missing_info.metadata.keys().collect();
        keys.sort();
        missing_keys.sort();
        assert_eq!(keys, missing_keys, "the same ErrorInfo metadata");
        assert!(
            !info.metadata.values().any(|v| v.contains(&org_a)),
            "the owning org is not revealed: {info:?}"
        );
        assert!(!status.message().contains(&org_a));
        assert!(!status.message().contains("secret"));
    }
}

#[tokio::test]
async fn malformed_ids_are_invalid_argument_naming_the_field() {
    let app = spawn_app().await;
    let job = app.create("x").await;

    for bad in [
        "nope",
        "123",
        "",
        " ",
        "6b1e2f5c-4a51-4b0e-9d55-2f0e3c6a7b8",
    ] {
        let status = get_in(&app, "", bad).await.expect_err("INVALID_ARGUMENT");
        assert_eq!(violated_fields(&status), ["job_id"], "job_id {bad:?}");
        assert_eq!(reason(&status), "INVALID_ARGUMENT");
    }
    let status = get_in(&app, "not-an-org", &job.id)
        .await
        .expect_err("INVALID_ARGUMENT");
    assert_eq!(violated_fields(&status), ["org_id"]);
    assert_eq!(reason(&status), "INVALID_ARGUMENT");

    let status = get_in(&app, "not-an-org", "nope")
        .await
        .expect_err("INVALID_ARGUMENT");
    let mut fields = violated_fields(&status);
    fields.sort();
    assert_eq!(fields, ["job_id", "org_id"], "both bad fields are named");
}

// ---------------------------------------------------------------------------------
// The compatibility view after transitions
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn stage_and_progress_are_the_most_recently_reported() {
    let app = spawn_app().await;
    let job = app.create("etl").await;
    step(&app, to(&job.id, JobStatus::Running)).await;

    let fresh = app.get(&job.id).await.unwrap();
    assert_eq!(fresh.stage, "");
    assert_eq!(fresh.progress, 0);

    for (stage, progress) in [("download", 40), ("parse", 80)] {
        step(
            &app,
            proto::TransitionJobRequest {
                stage: stage.into(),
                progress: Some(progress),
                ..to(&job.id, JobStatus::Running)
            },
        )
        .await;
    }
    let got = app.get(&job.id).await.unwrap();
    assert_eq!(got.status, JobStatus::Running as i32);
    assert_eq!(got.attempt, 1, "a progress report is not a new attempt");
    assert_eq!(got.stage, "parse");
    assert_eq!(got.progress, 80);
    let detail = last_detail(&app, &job.id, "running").await;
    assert_eq!(detail["stage"], json!("parse"));
    assert_eq!(detail["progress"], json!(80));

    // Only progress: the stage stays.
    step(
        &app,
        proto::TransitionJobRequest {
            progress: Some(90),
            ..to(&job.id, JobStatus::Running)
        },
    )
    .await;
    let got = app.get(&job.id).await.unwrap();
    assert_eq!(got.stage, "parse");
    assert_eq!(got.progress, 90);

    // Only a stage: the progress stays.
    step(
        &app,
        proto::TransitionJobRequest {
            stage: "write".into(),
            ..to(&job.id, JobStatus::Running)
        },
    )
    .await;
    let got = app.get(&job.id).await.unwrap();
    assert_eq!(got.stage, "write");
    assert_eq!(got.progress, 90);

    // Progress may go back to 0 explicitly.
    step(
        &app,
        proto::TransitionJobRequest {
            progress: Some(0),
            ..to(&job.id, JobStatus::Running)
        },
    )
    .await;
    let got = app.get(&job.id).await.unwrap();
    assert_eq!(got.progress, 0);
    assert_eq!(got.stage, "write");

    // The view survives the success.
    step(
        &app,
        proto::TransitionJobRequest {
            progress: Some(100),
            ..to(&job.id, JobStatus::Succeeded)
        },
    )
    .await;
    let got = app.get(&job.id).await.unwrap();
    assert_eq!(got.stage, "write");
    assert_eq!(got.progress, 100);
    assert_eq!(app.count("job_event").await, 8);
    assert_status_matches_newest_event(&app, &job.id).await;
}

#[tokio::test]
async fn result_comes_from_the_success() {
    let app = spawn_app().await;
    let job = app.create("etl").await;
    step(&app, to(&job.id, JobStatus::Running)).await;
    assert_eq!(app.get(&job.id).await.unwrap().result, None);

    let result = json!({"rows": 3, "files": ["a.csv", "b.csv"], "ok": true, "ratio": 0.25,
                        "meta": {"none": null}});
    let succeeded = step(
        &app,
        proto::TransitionJobRequest {
            result: Some(object(result.clone())),
            ..to(&job.id, JobStatus::Succeeded)
        },
    )
    .await;

    let got = app.get(&job.id).await.unwrap();
    assert_eq!(got, succeeded, "GetJob shows what TransitionJob returned");
    assert_eq!(got.status, JobStatus::Succeeded as i32);
    assert_eq!(to_json(got.result.as_ref().expect("result")), result);
    assert!(got.finished_at.is_some());
    assert_eq!(got.finished_at, got.updated_at);
    assert_eq!(
        last_detail(&app, &job.id, "succeeded").await["result"],
        result
    );
    let rows_text: String = sqlx::query_scalar(
        "SELECT detail_json->'result'->>'rows' FROM job_event WHERE next_status = 'succeeded'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(rows_text, "3", "integers stay integers in the event too");
    let r = row(&app, &job.id).await;
    assert_eq!(r.status, "succeeded");
    assert_eq!(r.finished_at, Some(ts(got.finished_at.as_ref().unwrap())));
    assert_status_matches_newest_event(&app, &job.id).await;
}

#[tokio::test]
async fn last_error_is_kept_from_the_last_failure() {
    let app = spawn_app().await;
    let job = app.create("flaky").await;
    assert_eq!(job.max_attempts, 5);

    step(&app, to(&job.id, JobStatus::Running)).await;
    step(
        &app,
        proto::TransitionJobRequest {
            error_code: "TIMEOUT".into(),
            error_message: "upstream timed out after 30 s ☃".into(),
            ..to(&job.id, JobStatus::Failed)
        },
    )
    .await;
    let failed = app.get(&job.id).await.unwrap();
    assert_eq!(failed.status, JobStatus::Failed as i32);
    assert_eq!(failed.last_error_code, "TIMEOUT");
    assert_eq!(failed.last_error_message, "upstream timed out after 30 s ☃");
    assert!(failed.finished_at.is_some(), "FAILED is finished");
    let r = row(&app, &job.id).await;
    assert_eq!(r.status, "failed");
    assert_eq!(r.last_error_code.as_deref(), Some("TIMEOUT"));
    assert_eq!(
        r.last_error_message.as_deref(),
        Some("upstream timed out after 30 s ☃")
    );
    let detail = last_detail(&app, &job.id, "failed").await;
    assert_eq!(detail["error_code"], json!("TIMEOUT"));

    // Retry: the error of the failure stays visible while it runs again...
    step(&app, to(&job.id, JobStatus::Running)).await;
    let retried = app.get(&job.id).await.unwrap();
    assert_eq!(retried.status, JobStatus::Running as i32);
    assert_eq!(retried.attempt, 2);
    assert_eq!(
        retried.finished_at, None,
        "leaving FAILED clears finished_at"
    );
    assert_eq!(retried.last_error_code, "TIMEOUT");
    assert_eq!(
        retried.last_error_message,
        "upstream timed out after 30 s ☃"
    );

    // ...and after it succeeds.
    step(
        &app,
        proto::TransitionJobRequest {
            result: Some(object(json!({"ok": true}))),
            ..to(&job.id, JobStatus::Succeeded)
        },
    )
    .await;
    let done = app.get(&job.id).await.unwrap();
    assert_eq!(done.status, JobStatus::Succeeded as i32);
    assert_eq!(done.last_error_code, "TIMEOUT");
    assert_eq!(done.last_error_message, "upstream timed out after 30 s ☃");
    assert_eq!(to_json(done.result.as_ref().unwrap()), json!({"ok": true}));
    let r = row(&app, &job.id).await;
    assert_eq!(r.last_error_code.as_deref(), Some("TIMEOUT"));
    assert_status_matches_newest_event(&app, &job.id).await;
}

#[tokio::test]
async fn a_later_failure_replaces_the_last_error() {
    let app = spawn_app().await;
    let job = app.create("flaky").await;
    for (code, message) in [("E1", "first"), ("E2", "second")] {
        step(&app, to(&job.id, JobStatus::Running)).await;
        step(
            &app,
            proto::TransitionJobRequest {
                error_code: code.into(),
                error_message: message.into(),
                ..to(&job.id, JobStatus::Failed)
            },
        )
        .await;
    }
    let got = app.get(&job.id).await.unwrap();
    assert_eq!(got.attempt, 2);
    assert_eq!(got.last_error_code, "E2");
    assert_eq!(got.last_error_message, "second");
    let r = row(&app, &job.id).await;
    assert_eq!(r.last_error_code.as_deref(), Some("E2"));
    assert_eq!(r.last_error_message.as_deref(), Some("second"));
}

#[tokio::test]
async fn started_at_and_finished_at_follow_the_status() {
    let app = spawn_app().await;
    let job = app.create("t").await;
    let created_at = ts(job.created_at.as_ref().unwrap());

    // QUEUED: neither.
    let got = app.get(&job.id).await.unwrap();
    assert_eq!((got.started_at, got.finished_at), (None, None));

    // Start: started_at, not finished.
    step(&app, to(&job.id, JobStatus::Running)).await;
    let running = app.get(&job.id).await.unwrap();
    let first_start = ts(running.started_at.as_ref().expect("started_at on start"));
    assert!(first_start >= created_at);
    assert_eq!(running.finished_at, None);
    assert_eq!(running.started_at, running.updated_at);
    assert_eq!(running.created_at, job.created_at, "created_at never moves");
    let r = row(&app, &job.id).await;
    assert_eq!(r.started_at, Some(first_start));
    assert_eq!(r.finished_at, None);
    assert_eq!(r.attempt, 1);

    // Requeue: still not finished, started_at kept.
    step(&app, to(&job.id, JobStatus::Queued)).await;
    let requeued = app.get(&job.id).await.unwrap();
    assert_eq!(requeued.status, JobStatus::Queued as i32);
    assert_eq!(requeued.finished_at, None);
    assert_eq!(requeued.started_at, running.started_at);

    // Start again: a new started_at.
    step(&app, to(&job.id, JobStatus::Running)).await;
    let again = app.get(&job.id).await.unwrap();
    assert!(ts(again.started_at.as_ref().unwrap()) >= first_start);
    assert_eq!(again.started_at, again.updated_at);
    assert_eq!(again.attempt, 2);

    // Cancel: finished.
    step(&app, to(&job.id, JobStatus::Canceled)).await;
    let canceled = app.get(&job.id).await.unwrap();
    assert_eq!(canceled.status, JobStatus::Canceled as i32);
    assert!(canceled.finished_at.is_some());
    assert_eq!(canceled.finished_at, canceled.updated_at);
    assert_eq!(canceled.started_at, again.started_at);
    let r = row(&app, &job.id).await;
    assert_eq!(r.status, "canceled");
    assert_eq!(
        r.finished_at,
        Some(ts(canceled.finished_at.as_ref().unwrap()))
    );
    assert_eq!(r.updated_at, ts(canceled.updated_at.as_ref().unwrap()));
    assert_status_matches_newest_event(&app, &job.id).await;
}

#[tokio::test]
async fn dead_letter_is_finished_and_redrive_clears_it() {
    let app = spawn_app().await;
    let job = app
        .client
        .clone()
        .create_job(proto::CreateJobRequest {
            r#type: "once".into(),
            max_attempts: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();

    step(&app, to(&job.id, JobStatus::Running)).await;
    step(
        &app,
        proto::TransitionJobRequest {
            error_code: "BOOM".into(),
            error_message: "it broke".into(),
            ..to(&job.id, JobStatus::Failed)
        },
    )
    .await;

    let dead = app.get(&job.id).await.unwrap();
    assert_eq!(dead.status, JobStatus::DeadLetter as i32);
    assert_eq!(dead.attempt, 1);
    assert!(dead.finished_at.is_some());
    assert_eq!(dead.last_error_code, "BOOM");
    assert_eq!(dead.last_error_message, "it broke");
    let r = row(&app, &job.id).await;
    assert_eq!(r.status, "dead_letter");
    assert!(r.finished_at.is_some());
    assert_status_matches_newest_event(&app, &job.id).await;

    step(&app, to(&job.id, JobStatus::Queued)).await;
    let redriven = app.get(&job.id).await.unwrap();
    assert_eq!(redriven.status, JobStatus::Queued as i32);
    assert_eq!(redriven.attempt, 0, "a redrive gives a fresh budget");
    assert_eq!(
        redriven.finished_at, None,
        "leaving DEAD_LETTER clears finished_at"
    );
    assert_eq!(
        redriven.last_error_code, "BOOM",
        "the last failure stays visible"
    );
    let r = row(&app, &job.id).await;
    assert_eq!(r.status, "queued");
    assert_eq!(r.attempt, 0);
    assert_eq!(r.finished_at, None);
}

#[tokio::test]
async fn get_of_another_org_does_not_see_transitions_either() {
    let app = spawn_app().await;
    let org = Uuid::new_v4().to_string();
    let job = app
        .client
        .clone()
        .create_job(proto::CreateJobRequest {
            org_id: org.clone(),
            r#type: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    step(
        &app,
        proto::TransitionJobRequest {
            org_id: org.clone(),
            ..to(&job.id, JobStatus::Running)
        },
    )
    .await;

    let got = get_in(&app, &org, &job.id).await.unwrap();
    assert_eq!(got.status, JobStatus::Running as i32);
    assert_eq!(got.org_id, org);
    let status = app
        .get(&job.id)
        .await
        .expect_err("NOT_FOUND in the default org");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(reason(&status), "JOB_NOT_FOUND");
}
