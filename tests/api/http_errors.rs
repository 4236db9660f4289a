//! Every error of the HTTP API: each gRPC code a call can end with, as the HTTP status of
//! spec §8's mapping and a google.rpc.Status body (`code`, `message`, `details` with
//! `@type`); and the HTTP API's own refusals (not JSON, too large, unknown field, wrong
//! method, unknown path), none of them a 5xx.

use serde_json::{json, Value};

use crate::helpers::{http_send, spawn_app, spawn_app_with, HttpReply, TestApp};

/// Asserts a google.rpc.Status answer: the HTTP status, the gRPC code, the ErrorInfo
/// reason, and a JSON content type.
fn assert_status(reply: &HttpReply, http: u16, code: i64, reason: &str) -> Value {
    let body = reply.json();
    assert_eq!(reply.status, http, "{body}");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(body["details"].is_array(), "{body}");
    for detail in body["details"].as_array().unwrap() {
        let kind = detail["@type"].as_str().unwrap_or_default();
        assert!(
            kind.starts_with("type.googleapis.com/google.rpc."),
            "{body}"
        );
    }
    assert_eq!(reply.reason(), reason, "{body}");
    body
}

fn detail<'a>(body: &'a Value, kind: &str) -> &'a Value {
    body["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["@type"] == format!("type.googleapis.com/google.rpc.{kind}"))
        .unwrap_or_else(|| panic!("no {kind} in {body}"))
}

