//! CreateJob: defaults, round trips, the row and its creation event, idempotency
//! (also under concurrency) and validation.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use jobledger::proto;
use prost_types::value::Kind;
use serde_json::{json, Value};
use sqlx::types::Json;
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::helpers::{
    object, reason, spawn_app, spawn_app_with, to_json, violated_fields, TestApp,
};

const DEFAULT_ORG: &str = "00000000-0000-0000-0000-000000000000";

fn ts(t: &prost_types::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(t.seconds, t.nanos as u32).expect("valid timestamp")
}

fn req(job_type: &str) -> proto::CreateJobRequest {
    proto::CreateJobRequest {
        r#type: job_type.to_owned(),
        ..Default::default()
    }
}

fn number(n: f64) -> prost_types::Value {
    prost_types::Value {
        kind: Some(Kind::NumberValue(n)),
    }
}

/// `levels` JSON objects nested in one another, the innermost empty:
/// `nested(1)` is `{}`, `nested(2)` is `{"a": {}}`.
fn nested(levels: usize) -> Value {
    let mut v = json!({});
    for _ in 1..levels {
        v = json!({ "a": v });
    }
    v
}

async fn create(
    app: &TestApp,
    request: proto::CreateJobRequest,
) -> Result<proto::CreateJobResponse, tonic::Status> {
    app.client
        .clone()
        .create_job(request)
        .await
        .map(|r| r.into_inner())
}

async fn create_ok(app: &TestApp, request: proto::CreateJobRequest) -> proto::CreateJobResponse {
    create(app, request).await.expect("create_job")
}

/// Sends `request`, expects INVALID_ARGUMENT, and returns the fields named by the
/// BadRequest. Also checks nothing was written.
async fn rejected(app: &TestApp, request: proto::CreateJobRequest) -> Vec<String> {
    let status = create(app, request)
        .await
        .expect_err("the request must be rejected");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(reason(&status), "INVALID_ARGUMENT");
    let fields = violated_fields(&status);
    assert_nothing_written(app).await;
    fields
}

async fn assert_nothing_written(app: &TestApp) {
    assert_eq!(app.count("job").await, 0, "no job row may be written");
    assert_eq!(app.count("job_event").await, 0, "no event may be written");
}

#[derive(sqlx::FromRow, Debug)]
struct JobRow {
    id: Uuid,
    org_id: Uuid,
    #[sqlx(rename = "type")]
    job_type: String,
    status: String,
    attempt: i32,
    max_attempts: i32,
    priority: i32,
    idempotency_key: Option<String>,
    requested_by: Option<String>,
    params: Option<Json<Value>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    last_error_code: Option<String>,
    last_error_message: Option<String>,
}

async fn job_row(app: &TestApp, id: &str) -> JobRow {
    sqlx::query_as(
        "SELECT id, org_id, type, status, attempt, max_attempts, priority, idempotency_key,
                requested_by, params, created_at, updated_at, started_at, finished_at,
                last_error_code, last_error_message
         FROM job WHERE id = $1",
    )
    .bind(Uuid::parse_str(id).expect("job id is a UUID"))
    .fetch_one(&app.db)
    .await
    .expect("job row")
}

#[derive(sqlx::FromRow, Debug)]
struct EventRow {
    job_id: Uuid,
    org_id: Uuid,
    ts: DateTime<Utc>,
    prev_status: Option<String>,
    next_status: String,
    attempt: Option<i32>,
}

async fn event_rows(app: &TestApp) -> Vec<EventRow> {
    sqlx::query_as(
        "SELECT job_id, org_id, ts, prev_status, next_status, attempt FROM job_event
         ORDER BY seq",
    )
    .fetch_all(&app.db)
    .await
    .expect("event rows")
}

