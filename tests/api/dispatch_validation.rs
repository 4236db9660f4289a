//! Validation of the dispatch requests (spec §7): every bad field of ClaimJobs, of the
//! new CreateJob fields (run_after, retry_policy), of UpdateQueue and ListQueues is
//! INVALID_ARGUMENT with a BadRequest naming it, never INTERNAL, and nothing is claimed
//! or written; the edges of each range are accepted.

use jobledger::proto::{self, ClaimJobsRequest};
use tonic::Code;
use uuid::Uuid;

use crate::dispatch_support::*;
use crate::helpers::{spawn_app, violated_fields, TestApp};

fn ok() -> ClaimJobsRequest {
    claim_of(&["valid"], "w", 1)
}

fn negative(seconds: i64, nanos: i32) -> prost_types::Duration {
    prost_types::Duration { seconds, nanos }
}

/// The fields a refused claim names; panics unless it is INVALID_ARGUMENT.
async fn claim_violations(app: &TestApp, request: ClaimJobsRequest) -> Vec<String> {
    let status = claim_on(&mut app.client.clone(), request.clone())
        .await
        .expect_err(&format!("{request:?} must be refused"));
    assert_ne!(status.code(), Code::Internal, "{status:?}");
    violated_fields(&status)
}

#[tokio::test]
async fn every_bad_field_of_a_claim_is_invalid_argument_naming_it() {
    let app = spawn_app().await;
    // A job the claims could take, were they valid.
    let job = create(&app, new_job("valid")).await;
    let types = |n: usize| (0..n).map(|i| format!("type-{i}")).collect::<Vec<_>>();
    let cases: Vec<(&str, ClaimJobsRequest, &str)> = vec![
        (
            "no types",
            ClaimJobsRequest {
                types: vec![],
                ..ok()
            },
            "types",
        ),
        (
            "33 types",
            ClaimJobsRequest {
                types: types(33),
                ..ok()
            },
            "types",
        ),
        (
            "an empty type",
            ClaimJobsRequest {
                types: vec!["valid".into(), "".into()],
                ..ok()
            },
            "types[1]",
        ),
        (
            "a type of 101 characters",
            ClaimJobsRequest {
                types: vec!["x".repeat(101)],
                ..ok()
            },
            "types[0]",
        ),
        (
            "a type with NUL",
            ClaimJobsRequest {
                types: vec!["a\0b".into()],
                ..ok()
            },
            "types[0]",
        ),
        (
            "no worker_id",
            ClaimJobsRequest {
                worker_id: "".into(),
                ..ok()
            },
            "worker_id",
        ),
        (
            "a blank worker_id",
            ClaimJobsRequest {
                worker_id: "   ".into(),
                ..ok()
            },
            "worker_id",
        ),
        (
            "a worker_id of 256 characters",
            ClaimJobsRequest {
                worker_id: "w".repeat(256),
                ..ok()
            },
            "worker_id",
        ),
        (
            "a worker_id with NUL",
            ClaimJobsRequest {
                worker_id: "w\0".into(),
                ..ok()
            },
            "worker_id",
        ),
        (
            "max_jobs 101",
            ClaimJobsRequest {
                max_jobs: 101,
                ..ok()
            },
            "max_jobs",
        ),
        (
            "max_jobs -1",
            ClaimJobsRequest {
                max_jobs: -1,
                ..ok()
            },
            "max_jobs",
        ),
        (
            "max_jobs i32::MIN",
            ClaimJobsRequest {
                max_jobs: i32::MIN,
                ..ok()
            },
            "max_jobs",
        ),
        (
            "a lease of 500 ms",
            ClaimJobsRequest {
                lease: Some(ms(500)),
                ..ok()
            },
            "lease",
        ),
        (
            "a lease of 2 h",
            ClaimJobsRequest {
                lease: Some(secs(7200)),
                ..ok()
            },
            "lease",
        ),
        (
            "a negative lease",
            ClaimJobsRequest {
                lease: Some(negative(-1, 0)),
                ..ok()
            },
            "lease",
        ),
        (
            "a lease with bad nanos",
            ClaimJobsRequest {
                lease: Some(negative(5, -1)),
                ..ok()
            },
            "lease",
        ),
        (
            "a huge lease",
            ClaimJobsRequest {
                lease: Some(negative(i64::MAX, 999_999_999)),
                ..ok()
            },
            "lease",
        ),
        (
            "a wait of 61 s",
            ClaimJobsRequest {
                wait: Some(secs(61)),
                ..ok()
            },
            "wait",
        ),
        (
            "a wait of 60.001 s",
            ClaimJobsRequest {
                wait: Some(ms(60_001)),
                ..ok()
            },
            "wait",
        ),
        (
            "a negative wait",
            ClaimJobsRequest {
                wait: Some(negative(-1, 0)),
                ..ok()
            },
            "wait",
        ),
        (
            "a wait with bad nanos",
            ClaimJobsRequest {
                wait: Some(negative(0, 1_000_000_000)),
                ..ok()
            },
            "wait",
        ),
        (
            "a huge wait",
            ClaimJobsRequest {
                wait: Some(negative(i64::MAX, 0)),
                ..ok()
            },
            "wait",
        ),
        (
            "org_id with all_orgs",
            ClaimJobsRequest {
                org_id: Uuid::new_v4().to_string(),
                all_orgs: true,
                ..ok()
            },
            "org_id",
        ),
        (
            "a malformed org_id",
            ClaimJobsRequest {
                org_id: "not-a-uuid".into(),
                ..ok()
            },
            "org_id",
        ),
    ];
    for (what, request, field) in cases {
        let fields = claim_violations(&app, request).await;
        assert_eq!(fields, [field], "{what}");
    }
    // Several at once: each named.
    let mut all = claim_violations(
        &app,
        ClaimJobsRequest {
            types: vec![],
            worker_id: String::new(),
            max_jobs: 101,
            lease: Some(ms(10)),
            wait: Some(secs(100)),
            org_id: "x".into(),
            all_orgs: false,
        },
    )
    .await;
    all.sort();
    assert_eq!(
        all,
        ["lease", "max_jobs", "org_id", "types", "wait", "worker_id"]
    );
    // Nothing was claimed by any of them.
    assert_eq!(job_row(&app.db, &job.id).await.status, "queued");

    // The edges are accepted (the job is claimable, so the longest wait returns at once).
    let edges = ClaimJobsRequest {
        types: std::iter::once("valid".to_owned())
            .chain(types(30))
            .chain(std::iter::once("t".repeat(100)))
            .collect(),
        worker_id: "w".repeat(255),
        max_jobs: 100,
        lease: Some(secs(3600)),
        wait: Some(secs(60)),
        ..ok()
    };
    let got = claim(&app, edges).await;
    assert_eq!(ids_of(&got), std::slice::from_ref(&job.id));
    let short_lease = ClaimJobsRequest {
        lease: Some(secs(1)),
        wait: Some(ms(0)),
        ..ok()
    };
    assert!(claim(&app, short_lease).await.is_empty());
}

