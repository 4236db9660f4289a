//! Leases (spec §7): HeartbeatJob extends the lease of the attempt a worker holds and
//! writes no event, and tells a worker whose job moved on to stop; progress reports
//! extend the lease and keep its holder; leaving RUNNING clears it; a TransitionJob start
//! takes a lease only when it asks for one. And the fencing rule: a report into RUNNING
//! naming an attempt, without expected_status, is never taken as a (re)start.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use jobledger::proto::{self, JobStatus as S};
use tonic::Code;
use uuid::Uuid;

use crate::dispatch_support::*;
use crate::helpers::{spawn_app, violated_fields, TestApp};

/// Asserts `expires` is `length` after `from`, within 1 s.
#[track_caller]
fn assert_lease(expires: DateTime<Utc>, from: DateTime<Utc>, length: TimeDelta) {
    let off = expires - (from + length);
    assert!(
        off.abs() < TimeDelta::seconds(1),
        "lease expires {expires}, expected about {} ({off:?} off)",
        from + length
    );
}

/// One job, of a type of its own named after `job_type`, claimed by `worker` under a
/// lease of `lease_ms`.
async fn claimed(app: &TestApp, job_type: &str, worker: &str, lease_ms: u64) -> proto::Job {
    let job_type = format!("{job_type}-{}", Uuid::new_v4().simple());
    let id = create(app, new_job(&job_type)).await.id;
    let request = proto::ClaimJobsRequest {
        lease: Some(ms(lease_ms)),
        ..claim_of(&[&job_type], worker, 1)
    };
    let got = jobs_of(&claim(app, request).await);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, id);
    got.into_iter().next().unwrap()
}

#[tokio::test]
async fn a_heartbeat_extends_the_lease_of_the_current_attempt_and_writes_no_event() {
    let app = spawn_app().await;
    let job = claimed(&app, "hb", "hb-worker", 5_000).await;
    let first = time(job.lease_expires_at.as_ref().unwrap());
    assert_lease(first, Utc::now(), TimeDelta::seconds(5));
    let events_before = steps(&app.db, &job.id).await;

    // A longer lease.
    let asked = Utc::now();
    let extended = heartbeat(
        &app,
        proto::HeartbeatJobRequest {
            lease: Some(secs(20)),
            ..heartbeat_of(&job.id, 1)
        },
    )
    .await
    .unwrap();
    assert!(extended > first);
    assert_lease(extended, asked, TimeDelta::seconds(20));
    let row = job_row(&app.db, &job.id).await;
    assert_eq!(row.lease_expires_at, Some(extended));
    assert_eq!(row.lease_holder.as_deref(), Some("hb-worker"));

    // No lease, or 0: the length of the lease being extended (now 20 s, not the 30 s
    // default nor the claim's 5 s).
    for lease in [None, Some(ms(0))] {
        let asked = Utc::now();
        let again = heartbeat(
            &app,
            proto::HeartbeatJobRequest {
                lease,
                ..heartbeat_of(&job.id, 1)
            },
        )
        .await
        .unwrap();
        assert_lease(again, asked, TimeDelta::seconds(20));
    }
    // The edges of the range are accepted.
    for lease in [secs(1), secs(3600)] {
        heartbeat(
            &app,
            proto::HeartbeatJobRequest {
                lease: Some(lease),
                ..heartbeat_of(&job.id, 1)
            },
        )
        .await
        .unwrap();
    }
    let shown = app.get(&job.id).await.unwrap();
    assert_eq!(shown.lease_holder, "hb-worker");
    assert_lease(
        time(shown.lease_expires_at.as_ref().unwrap()),
        Utc::now(),
        TimeDelta::hours(1),
    );
    assert_eq!(
        steps(&app.db, &job.id).await,
        events_before,
        "no event written"
    );
}

