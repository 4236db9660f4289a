//! The HTTP/JSON API (spec §8, docs/http.md), every JSON route through a real HTTP client:
//! the proto3 JSON mapping both ways, org_id in the body or the query, query parameters,
//! the same interceptors as gRPC (metrics, trace context, deadlines, the in-flight cap).
//! Errors: http_errors.rs; streams: http_sse.rs; the old REST API: http_legacy.rs;
//! random bodies and the OpenAPI document: http_fuzz.rs.

use serde_json::{json, Value};

use crate::helpers::{
    http_call, spawn_app, spawn_app_with, ScratchDb, ServerProcess, TestApp, BIN,
};

const DEFAULT_ORG: &str = "00000000-0000-0000-0000-000000000000";

/// POST `path` with a JSON body; the answer's JSON, asserting 200.
async fn post_ok(app: &TestApp, path: &str, body: Value) -> Value {
    let reply = app.http("POST", path, &body.to_string()).await;
    assert_eq!(reply.status, 200, "POST {path}: {}", reply.json());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    reply.json()
}

async fn get_ok(app: &TestApp, path: &str) -> Value {
    let reply = app.http("GET", path, "").await;
    assert_eq!(reply.status, 200, "GET {path}: {}", reply.json());
    reply.json()
}

#[tokio::test]
async fn create_accepts_both_spellings_and_answers_in_lower_camel_case() {
    let app = spawn_app().await;
    let snake = post_ok(
        &app,
        "/v1/jobs",
        json!({"type": "report", "max_attempts": 3, "idempotency_key": "k-1",
               "params": {"month": "2026-05", "pages": 12, "ratio": 0.5}}),
    )
    .await;
    assert_eq!(snake["created"], true);
    let job = &snake["job"];
    assert_eq!(job["type"], "report");
    assert_eq!(job["orgId"], DEFAULT_ORG);
    assert_eq!(job["status"], "JOB_STATUS_QUEUED");
    assert_eq!(job["maxAttempts"], 3);
    assert_eq!(job["idempotencyKey"], "k-1");
    // Integral numbers stay integers, fractions fractions.
    assert_eq!(
        job["params"],
        json!({"month": "2026-05", "pages": 12, "ratio": 0.5})
    );
    // Scalars are always there; unset timestamps are not.
    assert_eq!(job["progress"], 0);
    assert_eq!(job["stage"], "");
    assert!(job["createdAt"].as_str().unwrap().ends_with('Z'), "{job}");
    assert!(job.get("startedAt").is_none(), "{job}");
    assert!(job.get("max_attempts").is_none(), "{job}");

    // The same key in lowerCamelCase: the same job, not created again.
    let camel = post_ok(
        &app,
        "/v1/jobs",
        json!({"type": "report", "maxAttempts": 3, "idempotencyKey": "k-1",
               "params": {"month": "2026-05", "pages": 12, "ratio": 0.5}}),
    )
    .await;
    assert_eq!(camel["created"], false);
    assert_eq!(camel["job"]["id"], job["id"]);
    assert_eq!(app.count("job").await, 1);
}

