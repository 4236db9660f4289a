//! TransitionJobs (spec §7): up to 1,000 TransitionJob calls in one, answered in order,
//! each entry with the response or the error (google.rpc.Status: same code, reason and
//! details) a call of its own would have had; one refused entry never fails another.

use std::time::Duration;

use jobledger::proto::{self, JobStatus as S};
use tonic::{Code, Status};
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::dispatch_support::*;
use crate::helpers::{reason, spawn_app, violated_fields, TestApp};

async fn transition_jobs(
    app: &TestApp,
    transitions: Vec<proto::TransitionJobRequest>,
) -> Result<Vec<proto::TransitionJobsResult>, Status> {
    app.client
        .clone()
        .transition_jobs(proto::TransitionJobsRequest { transitions })
        .await
        .map(|r| r.into_inner().results)
}

fn response(result: &proto::TransitionJobsResult) -> &proto::TransitionJobResponse {
    assert!(result.error.is_none(), "{:?}", result.error);
    result.response.as_ref().expect("a response")
}

fn error(result: &proto::TransitionJobsResult) -> Status {
    assert!(result.response.is_none(), "{:?}", result.response);
    entry_status(result.error.as_ref().expect("an error"))
}

/// What `essence` keeps of a status.
type Essence = (
    Code,
    String,
    Vec<(String, String)>,
    Vec<String>,
    Vec<String>,
);

/// The parts of a status a client acts on: code, ErrorInfo (reason and metadata),
/// BadRequest fields and PreconditionFailure subjects.
fn essence(status: &Status) -> Essence {
    let info = status.get_details_error_info().expect("ErrorInfo");
    let mut metadata: Vec<(String, String)> = info.metadata.into_iter().collect();
    metadata.sort();
    let fields = status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default();
    let subjects = status
        .get_details_precondition_failure()
        .map(|p| p.violations.into_iter().map(|v| v.subject).collect())
        .unwrap_or_default();
    (status.code(), info.reason, metadata, fields, subjects)
}

