//! The old REST API, `POST /jobs` and `GET /jobs/{job_id}`, in the old response shape:
//! exactly the keys `id, status, stage, progress, result, error, created_at, updated_at`
//! (in that order), the new status names, `error` from the last failure.

use jobledger::proto::{self, JobStatus as S};
use serde_json::{json, Value};

use crate::helpers::{object, spawn_app, HttpReply, TestApp};

const KEYS: [&str; 8] = [
    "id",
    "status",
    "stage",
    "progress",
    "result",
    "error",
    "created_at",
    "updated_at",
];

/// The keys of the answer's top-level object, in the order they were sent.
fn keys_in_order(reply: &HttpReply) -> Vec<String> {
    let text = std::str::from_utf8(&reply.body).unwrap();
    let object: Value = reply.json();
    let mut keys: Vec<(usize, String)> = object
        .as_object()
        .unwrap()
        .keys()
        .map(|k| (text.find(&format!("\"{k}\":")).unwrap(), k.clone()))
        .collect();
    keys.sort();
    keys.into_iter().map(|(_, k)| k).collect()
}

fn assert_old_shape(reply: &HttpReply) -> Value {
    assert_eq!(reply.status, 200, "{}", reply.json());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(keys_in_order(reply), KEYS);
    let job = reply.json();
    for at in ["created_at", "updated_at"] {
        let text = job[at].as_str().unwrap();
        chrono::DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("{at} {text}: {e}"));
        assert!(text.ends_with('Z'), "{text}");
    }
    job
}

async fn get(app: &TestApp, id: &str) -> Value {
    assert_old_shape(&app.http("GET", &format!("/jobs/{id}"), "").await)
}

#[tokio::test]
async fn post_jobs_creates_a_mock_process_job_with_the_body_as_params() {
    let app = spawn_app().await;
    let reply = app
        .http(
            "POST",
            "/jobs",
            r#"{"file": "uploads/a.csv", "rows": 1000}"#,
        )
        .await;
    let job = assert_old_shape(&reply);
    assert_eq!(job["status"], "queued");
    assert_eq!(job["stage"], Value::Null);
    assert_eq!(job["progress"], 0);
    assert_eq!(job["result"], Value::Null);
    assert_eq!(job["error"], Value::Null);
    assert_eq!(job["created_at"], job["updated_at"]);
    let id = job["id"].as_str().unwrap();
    let stored = app.get(id).await.unwrap();
    assert_eq!(stored.r#type, "mock_process");
    assert_eq!(
        crate::helpers::to_json(stored.params.as_ref().unwrap()),
        json!({"file": "uploads/a.csv", "rows": 1000})
    );
    // No body: no params.
    let bare = assert_old_shape(&app.http("POST", "/jobs", "").await);
    let stored = app.get(bare["id"].as_str().unwrap()).await.unwrap();
    assert!(stored.params.is_none());
    // The body is the params object: anything else is refused by name.
    let refused = app.http("POST", "/jobs", "[1, 2]").await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.violated_fields(), ["params"]);
    let refused = app.http("POST", "/jobs", "{").await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.reason(), "MALFORMED_JSON");
}

#[tokio::test]
async fn an_idempotency_key_header_makes_post_jobs_idempotent() {
    let app = spawn_app().await;
    let send = |body: &'static str| {
        app.http_with(
            "POST",
            "/jobs",
            &[("Idempotency-Key", "upload-1")],
            body.as_bytes().to_vec(),
        )
    };
    let first = assert_old_shape(&send(r#"{"file": "a.csv"}"#).await);
    let again = assert_old_shape(&send(r#"{"file": "a.csv"}"#).await);
    assert_eq!(first["id"], again["id"]);
    assert_eq!(app.count("job").await, 1);
    let other = send(r#"{"file": "b.csv"}"#).await;
    assert_eq!(other.status, 409);
    assert_eq!(other.reason(), "IDEMPOTENCY_KEY_REUSED");
}

#[tokio::test]
async fn get_jobs_shows_stage_progress_result_and_error_as_the_old_api_did() {
    let app = spawn_app().await;
    let created = assert_old_shape(&app.http("POST", "/jobs", r#"{"rows": 3}"#).await);
    let id = created["id"].as_str().unwrap().to_owned();
    let step = |to: S, attempt: Option<i32>| proto::TransitionJobRequest {
        job_id: id.clone(),
        to_status: to as i32,
        attempt,
        ..Default::default()
    };
    app.transition_with(proto::TransitionJobRequest {
        stage: "parse".into(),
        progress: Some(40),
        ..step(S::Running, None)
    })
    .await
    .unwrap();
    let running = get(&app, &id).await;
    assert_eq!(
        (
            running["status"].clone(),
            running["stage"].clone(),
            running["progress"].clone()
        ),
        (json!("running"), json!("parse"), json!(40))
    );
    app.transition_with(proto::TransitionJobRequest {
        error_code: "PARSE_ERROR".into(),
        error_message: "row 2 is not CSV".into(),
        ..step(S::Failed, Some(1))
    })
    .await
    .unwrap();
    let failed = get(&app, &id).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"], "PARSE_ERROR: row 2 is not CSV");
    app.transition_with(step(S::Running, None)).await.unwrap();
    app.transition_with(proto::TransitionJobRequest {
        stage: "upload".into(),
        progress: Some(100),
        result: Some(object(json!({"rows": 3, "url": "s3://out.csv"}))),
        ..step(S::Succeeded, Some(2))
    })
    .await
    .unwrap();
    let done = get(&app, &id).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["result"], json!({"rows": 3, "url": "s3://out.csv"}));
    assert_eq!(done["stage"], "upload");
    assert_eq!(done["progress"], 100);
    // The last failure stays on the job, as GetJob shows it.
    assert_eq!(done["error"], "PARSE_ERROR: row 2 is not CSV");

    // A message without a code, and the dead-letter status name.
    let one_try = app
        .client
        .clone()
        .create_job(proto::CreateJobRequest {
            r#type: "mock_process".into(),
            max_attempts: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let step = |to: S, attempt: Option<i32>| proto::TransitionJobRequest {
        job_id: one_try.id.clone(),
        to_status: to as i32,
        attempt,
        ..Default::default()
    };
    app.transition_with(step(S::Running, None)).await.unwrap();
    app.transition_with(proto::TransitionJobRequest {
        error_message: "out of memory".into(),
        ..step(S::Failed, Some(1))
    })
    .await
    .unwrap();
    let dead = get(&app, &one_try.id).await;
    assert_eq!(dead["status"], "dead_letter");
    assert_eq!(dead["error"], "out of memory");
}

#[tokio::test]
async fn get_jobs_errors_are_status_documents() {
    let app = spawn_app().await;
    let missing = app
        .http("GET", "/jobs/5b1e8f7a-0000-4000-8000-000000000000", "")
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.reason(), "JOB_NOT_FOUND");
    let bad = app.http("GET", "/jobs/42", "").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.violated_fields(), ["job_id"]);
    let unknown = app.http("GET", "/jobs/42?colour=red", "").await;
    assert_eq!(unknown.violated_fields(), ["colour"]);
    // org_id as a query parameter scopes both routes.
    let org = "0f5e7c1a-2b3d-4e5f-8a9b-0c1d2e3f4a5b";
    let created = assert_old_shape(&app.http("POST", &format!("/jobs?org_id={org}"), "{}").await);
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        app.http("GET", &format!("/jobs/{id}"), "").await.status,
        404
    );
    get(&app, &format!("{id}?org_id={org}")).await;
}
