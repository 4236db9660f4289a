//! StreamEvents as Server-Sent Events: `id:` is the event's cursor, `Last-Event-ID`
//! resumes exactly after it (no event twice, none missed), an `end` event carries the
//! final status, idle streams get heartbeat comments, a stream that cannot start answers
//! with its error status before any event, and shutdown ends streams with UNAVAILABLE.

use std::time::Duration;

use jobledger::proto::{self, JobStatus as S};
use serde_json::Value;

use crate::helpers::{read_sse, spawn_app, spawn_app_with, SseEvent, TestApp};

const LIMIT: Duration = Duration::from_secs(10);

fn ended(events: &[SseEvent]) -> bool {
    events.iter().any(|e| e.event.as_deref() == Some("end"))
}

/// The events of a stream up to its `end` (which is checked and dropped), comments left out.
fn messages(events: &[SseEvent]) -> Vec<&SseEvent> {
    events
        .iter()
        .filter(|e| e.comment.is_none() && e.event.is_none())
        .collect()
}

fn end_status(events: &[SseEvent]) -> Value {
    events
        .iter()
        .find(|e| e.event.as_deref() == Some("end"))
        .unwrap_or_else(|| panic!("no end event in {events:?}"))
        .json()
}

/// Opens an event stream, asserting it started (200, text/event-stream).
async fn open(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> hyper::body::Incoming {
    let response = app.http_send("GET", path, headers, Vec::new()).await;
    assert_eq!(response.status(), 200, "GET {path}");
    assert_eq!(
        response.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    response.into_body()
}

/// A job taken through start, `progress` reports, and success: 3 + progress events.
async fn run_job(app: &TestApp, id: &str, progress: usize) {
    let step = |to: S, attempt: Option<i32>, p: Option<i32>| proto::TransitionJobRequest {
        job_id: id.to_owned(),
        to_status: to as i32,
        attempt,
        progress: p,
        ..Default::default()
    };
    app.transition_with(step(S::Running, None, None))
        .await
        .unwrap();
    for p in 0..progress {
        app.transition_with(step(S::Running, Some(1), Some(p as i32 * 10)))
            .await
            .unwrap();
    }
    app.transition_with(step(S::Succeeded, Some(1), None))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_job_stream_follows_live_and_ends_with_ok() {
    let app = spawn_app().await;
    let job = app.create("report").await;
    let mut body = open(&app, &format!("/v1/jobs/{}/events", job.id), &[]).await;
    let first = read_sse(&mut body, LIMIT, |e| !messages(e).is_empty()).await;
    assert_eq!(
        messages(&first)[0].json()["nextStatus"],
        "JOB_STATUS_QUEUED"
    );
    run_job(&app, &job.id, 2).await;
    let rest = read_sse(&mut body, LIMIT, ended).await;
    let all: Vec<&SseEvent> = messages(&first)
        .into_iter()
        .chain(messages(&rest))
        .collect();
    let statuses: Vec<&str> = all
        .iter()
        .map(|e| e.json()["nextStatus"].as_str().unwrap().to_owned())
        .map(|s| match s.as_str() {
            "JOB_STATUS_QUEUED" => "Q",
            "JOB_STATUS_RUNNING" => "R",
            "JOB_STATUS_SUCCEEDED" => "S",
            _ => "?",
        })
        .collect();
    assert_eq!(statuses, ["Q", "R", "R", "R", "S"]);
    for event in &all {
        // The id is the event's cursor, its data the JobEvent in lowerCamelCase.
        assert_eq!(event.id.as_deref(), event.json()["cursor"].as_str());
        assert_eq!(event.json()["jobId"], job.id.as_str());
    }
    assert_eq!(end_status(&rest)["code"], 0);
    // After `end` the server closes the stream.
    assert!(read_sse(&mut body, Duration::from_secs(2), |_| false)
        .await
        .is_empty());
}

#[tokio::test]
async fn last_event_id_resumes_exactly_after_each_event() {
    let app = spawn_app().await;
    let job = app.create("report").await;
    run_job(&app, &job.id, 4).await;
    let path = format!("/v1/jobs/{}/events", job.id);
    let mut body = open(&app, &path, &[]).await;
    let history = read_sse(&mut body, LIMIT, ended).await;
    let ids: Vec<String> = messages(&history)
        .iter()
        .map(|e| e.id.clone().unwrap())
        .collect();
    assert_eq!(ids.len(), 7);
    for (k, id) in ids.iter().enumerate() {
        // The original URL's after_cursor is what an EventSource sends again on
        // reconnecting: Last-Event-ID wins over it.
        let mut body = open(
            &app,
            &format!("{path}?after_cursor={}", ids[0]),
            &[("Last-Event-ID", id)],
        )
        .await;
        let resumed = read_sse(&mut body, LIMIT, ended).await;
        let got: Vec<String> = messages(&resumed)
            .iter()
            .map(|e| e.id.clone().unwrap())
            .collect();
        assert_eq!(got, ids[k + 1..], "resuming after event {k}");
        assert_eq!(end_status(&resumed)["code"], 0);
    }
}

#[tokio::test]
async fn a_reconnect_mid_stream_misses_nothing_and_repeats_nothing() {
    let app = spawn_app().await;
    let job = app.create("report").await;
    let path = format!("/v1/jobs/{}/events", job.id);
    let step = |to: S, attempt: Option<i32>, p: Option<i32>| proto::TransitionJobRequest {
        job_id: job.id.clone(),
        to_status: to as i32,
        attempt,
        progress: p,
        ..Default::default()
    };
    app.transition_with(step(S::Running, None, None))
        .await
        .unwrap();
    let mut body = open(&app, &path, &[]).await;
    let before = read_sse(&mut body, LIMIT, |e| messages(e).len() == 2).await;
    let last = messages(&before)[1].id.clone().unwrap();
    drop(body);
    // Written while the client is away.
    for p in [10, 20, 30] {
        app.transition_with(step(S::Running, Some(1), Some(p)))
            .await
            .unwrap();
    }
    let mut body = open(&app, &path, &[("last-event-id", &last)]).await;
    let caught_up = read_sse(&mut body, LIMIT, |e| messages(e).len() == 3).await;
    app.transition_with(step(S::Succeeded, Some(1), None))
        .await
        .unwrap();
    let after = read_sse(&mut body, LIMIT, ended).await;
    let progress: Vec<Value> = messages(&caught_up)
        .iter()
        .chain(messages(&after).iter())
        .map(|e| e.json()["detail"]["progress"].clone())
        .collect();
    assert_eq!(progress, [10.into(), 20.into(), 30.into(), Value::Null]);
    assert_eq!(
        messages(&after)[0].json()["nextStatus"],
        "JOB_STATUS_SUCCEEDED"
    );
}

#[tokio::test]
async fn the_org_stream_delivers_new_events_and_resumes_by_last_event_id() {
    let app = spawn_app().await;
    let mut body = open(&app, "/v1/events", &[]).await;
    // From now: a job created after the stream opened.
    let a = app.create("a").await;
    let got = read_sse(&mut body, LIMIT, |e| !messages(e).is_empty()).await;
    let first = messages(&got)[0];
    assert_eq!(first.json()["jobId"], a.id.as_str());
    drop(body);
    let b = app.create("b").await;
    let c = app.create("c").await;
    let mut body = open(
        &app,
        "/v1/events",
        &[("Last-Event-ID", first.id.as_deref().unwrap())],
    )
    .await;
    let resumed = read_sse(&mut body, LIMIT, |e| messages(e).len() >= 2).await;
    let jobs: Vec<String> = messages(&resumed)
        .iter()
        .map(|e| e.json()["jobId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(jobs, [b.id, c.id]);
}

#[tokio::test]
async fn idle_streams_get_heartbeat_comments() {
    let app = spawn_app_with(|c| c.http.sse_heartbeat = Duration::from_millis(200)).await;
    let mut body = open(&app, "/v1/events", &[]).await;
    let started = std::time::Instant::now();
    let got = read_sse(&mut body, LIMIT, |e| e.len() >= 3).await;
    assert!(
        got.iter()
            .all(|e| e.comment.as_deref() == Some("heartbeat")),
        "{got:?}"
    );
    assert_eq!(got.len(), 3);
    assert!(started.elapsed() >= Duration::from_millis(500));
}

#[tokio::test]
async fn a_stream_that_cannot_start_answers_with_its_status() {
    let app = spawn_app_with(|c| c.feed.max_streams = 1).await;
    let missing = app
        .http(
            "GET",
            "/v1/jobs/6a1d2c3b-0000-4000-8000-000000000000/events",
            "",
        )
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("content-type"), Some("application/json"));
    assert_eq!(missing.reason(), "JOB_NOT_FOUND");
    let bad = app.http("GET", "/v1/jobs/nope/events", "").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.violated_fields(), ["job_id"]);
    let bad = app
        .http_with(
            "GET",
            "/v1/events",
            &[("last-event-id", "not-a-cursor")],
            Vec::new(),
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.json());
    // The only stream slot taken: the next is 429.
    let _open = open(&app, "/v1/events", &[]).await;
    let full = app.http("GET", "/v1/events", "").await;
    assert_eq!(full.status, 429, "{}", full.json());
    assert_eq!(full.reason(), "TOO_MANY_STREAMS");
}

#[tokio::test]
async fn shutdown_ends_open_streams_with_unavailable() {
    let mut app = spawn_app().await;
    let job = app.create("report").await;
    let mut job_stream = open(&app, &format!("/v1/jobs/{}/events", job.id), &[]).await;
    let mut org_stream = open(&app, "/v1/events", &[]).await;
    read_sse(&mut job_stream, LIMIT, |e| !messages(e).is_empty()).await;
    let stopping = tokio::time::timeout(Duration::from_secs(10), app.stop());
    let (stopped, job_end, org_end) = tokio::join!(
        stopping,
        read_sse(&mut job_stream, LIMIT, ended),
        read_sse(&mut org_stream, LIMIT, ended),
    );
    stopped
        .expect("the server stops within its drain time")
        .unwrap();
    for events in [job_end, org_end] {
        let status = end_status(&events);
        assert_eq!(status["code"], 14, "{status}");
    }
}