#[tokio::test]
async fn each_entry_is_answered_in_order_as_a_call_of_its_own() {
    let app = spawn_app().await;
    let held = create(&app, new_job("batch")).await.id;
    assert_eq!(
        ids_of(&claim(&app, claim_of(&["batch"], "w", 1)).await),
        std::slice::from_ref(&held)
    );
    let queued = create(&app, new_job("batch")).await.id;
    let untouched = create(&app, new_job("batch_untouched")).await.id;
    let failed = create(&app, new_job("batch_failed")).await.id;
    app.transition(&failed, S::Running).await.unwrap();
    app.transition(&failed, S::Failed).await.unwrap();
    let elsewhere = create(
        &app,
        proto::CreateJobRequest {
            org_id: Uuid::new_v4().to_string(),
            ..new_job("batch")
        },
    )
    .await
    .id;

    let start = |id: &str| proto::TransitionJobRequest {
        job_id: id.to_owned(),
        to_status: S::Running as i32,
        ..Default::default()
    };
    let entries = vec![
        // 0: a start.
        start(&queued),
        // 1: malformed.
        start("not-a-uuid"),
        // 2: a transition the table does not have.
        proto::TransitionJobRequest {
            job_id: untouched.clone(),
            to_status: S::Succeeded as i32,
            ..Default::default()
        },
        // 3: the holder's progress.
        proto::TransitionJobRequest {
            progress: Some(30),
            ..report(&held, S::Running, 1)
        },
        // 4: a stale attempt.
        report(&held, S::Succeeded, 2),
        // 5: no such job.
        start(&Uuid::new_v4().to_string()),
        // 6: the holder's success, after its progress.
        report(&held, S::Succeeded, 1),
        // 7: retry_after with RUNNING.
        proto::TransitionJobRequest {
            retry_after: Some(secs(1)),
            ..start(&untouched)
        },
        // 8: progress on the job entry 0 started: it sees entry 0.
        report(&queued, S::Running, 1),
        // 9: a late holder's report on a FAILED job (the fencing rule).
        report(&failed, S::Running, 1),
        // 10: another org's job.
        start(&elsewhere),
        // 11: a lease out of range.
        proto::TransitionJobRequest {
            lease: Some(ms(10)),
            ..start(&untouched)
        },
    ];
    let results = transition_jobs(&app, entries.clone())
        .await
        .expect("the batch");
    assert_eq!(results.len(), entries.len());

    let started = response(&results[0]).job.as_ref().unwrap();
    assert_eq!((status_of(started), started.attempt), (S::Running, 1));
    assert_eq!(violated_fields(&error(&results[1])), ["job_id"]);
    let illegal = error(&results[2]);
    assert_eq!(
        (illegal.code(), reason(&illegal)),
        (Code::FailedPrecondition, "INVALID_TRANSITION".into())
    );
    let progressed = response(&results[3]).job.as_ref().unwrap();
    assert_eq!(
        (progressed.progress, progressed.lease_holder.as_str()),
        (30, "w")
    );
    let stale = error(&results[4]);
    assert_eq!(
        (stale.code(), reason(&stale)),
        (Code::Aborted, "STALE_ATTEMPT".into())
    );
    let missing = error(&results[5]);
    assert_eq!(
        (missing.code(), reason(&missing)),
        (Code::NotFound, "JOB_NOT_FOUND".into())
    );
    let succeeded = response(&results[6]);
    assert_eq!(status_of(succeeded.job.as_ref().unwrap()), S::Succeeded);
    assert_eq!(succeeded.events.len(), 1);
    assert_eq!(violated_fields(&error(&results[7])), ["retry_after"]);
    assert_eq!(response(&results[8]).job.as_ref().unwrap().attempt, 1);
    let fenced = error(&results[9]);
    assert_eq!(
        (fenced.code(), reason(&fenced)),
        (Code::FailedPrecondition, "JOB_NOT_RUNNING".into())
    );
    let foreign = error(&results[10]);
    assert_eq!(
        (foreign.code(), reason(&foreign)),
        (Code::NotFound, "JOB_NOT_FOUND".into())
    );
    assert_eq!(violated_fields(&error(&results[11])), ["lease"]);

    // The rows: what the entries did, in their order.
    assert_eq!(
        steps(&app.db, &held).await,
        [
            "-->queued",
            "queued->running",
            "running->running",
            "running->succeeded"
        ]
    );
    assert_eq!(
        steps(&app.db, &queued).await,
        ["-->queued", "queued->running", "running->running"]
    );
    assert_eq!(job_row(&app.db, &untouched).await.status, "queued");
    assert_eq!(steps(&app.db, &failed).await.len(), 3);
    assert_eq!(job_row(&app.db, &elsewhere).await.status, "queued");

    // Each refusal is the one a call of its own gets now (the entries whose job has not
    // moved on since).
    for i in [1, 2, 5, 7, 9, 10, 11] {
        let alone = app
            .transition_with(entries[i].clone())
            .await
            .expect_err("refused alone too");
        assert_eq!(essence(&error(&results[i])), essence(&alone), "entry {i}");
        assert_eq!(error(&results[i]).message(), alone.message(), "entry {i}");
    }
    assert_invariants_hold(&app.db).await;
}

#[tokio::test]
async fn a_batch_of_1000_is_accepted_and_one_over_is_invalid_argument() {
    let app = spawn_app().await;
    let jobs = create_many(&app, 1001, new_job("batch_size")).await;
    let start = |job: &proto::Job| proto::TransitionJobRequest {
        job_id: job.id.clone(),
        to_status: S::Running as i32,
        expected_status: Some(S::Queued as i32),
        ..Default::default()
    };
    let status = transition_jobs(&app, jobs.iter().map(start).collect())
        .await
        .expect_err("1001 entries are refused");
    assert_eq!(violated_fields(&status), ["transitions"]);
    assert_eq!(running(&app.db, "batch_size").await, 0, "nothing written");

    let results = transition_jobs(&app, jobs[..1000].iter().map(start).collect())
        .await
        .expect("1000 entries");
    assert_eq!(results.len(), 1000);
    for (result, job) in results.iter().zip(&jobs) {
        assert_eq!(response(result).job.as_ref().unwrap().id, job.id);
    }
    assert_eq!(running(&app.db, "batch_size").await, 1000);
}

