//! Tenant isolation over every RPC, with two (or three) orgs at once: another org's job
//! is indistinguishable from a missing one whatever the request would have done to it,
//! nothing is written on its behalf, an org stream never carries another org's events,
//! and idempotency keys (CreateJob and CreateJobs) are per org.
//!
//! get.rs, transition.rs and stream.rs check the basic cases (a plain GetJob or
//! TransitionJob from another org, a foreign job stream's code); this suite covers every
//! state and every kind of request, and concurrent activity of several orgs.

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use jobledger::proto::{self, JobStatus as S};
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::{Code, Status, Streaming};
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::helpers::{object, spawn_app, TestApp};

const NIL_ORG: &str = "00000000-0000-0000-0000-000000000000";

fn org() -> String {
    Uuid::new_v4().to_string()
}

async fn create(app: &TestApp, request: proto::CreateJobRequest) -> proto::CreateJobResponse {
    app.client
        .clone()
        .create_job(request)
        .await
        .expect("create_job")
        .into_inner()
}

fn new_in(org: &str, key: &str, params: serde_json::Value) -> proto::CreateJobRequest {
    proto::CreateJobRequest {
        org_id: org.to_owned(),
        r#type: "tenancy".into(),
        idempotency_key: key.to_owned(),
        params: Some(object(params)),
        ..Default::default()
    }
}

fn to(org: &str, id: &str, status: S) -> proto::TransitionJobRequest {
    proto::TransitionJobRequest {
        org_id: org.to_owned(),
        job_id: id.to_owned(),
        to_status: status as i32,
        ..Default::default()
    }
}

async fn go(app: &TestApp, request: proto::TransitionJobRequest) -> proto::TransitionJobResponse {
    let what = format!("{request:?}");
    app.transition_with(request)
        .await
        .unwrap_or_else(|s| panic!("{what} refused: {s:?}"))
}

async fn get_in(app: &TestApp, org: &str, id: &str) -> Result<proto::Job, Status> {
    app.client
        .clone()
        .get_job(proto::GetJobRequest {
            org_id: org.to_owned(),
            job_id: id.to_owned(),
        })
        .await
        .map(|r| r.into_inner().job.expect("job"))
}

/// Every row the ledger keeps, to show that a call wrote nothing.
async fn everything(app: &TestApp) -> (serde_json::Value, serde_json::Value, serde_json::Value) {
    sqlx::query_as(
        "SELECT (SELECT coalesce(jsonb_agg(to_jsonb(j) ORDER BY j.id), '[]') FROM job j),
                (SELECT coalesce(jsonb_agg(to_jsonb(e) ORDER BY e.id), '[]') FROM job_event e),
                (SELECT coalesce(jsonb_agg(to_jsonb(r) ORDER BY r.job_id, r.request_id), '[]')
                 FROM job_transition_request r)",
    )
    .fetch_one(&app.db)
    .await
    .unwrap()
}

async fn assert_invariants_hold(app: &TestApp) {
    let report = jobledger::tools::check::check(&app.db).await.unwrap();
    assert!(report.ok, "{}", report.to_text());
}

/// What a client can see of an error, with `id` (the job it asked for) replaced by `<id>`.
#[derive(Debug, PartialEq)]
struct Visible {
    code: Code,
    message: String,
    reason: String,
    domain: String,
    metadata: Vec<(String, String)>,
    other_details: String,
}

fn visible(status: &Status, id: &str) -> Visible {
    let details = status.get_error_details();
    let info = details.error_info().expect("every error has an ErrorInfo");
    let mut metadata: Vec<(String, String)> = info
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.replace(id, "<id>")))
        .collect();
    metadata.sort();
    Visible {
        code: status.code(),
        message: status.message().replace(id, "<id>"),
        reason: info.reason.clone(),
        domain: info.domain.clone(),
        metadata,
        other_details: format!(
            "{:?} {:?} {:?} {:?}",
            details.bad_request(),
            details.precondition_failure(),
            details.retry_info(),
            details.resource_info()
        ),
    }
}

