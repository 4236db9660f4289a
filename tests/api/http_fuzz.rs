//! The HTTP API's JSON decoding under random input (proptest): random JSON bodies, built
//! from the contract's field names and every kind of JSON value, and random bytes, sent
//! to every POST route, never get a 5xx — only the RPC's answer or a google.rpc.Status
//! of the client's mistake; random query strings to every GET route neither. And the
//! OpenAPI document it serves is valid OpenAPI 3
//! (openapi-spec-validator, scripts/validate-openapi.sh).

use std::process::Command;

use proptest::{prelude::*, test_runner::TestRunner};
use serde_json::{Map, Value};

use crate::helpers::spawn_app;

/// Field names of the requests (both spellings) and a few that are no field.
const KEYS: &[&str] = &[
    "type",
    "params",
    "org_id",
    "orgId",
    "jobs",
    "priority",
    "idempotencyKey",
    "idempotency_key",
    "max_attempts",
    "maxAttempts",
    "requestedBy",
    "job_id",
    "jobId",
    "toStatus",
    "to_status",
    "expectedStatus",
    "attempt",
    "stage",
    "progress",
    "result",
    "detail",
    "errorCode",
    "error_message",
    "actor",
    "requestId",
    "@type",
    "",
    "nope",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        Just(serde_json::json!(1e300)),
        Just(serde_json::json!(-0.0)),
        Just(Value::from("JOB_STATUS_RUNNING")),
        Just(Value::from("NaN")),
        Just(Value::from("00000000-0000-0000-0000-000000000000")),
        "\\PC{0,40}".prop_map(Value::from),
        "[a-z_]{0,300}".prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8).prop_map(|entries| {
                let map: Map<String, Value> = entries
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect();
                Value::Object(map)
            }),
        ]
    })
}

/// A body: a random JSON object (mostly), any JSON value, or random bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => prop::collection::vec((prop::sample::select(KEYS), json_value()), 0..8).prop_map(
            |entries| {
                let map: Map<String, Value> =
                    entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                serde_json::to_vec(&Value::Object(map)).unwrap()
            }
        ),
        2 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => prop::collection::vec(any::<u8>(), 0..200),
        1 => json_value().prop_flat_map(|v| {
            // Truncated JSON.
            let text = serde_json::to_vec(&v).unwrap();
            let len = text.len();
            (Just(text), 0..=len).prop_map(|(t, cut)| t[..cut].to_vec())
        }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bodies_to_every_post_route_never_get_a_5xx() {
    let app = spawn_app().await;
    let job = app.create("fuzz").await;
    let paths = [
        "/v1/jobs".to_owned(),
        "/v1/jobs:batchCreate".to_owned(),
        format!("/v1/jobs/{}:transition", job.id),
        "/jobs".to_owned(),
    ];
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let handle = tokio::runtime::Handle::current();
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::new());
    let result = runner.run(
        &(prop::sample::select(paths.to_vec()), body()),
        |(path, body)| {
            let reply = tokio::task::block_in_place(|| {
                handle.block_on(app.http_with("POST", &path, &[], body.clone()))
            });
            *seen.lock().unwrap().entry(reply.status).or_insert(0) += 1;
            prop_assert!(
                reply.status < 500,
                "POST {path} {:?} -> {} {}",
                String::from_utf8_lossy(&body),
                reply.status,
                String::from_utf8_lossy(&reply.body)
            );
            let answer: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
            if reply.status != 200 {
                prop_assert!(
                    answer["code"].is_i64() && answer["details"].is_array(),
                    "{answer}"
                );
            }
            Ok(())
        },
    );
    result.unwrap();
    // Some got through and some were refused: the bodies reached both paths.
    let seen = seen.into_inner().unwrap();
    assert!(
        seen.contains_key(&200) && seen.contains_key(&400),
        "{seen:?}"
    );
}

/// A query string of parameters named after request fields (and not), with random
/// values, percent-encoded.
fn query() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        "\\PC{0,20}",
        Just("queued".to_owned()),
        Just("JOB_STATUS_FAILED".to_owned()),
        Just("-1".to_owned()),
        Just("99999999999".to_owned()),
        Just("2026-05-01T00:00:00Z".to_owned()),
        Just("".to_owned()),
    ];
    let key = prop::sample::select(vec![
        "statuses",
        "type",
        "page_size",
        "pageSize",
        "page_token",
        "created_after",
        "createdBefore",
        "idempotency_key",
        "org_id",
        "after_cursor",
        "history_only",
        "timeout",
        "job_id",
        "nope",
    ]);
    prop::collection::vec((key, value), 0..6).prop_map(|pairs| {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            query.append_pair(k, &v);
        }
        query.finish()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_query_strings_to_every_get_route_never_get_a_5xx() {
    let app = spawn_app().await;
    let job = app.create("fuzz").await;
    // Streams: history only, so each answer ends (a job's stream ends at its final
    // status; the org's would follow live for ever).
    app.transition(&job.id, jobledger::proto::JobStatus::Canceled)
        .await
        .unwrap();
    let paths = [
        "/v1/jobs".to_owned(),
        "/v1/jobs:count".to_owned(),
        format!("/v1/jobs/{}", job.id),
        format!("/v1/jobs/{}/events", job.id),
        format!("/jobs/{}", job.id),
    ];
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let handle = tokio::runtime::Handle::current();
    let result = runner.run(
        &(prop::sample::select(paths.to_vec()), query()),
        |(path, query)| {
            let target = format!("{path}?{query}");
            let reply = tokio::task::block_in_place(|| {
                handle.block_on(app.http_with("GET", &target, &[], Vec::new()))
            });
            prop_assert!(
                reply.status < 500,
                "GET {target} -> {} {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            );
            Ok(())
        },
    );
    result.unwrap();
}

fn validate(file: &std::path::Path) -> std::process::Output {
    Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/validate-openapi.sh"
        ))
        .arg(file)
        .output()
        .expect("run scripts/validate-openapi.sh")
}

#[tokio::test]
async fn the_openapi_document_is_valid_openapi_3() {
    let app = spawn_app().await;
    let reply = app.http("GET", "/openapi.json", "").await;
    assert_eq!(reply.status, 200);
    let document = reply.json();
    assert_eq!(document["openapi"], "3.0.3");
    for (path, verb) in [
        ("/v1/jobs", "post"),
        ("/v1/jobs:batchCreate", "post"),
        ("/v1/jobs/{job_id}", "get"),
        ("/v1/jobs/{job_id}:transition", "post"),
        ("/v1/jobs", "get"),
        ("/v1/jobs:count", "get"),
        ("/v1/jobs/{job_id}/events", "get"),
        ("/v1/events", "get"),
        ("/jobs", "post"),
        ("/jobs/{job_id}", "get"),
    ] {
        assert!(document["paths"][path][verb].is_object(), "{verb} {path}");
    }
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let file = dir.join(format!("openapi-{}.json", std::process::id()));
    std::fs::write(&file, &reply.body).unwrap();
    let output = validate(&file);
    let shown = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{shown}");
    assert!(shown.contains(": OK"), "{shown}");

    // The validator does reject a broken document (a response without a description).
    let mut broken = document.clone();
    broken["paths"]["/v1/jobs"]["post"]["responses"]["200"]
        .as_object_mut()
        .unwrap()
        .remove("description");
    let file = dir.join(format!("openapi-broken-{}.json", std::process::id()));
    std::fs::write(&file, serde_json::to_vec(&broken).unwrap()).unwrap();
    let output = validate(&file);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}