#[tokio::test]
async fn get_transition_list_and_count_over_http() {
    let app = spawn_app().await;
    let created = post_ok(&app, "/v1/jobs", json!({"type": "report"})).await;
    let id = created["job"]["id"].as_str().unwrap().to_owned();

    let got = get_ok(&app, &format!("/v1/jobs/{id}")).await;
    assert_eq!(got["job"]["id"], id.as_str());

    let started = post_ok(
        &app,
        &format!("/v1/jobs/{id}:transition"),
        json!({"toStatus": "JOB_STATUS_RUNNING", "expectedStatus": "JOB_STATUS_QUEUED",
               "actor": "worker-1"}),
    )
    .await;
    assert_eq!(started["job"]["status"], "JOB_STATUS_RUNNING");
    assert_eq!(started["job"]["attempt"], 1);
    assert_eq!(started["events"][0]["prevStatus"], "JOB_STATUS_QUEUED");
    assert_eq!(started["events"][0]["detail"]["actor"], "worker-1");
    let done = post_ok(
        &app,
        &format!("/v1/jobs/{id}:transition"),
        json!({"to_status": 3, "attempt": 1, "stage": "render", "result": {"pages": 12}}),
    )
    .await;
    assert_eq!(done["job"]["status"], "JOB_STATUS_SUCCEEDED");
    assert_eq!(done["job"]["result"], json!({"pages": 12}));
    assert_eq!(done["job"]["stage"], "render");

    let other = post_ok(&app, "/v1/jobs", json!({"type": "mail"})).await;
    // `statuses` repeated, by full name, short name or number; either spelling.
    let listed = get_ok(
        &app,
        "/v1/jobs?statuses=succeeded&statuses=JOB_STATUS_QUEUED&page_size=1",
    )
    .await;
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(listed["jobs"][0]["id"], other["job"]["id"]);
    let token = listed["nextPageToken"].as_str().unwrap();
    let rest = get_ok(
        &app,
        &format!("/v1/jobs?statuses=3&statuses=1&pageSize=1&pageToken={token}"),
    )
    .await;
    assert_eq!(rest["jobs"][0]["id"], id.as_str());
    let only_mail = get_ok(&app, "/v1/jobs?type=mail").await;
    assert_eq!(only_mail["jobs"].as_array().unwrap().len(), 1);

    let counts = get_ok(&app, "/v1/jobs:count").await;
    // int64 is a string in the mapping.
    assert_eq!(counts["total"], "2");
    let by_status: Vec<(&str, &str)> = counts["byStatus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["status"].as_str().unwrap(), c["count"].as_str().unwrap()))
        .collect();
    assert!(
        by_status.contains(&("JOB_STATUS_SUCCEEDED", "1")),
        "{counts}"
    );
    assert!(by_status.contains(&("JOB_STATUS_QUEUED", "1")), "{counts}");
    let reports = get_ok(&app, "/v1/jobs:count?type=report").await;
    assert_eq!(reports["total"], "1");
}

#[tokio::test]
async fn batch_create_answers_each_entry_with_a_job_or_a_status() {
    let app = spawn_app().await;
    let answer = post_ok(
        &app,
        "/v1/jobs:batchCreate",
        json!({"jobs": [{"type": "a"}, {"type": ""}, {"type": "b", "maxAttempts": 2}]}),
    )
    .await;
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["created"], true);
    assert_eq!(results[0]["job"]["type"], "a");
    assert_eq!(results[2]["job"]["maxAttempts"], 2);
    let error = &results[1]["error"];
    assert_eq!(error["code"], 3, "{error}");
    let mut types: Vec<&str> = error["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["@type"].as_str().unwrap())
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            "type.googleapis.com/google.rpc.BadRequest",
            "type.googleapis.com/google.rpc.ErrorInfo"
        ],
        "{error}"
    );
    assert_eq!(app.count("job").await, 2);
}

#[tokio::test]
async fn org_id_goes_in_the_body_or_the_query() {
    let app = spawn_app().await;
    let org = "7b0c8a36-5c43-4a55-9d27-2a3f1d6b9e01";
    let in_body = post_ok(&app, "/v1/jobs", json!({"type": "a", "orgId": org})).await;
    assert_eq!(in_body["job"]["orgId"], org);
    let in_query = post_ok(
        &app,
        &format!("/v1/jobs?org_id={org}"),
        json!({"type": "b"}),
    )
    .await;
    assert_eq!(in_query["job"]["orgId"], org);
    let id = in_query["job"]["id"].as_str().unwrap();
    // Reads are scoped to the org named in the query.
    let got = get_ok(&app, &format!("/v1/jobs/{id}?orgId={org}")).await;
    assert_eq!(got["job"]["id"], id);
    let elsewhere = app.http("GET", &format!("/v1/jobs/{id}"), "").await;
    assert_eq!(elsewhere.status, 404, "{}", elsewhere.json());
    let listed = get_ok(&app, &format!("/v1/jobs?org_id={org}")).await;
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 2);
    // Both places, the same value: fine; different values: refused by name.
    post_ok(
        &app,
        &format!("/v1/jobs?org_id={org}"),
        json!({"type": "c", "org_id": org}),
    )
    .await;
    let clash = app
        .http(
            "POST",
            &format!("/v1/jobs?org_id={org}"),
            &json!({"type": "c", "org_id": DEFAULT_ORG}).to_string(),
        )
        .await;
    assert_eq!(clash.status, 400);
    assert_eq!(clash.violated_fields(), ["org_id"]);
    // The path's job id and the body's must agree too.
    let other_id = "11111111-1111-1111-1111-111111111111";
    let clash = app
        .http(
            "POST",
            &format!("/v1/jobs/{id}:transition?org_id={org}"),
            &json!({"jobId": other_id, "toStatus": "JOB_STATUS_CANCELED"}).to_string(),
        )
        .await;
    assert_eq!(clash.status, 400);
    assert_eq!(clash.violated_fields(), ["job_id"]);
}