/// `foreign` (a call naming `job_id`, another org's job) failed exactly as `missing` (the
/// same call naming `missing_id`, a job that does not exist) did, and leaks nothing of
/// the owner.
fn assert_like_missing(
    foreign: &Status,
    job_id: &str,
    missing: &Status,
    missing_id: &str,
    owner_org: &str,
    what: &str,
) {
    assert_eq!(foreign.code(), Code::NotFound, "{what}: {foreign:?}");
    assert_eq!(
        visible(foreign, job_id),
        visible(missing, missing_id),
        "{what}: another org's job must look like a missing one"
    );
    assert!(
        foreign.message().contains(job_id),
        "{what}: names the id asked for"
    );
    let leak = format!("{foreign:?}");
    assert!(!leak.contains(owner_org), "{what}: leaks the owner: {leak}");
}

/// A job of `org` in `status`, whose first transition carried request_id `rid-a`.
async fn job_in_state(app: &TestApp, org: &str, status: S) -> proto::Job {
    let max_attempts = if status == S::DeadLetter { 1 } else { 5 };
    let job = create(
        app,
        proto::CreateJobRequest {
            max_attempts,
            ..new_in(org, "", json!({"secret": "org-a-data"}))
        },
    )
    .await
    .job
    .unwrap();
    let path: &[S] = match status {
        S::Queued => &[S::Running, S::Queued],
        S::Running => &[S::Running],
        S::Succeeded => &[S::Running, S::Succeeded],
        S::Failed | S::DeadLetter => &[S::Running, S::Failed],
        S::Canceled => &[S::Canceled],
        S::Unspecified => unreachable!(),
    };
    let mut last = None;
    for (i, step) in path.iter().enumerate() {
        let request = proto::TransitionJobRequest {
            request_id: if i == 0 {
                "rid-a".into()
            } else {
                String::new()
            },
            ..to(org, &job.id, *step)
        };
        last = go(app, request).await.job;
    }
    let job = last.unwrap();
    assert_eq!(job.status, status as i32);
    job
}

/// Every kind of TransitionJob a caller might send for `job`: each target status, with
/// a matching and a wrong `expected_status`, a current and a stale `attempt`, the
/// request_id the owner applied (same and other target), reports with fields.
fn transition_battery(org: &str, job: &proto::Job) -> Vec<proto::TransitionJobRequest> {
    let id = &job.id;
    let mut battery: Vec<_> = [
        S::Queued,
        S::Running,
        S::Succeeded,
        S::Failed,
        S::Canceled,
        S::DeadLetter,
    ]
    .into_iter()
    .map(|s| to(org, id, s))
    .collect();
    battery.extend([
        proto::TransitionJobRequest {
            expected_status: Some(job.status),
            ..to(org, id, S::Canceled)
        },
        proto::TransitionJobRequest {
            expected_status: Some(if job.status == S::Queued as i32 {
                S::Running as i32
            } else {
                S::Queued as i32
            }),
            ..to(org, id, S::Canceled)
        },
        proto::TransitionJobRequest {
            attempt: Some(job.attempt),
            ..to(org, id, S::Running)
        },
        proto::TransitionJobRequest {
            attempt: Some(job.attempt + 41),
            ..to(org, id, S::Running)
        },
        proto::TransitionJobRequest {
            request_id: "rid-a".into(),
            ..to(org, id, S::Running)
        },
        proto::TransitionJobRequest {
            request_id: "rid-a".into(),
            ..to(org, id, S::Canceled)
        },
        proto::TransitionJobRequest {
            stage: "parse".into(),
            progress: Some(50),
            actor: "intruder".into(),
            detail: Some(object(json!({"note": "from another org"}))),
            request_id: "rid-b".into(),
            ..to(org, id, S::Running)
        },
        proto::TransitionJobRequest {
            result: Some(object(json!({"rows": 1}))),
            ..to(org, id, S::Succeeded)
        },
        proto::TransitionJobRequest {
            error_code: "E".into(),
            error_message: "boom".into(),
            ..to(org, id, S::Failed)
        },
    ]);
    battery
}

