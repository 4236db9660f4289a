//! CreateJobs: one result per entry in order, each entry validated and made idempotent
//! exactly as a CreateJob of its own.

use jobledger::proto::{self, CreateJobRequest, CreateJobsRequest, CreateJobsResult};
use serde_json::json;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::helpers::{object, reason, spawn_app, violated_fields, TestApp};

fn entry(job_type: &str, key: &str, params: serde_json::Value) -> CreateJobRequest {
    CreateJobRequest {
        r#type: job_type.to_owned(),
        idempotency_key: key.to_owned(),
        params: Some(object(params)),
        ..Default::default()
    }
}

async fn create_jobs(app: &TestApp, jobs: Vec<CreateJobRequest>) -> Vec<CreateJobsResult> {
    app.client
        .clone()
        .create_jobs(CreateJobsRequest { jobs })
        .await
        .expect("create_jobs")
        .into_inner()
        .results
}

/// The job of a successful entry.
fn job(result: &CreateJobsResult) -> &proto::Job {
    assert!(result.error.is_none(), "{:?}", result.error);
    result.job.as_ref().expect("job")
}

/// The error of a failed entry, as the Status a CreateJob of its own would have returned.
fn entry_error(result: &CreateJobsResult) -> Status {
    assert!(result.job.is_none(), "{:?}", result.job);
    let error = result.error.as_ref().expect("error");
    Status::with_details(
        Code::from(error.code),
        error.message.clone(),
        prost::Message::encode_to_vec(error).into(),
    )
}