#[tokio::test]
async fn a_heartbeat_is_refused_with_the_reason_a_worker_acts_on() {
    let app = spawn_app().await;

    // Another attempt than the job's: ABORTED, STALE_ATTEMPT.
    let job = claimed(&app, "hb_refused", "w", 30_000).await;
    transition_ok(
        &app,
        proto::TransitionJobRequest {
            retry_after: Some(ms(0)),
            ..report(&job.id, S::Failed, 1)
        },
    )
    .await;
    let again = jobs_of(&claim(&app, claim_of(&[&job.r#type], "w2", 1)).await);
    assert_eq!(again[0].attempt, 2);
    for attempt in [1, 3] {
        let status = assert_refused(
            heartbeat(&app, heartbeat_of(&job.id, attempt)).await,
            Code::Aborted,
            "STALE_ATTEMPT",
        );
        let meta = error_metadata(&status);
        assert_eq!(
            meta.get("current_attempt").map(String::as_str),
            Some("2"),
            "{meta:?}"
        );
    }

    // A job no longer RUNNING: FAILED_PRECONDITION, JOB_NOT_RUNNING, with its status.
    let not_running = |status: &str| HashMap::from([("status".to_owned(), status.to_owned())]);
    let canceled = claimed(&app, "hb_refused", "w", 30_000).await;
    transition_ok(
        &app,
        proto::TransitionJobRequest {
            job_id: canceled.id.clone(),
            to_status: S::Canceled as i32,
            actor: "operator".into(),
            ..Default::default()
        },
    )
    .await;
    let status = assert_refused(
        heartbeat(&app, heartbeat_of(&canceled.id, 1)).await,
        Code::FailedPrecondition,
        "JOB_NOT_RUNNING",
    );
    assert_eq!(error_metadata(&status), not_running("CANCELED"));

    let done = claimed(&app, "hb_refused", "w", 30_000).await;
    transition_ok(&app, report(&done.id, S::Succeeded, 1)).await;
    let status = assert_refused(
        heartbeat(&app, heartbeat_of(&done.id, 1)).await,
        Code::FailedPrecondition,
        "JOB_NOT_RUNNING",
    );
    assert_eq!(error_metadata(&status), not_running("SUCCEEDED"));

    let handed_back = claimed(&app, "hb_refused", "w", 30_000).await;
    transition_ok(&app, report(&handed_back.id, S::Queued, 1)).await;
    let status = assert_refused(
        heartbeat(&app, heartbeat_of(&handed_back.id, 1)).await,
        Code::FailedPrecondition,
        "JOB_NOT_RUNNING",
    );
    assert_eq!(error_metadata(&status), not_running("QUEUED"));

    // No such job, or another org's: NOT_FOUND.
    assert_refused(
        heartbeat(&app, heartbeat_of(&Uuid::new_v4().to_string(), 1)).await,
        Code::NotFound,
        "JOB_NOT_FOUND",
    );
    let running = claimed(&app, "hb_refused", "w", 30_000).await;
    let before = job_row(&app.db, &running.id).await;
    assert_refused(
        heartbeat(
            &app,
            proto::HeartbeatJobRequest {
                org_id: Uuid::new_v4().to_string(),
                ..heartbeat_of(&running.id, 1)
            },
        )
        .await,
        Code::NotFound,
        "JOB_NOT_FOUND",
    );

    // Malformed: INVALID_ARGUMENT naming the field.
    let invalid = |request: proto::HeartbeatJobRequest| {
        let app = &app;
        async move {
            let status = heartbeat(app, request).await.expect_err("refused");
            violated_fields(&status)
        }
    };
    for attempt in [0, -1] {
        assert_eq!(
            invalid(heartbeat_of(&running.id, attempt)).await,
            ["attempt"]
        );
    }
    for lease in [ms(500), ms(999), secs(7200), ms(3_600_001)] {
        let request = proto::HeartbeatJobRequest {
            lease: Some(lease),
            ..heartbeat_of(&running.id, 1)
        };
        assert_eq!(invalid(request).await, ["lease"]);
    }
    let negative = proto::HeartbeatJobRequest {
        lease: Some(prost_types::Duration {
            seconds: -5,
            nanos: 0,
        }),
        ..heartbeat_of(&running.id, 1)
    };
    assert_eq!(invalid(negative).await, ["lease"]);
    assert_eq!(invalid(heartbeat_of("not-a-uuid", 1)).await, ["job_id"]);
    let bad_org = proto::HeartbeatJobRequest {
        org_id: "nope".into(),
        ..heartbeat_of(&running.id, 1)
    };
    assert_eq!(invalid(bad_org).await, ["org_id"]);
    assert_eq!(
        job_row(&app.db, &running.id).await,
        before,
        "refusals change nothing"
    );
}

#[tokio::test]
async fn progress_reports_extend_the_lease_and_keep_the_holder_and_leaving_running_clears_it() {
    let app = spawn_app().await;
    let job = claimed(&app, "progress", "holder", 10_000).await;

    // Without a lease: by the current length (10 s).
    let progress = proto::TransitionJobRequest {
        stage: "download".into(),
        progress: Some(50),
        ..report(&job.id, S::Running, 1)
    };
    let reported = transition_ok(&app, progress.clone()).await;
    let at = time(reported.events[0].ts.as_ref().unwrap());
    let after = reported.job.unwrap();
    assert_eq!(after.lease_holder, "holder");
    assert_lease(
        time(after.lease_expires_at.as_ref().unwrap()),
        at,
        TimeDelta::seconds(10),
    );

    // With a lease: by it; the holder stays even when another actor reports.
    let longer = proto::TransitionJobRequest {
        lease: Some(secs(40)),
        actor: "someone-else".into(),
        ..progress.clone()
    };
    let reported = transition_ok(&app, longer).await;
    let at = time(reported.events[0].ts.as_ref().unwrap());
    let after = reported.job.unwrap();
    assert_eq!(after.lease_holder, "holder");
    assert_lease(
        time(after.lease_expires_at.as_ref().unwrap()),
        at,
        TimeDelta::seconds(40),
    );
    // And the new length is the one later reports extend by.
    let reported = transition_ok(&app, progress.clone()).await;
    let at = time(reported.events[0].ts.as_ref().unwrap());
    assert_lease(
        time(reported.job.unwrap().lease_expires_at.as_ref().unwrap()),
        at,
        TimeDelta::seconds(40),
    );
    let row = job_row(&app.db, &job.id).await;
    assert_eq!(row.lease_holder.as_deref(), Some("holder"));

    // A report's lease is 1 s .. 1 h too.
    for lease in [ms(500), secs(7200)] {
        let request = proto::TransitionJobRequest {
            lease: Some(lease),
            ..progress.clone()
        };
        let status = app.transition_with(request).await.expect_err("refused");
        assert_eq!(violated_fields(&status), ["lease"]);
    }

    // Every way out of RUNNING clears the lease.
    transition_ok(&app, report(&job.id, S::Succeeded, 1)).await;
    let mut left = vec![job.id.clone()];
    for to in [S::Failed, S::Canceled, S::Queued] {
        let other = claimed(&app, "progress", "holder", 10_000).await;
        let response = transition_ok(&app, report(&other.id, to, 1)).await;
        let shown = response.job.unwrap();
        assert_eq!(
            (shown.lease_expires_at, shown.lease_holder.as_str()),
            (None, ""),
            "{to:?}"
        );
        left.push(other.id);
    }
    let dead = {
        let id = create(
            &app,
            proto::CreateJobRequest {
                max_attempts: 1,
                ..new_job("progress_dead")
            },
        )
        .await
        .id;
        assert_eq!(
            claim(&app, claim_of(&["progress_dead"], "holder", 1))
                .await
                .len(),
            1
        );
        let shown = transition_ok(&app, report(&id, S::Failed, 1))
            .await
            .job
            .unwrap();
        assert_eq!(status_of(&shown), S::DeadLetter);
        id
    };
    left.push(dead);
    for id in &left {
        let shown = app.get(id).await.unwrap();
        assert_eq!(
            (shown.lease_expires_at, shown.lease_holder.as_str()),
            (None, "")
        );
        let row = job_row(&app.db, id).await;
        assert_eq!(
            (row.lease_expires_at, row.lease_holder),
            (None, None),
            "{id}"
        );
    }
    assert_invariants_hold(&app.db).await;
}

#[tokio::test]
async fn a_transition_job_start_takes_a_lease_only_when_it_asks_for_one() {
    let app = spawn_app().await;
    let start = |id: &str, lease: Option<prost_types::Duration>| proto::TransitionJobRequest {
        job_id: id.to_owned(),
        to_status: S::Running as i32,
        actor: "manual-worker".into(),
        lease,
        ..Default::default()
    };

    let with = create(&app, new_job("manual")).await.id;
    let response = transition_ok(&app, start(&with, Some(secs(15)))).await;
    let at = time(response.events[0].ts.as_ref().unwrap());
    let job = response.job.unwrap();
    assert_eq!(job.lease_holder, "manual-worker");
    assert_lease(
        time(job.lease_expires_at.as_ref().unwrap()),
        at,
        TimeDelta::seconds(15),
    );
    let row = job_row(&app.db, &with).await;
    assert_eq!(row.lease_holder.as_deref(), Some("manual-worker"));

    let without = create(&app, new_job("manual")).await.id;
    let job = transition_ok(&app, start(&without, None))
        .await
        .job
        .unwrap();
    assert_eq!(
        (job.lease_expires_at, job.lease_holder.as_str()),
        (None, "")
    );
    // A progress report gives it none either.
    let job = transition_ok(&app, report(&without, S::Running, 1))
        .await
        .job
        .unwrap();
    assert_eq!(
        (job.lease_expires_at, job.lease_holder.as_str()),
        (None, "")
    );
    let row = job_row(&app.db, &without).await;
    assert_eq!((row.lease_expires_at, row.lease_holder), (None, None));

    // A retry by hand with a lease: held by its actor.
    transition_ok(&app, report(&without, S::Failed, 1)).await;
    let retry = proto::TransitionJobRequest {
        expected_status: Some(S::Failed as i32),
        actor: "retrier".into(),
        ..start(&without, Some(secs(15)))
    };
    let job = transition_ok(&app, retry).await.job.unwrap();
    assert_eq!((job.attempt, job.lease_holder.as_str()), (2, "retrier"));
    assert!(job.lease_expires_at.is_some());
}

#[tokio::test]
async fn a_report_into_running_naming_an_attempt_without_expected_status_never_restarts_a_job() {
    let app = spawn_app().await;
    let holder_report = |id: &str, attempt: i32| proto::TransitionJobRequest {
        stage: "still working".into(),
        ..report(id, S::Running, attempt)
    };

    // FAILED (rescued or reported): the late holder of attempt 1, or a future attempt.
    let failed = claimed(&app, "fence", "w", 30_000).await;
    transition_ok(&app, report(&failed.id, S::Failed, 1)).await;
    // QUEUED after a hand-back, and QUEUED never started.
    let handed_back = claimed(&app, "fence", "w", 30_000).await;
    transition_ok(&app, report(&handed_back.id, S::Queued, 1)).await;
    let fresh = create(&app, new_job("fence_fresh")).await;
    // SUCCEEDED.
    let done = claimed(&app, "fence", "w", 30_000).await;
    transition_ok(&app, report(&done.id, S::Succeeded, 1)).await;

    for (id, attempt, status) in [
        (&failed.id, 1, "FAILED"),
        (&failed.id, 2, "FAILED"),
        (&handed_back.id, 1, "QUEUED"),
        (&fresh.id, 1, "QUEUED"),
        (&done.id, 1, "SUCCEEDED"),
    ] {
        let before = (job_row(&app.db, id).await, steps(&app.db, id).await);
        let refused = assert_refused(
            app.transition_with(holder_report(id, attempt)).await,
            Code::FailedPrecondition,
            "JOB_NOT_RUNNING",
        );
        assert_eq!(
            error_metadata(&refused).get("status").map(String::as_str),
            Some(status),
            "{refused:?}"
        );
        let after = (job_row(&app.db, id).await, steps(&app.db, id).await);
        assert_eq!(after, before, "nothing written for a refused report");
    }

    // A retry that fences says so with expected_status (and may add the attempt).
    let retry = proto::TransitionJobRequest {
        expected_status: Some(S::Failed as i32),
        ..report(&failed.id, S::Running, 1)
    };
    let retried = transition_ok(&app, retry).await.job.unwrap();
    assert_eq!((status_of(&retried), retried.attempt), (S::Running, 2));
    // A bare start still starts.
    let started = app
        .transition(&fresh.id, S::Running)
        .await
        .unwrap()
        .job
        .unwrap();
    assert_eq!(started.attempt, 1);
}

/// GetJob and ListJobs show run_after, lease_expires_at and lease_holder alike.
#[tokio::test]
async fn get_job_and_list_jobs_show_run_after_and_the_lease() {
    let app = spawn_app().await;
    let running = claimed(&app, "shown", "shower", 20_000).await;
    let scheduled = create(
        &app,
        proto::CreateJobRequest {
            run_after: Some(timestamp(Utc::now() + TimeDelta::hours(2))),
            ..new_job(&running.r#type)
        },
    )
    .await;
    let waiting = claimed(&app, "shown", "w", 20_000).await;
    let failed = transition_ok(&app, report(&waiting.id, S::Failed, 1))
        .await
        .job
        .unwrap();
    assert!(running.lease_expires_at.is_some() && failed.run_after.is_some());
    let listed = app
        .client
        .clone()
        .list_jobs(proto::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs;
    for id in [&running.id, &scheduled.id, &failed.id] {
        let got = app.get(id).await.unwrap();
        let in_list = listed.iter().find(|j| &j.id == id).expect("listed");
        assert_eq!(&got, in_list);
        let row = job_row(&app.db, id).await;
        assert_eq!(got.run_after.as_ref().map(time), row.run_after, "{id}");
        assert_eq!(
            got.lease_expires_at.as_ref().map(time),
            row.lease_expires_at,
            "{id}"
        );
        assert_eq!(got.lease_holder, row.lease_holder.unwrap_or_default());
    }
    let got = app.get(&running.id).await.unwrap();
    assert_eq!(
        (
            got.lease_holder.as_str(),
            got.lease_expires_at,
            got.run_after
        ),
        ("shower", running.lease_expires_at, None)
    );
}
