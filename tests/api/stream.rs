//! StreamEvents: replay, live, ending, resuming, org scope, errors, limits, shutdown.

use std::time::Duration;

use jobledger::proto::{self, JobStatus as S};
use tokio_stream::StreamExt;
use tonic::{Code, Streaming};

use crate::helpers::{reason, spawn_app, spawn_app_with, violated_fields, TestApp};

const ORG_A: &str = "0a0a0a0a-0000-4000-8000-000000000001";
const ORG_B: &str = "0b0b0b0b-0000-4000-8000-000000000002";

async fn open(app: &TestApp, req: proto::StreamEventsRequest) -> Streaming<proto::JobEvent> {
    app.client
        .clone()
        .stream_events(req)
        .await
        .expect("stream opens")
        .into_inner()
}

fn job_stream(job_id: &str, after: &str) -> proto::StreamEventsRequest {
    proto::StreamEventsRequest {
        job_id: job_id.to_owned(),
        after_cursor: after.to_owned(),
        ..Default::default()
    }
}

/// The next event within 5 s.
async fn next(stream: &mut Streaming<proto::JobEvent>) -> proto::JobEvent {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an event within 5 s")
        .expect("stream still open")
        .expect("no error")
}

/// Reads until the stream ends; panics if it errors or stays open past 5 s.
async fn until_end(stream: &mut Streaming<proto::JobEvent>) -> Vec<proto::JobEvent> {
    let mut events = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("stream should end within 5 s")
        {
            None => return events,
            Some(Ok(e)) => events.push(e),
            Some(Err(status)) => panic!("stream failed: {status:?}"),
        }
    }
}

fn statuses(events: &[proto::JobEvent]) -> Vec<(i32, i32)> {
    events
        .iter()
        .map(|e| (e.prev_status, e.next_status))
        .collect()
}