// ---------------------------------------------------------------------------------
// Defaults and fields
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn create_with_only_a_type_returns_a_queued_job_with_defaults() {
    let app = spawn_app().await;

    let response = create_ok(&app, req("thumbnail")).await;

    assert!(response.created);
    let job = response.job.expect("job");
    let id = Uuid::parse_str(&job.id).expect("id is a UUID");
    assert!(!id.is_nil());
    assert_eq!(job.id, id.hyphenated().to_string(), "canonical UUID text");
    assert_eq!(job.org_id, DEFAULT_ORG);
    assert_eq!(job.r#type, "thumbnail");
    assert_eq!(job.status, proto::JobStatus::Queued as i32);
    assert_eq!(job.attempt, 0);
    assert_eq!(job.max_attempts, 5);
    assert_eq!(job.priority, 0);
    assert_eq!(job.idempotency_key, "");
    assert_eq!(job.requested_by, "");
    assert_eq!(job.params, None);
    let created_at = job.created_at.expect("created_at is set");
    assert_eq!(job.updated_at, Some(created_at));
    assert_eq!(job.started_at, None);
    assert_eq!(job.finished_at, None);
    assert_eq!(job.last_error_code, "");
    assert_eq!(job.last_error_message, "");
    assert_eq!(job.stage, "");
    assert_eq!(job.progress, 0);
    assert_eq!(job.result, None);
    let age = Utc::now() - ts(&created_at);
    assert!(
        age.num_seconds().abs() < 60,
        "created_at is now, not {created_at:?}"
    );

    let row = job_row(&app, &job.id).await;
    assert_eq!(row.id, id);
    assert_eq!(row.org_id, Uuid::nil());
    assert_eq!(row.job_type, "thumbnail");
    assert_eq!(row.status, "queued");
    assert_eq!(row.attempt, 0);
    assert_eq!(row.max_attempts, 5);
    assert_eq!(row.priority, 0);
    assert_eq!(row.idempotency_key, None, "no key is NULL, not ''");
    assert_eq!(row.requested_by, None);
    assert!(row.params.is_none());
    assert_eq!(row.created_at, ts(&created_at));
    assert_eq!(row.updated_at, row.created_at);
    assert_eq!(row.started_at, None);
    assert_eq!(row.finished_at, None);
    assert_eq!(row.last_error_code, None);
    assert_eq!(row.last_error_message, None);
}

#[tokio::test]
async fn create_round_trips_every_field() {
    let app = spawn_app().await;
    let org = Uuid::new_v4();
    let params = json!({"video": "s3://bucket/a.mp4", "sizes": [64, 128], "crop": true});

    let response = create_ok(
        &app,
        proto::CreateJobRequest {
            org_id: org.to_string(),
            r#type: "transcode".into(),
            priority: -7,
            idempotency_key: "order-42/transcode".into(),
            requested_by: "api@billing ☃".into(),
            max_attempts: 3,
            params: Some(object(params.clone())),
            ..Default::default()
        },
    )
    .await;

    assert!(response.created);
    let job = response.job.expect("job");
    assert_eq!(job.org_id, org.to_string());
    assert_eq!(job.r#type, "transcode");
    assert_eq!(job.priority, -7);
    assert_eq!(job.idempotency_key, "order-42/transcode");
    assert_eq!(job.requested_by, "api@billing ☃");
    assert_eq!(job.max_attempts, 3);
    assert_eq!(job.status, proto::JobStatus::Queued as i32);
    assert_eq!(job.attempt, 0);
    assert_eq!(to_json(job.params.as_ref().expect("params")), params);

    let row = job_row(&app, &job.id).await;
    assert_eq!(row.org_id, org);
    assert_eq!(row.job_type, "transcode");
    assert_eq!(row.priority, -7);
    assert_eq!(row.idempotency_key.as_deref(), Some("order-42/transcode"));
    assert_eq!(row.requested_by.as_deref(), Some("api@billing ☃"));
    assert_eq!(row.max_attempts, 3);
    assert_eq!(row.params.map(|p| p.0), Some(params));

    // Extreme priorities are stored as they are.
    for priority in [i32::MAX, i32::MIN] {
        let job = create_ok(
            &app,
            proto::CreateJobRequest {
                priority,
                ..req("p")
            },
        )
        .await
        .job
        .unwrap();
        assert_eq!(job.priority, priority);
        assert_eq!(job_row(&app, &job.id).await.priority, priority);
    }
}

#[tokio::test]
async fn params_are_returned_and_stored_as_sent() {
    let app = spawn_app().await;
    let params = json!({
        "n": 5,
        "neg": -3,
        "zero": 0,
        "f": 2.5,
        "tiny": -0.125,
        "huge": 1e300,
        "t": true,
        "no": false,
        "z": null,
        "unicode": "héllo ☃ 日本語 🎉 \"quoted\" \\ back\nslash",
        "empty_string": "",
        "empty_obj": {},
        "empty_list": [],
        "nested": {"list": [1, "two", true, null, {"x": [[], [3]]}], "deeper": {"k": "v"}},
    });

    let job = create_ok(
        &app,
        proto::CreateJobRequest {
            params: Some(object(params.clone())),
            ..req("ingest")
        },
    )
    .await
    .job
    .unwrap();

    assert_eq!(to_json(job.params.as_ref().unwrap()), params);
    let id = Uuid::parse_str(&job.id).unwrap();
    let stored: Json<Value> = sqlx::query_scalar("SELECT params FROM job WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored.0, params);

    // Integers stay integers in jsonb: `5`, not `5.0`, for SQL and other stacks.
    let (n, neg, zero, f, z, t, nested_one): (
        String,
        String,
        String,
        String,
        String,
        String,
        String,
    ) = sqlx::query_as(
        "SELECT params->>'n', params->>'neg', params->>'zero', params->>'f',
                    jsonb_typeof(params->'z'), jsonb_typeof(params->'t'),
                    params #>> '{nested,list,0}'
             FROM job WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(n, "5");
    assert_eq!(neg, "-3");
    assert_eq!(zero, "0");
    assert_eq!(f, "2.5");
    assert_eq!(z, "null");
    assert_eq!(t, "boolean");
    assert_eq!(nested_one, "1");
    let n_text: String = sqlx::query_scalar("SELECT (params->'n')::text FROM job WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(n_text, "5");
    let matches: bool = sqlx::query_scalar("SELECT params @> $2::jsonb FROM job WHERE id = $1")
        .bind(id)
        .bind(Json(
            json!({"n": 5, "t": true, "unicode": params["unicode"]}),
        ))
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(matches, "SQL sees the same values");

    // GetJob returns them too.
    let got = app.get(&job.id).await.unwrap();
    assert_eq!(to_json(got.params.as_ref().unwrap()), params);
}

#[tokio::test]
async fn empty_params_are_an_empty_object() {
    let app = spawn_app().await;
    let job = create_ok(
        &app,
        proto::CreateJobRequest {
            params: Some(prost_types::Struct::default()),
            ..req("x")
        },
    )
    .await
    .job
    .unwrap();
    assert_eq!(
        job.params.as_ref().map(to_json),
        Some(json!({})),
        "an empty Struct is kept, not dropped"
    );
    let stored: Option<Json<Value>> = sqlx::query_scalar("SELECT params FROM job")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored.map(|p| p.0), Some(json!({})));
}

// ---------------------------------------------------------------------------------
// The row and its creation event
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn create_writes_one_job_row_and_its_creation_event() {
    let app = spawn_app().await;
    let org = Uuid::new_v4();

    let job = create_ok(
        &app,
        proto::CreateJobRequest {
            org_id: org.to_string(),
            ..req("report")
        },
    )
    .await
    .job
    .unwrap();

    assert_eq!(app.count("job").await, 1);
    assert_eq!(app.count("job_event").await, 1);
    let status: String = sqlx::query_scalar("SELECT status FROM job")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(status, "queued");
    let events = event_rows(&app).await;
    let event = &events[0];
    assert_eq!(event.job_id.to_string(), job.id);
    assert_eq!(event.org_id, org);
    assert_eq!(
        event.prev_status, None,
        "the creation event has no prev_status"
    );
    assert_eq!(event.next_status, "queued");
    assert_eq!(event.attempt, Some(0));
    assert_eq!(event.ts, ts(job.created_at.as_ref().unwrap()));

    // A second job gets its own row and event.
    let second = app.create("report").await;
    assert_eq!(app.count("job").await, 2);
    assert_eq!(app.count("job_event").await, 2);
    let events = event_rows(&app).await;
    assert_eq!(events[1].job_id.to_string(), second.id);
    assert_eq!(events[1].org_id, Uuid::nil());
    assert_eq!(events[1].next_status, "queued");
    assert_eq!(events[1].prev_status, None);
}

// ---------------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn repeat_with_the_same_key_type_and_params_returns_the_existing_job() {
    let app = spawn_app().await;
    let request = proto::CreateJobRequest {
        r#type: "charge".into(),
        idempotency_key: "invoice-7".into(),
        params: Some(object(
            json!({"amount": 1250, "currency": "EUR", "lines": [1, 2]}),
        )),
        ..Default::default()
    };

    let first = create_ok(&app, request.clone()).await;
    let second = create_ok(&app, request.clone()).await;
    let third = create_ok(&app, request).await;

    assert!(first.created);
    assert!(!second.created, "a repeat does not create");
    assert!(!third.created);
    let first = first.job.unwrap();
    assert_eq!(
        second.job.as_ref(),
        Some(&first),
        "the repeat returns the same job"
    );
    assert_eq!(third.job.as_ref(), Some(&first));
    assert_eq!(app.count("job").await, 1);
    assert_eq!(app.count("job_event").await, 1);
}

#[tokio::test]
async fn repeat_returns_the_job_as_it_is_now() {
    let app = spawn_app().await;
    let request = proto::CreateJobRequest {
        idempotency_key: "k".into(),
        ..req("charge")
    };
    let first = create_ok(&app, request.clone()).await.job.unwrap();
    app.transition(&first.id, proto::JobStatus::Running)
        .await
        .expect("start");

    let again = create_ok(&app, request).await;

    assert!(!again.created);
    let job = again.job.unwrap();
    assert_eq!(job.id, first.id);
    assert_eq!(job.status, proto::JobStatus::Running as i32);
    assert_eq!(job.attempt, 1);
    assert_eq!(app.count("job").await, 1);
    assert_eq!(app.count("job_event").await, 2);
}

#[tokio::test]
async fn same_key_with_another_type_is_already_exists_naming_the_job() {
    let app = spawn_app().await;
    let first = create_ok(
        &app,
        proto::CreateJobRequest {
            idempotency_key: "key-1".into(),
            params: Some(object(json!({"a": 1}))),
            ..req("email")
        },
    )
    .await
    .job
    .unwrap();

    let status = create(
        &app,
        proto::CreateJobRequest {
            idempotency_key: "key-1".into(),
            params: Some(object(json!({"a": 1}))),
            ..req("sms")
        },
    )
    .await
    .expect_err("ALREADY_EXISTS");

    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert_eq!(reason(&status), "IDEMPOTENCY_KEY_REUSED");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(
        info.metadata.get("job_id").map(String::as_str),
        Some(first.id.as_str())
    );
    assert_eq!(app.count("job").await, 1);
    assert_eq!(app.count("job_event").await, 1);
    let job_type: String = sqlx::query_scalar("SELECT type FROM job")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(job_type, "email", "the existing job is untouched");
}

#[tokio::test]
async fn same_key_with_other_params_is_already_exists() {
    let app = spawn_app().await;
    let key_req = |params: Option<Value>| proto::CreateJobRequest {
        idempotency_key: "key-2".into(),
        params: params.map(object),
        ..req("email")
    };
    let first = create_ok(&app, key_req(Some(json!({"to": "a@x", "n": 1}))))
        .await
        .job
        .unwrap();

    for other in [
        Some(json!({"to": "a@x", "n": 2})),
        Some(json!({"to": "a@x"})),
        Some(json!({"to": "a@x", "n": 1, "extra": null})),
        None,
    ] {
        let status = create(&app, key_req(other.clone()))
            .await
            .expect_err("ALREADY_EXISTS");
        assert_eq!(status.code(), Code::AlreadyExists, "{other:?}: {status:?}");
        assert_eq!(reason(&status), "IDEMPOTENCY_KEY_REUSED");
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.metadata["job_id"], first.id);
    }
    assert_eq!(app.count("job").await, 1);
    assert_eq!(app.count("job_event").await, 1);

    // The original input is still accepted as a repeat.
    let again = create_ok(&app, key_req(Some(json!({"n": 1, "to": "a@x"})))).await;
    assert!(!again.created);
    assert_eq!(again.job.unwrap().id, first.id);
}

#[tokio::test]
async fn idempotency_keys_are_per_org() {
    let app = spawn_app().await;
    let (org_a, org_b) = (Uuid::new_v4(), Uuid::new_v4());
    let in_org = |org: String| proto::CreateJobRequest {
        org_id: org,
        idempotency_key: "shared-key".into(),
        ..req("sync")
    };

    let a = create_ok(&app, in_org(org_a.to_string())).await;
    let b = create_ok(&app, in_org(org_b.to_string())).await;
    let default = create_ok(&app, in_org(String::new())).await;

    assert!(a.created && b.created && default.created);
    let ids: BTreeSet<String> = [&a, &b, &default]
        .iter()
        .map(|r| r.job.as_ref().unwrap().id.clone())
        .collect();
    assert_eq!(ids.len(), 3, "one job per org");
    assert_eq!(app.count("job").await, 3);
    assert_eq!(app.count("job_event").await, 3);
    let orgs: Vec<Uuid> =
        sqlx::query_scalar("SELECT org_id FROM job WHERE idempotency_key = 'shared-key'")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(
        orgs.into_iter().collect::<BTreeSet<_>>(),
        [org_a, org_b, Uuid::nil()].into_iter().collect()
    );

    // A repeat in org B finds org B's job.
    let again = create_ok(&app, in_org(org_b.to_string())).await;
    assert!(!again.created);
    assert_eq!(again.job.unwrap().id, b.job.unwrap().id);
    // A differing input in org A does not see org B's job.
    let status = create(
        &app,
        proto::CreateJobRequest {
            r#type: "other".into(),
            ..in_org(org_a.to_string())
        },
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(
        status.get_details_error_info().unwrap().metadata["job_id"],
        a.job.unwrap().id
    );
    assert_eq!(app.count("job").await, 3);
}

#[tokio::test]
async fn without_a_key_every_create_makes_a_new_job() {
    let app = spawn_app().await;
    let request = proto::CreateJobRequest {
        params: Some(object(json!({"same": true}))),
        ..req("ping")
    };

    let mut ids = BTreeSet::new();
    for _ in 0..3 {
        let response = create_ok(&app, request.clone()).await;
        assert!(response.created);
        ids.insert(response.job.unwrap().id);
    }

    assert_eq!(ids.len(), 3);
    assert_eq!(app.count("job").await, 3);
    assert_eq!(app.count("job_event").await, 3);
    let with_key: i64 =
        sqlx::query_scalar("SELECT count(*) FROM job WHERE idempotency_key IS NOT NULL")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(with_key, 0, "no key is stored as NULL");
}

// ---------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------

async fn clients(
    app: &TestApp,
    n: usize,
) -> Vec<proto::job_ledger_client::JobLedgerClient<tonic::transport::Channel>> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(app.new_client().await);
    }
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_with_one_key_yield_one_job_and_identical_ids() {
    let app = spawn_app().await;
    let clients = clients(&app, 8).await;
    let n = 60;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let request = proto::CreateJobRequest {
        idempotency_key: "race".into(),
        params: Some(object(json!({"x": 1}))),
        ..req("race")
    };

    let handles: Vec<_> = (0..n)
        .map(|i| {
            let mut client = clients[i % clients.len()].clone();
            let request = request.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                client.create_job(request).await.map(|r| r.into_inner())
            })
        })
        .collect();
    let results = futures::future::join_all(handles).await;

    let mut ids = BTreeSet::new();
    let mut created = 0;
    for result in results {
        let response = result.expect("task").expect("every create succeeds");
        ids.insert(response.job.unwrap().id);
        created += usize::from(response.created);
    }
    assert_eq!(ids.len(), 1, "every create returns the same id: {ids:?}");
    assert_eq!(created, 1, "exactly one create reports created = true");
    assert_eq!(app.count("job").await, 1);
    assert_eq!(app.count("job_event").await, 1);
    let event_job: Uuid = sqlx::query_scalar("SELECT job_id FROM job_event")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(ids.into_iter().next(), Some(event_job.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_without_a_key_make_one_job_and_one_event_each() {
    let app = spawn_app().await;
    let clients = clients(&app, 5).await;
    let n = 50;

    let handles: Vec<_> = (0..n)
        .map(|i| {
            let mut client = clients[i % clients.len()].clone();
            tokio::spawn(async move {
                client
                    .create_job(proto::CreateJobRequest {
                        params: Some(object(json!({ "i": i }))),
                        ..req("bulk")
                    })
                    .await
                    .map(|r| r.into_inner())
            })
        })
        .collect();
    let results = futures::future::join_all(handles).await;

    let mut ids = BTreeSet::new();
    for result in results {
        let response = result.expect("task").expect("every create succeeds");
        assert!(response.created);
        ids.insert(response.job.unwrap().id);
    }
    assert_eq!(ids.len(), n);
    assert_eq!(app.count("job").await, n as i64);
    assert_eq!(app.count("job_event").await, n as i64);
    let per_job: Vec<i64> = sqlx::query_scalar(
        "SELECT count(e.job_id) FROM job j LEFT JOIN job_event e ON e.job_id = j.id
         GROUP BY j.id",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert!(
        per_job.iter().all(|c| *c == 1),
        "one event per job: {per_job:?}"
    );
    let distinct_params: i64 = sqlx::query_scalar("SELECT count(DISTINCT params->>'i') FROM job")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(distinct_params, n as i64);
}

// ---------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn type_is_required() {
    let app = spawn_app().await;
    assert_eq!(rejected(&app, req("")).await, ["type"]);
    assert_eq!(rejected(&app, req("   ")).await, ["type"]);
    assert_eq!(
        rejected(
            &app,
            proto::CreateJobRequest {
                params: Some(object(json!({"a": 1}))),
                priority: 3,
                ..Default::default()
            }
        )
        .await,
        ["type"]
    );
}

#[tokio::test]
async fn type_is_at_most_100_characters() {
    let app = spawn_app().await;
    assert_eq!(rejected(&app, req(&"t".repeat(101))).await, ["type"]);
    assert_eq!(rejected(&app, req(&"☃".repeat(101))).await, ["type"]);

    // 100 characters are fine, also when they take 300 bytes.
    for job_type in ["t".repeat(100), "☃".repeat(100)] {
        let job = create_ok(&app, req(&job_type)).await.job.unwrap();
        assert_eq!(job.r#type, job_type);
        assert_eq!(job_row(&app, &job.id).await.job_type, job_type);
    }
    let lengths: Vec<i32> = sqlx::query_scalar("SELECT char_length(type) FROM job")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert_eq!(lengths, [100, 100]);
}

#[tokio::test]
async fn org_id_must_be_a_uuid() {
    let app = spawn_app().await;
    for org in ["nope", "123", "00000000-0000-0000-0000-00000000000", " "] {
        let fields = rejected(
            &app,
            proto::CreateJobRequest {
                org_id: org.into(),
                ..req("x")
            },
        )
        .await;
        assert_eq!(fields, ["org_id"], "org_id {org:?}");
    }
}

#[tokio::test]
async fn max_attempts_must_be_1_to_1000() {
    let app = spawn_app().await;
    for max_attempts in [-1, 1001, i32::MIN, i32::MAX] {
        let fields = rejected(
            &app,
            proto::CreateJobRequest {
                max_attempts,
                ..req("x")
            },
        )
        .await;
        assert_eq!(fields, ["max_attempts"], "max_attempts {max_attempts}");
    }
    for max_attempts in [1, 1000] {
        let job = create_ok(
            &app,
            proto::CreateJobRequest {
                max_attempts,
                ..req("x")
            },
        )
        .await
        .job
        .unwrap();
        assert_eq!(job.max_attempts, max_attempts);
        assert_eq!(job_row(&app, &job.id).await.max_attempts, max_attempts);
    }
}

#[tokio::test]
async fn idempotency_key_and_requested_by_are_at_most_255_characters() {
    let app = spawn_app().await;
    assert_eq!(
        rejected(
            &app,
            proto::CreateJobRequest {
                idempotency_key: "k".repeat(256),
                ..req("x")
            }
        )
        .await,
        ["idempotency_key"]
    );
    assert_eq!(
        rejected(
            &app,
            proto::CreateJobRequest {
                requested_by: "r".repeat(256),
                ..req("x")
            }
        )
        .await,
        ["requested_by"]
    );
    assert_eq!(
        rejected(
            &app,
            proto::CreateJobRequest {
                requested_by: "é".repeat(256),
                ..req("x")
            }
        )
        .await,
        ["requested_by"]
    );

    let job = create_ok(
        &app,
        proto::CreateJobRequest {
            idempotency_key: "é".repeat(255),
            requested_by: "r".repeat(255),
            ..req("x")
        },
    )
    .await
    .job
    .unwrap();
    let row = job_row(&app, &job.id).await;
    assert_eq!(row.idempotency_key, Some("é".repeat(255)));
    assert_eq!(row.requested_by, Some("r".repeat(255)));
}

#[tokio::test]
async fn nul_characters_in_text_fields_are_rejected() {
    let app = spawn_app().await;
    assert_eq!(rejected(&app, req("a\0b")).await, ["type"]);
    assert_eq!(
        rejected(
            &app,
            proto::CreateJobRequest {
                idempotency_key: "k\0".into(),
                ..req("x")
            }
        )
        .await,
        ["idempotency_key"]
    );
    assert_eq!(
        rejected(
            &app,
            proto::CreateJobRequest {
                requested_by: "\0".into(),
                ..req("x")
            }
        )
        .await,
        ["requested_by"]
    );
}

#[tokio::test]
async fn nan_and_infinity_in_params_are_rejected_naming_the_path() {
    let app = spawn_app().await;
    let with = |path: &[&str], n: f64| {
        // {"ok": 1, path[0]: {path[1]: ... n}}
        let mut value = number(n);
        for key in path.iter().skip(1).rev() {
            value = prost_types::Value {
                kind: Some(Kind::StructValue(prost_types::Struct {
                    fields: [(key.to_string(), value)].into(),
                })),
            };
        }
        let mut params = object(json!({"ok": 1}));
        params.fields.insert(path[0].to_owned(), value);
        proto::CreateJobRequest {
            params: Some(params),
            ..req("x")
        }
    };

    assert_eq!(rejected(&app, with(&["x"], f64::NAN)).await, ["params.x"]);
    assert_eq!(
        rejected(&app, with(&["x"], f64::INFINITY)).await,
        ["params.x"]
    );
    assert_eq!(
        rejected(&app, with(&["a", "b"], f64::NEG_INFINITY)).await,
        ["params.a.b"]
    );

    // In a list: the field names the list.
    let mut params = object(json!({}));
    params.fields.insert(
        "l".into(),
        prost_types::Value {
            kind: Some(Kind::ListValue(prost_types::ListValue {
                values: vec![number(1.0), number(f64::NAN)],
            })),
        },
    );
    let fields = rejected(
        &app,
        proto::CreateJobRequest {
            params: Some(params),
            ..req("x")
        },
    )
    .await;
    assert_eq!(fields.len(), 1);
    assert!(fields[0].starts_with("params.l"), "{fields:?}");
}

#[tokio::test]
async fn nul_in_params_strings_is_rejected_naming_the_path() {
    let app = spawn_app().await;
    let with = |params: Value| proto::CreateJobRequest {
        params: Some(object(params)),
        ..req("x")
    };
    assert_eq!(
        rejected(&app, with(json!({"s": "a\u{0}b", "ok": "fine"}))).await,
        ["params.s"]
    );
    assert_eq!(
        rejected(&app, with(json!({"o": {"deep": "\u{0}"}}))).await,
        ["params.o.deep"]
    );
    let fields = rejected(&app, with(json!({"l": ["ok", "x\u{0}"]}))).await;
    assert_eq!(fields.len(), 1);
    assert!(fields[0].starts_with("params.l"), "{fields:?}");
    // NUL in a key (jsonb cannot store it either).
    let fields = rejected(&app, with(json!({"k\u{0}": 1}))).await;
    assert_eq!(fields.len(), 1);
    assert!(fields[0].starts_with("params"), "{fields:?}");
}

#[tokio::test]
async fn params_nested_deeper_than_32_levels_are_rejected() {
    let app = spawn_app().await;
    let with = |params: Value| proto::CreateJobRequest {
        params: Some(object(params)),
        ..req("x")
    };

    for levels in [33, 34] {
        let fields = rejected(&app, with(nested(levels))).await;
        assert_eq!(fields.len(), 1, "{levels} levels: {fields:?}");
        assert!(
            fields[0].starts_with("params"),
            "{levels} levels: {fields:?}"
        );
    }
    // Lists count as levels too.
    let mut list = json!([]);
    for _ in 0..40 {
        list = json!([list]);
    }
    let fields = rejected(&app, with(json!({ "l": list }))).await;
    assert!(fields.iter().all(|f| f.starts_with("params")), "{fields:?}");

    // 32 levels are fine.
    let job = create_ok(&app, with(nested(32))).await.job.unwrap();
    assert_eq!(to_json(job.params.as_ref().unwrap()), nested(32));
    let depth_ok: bool = sqlx::query_scalar("SELECT params = $1::jsonb FROM job")
        .bind(Json(nested(32)))
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(depth_ok);
}

#[tokio::test]
async fn very_deep_params_are_invalid_argument_naming_params() {
    // Deeper than the protobuf decoder's own recursion limit: still a client mistake
    // about `params`, not an internal error.
    let app = spawn_app().await;
    let status = create(
        &app,
        proto::CreateJobRequest {
            params: Some(object(nested(200))),
            ..req("x")
        },
    )
    .await
    .expect_err("rejected");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let fields = violated_fields(&status);
    assert!(fields.iter().any(|f| f.starts_with("params")), "{fields:?}");
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn params_are_at_most_64_kib_as_json() {
    let app = spawn_app().await;
    // `{"s":"…"}` is 8 bytes plus the string.
    let sized = |bytes: usize| json!({ "s": "x".repeat(bytes - 8) });
    assert_eq!(serde_json::to_vec(&sized(65_536)).unwrap().len(), 65_536);

    assert_eq!(
        rejected(
            &app,
            proto::CreateJobRequest {
                params: Some(object(sized(65_537))),
                ..req("x")
            }
        )
        .await,
        ["params"]
    );
    assert_eq!(
        rejected(
            &app,
            proto::CreateJobRequest {
                params: Some(object(sized(200_000))),
                ..req("x")
            }
        )
        .await,
        ["params"]
    );

    let job = create_ok(
        &app,
        proto::CreateJobRequest {
            params: Some(object(sized(65_000))),
            ..req("x")
        },
    )
    .await
    .job
    .unwrap();
    assert_eq!(to_json(job.params.as_ref().unwrap()), sized(65_000));
    let stored_len: i32 = sqlx::query_scalar("SELECT char_length(params->>'s') FROM job")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored_len, 65_000 - 8);
}

#[tokio::test]
async fn every_bad_field_is_listed_at_once() {
    let app = spawn_app().await;
    let mut params = object(json!({"fine": "yes", "s": "\u{0}"}));
    params.fields.insert("x".into(), number(f64::NAN));

    let fields = rejected(
        &app,
        proto::CreateJobRequest {
            org_id: "nope".into(),
            r#type: String::new(),
            priority: 1,
            idempotency_key: "k".repeat(256),
            requested_by: "r".repeat(256),
            max_attempts: -1,
            params: Some(params),
            ..Default::default()
        },
    )
    .await;

    let fields: BTreeSet<String> = fields.into_iter().collect();
    let expected: BTreeSet<String> = [
        "org_id",
        "type",
        "idempotency_key",
        "requested_by",
        "max_attempts",
        "params.x",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert!(
        fields.is_superset(&expected),
        "every bad field is named: {fields:?}"
    );
    assert!(
        fields
            .iter()
            .all(|f| expected.contains(f) || f == "params.s"),
        "only bad fields are named: {fields:?}"
    );
}

#[tokio::test]
async fn a_rejected_create_does_not_burn_its_idempotency_key() {
    let app = spawn_app().await;
    rejected(
        &app,
        proto::CreateJobRequest {
            idempotency_key: "k".into(),
            max_attempts: -1,
            ..req("x")
        },
    )
    .await;

    let response = create_ok(
        &app,
        proto::CreateJobRequest {
            idempotency_key: "k".into(),
            ..req("x")
        },
    )
    .await;
    assert!(response.created);
    assert_eq!(app.count("job").await, 1);
    assert_eq!(app.count("job_event").await, 1);
}

/// `n` creates at once over 8 connections; every third shares a key with two others.
async fn create_concurrently(app: &TestApp, n: usize) -> Vec<proto::CreateJobResponse> {
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(app.new_client().await);
    }
    let calls = (0..n).map(|i| {
        let mut client = clients[i % clients.len()].clone();
        async move {
            client
                .create_job(proto::CreateJobRequest {
                    r#type: "grouped".into(),
                    idempotency_key: format!("key-{}", i / 3),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner())
        }
    });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("every create succeeds"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_are_grouped_into_shared_commits_with_each_callers_outcome() {
    let app = spawn_app().await;
    let responses = create_concurrently(&app, 300).await;
    // One job per key; each key's three callers got the same job, exactly one created it.
    for key in 0..100 {
        let group = &responses[key * 3..key * 3 + 3];
        let id = &group[0].job.as_ref().unwrap().id;
        assert!(group.iter().all(|r| &r.job.as_ref().unwrap().id == id));
        assert_eq!(group.iter().filter(|r| r.created).count(), 1, "key-{key}");
    }
    assert_eq!(app.count("job").await, 100);
    assert_eq!(app.count("job_event").await, 100);
    // Each creation event was written in its job's transaction...
    let apart: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job j JOIN job_event e ON e.job_id = j.id
         WHERE e.xid::text <> j.xmin::text",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(apart, 0);
    // ...and concurrent calls shared transactions: fewer commits than jobs.
    let commits: i64 = sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM job")
        .fetch_one(&app.db)
        .await
        .unwrap();
    eprintln!("100 jobs in {commits} commits");
    assert!(commits < 100, "no two creates shared a commit ({commits})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_group_commit_every_create_is_its_own_transaction() {
    let app = spawn_app_with(|a| a.group_commit = None).await;
    let responses = create_concurrently(&app, 90).await;
    assert_eq!(responses.iter().filter(|r| r.created).count(), 30);
    let commits: i64 = sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM job")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(commits, 30);
}