/// A job another transaction holds does not hold up the rest of the batch; its entries
/// still apply in their order once it is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_job_holds_up_only_its_own_entries_which_still_apply_in_order() {
    const REPORTS: usize = 8;
    let app = spawn_app().await;
    let busy = create(&app, new_job("batch_busy")).await.id;
    let free = create(&app, new_job("batch_busy")).await.id;
    // Another writer holds the busy job's row.
    let mut holder = app.db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM job WHERE id = $1 FOR UPDATE")
        .bind(uuid(&busy))
        .execute(&mut *holder)
        .await
        .unwrap();

    // The busy job: a start, progress reports of stages 1..=8, a success; then the free
    // job's start.
    let mut entries = vec![proto::TransitionJobRequest {
        job_id: busy.clone(),
        to_status: S::Running as i32,
        ..Default::default()
    }];
    for stage in 1..=REPORTS {
        entries.push(proto::TransitionJobRequest {
            stage: stage.to_string(),
            ..report(&busy, S::Running, 1)
        });
    }
    entries.push(report(&busy, S::Succeeded, 1));
    entries.push(proto::TransitionJobRequest {
        job_id: free.clone(),
        to_status: S::Running as i32,
        ..Default::default()
    });
    let batch = {
        let mut client = app.new_client().await;
        tokio::spawn(async move {
            client
                .transition_jobs(proto::TransitionJobsRequest {
                    transitions: entries,
                })
                .await
                .map(|r| r.into_inner().results)
        })
    };
    // The free job's entry is written while the busy one waits.
    eventually(
        Duration::from_secs(10),
        "the free job's entry to be written",
        || async { (job_row(&app.db, &free).await.status == "running").then_some(()) },
    )
    .await;
    assert!(
        !batch.is_finished(),
        "the busy job's entries cannot have been written yet"
    );
    holder.commit().await.unwrap();

    let results = batch.await.unwrap().expect("the batch");
    let outcomes: Vec<String> = results
        .iter()
        .map(|r| match (&r.response, &r.error) {
            (Some(response), None) => {
                let job = response.job.as_ref().unwrap();
                format!("{:?} stage {:?}", status_of(job), job.stage)
            }
            (_, Some(error)) => format!("refused: {}", reason(&entry_status(error))),
            _ => panic!("neither response nor error: {r:?}"),
        })
        .collect();
    // As calls of their own sent one after the other.
    let mut expected = vec![format!("{:?} stage \"\"", S::Running)];
    for stage in 1..=REPORTS {
        expected.push(format!("{:?} stage \"{stage}\"", S::Running));
    }
    expected.push(format!("{:?} stage \"{REPORTS}\"", S::Succeeded));
    expected.push(format!("{:?} stage \"\"", S::Running));
    assert_eq!(outcomes, expected);
    let stages: Vec<Option<String>> = events(&app.db, &busy)
        .await
        .iter()
        .filter(|e| e.step() == "running->running")
        .map(|e| {
            e.detail_json
                .as_ref()
                .and_then(|d| d.0.get("stage"))
                .and_then(|s| s.as_str())
                .map(str::to_owned)
        })
        .collect();
    let in_order: Vec<Option<String>> = (1..=REPORTS).map(|s| Some(s.to_string())).collect();
    assert_eq!(
        stages, in_order,
        "the progress events, in the entries' order"
    );
}

#[tokio::test]
async fn a_request_id_repeated_in_a_batch_is_applied_once() {
    let app = spawn_app().await;
    let id = create(&app, new_job("batch_replay")).await.id;
    let start = proto::TransitionJobRequest {
        job_id: id.clone(),
        to_status: S::Running as i32,
        request_id: "start-once".into(),
        ..Default::default()
    };
    let cancel_same_id = proto::TransitionJobRequest {
        to_status: S::Canceled as i32,
        ..start.clone()
    };
    let results = transition_jobs(&app, vec![start.clone(), start.clone(), cancel_same_id])
        .await
        .unwrap();
    let (first, second) = (response(&results[0]), response(&results[1]));
    assert_eq!(
        first.events, second.events,
        "the repeat is the same outcome"
    );
    let reused = error(&results[2]);
    assert_eq!(
        (reused.code(), reason(&reused)),
        (Code::AlreadyExists, "REQUEST_ID_REUSED".into())
    );
    assert_eq!(steps(&app.db, &id).await, ["-->queued", "queued->running"]);
    // And a call of its own later replays it too.
    let later = app.transition_with(start).await.unwrap();
    assert_eq!(later.events, first.events);
}