/// The fields a refused CreateJob names.
async fn create_violations(app: &TestApp, request: proto::CreateJobRequest) -> Vec<String> {
    let status = app
        .client
        .clone()
        .create_job(request.clone())
        .await
        .expect_err(&format!("{request:?} must be refused"));
    assert_ne!(status.code(), Code::Internal, "{status:?}");
    violated_fields(&status)
}

#[tokio::test]
async fn a_bad_run_after_or_retry_policy_is_invalid_argument_naming_it() {
    let app = spawn_app().await;
    let at = |seconds: i64, nanos: i32| proto::CreateJobRequest {
        run_after: Some(prost_types::Timestamp { seconds, nanos }),
        ..new_job("v")
    };
    let now = chrono::Utc::now().timestamp();
    for (what, request) in [
        ("nanos 1e9", at(now, 1_000_000_000)),
        ("nanos -1", at(now, -1)),
        ("after the year 9999", at(253_402_300_800, 0)),
        ("before the year 1", at(-62_135_596_801, 0)),
        ("i64::MAX seconds", at(i64::MAX, 0)),
    ] {
        assert_eq!(
            create_violations(&app, request).await,
            ["run_after"],
            "{what}"
        );
    }
    let with_policy = |initial: Option<prost_types::Duration>,
                       max: Option<prost_types::Duration>| {
        proto::CreateJobRequest {
            retry_policy: Some(proto::RetryPolicy {
                initial_backoff: initial,
                max_backoff: max,
            }),
            ..new_job("v")
        }
    };
    for (what, request, field) in [
        (
            "a negative initial backoff",
            with_policy(Some(negative(-1, 0)), None),
            "retry_policy.initial_backoff",
        ),
        (
            "bad nanos",
            with_policy(Some(negative(0, -5)), None),
            "retry_policy.initial_backoff",
        ),
        (
            "a negative max backoff",
            with_policy(None, Some(negative(-3, 0))),
            "retry_policy.max_backoff",
        ),
        (
            "a huge max backoff",
            with_policy(None, Some(negative(i64::MAX, 0))),
            "retry_policy.max_backoff",
        ),
    ] {
        assert_eq!(create_violations(&app, request).await, [field], "{what}");
    }
    // The same in a CreateJobs entry: that entry fails alone, naming its field.
    let results = app
        .client
        .clone()
        .create_jobs(proto::CreateJobsRequest {
            jobs: vec![
                new_job("v"),
                at(now, -1),
                with_policy(Some(negative(-1, 0)), None),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(results[0].error.is_none());
    let fields =
        |i: usize| violated_fields(&entry_status(results[i].error.as_ref().expect("an error")));
    assert_eq!(fields(1), ["run_after"]);
    assert_eq!(fields(2), ["retry_policy.initial_backoff"]);
    assert_eq!(
        app.count("job").await,
        1,
        "only the valid entry was written"
    );

    // Valid values are kept: the year 1 and the year 9999, backoffs of 0 (defaults).
    // (PostgreSQL keeps microseconds.)
    for request in [at(-62_135_596_800, 0), at(253_402_300_799, 999_999_999)] {
        let job = create(&app, request.clone()).await;
        let asked = request.run_after.unwrap();
        let kept = job.run_after.expect("run_after");
        assert_eq!(
            (kept.seconds, kept.nanos),
            (asked.seconds, asked.nanos / 1000 * 1000)
        );
        assert_eq!(app.get(&job.id).await.unwrap().run_after, Some(kept));
    }
    create(&app, with_policy(Some(ms(0)), Some(ms(0)))).await;
}

#[tokio::test]
async fn bad_update_queue_and_list_queues_requests_are_invalid_argument_naming_the_field() {
    let app = spawn_app().await;
    let update = |r#type: &str, max_running: Option<i32>, org_id: &str| proto::UpdateQueueRequest {
        org_id: org_id.to_owned(),
        r#type: r#type.to_owned(),
        paused: Some(true),
        max_running,
    };
    for (what, request, field) in [
        ("no type", update("", None, ""), "type"),
        (
            "a type of 101 characters",
            update(&"q".repeat(101), None, ""),
            "type",
        ),
        ("a negative limit", update("q", Some(-1), ""), "max_running"),
        ("a malformed org", update("q", None, "nope"), "org_id"),
    ] {
        let status = app
            .client
            .clone()
            .update_queue(request)
            .await
            .expect_err(what);
        assert_eq!(violated_fields(&status), [field], "{what}");
    }
    assert!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM job_queue")
            .fetch_one(&app.db)
            .await
            .unwrap()
            == 0,
        "nothing written"
    );
    for (what, org_id, r#type, field) in [
        ("a malformed org", "nope", "", "org_id"),
        ("a type of 101 characters", "", &*"q".repeat(101), "type"),
    ] {
        let status = app
            .client
            .clone()
            .list_queues(proto::ListQueuesRequest {
                org_id: org_id.into(),
                r#type: r#type.into(),
            })
            .await
            .expect_err(what);
        assert_eq!(violated_fields(&status), [field], "{what}");
    }
}