#[tokio::test]
async fn another_orgs_job_looks_missing_to_get_and_every_transition_in_every_state() {
    let app = spawn_app().await;
    let org_a = org();
    let org_b = org();
    let mut jobs = Vec::new();
    for status in [
        S::Queued,
        S::Running,
        S::Succeeded,
        S::Failed,
        S::Canceled,
        S::DeadLetter,
    ] {
        jobs.push(job_in_state(&app, &org_a, status).await);
    }
    // Org B has jobs of its own, with the same request_id applied.
    let own_b = job_in_state(&app, &org_b, S::Running).await;
    let before = everything(&app).await;

    for job in &jobs {
        let missing_id = Uuid::new_v4().to_string();
        // Org B, the default org (""), and the nil org spelled out.
        for caller in [org_b.as_str(), "", NIL_ORG] {
            let foreign = get_in(&app, caller, &job.id).await.unwrap_err();
            let missing = get_in(&app, caller, &missing_id).await.unwrap_err();
            let what = format!("GetJob of a {:?} job from {caller:?}", job.status());
            assert_like_missing(&foreign, &job.id, &missing, &missing_id, &org_a, &what);

            for (n, request) in transition_battery(caller, job).into_iter().enumerate() {
                let what = format!(
                    "TransitionJob #{n} of a {:?} job from {caller:?}: {request:?}",
                    job.status()
                );
                let on_missing = proto::TransitionJobRequest {
                    job_id: missing_id.clone(),
                    ..request.clone()
                };
                let foreign = app.transition_with(request).await.unwrap_err();
                let missing = app.transition_with(on_missing).await.unwrap_err();
                assert_like_missing(&foreign, &job.id, &missing, &missing_id, &org_a, &what);
            }
        }
    }
    assert_eq!(
        everything(&app).await,
        before,
        "calls on another org's jobs wrote nothing"
    );

    // The owner still sees and moves its jobs; a request_id org B applied to its own
    // job is not a replay of org A's.
    for job in &jobs {
        assert_eq!(get_in(&app, &org_a, &job.id).await.unwrap(), *job);
    }
    let replay_b = go(
        &app,
        proto::TransitionJobRequest {
            request_id: "rid-a".into(),
            ..to(&org_b, &own_b.id, S::Running)
        },
    )
    .await;
    assert_eq!(replay_b.job.as_ref().unwrap().id, own_b.id);
    assert_eq!(replay_b.job.unwrap().org_id, org_b);
    let queued_a = &jobs[0];
    let r = go(
        &app,
        proto::TransitionJobRequest {
            expected_status: Some(S::Queued as i32),
            ..to(&org_a, &queued_a.id, S::Running)
        },
    )
    .await;
    assert_eq!(r.job.unwrap().attempt, 2);
    assert_invariants_hold(&app).await;
}

#[tokio::test]
async fn a_job_stream_of_another_orgs_job_looks_missing_whatever_is_asked() {
    let app = spawn_app().await;
    let org_a = org();
    let org_b = org();
    let running = job_in_state(&app, &org_a, S::Running).await;
    let done = job_in_state(&app, &org_a, S::Succeeded).await;
    let mut client = app.client.clone();

    for job in [&running, &done] {
        let own = client
            .stream_events(proto::StreamEventsRequest {
                org_id: org_a.clone(),
                job_id: job.id.clone(),
                history_only: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let own: Vec<proto::JobEvent> = own.map(|e| e.unwrap()).collect().await;
        assert!(own.len() >= 2);
        let missing_id = Uuid::new_v4().to_string();
        for caller in [org_b.as_str(), "", NIL_ORG] {
            for (cursor, history_only) in [
                (String::new(), false),
                (String::new(), true),
                (own[0].cursor.clone(), false),
                (own[0].cursor.clone(), true),
            ] {
                let request = proto::StreamEventsRequest {
                    org_id: caller.to_owned(),
                    job_id: job.id.clone(),
                    after_cursor: cursor,
                    history_only,
                };
                let what = format!("StreamEvents {request:?}");
                let on_missing = proto::StreamEventsRequest {
                    job_id: missing_id.clone(),
                    ..request.clone()
                };
                let foreign = client.stream_events(request).await.unwrap_err();
                let missing = client.stream_events(on_missing).await.unwrap_err();
                assert_like_missing(&foreign, &job.id, &missing, &missing_id, &org_a, &what);
            }
        }
    }
}

/// Reads `stream` until it delivered `n` events (each within 10 s).
async fn take(stream: &mut Streaming<proto::JobEvent>, n: usize) -> Vec<proto::JobEvent> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} events within 10 s", got.len()))
            .expect("stream open")
            .expect("no error");
        got.push(event);
    }
    got
}