#[tokio::test]
async fn results_come_in_request_order() {
    let app = spawn_app().await;
    let jobs = (0..20)
        .map(|i| entry(&format!("type-{i}"), "", json!({ "i": i })))
        .collect();
    let results = create_jobs(&app, jobs).await;
    assert_eq!(results.len(), 20);
    for (i, r) in results.iter().enumerate() {
        let job = job(r);
        assert!(r.created);
        assert_eq!(job.r#type, format!("type-{i}"));
        assert_eq!(job.status, proto::JobStatus::Queued as i32);
        assert_eq!(job.max_attempts, 5);
        assert_eq!(app.get(&job.id).await.unwrap(), *job);
    }
    assert_eq!(app.count("job").await, 20);
}

#[tokio::test]
async fn a_bad_entry_fails_alone() {
    let app = spawn_app().await;
    let bad_attempts = CreateJobRequest {
        max_attempts: -1,
        ..entry("ok", "k-3", json!({}))
    };
    let results = create_jobs(
        &app,
        vec![
            entry("first", "k-0", json!({"a": 1})),
            entry("   ", "k-1", json!({})),
            entry("third", "", json!({})),
            bad_attempts,
            entry("fifth", "k-4", json!({})),
        ],
    )
    .await;
    assert_eq!(results.len(), 5);
    assert_eq!(job(&results[0]).r#type, "first");
    assert_eq!(job(&results[2]).r#type, "third");
    assert_eq!(job(&results[4]).r#type, "fifth");
    let e = entry_error(&results[1]);
    assert_eq!(violated_fields(&e), ["type"]);
    assert_eq!(reason(&e), "INVALID_ARGUMENT");
    let e = entry_error(&results[3]);
    assert_eq!(violated_fields(&e), ["max_attempts"]);
    assert_eq!(app.count("job").await, 3);
    // The refused keys are free.
    let retry = create_jobs(&app, vec![entry("second", "k-1", json!({}))]).await;
    assert!(retry[0].created);
}

#[tokio::test]
async fn a_key_repeated_inside_a_batch_names_one_job() {
    let app = spawn_app().await;
    let results = create_jobs(
        &app,
        vec![
            entry("t", "dup", json!({"n": 5})),
            entry("t", "other", json!({})),
            // The same input (jsonb equality: 5 == 5.0).
            entry("t", "dup", json!({"n": 5.0})),
            entry("t", "dup", json!({"n": 6})),
            entry("u", "dup", json!({"n": 5})),
        ],
    )
    .await;
    let first = job(&results[0]);
    assert!(results[0].created);
    assert!(results[1].created);
    assert_eq!(job(&results[2]).id, first.id);
    assert!(!results[2].created);
    for r in &results[3..] {
        let e = entry_error(r);
        assert_eq!(e.code(), Code::AlreadyExists);
        assert_eq!(reason(&e), "IDEMPOTENCY_KEY_REUSED");
        let info = e.get_details_error_info().unwrap();
        assert_eq!(info.metadata["job_id"], first.id);
    }
    assert_eq!(app.count("job").await, 2);
}

#[tokio::test]
async fn a_key_held_by_an_existing_job() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let existing = client
        .create_job(entry("t", "held", json!({"x": 1})))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let results = create_jobs(
        &app,
        vec![
            entry("t", "held", json!({"x": 1})),
            entry("t", "held", json!({"x": 2})),
            entry("t", "fresh", json!({})),
        ],
    )
    .await;
    assert!(!results[0].created);
    assert_eq!(*job(&results[0]), existing);
    let e = entry_error(&results[1]);
    assert_eq!(e.code(), Code::AlreadyExists);
    assert_eq!(
        e.get_details_error_info().unwrap().metadata["job_id"],
        existing.id
    );
    assert!(results[2].created);
    assert_eq!(app.count("job").await, 2);
}

#[tokio::test]
async fn a_thousand_jobs_pass_and_one_more_is_refused() {
    let app = spawn_app().await;
    let jobs = |n: usize, tag: &str| -> Vec<CreateJobRequest> {
        (0..n)
            .map(|i| entry("bulk", &format!("{tag}-{i}"), json!({ "i": i })))
            .collect()
    };
    let results = create_jobs(&app, jobs(1000, "a")).await;
    assert_eq!(results.len(), 1000);
    assert!(results.iter().all(|r| r.created && r.error.is_none()));
    let refused = app
        .client
        .clone()
        .create_jobs(CreateJobsRequest {
            jobs: jobs(1001, "b"),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&refused), ["jobs"]);
    assert_eq!(app.count("job").await, 1000);
    // No entries, no results.
    assert!(create_jobs(&app, Vec::new()).await.is_empty());
}

#[tokio::test]
async fn every_job_has_its_creation_event() {
    let app = spawn_app().await;
    let jobs = (0..50)
        .map(|i| CreateJobRequest {
            requested_by: if i % 2 == 0 {
                format!("api-{i}")
            } else {
                String::new()
            },
            ..entry("t", &format!("k{i}"), json!({}))
        })
        .collect();
    let results = create_jobs(&app, jobs).await;
    let rows: Vec<(
        uuid::Uuid,
        Option<String>,
        String,
        i32,
        serde_json::Value,
        bool,
    )> = sqlx::query_as(
        "SELECT e.job_id, e.prev_status, e.next_status, e.attempt, e.detail_json,
                    e.ts = j.created_at
             FROM job_event e JOIN job j ON j.id = e.job_id",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(rows.len(), 50);
    for (i, r) in results.iter().enumerate() {
        let id: uuid::Uuid = job(r).id.parse().unwrap();
        let (_, prev, next, attempt, detail, same_ts) =
            rows.iter().find(|row| row.0 == id).expect("creation event");
        assert_eq!(
            (prev.as_deref(), next.as_str(), *attempt),
            (None, "queued", 0)
        );
        assert!(same_ts);
        let expected = if i % 2 == 0 {
            json!({ "actor": format!("api-{i}") })
        } else {
            json!({})
        };
        assert_eq!(*detail, expected);
    }
}

#[tokio::test]
async fn concurrent_batches_with_overlapping_keys_make_one_job_per_key() {
    let app = spawn_app().await;
    let mut calls = Vec::new();
    for b in 0..8usize {
        let mut client = app.new_client().await;
        // Each batch holds keys 0..100 in its own order (rotated, half reversed).
        let mut keys: Vec<usize> = (0..100).collect();
        keys.rotate_left(b * 13);
        if b % 2 == 1 {
            keys.reverse();
        }
        let jobs: Vec<CreateJobRequest> = keys
            .iter()
            .map(|k| entry("race", &format!("key-{k}"), json!({ "k": k })))
            .collect();
        calls.push(tokio::spawn(async move {
            let results = client
                .create_jobs(CreateJobsRequest { jobs })
                .await
                .expect("create_jobs")
                .into_inner()
                .results;
            keys.into_iter().zip(results).collect::<Vec<_>>()
        }));
    }
    let mut ids = std::collections::HashMap::new();
    let mut created = 0;
    for call in calls {
        for (key, result) in call.await.unwrap() {
            let job = job(&result).clone();
            created += usize::from(result.created);
            assert_eq!(job.idempotency_key, format!("key-{key}"));
            let id = ids.entry(key).or_insert_with(|| job.id.clone());
            assert_eq!(*id, job.id, "key-{key}");
        }
    }
    assert_eq!(ids.len(), 100);
    assert_eq!(created, 100, "each key created exactly once");
    assert_eq!(app.count("job").await, 100);
    assert_eq!(app.count("job_event").await, 100);
}