#[tokio::test]
async fn a_callers_traceparent_is_the_parent_of_the_http_call() {
    // Traces are per process (the subscriber is global): the binary, as tracing.rs does.
    let db = ScratchDb::new();
    let port = jobledger::testkit::cluster::free_port().unwrap();
    let server = ServerProcess::command(BIN, &db.url())
        .arg("--http-addr", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "info")
        .start()
        .await
        .expect("jobledger serve");
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let addr = ([127, 0, 0, 1], port).into();
    let reply = http_call(
        addr,
        "POST",
        "/v1/jobs",
        &[("traceparent", &traceparent)],
        br#"{"type": "traced"}"#.to_vec(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.json());
    // The call's span is a child of the caller's trace, as over gRPC; errors too.
    assert_eq!(reply.header("x-trace-id"), Some(trace_id));
    let refused = http_call(
        addr,
        "POST",
        "/v1/jobs",
        &[("traceparent", &traceparent)],
        br#"{"type": ""}"#.to_vec(),
    )
    .await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.header("x-trace-id"), Some(trace_id));
    drop(server);
}

#[tokio::test]
async fn http_calls_are_counted_and_the_rpcs_they_make_too() {
    let app = spawn_app().await;
    let reply = app.http("POST", "/v1/jobs", r#"{"type": "counted"}"#).await;
    assert_eq!(reply.status, 200);
    app.http("GET", "/v1/nope", "").await;

    let metrics_addr = app.metrics_addr().unwrap();
    let page = reqwest_free_get(&format!("http://{metrics_addr}/metrics")).await;
    assert!(
        page.contains(
            r#"jobledger_http_requests_total{method="POST",route="/v1/jobs",status="200"} 1"#
        ),
        "{page}"
    );
    assert!(
        page.contains(
            r#"jobledger_http_requests_total{method="other",route="other",status="404"} 1"#
        ),
        "{page}"
    );
    // The RPC itself is counted as every call of it is.
    assert!(
        page.contains(
            r#"jobledger_rpc_requests_total{method="jobledger.v1.JobLedger/CreateJob",code="OK"} 1"#
        ),
        "{page}"
    );
}

/// A GET of a plain HTTP URL (the metrics endpoint), its body.
async fn reqwest_free_get(url: &str) -> String {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let response = client.get(url.parse().unwrap()).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn the_in_flight_cap_is_shared_with_grpc() {
    let app = spawn_app_with(|c| c.connections.max_inflight_requests = Some(1)).await;
    let job = app.create("locked").await;
    // A transition waiting on a row lock holds the only slot.
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("SELECT id FROM job WHERE id = $1::uuid FOR UPDATE")
        .bind(&job.id)
        .execute(&mut *lock)
        .await
        .unwrap();
    let waiting = {
        let client = app.new_client().await;
        let id = job.id.clone();
        tokio::spawn(async move {
            client
                .clone()
                .transition_job(jobledger::proto::TransitionJobRequest {
                    job_id: id,
                    to_status: jobledger::proto::JobStatus::Running as i32,
                    ..Default::default()
                })
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let refused = app.http("POST", "/v1/jobs", r#"{"type": "x"}"#).await;
    assert_eq!(refused.status, 429, "{}", refused.json());
    assert_eq!(refused.reason(), "TOO_MANY_REQUESTS");
    assert_eq!(refused.header("retry-after"), Some("1"));
    lock.rollback().await.unwrap();
    waiting.await.unwrap().unwrap();
    assert_eq!(
        app.http("POST", "/v1/jobs", r#"{"type": "x"}"#)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_deadline_by_query_or_header_ends_the_call_with_504() {
    let app = spawn_app().await;
    let job = app.create("locked").await;
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("SELECT id FROM job WHERE id = $1::uuid FOR UPDATE")
        .bind(&job.id)
        .execute(&mut *lock)
        .await
        .unwrap();
    let body = r#"{"toStatus": "JOB_STATUS_RUNNING"}"#;
    let started = std::time::Instant::now();
    let late = app
        .http(
            "POST",
            &format!("/v1/jobs/{}:transition?timeout=200ms", job.id),
            body,
        )
        .await;
    assert_eq!(late.status, 504, "{}", late.json());
    assert_eq!(late.reason(), "DEADLINE_EXCEEDED");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    let late = app
        .http_with(
            "POST",
            &format!("/v1/jobs/{}:transition", job.id),
            &[("grpc-timeout", "200m")],
            body.as_bytes().to_vec(),
        )
        .await;
    assert_eq!(late.status, 504, "{}", late.json());
    lock.rollback().await.unwrap();
    // Nothing was written for the callers that gave up.
    assert_eq!(app.get(&job.id).await.unwrap().attempt, 0);
    // A malformed deadline is refused by name.
    let bad = app.http("GET", "/v1/jobs?timeout=soon", "").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.violated_fields(), ["timeout"]);
    let bad = app
        .http_with("GET", "/v1/jobs", &[("grpc-timeout", "1x")], Vec::new())
        .await;
    assert_eq!(bad.violated_fields(), ["grpc-timeout"]);
}

#[tokio::test]
async fn the_api_speaks_http2_too() {
    use http_body_util::BodyExt;
    let app = spawn_app().await;
    // HTTP/2 with prior knowledge (h2c), as `curl --http2-prior-knowledge` does.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let request = http::Request::post(format!("http://{}/v1/jobs", app.http_addr))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"type": "h2"}"#,
        )))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["job"]["type"], "h2");
}

#[tokio::test]
async fn a_worker_claims_heartbeats_and_reports_over_http_and_steers_its_queue() {
    let app = spawn_app().await;
    // A claim waiting for work gets the job created while it waits.
    let waiting = {
        let addr = app.http_addr;
        let body = json!({"types": ["render"], "workerId": "w1", "maxJobs": 5,
                          "wait": "10s", "lease": "30s"});
        tokio::spawn(async move {
            let reply =
                http_call(addr, "POST", "/v1/jobs:claim", &[], body.to_string().into()).await;
            assert_eq!(reply.status, 200, "{}", reply.json());
            reply.json()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let created = post_ok(&app, "/v1/jobs", json!({"type": "render"})).await;
    let id = created["job"]["id"].as_str().unwrap().to_owned();
    let claimed = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("the waiting claim answered")
        .unwrap();
    let jobs = claimed["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{claimed}");
    assert_eq!(jobs[0]["job"]["id"], id.as_str());
    assert_eq!(jobs[0]["job"]["status"], "JOB_STATUS_RUNNING");
    assert_eq!(jobs[0]["job"]["leaseHolder"], "w1");
    assert_eq!(jobs[0]["event"]["nextStatus"], "JOB_STATUS_RUNNING");

    let beat = post_ok(
        &app,
        &format!("/v1/jobs/{id}:heartbeat"),
        json!({"attempt": 1, "lease": "60s"}),
    )
    .await;
    assert!(beat["leaseExpiresAt"].as_str().is_some(), "{beat}");
    // Another attempt's heartbeat: 409 ABORTED STALE_ATTEMPT.
    let stale = app
        .http(
            "POST",
            &format!("/v1/jobs/{id}:heartbeat"),
            &json!({"attempt": 2}).to_string(),
        )
        .await;
    assert_eq!(stale.status, 409, "{}", stale.json());
    assert_eq!(stale.json()["details"][0]["reason"], "STALE_ATTEMPT");

    let reported = post_ok(
        &app,
        "/v1/jobs:batchTransition",
        json!({"transitions": [
            {"jobId": id, "toStatus": "JOB_STATUS_SUCCEEDED", "attempt": 1},
            {"jobId": id, "toStatus": "JOB_STATUS_RUNNING"},
        ]}),
    )
    .await;
    let results = reported["results"].as_array().unwrap();
    assert_eq!(
        results[0]["response"]["job"]["status"],
        "JOB_STATUS_SUCCEEDED"
    );
    assert_eq!(results[1]["error"]["code"], 9, "{reported}");

    // Pause the queue: a job created now is not handed out; the listing says so.
    post_ok(&app, "/v1/jobs", json!({"type": "render"})).await;
    let paused = post_ok(&app, "/v1/queues/render", json!({"paused": true})).await;
    assert_eq!(paused["queue"]["paused"], true, "{paused}");
    let nothing = post_ok(
        &app,
        "/v1/jobs:claim",
        json!({"types": ["render"], "workerId": "w1"}),
    )
    .await;
    assert_eq!(nothing["jobs"].as_array().map(Vec::len).unwrap_or(0), 0);
    let queues = get_ok(&app, "/v1/queues?type=render").await;
    assert_eq!(queues["queues"][0]["paused"], true, "{queues}");
    assert_eq!(queues["queues"][0]["ready"], "1", "{queues}");
}