async fn create_in(app: &TestApp, org: &str, job_type: &str) -> proto::Job {
    app.client
        .clone()
        .create_job(proto::CreateJobRequest {
            org_id: org.to_owned(),
            r#type: job_type.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
}

async fn move_in(app: &TestApp, org: &str, job_id: &str, to: S) -> proto::TransitionJobResponse {
    app.transition_with(proto::TransitionJobRequest {
        org_id: org.to_owned(),
        job_id: job_id.to_owned(),
        to_status: to as i32,
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn job_stream_replays_then_follows_live_and_ends_after_success() {
    let app = spawn_app().await;
    let job = app.create("stream").await;
    let started = app.transition(&job.id, S::Running).await.unwrap();
    let mut stream = open(&app, job_stream(&job.id, "")).await;

    let created = next(&mut stream).await;
    assert_eq!(
        (created.prev_status, created.next_status),
        (0, S::Queued as i32)
    );
    assert_eq!(created.job_id, job.id);
    let start = next(&mut stream).await;
    assert_eq!(start.id, started.events[0].id);
    assert_eq!(
        start.cursor, started.events[0].cursor,
        "the same cursor as the write returned"
    );

    // Live: nothing more until we write.
    let quiet = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(quiet.is_err(), "unexpected item {quiet:?}");
    let progress = app
        .transition_with(proto::TransitionJobRequest {
            job_id: job.id.clone(),
            to_status: S::Running as i32,
            stage: "parse".into(),
            progress: Some(50),
            ..Default::default()
        })
        .await
        .unwrap();
    let live = next(&mut stream).await;
    assert_eq!(live.id, progress.events[0].id);
    assert_eq!(
        crate::helpers::to_json(live.detail.as_ref().unwrap())["stage"],
        "parse"
    );
    let done = app.transition(&job.id, S::Succeeded).await.unwrap();
    let rest = until_end(&mut stream).await;
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].id, done.events[0].id);
    assert_eq!(rest[0].next_status, S::Succeeded as i32);
}

#[tokio::test]
async fn a_job_that_is_already_final_is_replayed_and_the_stream_ends() {
    let app = spawn_app().await;
    for end in [S::Succeeded, S::Canceled] {
        let job = app.create("final").await;
        app.transition(&job.id, S::Running).await.unwrap();
        app.transition(&job.id, end).await.unwrap();
        let mut stream = open(&app, job_stream(&job.id, "")).await;
        let events = until_end(&mut stream).await;
        assert_eq!(
            statuses(&events),
            [(0, 1), (1, 2), (2, end as i32)],
            "{end:?}"
        );
        // Resuming after the final event: nothing to send, and the stream ends.
        let mut resumed = open(&app, job_stream(&job.id, &events[2].cursor)).await;
        assert!(until_end(&mut resumed).await.is_empty());
    }
}

#[tokio::test]
async fn the_stream_ends_at_dead_letter_but_not_at_an_earlier_redriven_one() {
    let app = spawn_app().await;
    let job = app
        .client
        .clone()
        .create_job(proto::CreateJobRequest {
            r#type: "dl".into(),
            max_attempts: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    app.transition(&job.id, S::Running).await.unwrap();
    app.transition(&job.id, S::Failed).await.unwrap(); // → DEAD_LETTER
    app.transition(&job.id, S::Queued).await.unwrap(); // redrive
    let mut stream = open(&app, job_stream(&job.id, "")).await;
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(next(&mut stream).await);
    }
    assert_eq!(seen[3].next_status, S::DeadLetter as i32);
    assert_eq!(seen[4].next_status, S::Queued as i32);
    // Still open (the job is QUEUED again) until it dead-letters again.
    let quiet = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(quiet.is_err(), "stream ended early: {quiet:?}");
    app.transition(&job.id, S::Running).await.unwrap();
    app.transition(&job.id, S::Failed).await.unwrap();
    let rest = until_end(&mut stream).await;
    assert_eq!(
        statuses(&rest),
        [
            (S::Queued as i32, S::Running as i32),
            (S::Running as i32, S::Failed as i32),
            (S::Failed as i32, S::DeadLetter as i32)
        ]
    );
}

#[tokio::test]
async fn history_only_sends_the_stored_events_and_ends() {
    let app = spawn_app().await;
    let job = app.create("history").await;
    app.transition(&job.id, S::Running).await.unwrap();
    let mut stream = open(
        &app,
        proto::StreamEventsRequest {
            job_id: job.id.clone(),
            history_only: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(statuses(&until_end(&mut stream).await), [(0, 1), (1, 2)]);
}

#[tokio::test]
async fn resuming_from_every_cursor_delivers_exactly_the_later_events() {
    let app = spawn_app().await;
    let job = app.create("resume").await;
    app.transition(&job.id, S::Running).await.unwrap();
    for p in [10, 20, 30] {
        app.transition_with(proto::TransitionJobRequest {
            job_id: job.id.clone(),
            to_status: S::Running as i32,
            progress: Some(p),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    app.transition(&job.id, S::Failed).await.unwrap();
    app.transition(&job.id, S::Running).await.unwrap();
    app.transition(&job.id, S::Succeeded).await.unwrap();
    let all = until_end(&mut open(&app, job_stream(&job.id, "")).await).await;
    assert_eq!(all.len(), 8);
    let ids: Vec<_> = all.iter().map(|e| e.id.clone()).collect();
    let db_ids: Vec<String> =
        sqlx::query_scalar("SELECT id::text FROM job_event WHERE job_id = $1::uuid ORDER BY seq")
            .bind(&job.id)
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(ids, db_ids, "the stream is the job's events in order");
    for (i, event) in all.iter().enumerate() {
        let rest = until_end(&mut open(&app, job_stream(&job.id, &event.cursor)).await).await;
        let rest_ids: Vec<_> = rest.iter().map(|e| e.id.clone()).collect();
        assert_eq!(rest_ids, ids[i + 1..], "after event {i}");
    }
}

#[tokio::test]
async fn org_stream_delivers_live_events_of_its_org_only() {
    let app = spawn_app().await;
    let before = create_in(&app, ORG_A, "before").await;
    let mut stream = open(
        &app,
        proto::StreamEventsRequest {
            org_id: ORG_A.into(),
            ..Default::default()
        },
    )
    .await;
    // From now: the earlier job's creation is not replayed.
    let other = create_in(&app, ORG_B, "other-org").await;
    move_in(&app, ORG_B, &other.id, S::Running).await;
    let a1 = create_in(&app, ORG_A, "a1").await;
    move_in(&app, ORG_A, &before.id, S::Running).await;
    move_in(&app, ORG_A, &a1.id, S::Canceled).await;

    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next(&mut stream).await);
    }
    assert!(got.iter().all(|e| e.org_id == ORG_A), "{got:?}");
    assert_eq!(
        got.iter()
            .map(|e| (e.job_id.clone(), e.next_status))
            .collect::<Vec<_>>(),
        [
            (a1.id.clone(), S::Queued as i32),
            (before.id.clone(), S::Running as i32),
            (a1.id.clone(), S::Canceled as i32)
        ]
    );
    // An org stream does not end when a job does.
    let quiet = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(quiet.is_err(), "{quiet:?}");

    // Resuming an org stream from a cursor replays what came after it.
    let mut resumed = open(
        &app,
        proto::StreamEventsRequest {
            org_id: ORG_A.into(),
            after_cursor: got[0].cursor.clone(),
            history_only: true,
            ..Default::default()
        },
    )
    .await;
    let rest = until_end(&mut resumed).await;
    assert_eq!(
        rest.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        [got[1].id.clone(), got[2].id.clone()]
    );
}

#[tokio::test]
async fn bad_requests_are_refused_with_the_right_codes() {
    let app = spawn_app().await;
    let job = create_in(&app, ORG_A, "x").await;
    let mut client = app.client.clone();
    let refuse = |req: proto::StreamEventsRequest| {
        let mut client = client.clone();
        async move { client.stream_events(req).await.unwrap_err() }
    };
    for bad in ["nope", "c1.zz.1", "c1.1", "v1.3"] {
        let status = refuse(job_stream(&job.id, bad)).await;
        assert_eq!(violated_fields(&status), ["after_cursor"], "{bad}");
    }
    let status = refuse(job_stream("not-a-uuid", "")).await;
    assert_eq!(violated_fields(&status), ["job_id"]);

    // A cursor from the future (another database, or forged): OUT_OF_RANGE.
    let ahead = format!("c1.{:x}.1", i64::MAX / 2);
    let status = refuse(proto::StreamEventsRequest {
        org_id: ORG_A.into(),
        after_cursor: ahead,
        ..Default::default()
    })
    .await;
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(reason(&status), "CURSOR_OUT_OF_RANGE");

    // Unknown job, and another org's job: NOT_FOUND alike.
    let missing = refuse(proto::StreamEventsRequest {
        org_id: ORG_A.into(),
        job_id: uuid::Uuid::new_v4().to_string(),
        ..Default::default()
    })
    .await;
    assert_eq!(missing.code(), Code::NotFound);
    let foreign = refuse(proto::StreamEventsRequest {
        org_id: ORG_B.into(),
        job_id: job.id.clone(),
        ..Default::default()
    })
    .await;
    assert_eq!(foreign.code(), Code::NotFound);
    assert_eq!(reason(&foreign), "JOB_NOT_FOUND");
    let _ = client.get_job(proto::GetJobRequest::default()).await;
}

#[tokio::test]
async fn streams_over_the_cap_are_resource_exhausted_and_slots_come_back() {
    let app = spawn_app_with(|a| a.feed.max_streams = 2).await;
    let org = |o: &str| proto::StreamEventsRequest {
        org_id: o.into(),
        ..Default::default()
    };
    let first = open(&app, org(ORG_A)).await;
    let _second = open(&app, org(ORG_B)).await;
    let third = app
        .client
        .clone()
        .stream_events(org(ORG_A))
        .await
        .unwrap_err();
    assert_eq!(third.code(), Code::ResourceExhausted, "{third:?}");
    assert_eq!(reason(&third), "TOO_MANY_STREAMS");
    // A client that goes away frees its slot.
    drop(first);
    let mut reopened = None;
    for _ in 0..50 {
        if let Ok(s) = app.client.clone().stream_events(org(ORG_A)).await {
            reopened = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reopened.is_some(),
        "the slot of a closed stream was not released"
    );
}

#[tokio::test]
async fn shutdown_ends_open_streams_with_unavailable_promptly() {
    let mut app = spawn_app().await;
    let job = app.create("open").await;
    let mut job_stream_ = open(&app, job_stream(&job.id, "")).await;
    next(&mut job_stream_).await;
    let mut org_stream = open(&app, proto::StreamEventsRequest::default()).await;
    let started = std::time::Instant::now();
    app.stop().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "shutdown waited for the drain timeout: {:?}",
        started.elapsed()
    );
    for stream in [&mut job_stream_, &mut org_stream] {
        let end = tokio::time::timeout(Duration::from_secs(2), stream.next())
            .await
            .expect("the stream ends");
        let status = end
            .expect("an error item")
            .expect_err("UNAVAILABLE, not an event");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(reason(&status), "SHUTTING_DOWN");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_failure_mid_stream_ends_it_with_unavailable_never_as_complete() {
    let cluster = jobledger::testkit::cluster::PrivateCluster::start();
    let app = crate::helpers::spawn_app_on(&cluster.base_url(), "jobledger", |a| {
        a.db_acquire_timeout = std::time::Duration::from_millis(500);
    })
    .await;
    let job = create_in(&app, ORG_A, "backlog").await;
    sqlx::query(
        "INSERT INTO job_event (job_id, org_id, prev_status, next_status, attempt)
         SELECT $1::uuid, $2::uuid, 'queued', 'queued', 0 FROM generate_series(1, 130)",
    )
    .bind(&job.id)
    .bind(ORG_A)
    .execute(&app.db)
    .await
    .unwrap();
    let mut stream = open(
        &app,
        proto::StreamEventsRequest {
            org_id: ORG_A.into(),
            ..job_stream(&job.id, "")
        },
    )
    .await;
    // Let the stream read ahead, then take the database away under it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.db.close().await;
    cluster.stop("immediate");
    let mut events = 0;
    let end = loop {
        tokio::time::sleep(Duration::from_millis(2)).await;
        match tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the stream must not hang")
        {
            Some(Ok(_)) => events += 1,
            Some(Err(status)) => break Some(status),
            None => break None,
        }
    };
    let status = end.unwrap_or_else(|| {
        panic!("the stream ended as if complete after {events} events, not with an error")
    });
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(events >= 100, "the buffered events come first ({events})");
}