async fn create(app: &TestApp, body: Value) -> String {
    let reply = app.http("POST", "/v1/jobs", &body.to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.json());
    reply.json()["job"]["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn ledger_errors_map_to_their_http_statuses() {
    let app = spawn_app().await;
    // INVALID_ARGUMENT → 400 with a BadRequest naming the field.
    let reply = app.http("POST", "/v1/jobs", r#"{"type": ""}"#).await;
    assert_status(&reply, 400, 3, "INVALID_ARGUMENT");
    assert_eq!(reply.violated_fields(), ["type"]);
    // NOT_FOUND → 404.
    let missing = "3f0e4d6c-0000-4000-8000-000000000000";
    let reply = app.http("GET", &format!("/v1/jobs/{missing}"), "").await;
    let body = assert_status(&reply, 404, 5, "JOB_NOT_FOUND");
    assert_eq!(detail(&body, "ErrorInfo")["metadata"]["job_id"], missing);
    // FAILED_PRECONDITION → 400 with a PreconditionFailure of the allowed statuses.
    let id = create(&app, json!({"type": "t"})).await;
    let transition = format!("/v1/jobs/{id}:transition");
    let reply = app
        .http(
            "POST",
            &transition,
            r#"{"toStatus": "JOB_STATUS_SUCCEEDED"}"#,
        )
        .await;
    let body = assert_status(&reply, 400, 9, "INVALID_TRANSITION");
    let allowed: Vec<&str> = detail(&body, "PreconditionFailure")["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["subject"].as_str().unwrap())
        .collect();
    assert_eq!(allowed, ["RUNNING", "CANCELED"]);
    // ABORTED → 409.
    let reply = app
        .http(
            "POST",
            &transition,
            r#"{"toStatus": "JOB_STATUS_RUNNING", "expectedStatus": "JOB_STATUS_FAILED"}"#,
        )
        .await;
    assert_status(&reply, 409, 10, "STATUS_MISMATCH");
    // ALREADY_EXISTS → 409, naming the existing job.
    let first = create(
        &app,
        json!({"type": "t", "idempotencyKey": "k", "params": {"a": 1}}),
    )
    .await;
    let reply = app
        .http(
            "POST",
            "/v1/jobs",
            &json!({"type": "t", "idempotencyKey": "k", "params": {"a": 2}}).to_string(),
        )
        .await;
    let body = assert_status(&reply, 409, 6, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(
        detail(&body, "ErrorInfo")["metadata"]["job_id"],
        first.as_str()
    );
    // OUT_OF_RANGE → 400: a stream that cannot start answers before any event.
    let reply = app
        .http(
            "GET",
            &format!("/v1/jobs/{id}/events?after_cursor=c1.ffffffffff.1"),
            "",
        )
        .await;
    assert_status(&reply, 400, 11, "CURSOR_OUT_OF_RANGE");
}

#[tokio::test]
async fn an_unreachable_database_is_503_with_retry_after() {
    // One pool connection, held by a transition waiting on a row lock: the next call
    // waits 200 ms for a connection, then UNAVAILABLE.
    let app = spawn_app_with(|c| {
        c.pool_size = 1;
        c.group_commit = None;
        c.db_acquire_timeout = std::time::Duration::from_millis(200);
    })
    .await;
    let job = app.create("locked").await;
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("SELECT id FROM job WHERE id = $1::uuid FOR UPDATE")
        .bind(&job.id)
        .execute(&mut *lock)
        .await
        .unwrap();
    let (addr, path) = (app.http_addr, format!("/v1/jobs/{}:transition", job.id));
    let waiting = tokio::spawn(async move {
        let body = br#"{"toStatus": "JOB_STATUS_RUNNING"}"#.to_vec();
        http_send(addr, "POST", &path, &[], body).await.status()
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let reply = app.http("GET", &format!("/v1/jobs/{}", job.id), "").await;
    let body = assert_status(&reply, 503, 14, "DATABASE_UNAVAILABLE");
    assert!(
        detail(&body, "RetryInfo")["retryDelay"].is_string(),
        "{body}"
    );
    assert_eq!(reply.header("retry-after"), Some("1"));
    lock.rollback().await.unwrap();
    assert_eq!(waiting.await.unwrap(), 200);
}

#[tokio::test]
async fn bodies_that_are_not_json_or_not_the_message_are_400_naming_the_field() {
    let app = spawn_app().await;
    for garbage in [
        &b"{\"type\": "[..],
        b"not json",
        b"\xff\xfe\x00",
        b"{} trailing",
    ] {
        let reply = app
            .http_with("POST", "/v1/jobs", &[], garbage.to_vec())
            .await;
        assert_status(&reply, 400, 3, "MALFORMED_JSON");
    }
    let cases = [
        ("/v1/jobs", json!({"tipe": "x"}), "tipe"),
        ("/v1/jobs", json!({"type": 5}), "type"),
        (
            "/v1/jobs",
            json!({"type": "x", "priority": "high"}),
            "priority",
        ),
        ("/v1/jobs", json!({"type": "x", "params": [1, 2]}), "params"),
        (
            "/v1/jobs",
            json!({"type": "x", "maxAttempts": 1e12}),
            "maxAttempts",
        ),
        ("/v1/jobs", json!([]), ""),
        (
            "/v1/jobs:batchCreate",
            json!({"jobs": [{"type": "a"}, {"type": "b", "nope": 1}]}),
            "jobs[1].nope",
        ),
        (
            "/v1/jobs:batchCreate",
            json!({"jobs": [{"type": "a", "priority": []}]}),
            "jobs[0].priority",
        ),
    ];
    for (path, body, field) in cases {
        let reply = app.http("POST", path, &body.to_string()).await;
        assert_status(&reply, 400, 3, "INVALID_ARGUMENT");
        assert_eq!(reply.violated_fields(), [field], "{body}");
    }
    let id = create(&app, json!({"type": "t"})).await;
    let reply = app
        .http(
            "POST",
            &format!("/v1/jobs/{id}:transition"),
            r#"{"toStatus": "JOB_STATUS_FLYING"}"#,
        )
        .await;
    assert_status(&reply, 400, 3, "INVALID_ARGUMENT");
    assert_eq!(reply.violated_fields(), ["toStatus"]);
    // Too deep for JSON, and too deep for a Struct: the outer field is named.
    let deep = format!(
        r#"{{"type": "x", "params": {}1{}}}"#,
        r#"{"a":"#.repeat(200),
        "}".repeat(200)
    );
    let reply = app.http("POST", "/v1/jobs", &deep).await;
    assert_status(&reply, 400, 3, "INVALID_ARGUMENT");
    assert_eq!(reply.violated_fields(), ["params"]);
    let deep = format!(
        r#"{{"type": "x", "params": {}1{}}}"#,
        r#"{"a":"#.repeat(60),
        "}".repeat(60)
    );
    let reply = app.http("POST", "/v1/jobs", &deep).await;
    assert_status(&reply, 400, 3, "INVALID_ARGUMENT");
    assert_eq!(reply.violated_fields(), ["params"]);
    // Query parameters are fields too.
    let reply = app.http("GET", "/v1/jobs?statuses=flying", "").await;
    assert_status(&reply, 400, 3, "INVALID_ARGUMENT");
    assert_eq!(reply.violated_fields(), ["statuses[0]"]);
    let reply = app.http("GET", "/v1/jobs?colour=red", "").await;
    assert_eq!(reply.violated_fields(), ["colour"]);
    let reply = app.http("GET", "/v1/jobs?page_size=many", "").await;
    assert_eq!(reply.violated_fields(), ["page_size"]);
    assert_eq!(app.count("job").await, 1);
}

#[tokio::test]
async fn a_body_over_the_request_limit_is_413() {
    let app = spawn_app_with(|c| c.max_request_bytes = 4096).await;
    let params = "x".repeat(5000);
    let big = json!({"type": "x", "params": {"blob": params}}).to_string();
    for path in ["/v1/jobs", "/v1/jobs:batchCreate", "/jobs"] {
        let reply = app.http("POST", path, &big).await;
        let body = assert_status(&reply, 413, 8, "REQUEST_TOO_LARGE");
        assert_eq!(detail(&body, "ErrorInfo")["metadata"]["limit"], "4096");
    }
    // Under the limit it is served.
    let small = json!({"type": "x", "params": {"blob": "x".repeat(1000)}}).to_string();
    assert_eq!(app.http("POST", "/v1/jobs", &small).await.status, 200);
    assert_eq!(app.count("job").await, 1);
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
    let app = spawn_app().await;
    for path in ["/", "/v1", "/v1/job", "/v1/jobs/a/b/c", "/v2/jobs"] {
        let reply = app.http("GET", path, "").await;
        assert_status(&reply, 404, 5, "ROUTE_NOT_FOUND");
    }
    let cases = [
        ("PUT", "/v1/jobs", "POST, GET"),
        ("DELETE", "/v1/jobs/x", "GET"),
        ("GET", "/v1/jobs:batchCreate", "POST"),
        ("GET", "/v1/jobs/x:transition", "POST"),
        ("POST", "/v1/jobs:count", "GET"),
        ("POST", "/v1/events", "GET"),
        ("GET", "/jobs", "POST"),
        ("PATCH", "/jobs/x", "GET"),
    ];
    for (method, path, allowed) in cases {
        let reply = app.http(method, path, "").await;
        assert_status(&reply, 405, 12, "METHOD_NOT_ALLOWED");
        assert_eq!(reply.header("allow"), Some(allowed), "{method} {path}");
    }
}

#[tokio::test]
async fn authentication_is_the_grpc_ports_401_403_and_the_tokens_org() {
    use jobledger::server::config::AuthConfig;
    const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!";
    let app = spawn_app_with(|c| c.auth = Some(AuthConfig::hs256(SECRET))).await;
    let org = "2d3c4b5a-6f7e-4d8c-9b0a-1f2e3d4c5b6a";
    let token = |org: &str| {
        let claims = json!({"org_id": org, "exp": chrono::Utc::now().timestamp() + 3600});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let body = br#"{"type": "x"}"#.to_vec();
    for path in ["/v1/jobs", "/jobs"] {
        let reply = app.http_with("POST", path, &[], body.clone()).await;
        assert_status(&reply, 401, 16, "MISSING_CREDENTIALS");
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        let reply = app
            .http_with(
                "POST",
                path,
                &[("authorization", "Bearer nope")],
                body.clone(),
            )
            .await;
        assert_status(&reply, 401, 16, "INVALID_TOKEN");
    }
    let bearer = format!("Bearer {}", token(org));
    let auth = [("authorization", bearer.as_str())];
    // The token's org is the caller's: named elsewhere, 403.
    let other = "00000000-0000-0000-0000-0000000000aa";
    let reply = app
        .http_with(
            "POST",
            &format!("/v1/jobs?org_id={other}"),
            &auth,
            body.clone(),
        )
        .await;
    assert_status(&reply, 403, 7, "ORG_MISMATCH");
    let reply = app.http_with("POST", "/v1/jobs", &auth, body.clone()).await;
    assert_eq!(reply.status, 200, "{}", reply.json());
    let job = reply.json()["job"].clone();
    assert_eq!(job["orgId"], org);
    let id = job["id"].as_str().unwrap();
    let reply = app
        .http_with("GET", &format!("/jobs/{id}"), &auth, Vec::new())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json());
    // Streams too.
    let reply = app
        .http_with("GET", &format!("/v1/jobs/{id}/events"), &[], Vec::new())
        .await;
    assert_status(&reply, 401, 16, "MISSING_CREDENTIALS");
    // The OpenAPI document is open, as health and reflection are over gRPC.
    assert_eq!(app.http("GET", "/openapi.json", "").await.status, 200);
}