/// Work of one org's client: jobs through several paths, and a batch.
async fn org_load(app: &TestApp, org: String, worker: usize) {
    let paths: [&[S]; 4] = [
        &[S::Running, S::Running, S::Succeeded],
        &[S::Running, S::Failed, S::Running, S::Succeeded],
        &[S::Canceled],
        &[S::Running, S::Queued, S::Running, S::Canceled],
    ];
    for (i, path) in paths.iter().enumerate() {
        let job = create(
            app,
            new_in(&org, &format!("w{worker}-{i}"), json!({"i": i})),
        )
        .await
        .job
        .unwrap();
        for step in *path {
            go(app, to(&org, &job.id, *step)).await;
        }
    }
    let batch = app
        .client
        .clone()
        .create_jobs(proto::CreateJobsRequest {
            jobs: (0..3)
                .map(|i| new_in(&org, &format!("batch-{worker}-{i}"), json!({"i": i})))
                .collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(batch.results.iter().all(|r| r.created));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_streams_carry_only_their_orgs_events_while_every_org_is_busy() {
    let app = spawn_app().await;
    let orgs = [org(), org(), String::new()];
    let stored_org = |o: &str| if o.is_empty() { NIL_ORG } else { o }.to_owned();
    // A marker event per org gives each stream an exact starting point.
    let mut markers = Vec::new();
    for o in &orgs {
        let marker = create(&app, new_in(o, "marker", json!({}))).await;
        let events = app
            .client
            .clone()
            .stream_events(proto::StreamEventsRequest {
                org_id: o.clone(),
                job_id: marker.job.unwrap().id,
                history_only: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let events: Vec<proto::JobEvent> = events.map(|e| e.unwrap()).collect().await;
        markers.push(events[0].cursor.clone());
    }
    let before: BTreeSet<Uuid> = sqlx::query_scalar("SELECT id FROM job_event")
        .fetch_all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .collect();
    // Live streams: each org from its own marker, and org 0 also from org 2's marker
    // (a cursor is a position in one order shared by all orgs; it opens nothing of the
    // org that wrote it).
    let mut streams = Vec::new();
    for (i, o) in orgs.iter().enumerate() {
        streams.push((i, open_org(&app, o, &markers[i]).await));
    }
    streams.push((0, open_org(&app, &orgs[0], &markers[2]).await));

    // Two clients per org, all at once.
    let mut load = Vec::new();
    for o in &orgs {
        for worker in 0..2 {
            load.push(org_load(&app, o.clone(), worker));
        }
    }
    futures::future::join_all(load).await;

    // What each org wrote, from the table, in (xid, seq) order.
    let written: Vec<(Uuid, Uuid, Uuid)> =
        sqlx::query_as("SELECT id, org_id, job_id FROM job_event ORDER BY xid, seq")
            .fetch_all(&app.db)
            .await
            .unwrap();
    let written: Vec<_> = written
        .into_iter()
        .filter(|(id, _, _)| !before.contains(id))
        .collect();
    for (i, stream) in &mut streams {
        let org_id: Uuid = stored_org(&orgs[*i]).parse().unwrap();
        let expected: Vec<(Uuid, Uuid)> = written
            .iter()
            .filter(|(_, o, _)| *o == org_id)
            .map(|(id, _, job)| (*id, *job))
            .collect();
        assert!(expected.len() > 30, "{}", expected.len());
        let got = take(stream, expected.len()).await;
        for e in &got {
            assert_eq!(
                e.org_id,
                org_id.to_string(),
                "an event of another org: {e:?}"
            );
        }
        // The same events; per job, in commit order.
        let got_ids: BTreeSet<Uuid> = got.iter().map(|e| e.id.parse().unwrap()).collect();
        let expected_ids: BTreeSet<Uuid> = expected.iter().map(|(id, _)| *id).collect();
        assert_eq!(got_ids, expected_ids, "org {i}");
        assert_eq!(got_ids.len(), got.len(), "no event twice");
        let mut per_job: HashMap<&str, Vec<&str>> = HashMap::new();
        for e in &got {
            per_job.entry(&e.job_id).or_default().push(&e.id);
        }
        for (job, ids) in per_job {
            let in_order: Vec<String> = expected
                .iter()
                .filter(|(_, j)| j.to_string() == job)
                .map(|(id, _)| id.to_string())
                .collect();
            assert_eq!(ids, in_order, "job {job} in order");
        }
        // And nothing more.
        let quiet = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
        assert!(quiet.is_err(), "org {i}: unexpected {quiet:?}");
    }
    assert_invariants_hold(&app).await;
}

async fn open_org(app: &TestApp, org: &str, after: &str) -> Streaming<proto::JobEvent> {
    app.client
        .clone()
        .stream_events(proto::StreamEventsRequest {
            org_id: org.to_owned(),
            after_cursor: after.to_owned(),
            ..Default::default()
        })
        .await
        .expect("stream opens")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_per_org_for_create_and_concurrent_creates() {
    let app = spawn_app().await;
    let (a, b) = (org(), org());

    // Racing creates of one key in two orgs: one job per org, every caller gets its own.
    let racers = (0..8).map(|i| {
        let mut client = app.client.clone();
        let o = if i % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move {
            let r = client
                .create_job(new_in(&o, "race", json!({"n": 1})))
                .await
                .expect("no error in a race")
                .into_inner();
            (o, r.job.unwrap())
        })
    });
    let mut ids: HashMap<String, BTreeSet<String>> = HashMap::new();
    for r in futures::future::join_all(racers).await {
        let (o, job) = r.unwrap();
        assert_eq!(job.org_id, o);
        ids.entry(o).or_default().insert(job.id);
    }
    assert_eq!(ids[&a].len(), 1);
    assert_eq!(ids[&b].len(), 1);
    assert_ne!(ids[&a], ids[&b]);

    // Org B holds "k" with one input; org A creates "k" with another: no conflict.
    let job_b = create(&app, new_in(&b, "k", json!({"x": 1}))).await;
    assert!(job_b.created);
    let job_b = job_b.job.unwrap();
    let job_a = create(&app, new_in(&a, "k", json!({"x": 2}))).await;
    assert!(job_a.created, "org B's key does not bind org A");
    let job_a = job_a.job.unwrap();
    assert_ne!(job_a.id, job_b.id);
    // A conflict in org A names org A's job only.
    let conflict = app
        .client
        .clone()
        .create_job(new_in(&a, "k", json!({"x": 1})))
        .await
        .expect_err("org A's own job holds the key with other params");
    assert_eq!(conflict.code(), Code::AlreadyExists);
    let info = conflict.get_details_error_info().unwrap();
    assert_eq!(info.metadata["job_id"], job_a.id);
    let all = format!("{conflict:?}");
    assert!(!all.contains(&job_b.id), "org B's job is mentioned: {all}");
    assert!(!all.contains(&b), "org B is mentioned: {all}");
    // The same input as org B's job, in org B: B's job; in a third org: a new one.
    let again_b = create(&app, new_in(&b, "k", json!({"x": 1}))).await;
    assert_eq!(
        (again_b.created, again_b.job.unwrap().id),
        (false, job_b.id.clone())
    );
    let c = create(&app, new_in(&org(), "k", json!({"x": 1}))).await;
    assert!(c.created);
    assert_invariants_hold(&app).await;
}

#[tokio::test]
async fn a_batch_in_one_org_never_returns_another_orgs_job() {
    let app = spawn_app().await;
    let (a, b) = (org(), org());
    let held_b = create(&app, new_in(&b, "shared", json!({"n": 1})))
        .await
        .job
        .unwrap();
    let other_b = create(&app, new_in(&b, "other", json!({"n": 1})))
        .await
        .job
        .unwrap();
    let held_a = create(&app, new_in(&a, "mine", json!({"n": 1})))
        .await
        .job
        .unwrap();

    let entries = vec![
        // A key only org B holds, with B's input: a new job of A.
        new_in(&a, "shared", json!({"n": 1})),
        // With different input: still a new job of A (the entry above holds it now, so
        // this is the batch's own conflict, naming that new A job).
        new_in(&a, "shared", json!({"n": 2})),
        // Org B's other key with other input: no conflict for A.
        new_in(&a, "other", json!({"n": 7})),
        // A's own key: A's job.
        new_in(&a, "mine", json!({"n": 1})),
        // One batch, two orgs, one key: one job each.
        new_in(&b, "both", json!({})),
        new_in(&a, "both", json!({})),
        new_in(&b, "shared", json!({"n": 1})),
    ];
    let run = |entries: Vec<proto::CreateJobRequest>| {
        let mut client = app.client.clone();
        async move {
            client
                .create_jobs(proto::CreateJobsRequest { jobs: entries })
                .await
                .unwrap()
                .into_inner()
                .results
        }
    };
    let first = run(entries.clone()).await;
    let b_ids = [held_b.id.clone(), other_b.id.clone()];
    let check_results = |results: &[proto::CreateJobsResult], repeat: bool| {
        assert_eq!(results.len(), entries.len());
        let mut new_a_shared = None;
        for (n, (entry, result)) in entries.iter().zip(results).enumerate() {
            let what = format!("entry {n} ({entry:?}): {result:?}");
            let all = format!("{result:?}");
            if entry.org_id == a {
                for id in &b_ids {
                    assert!(!all.contains(id.as_str()), "{what}: names org B's job");
                }
                assert!(!all.contains(&b), "{what}: names org B");
            }
            match n {
                1 => {
                    let error = result.error.as_ref().expect("conflict");
                    assert_eq!(error.code, Code::AlreadyExists as i32, "{what}");
                    let status = Status::with_details(
                        Code::from(error.code),
                        error.message.clone(),
                        prost::Message::encode_to_vec(error).into(),
                    );
                    let info = status.get_details_error_info().unwrap();
                    assert_eq!(
                        Some(&info.metadata["job_id"]),
                        new_a_shared.as_ref(),
                        "{what}"
                    );
                }
                _ => {
                    let job = result.job.as_ref().expect(&what);
                    assert_eq!(job.org_id, entry.org_id, "{what}");
                    let expect_created = !repeat && ![3, 6].contains(&n);
                    assert_eq!(result.created, expect_created, "{what}");
                    if n == 0 {
                        new_a_shared = Some(job.id.clone());
                    }
                    if n == 3 {
                        assert_eq!(job.id, held_a.id, "{what}");
                    }
                    if n == 6 {
                        assert_eq!(job.id, held_b.id, "{what}");
                    }
                }
            }
        }
        results
            .iter()
            .filter_map(|r| r.job.as_ref().map(|j| j.id.clone()))
            .collect::<Vec<_>>()
    };
    let first_ids = check_results(&first, false);
    assert_ne!(
        first[4].job.as_ref().unwrap().id,
        first[5].job.as_ref().unwrap().id
    );
    // The same batch again: every entry finds its own org's job.
    let second = run(entries.clone()).await;
    assert_eq!(check_results(&second, true), first_ids);
    assert_invariants_hold(&app).await;
}
