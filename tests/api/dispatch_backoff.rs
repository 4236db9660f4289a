//! Retry backoff (spec §7): a failure with attempts left sets run_after = now + d × [0.5,
//! 1.0), d = min(max_backoff, initial_backoff × 2^(attempt − 1)) from the job's
//! RetryPolicy; the job is not claimable before it and is after; a worker's retry_after
//! replaces the backoff; the last attempt's failure dead-letters with no run_after.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use jobledger::proto::{self, JobStatus as S};

use crate::dispatch_support::*;
use crate::helpers::{spawn_app, spawn_app_with, violated_fields, TestApp};

fn policy(initial_ms: Option<u64>, max_ms: Option<u64>) -> proto::RetryPolicy {
    proto::RetryPolicy {
        initial_backoff: initial_ms.map(ms),
        max_backoff: max_ms.map(ms),
    }
}

/// The delay a failure scheduled: run_after − the failure's time, in ms.
fn scheduled_delay_ms(job: &proto::Job) -> f64 {
    let run_after = time(
        job.run_after
            .as_ref()
            .expect("a failure with attempts left has run_after"),
    );
    let failed_at = time(job.finished_at.as_ref().expect("FAILED has finished_at"));
    (run_after - failed_at).num_microseconds().unwrap() as f64 / 1000.0
}

/// Asserts the delay lies in d × [0.5, 1.0) (1 ms of rounding allowed either side).
#[track_caller]
fn assert_backoff(job: &proto::Job, d_ms: f64) {
    let delay = scheduled_delay_ms(job);
    assert!(
        delay >= d_ms * 0.5 - 1.0 && delay < d_ms + 1.0,
        "attempt {}: delay {delay} ms outside [{}, {d_ms}) ms",
        job.attempt,
        d_ms * 0.5
    );
}

async fn fail(app: &TestApp, id: &str, attempt: i32) -> proto::Job {
    let response = transition_ok(
        app,
        proto::TransitionJobRequest {
            error_code: "E_TEST".into(),
            ..report(id, S::Failed, attempt)
        },
    )
    .await;
    response.job.expect("job")
}

#[tokio::test]
async fn each_failure_waits_out_its_backoff_before_the_job_is_claimable_again() {
    // A long recheck: only the run_after timer can wake the waiting claims in time.
    let app = spawn_app_with(|c| c.dispatch.recheck_interval = Duration::from_secs(30)).await;
    let job = create(
        &app,
        proto::CreateJobRequest {
            max_attempts: 5,
            retry_policy: Some(policy(Some(200), Some(1000))),
            ..new_job("backoff")
        },
    )
    .await;
    let claimed = jobs_of(&claim(&app, claim_of(&["backoff"], "w", 1)).await);
    assert_eq!(claimed[0].id, job.id);

    for attempt in 1..=4 {
        let failed = fail(&app, &job.id, attempt).await;
        assert_eq!((status_of(&failed), failed.attempt), (S::Failed, attempt));
        let d = (200.0 * 2f64.powi(attempt - 1)).min(1000.0);
        assert_backoff(&failed, d);
        let run_after = time(failed.run_after.as_ref().unwrap());
        let row = job_row(&app.db, &job.id).await;
        assert_eq!(
            row.run_after,
            Some(run_after),
            "the row holds the run_after shown"
        );
        assert_eq!(app.get(&job.id).await.unwrap().run_after, failed.run_after);

        // Not before run_after ...
        let asked = Utc::now();
        let early = claim(&app, claim_of(&["backoff"], "w", 1)).await;
        if asked + TimeDelta::milliseconds(20) < run_after {
            assert!(
                early.is_empty(),
                "attempt {attempt}: claimed before its run_after"
            );
        }
        // ... and as soon as it is due: a waiting claim gets it.
        let got = if early.is_empty() {
            let request = proto::ClaimJobsRequest {
                wait: Some(secs(10)),
                ..claim_of(&["backoff"], "w", 1)
            };
            jobs_of(&claim(&app, request).await)
        } else {
            jobs_of(&early)
        };
        let answered = Utc::now();
        assert_eq!(
            got.len(),
            1,
            "attempt {attempt}: the retry was never claimed"
        );
        let retried = &got[0];
        assert_eq!(
            (retried.attempt, status_of(retried)),
            (attempt + 1, S::Running)
        );
        let started = time(retried.started_at.as_ref().unwrap());
        assert!(
            started >= run_after,
            "attempt {attempt}: started {started} < {run_after}"
        );
        let late = answered - run_after;
        println!(
            "attempt {attempt}: backoff {:.0} ms of d = {d} ms; a waiting claim got the retry {} ms after its run_after",
            scheduled_delay_ms(&failed),
            late.num_milliseconds()
        );
        assert!(
            late < TimeDelta::seconds(1),
            "attempt {attempt}: {late:?} late"
        );
    }

    // The last attempt's failure dead-letters: no run_after, nothing to claim.
    let last = fail(&app, &job.id, 5).await;
    assert_eq!((status_of(&last), last.attempt), (S::DeadLetter, 5));
    assert_eq!(last.run_after, None);
    assert_eq!(job_row(&app.db, &job.id).await.run_after, None);
    let tail: Vec<String> = steps(&app.db, &job.id).await.split_off(10);
    assert_eq!(tail, ["running->failed", "failed->dead_letter"]);
    assert!(claim(&app, claim_of(&["backoff"], "w", 1)).await.is_empty());
    assert_invariants_hold(&app.db).await;
}

#[tokio::test]
async fn the_default_policy_and_a_partial_policy_use_the_server_defaults() {
    let app = spawn_app().await;
    // The defaults: initial 1 s, max 1 h.
    let job = create(&app, new_job("defaults")).await;
    app.transition(&job.id, S::Running).await.unwrap();
    assert_backoff(&fail(&app, &job.id, 1).await, 1000.0);
    // A retry by hand (it fences with expected_status) is not held back by run_after.
    let retry = proto::TransitionJobRequest {
        expected_status: Some(S::Failed as i32),
        ..report(&job.id, S::Running, 1)
    };
    let retried = transition_ok(&app, retry).await.job.unwrap();
    assert_eq!((retried.attempt, retried.run_after), (2, None));
    assert_backoff(&fail(&app, &job.id, 2).await, 2000.0);

    // Only a max: the default initial 1 s, capped at 300 ms.
    let capped = create(
        &app,
        proto::CreateJobRequest {
            retry_policy: Some(policy(None, Some(300))),
            ..new_job("defaults")
        },
    )
    .await;
    app.transition(&capped.id, S::Running).await.unwrap();
    assert_backoff(&fail(&app, &capped.id, 1).await, 300.0);
    // Only an initial: doubled per attempt.
    let initial = create(
        &app,
        proto::CreateJobRequest {
            retry_policy: Some(policy(Some(50), None)),
            ..new_job("defaults")
        },
    )
    .await;
    app.transition(&initial.id, S::Running).await.unwrap();
    assert_backoff(&fail(&app, &initial.id, 1).await, 50.0);
}

#[tokio::test]
async fn retry_after_on_a_failure_replaces_the_backoff() {
    let app = spawn_app().await;
    let job = create(
        &app,
        proto::CreateJobRequest {
            max_attempts: 3,
            retry_policy: Some(policy(Some(10), Some(10))),
            ..new_job("retry_after")
        },
    )
    .await;
    assert_eq!(
        claim(&app, claim_of(&["retry_after"], "w", 1)).await.len(),
        1
    );
    let failed = |attempt: i32, after: prost_types::Duration| proto::TransitionJobRequest {
        retry_after: Some(after),
        error_code: "RATE_LIMITED".into(),
        ..report(&job.id, S::Failed, attempt)
    };

    // A rate-limited worker asks for 2.5 s.
    let later = transition_ok(&app, failed(1, ms(2500))).await.job.unwrap();
    let delay = scheduled_delay_ms(&later);
    assert!(
        (2499.0..=2501.0).contains(&delay),
        "retry_after 2.5 s gave {delay} ms"
    );
    assert!(claim(&app, claim_of(&["retry_after"], "w", 1))
        .await
        .is_empty());
    // Back to work by hand, then 0: claimable at once.
    transition_ok(
        &app,
        proto::TransitionJobRequest {
            expected_status: Some(S::Failed as i32),
            ..report(&job.id, S::Running, 1)
        },
    )
    .await;
    let now = transition_ok(&app, failed(2, ms(0))).await.job.unwrap();
    assert!(scheduled_delay_ms(&now).abs() < 1.0);
    let retried = jobs_of(&claim(&app, claim_of(&["retry_after"], "w", 1)).await);
    assert_eq!(retried.len(), 1, "retry_after 0: claimable at once");
    assert_eq!(retried[0].attempt, 3);
    // The last attempt dead-letters whatever retry_after says.
    let dead = transition_ok(&app, failed(3, secs(10))).await.job.unwrap();
    assert_eq!((status_of(&dead), dead.run_after), (S::DeadLetter, None));
}

#[tokio::test]
async fn retry_after_with_any_status_but_failed_is_invalid_argument() {
    let app = spawn_app().await;
    let job = create(&app, new_job("retry_after_bad")).await;
    assert_eq!(
        claim(&app, claim_of(&["retry_after_bad"], "w", 1))
            .await
            .len(),
        1
    );
    let before = job_row(&app.db, &job.id).await;
    for to in [
        S::Running,
        S::Succeeded,
        S::Queued,
        S::Canceled,
        S::DeadLetter,
    ] {
        let request = proto::TransitionJobRequest {
            retry_after: Some(secs(5)),
            ..report(&job.id, to, 1)
        };
        let status = app.transition_with(request).await.expect_err("refused");
        assert_eq!(
            violated_fields(&status),
            ["retry_after"],
            "to {to:?}: {status:?}"
        );
    }
    // A negative one is refused with FAILED as well.
    let negative = proto::TransitionJobRequest {
        retry_after: Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        }),
        ..report(&job.id, S::Failed, 1)
    };
    let status = app.transition_with(negative).await.expect_err("refused");
    assert_eq!(violated_fields(&status), ["retry_after"]);
    assert_eq!(job_row(&app.db, &job.id).await, before, "nothing written");
}

/// Fails every job of `jobs` (RUNNING at `attempt`) in one TransitionJobs call; the
/// fraction of d each backoff came to.
async fn fail_all(app: &TestApp, jobs: &[String], attempt: i32, d_ms: f64) -> Vec<f64> {
    let results = app
        .client
        .clone()
        .transition_jobs(proto::TransitionJobsRequest {
            transitions: jobs
                .iter()
                .map(|id| report(id, S::Failed, attempt))
                .collect(),
        })
        .await
        .expect("transition_jobs")
        .into_inner()
        .results;
    results
        .iter()
        .map(|r| {
            let job = r.response.as_ref().expect("failed").job.as_ref().unwrap();
            assert_backoff(job, d_ms);
            scheduled_delay_ms(job) / d_ms
        })
        .collect()
}

fn pearson(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let cov: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let vx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    let vy: f64 = ys.iter().map(|y| (y - my).powi(2)).sum();
    cov / (vx * vy).sqrt()
}

/// The jitter spreads jobs that failed together over [0.5, 1.0) × d, and each failure
/// draws anew (uniform(0.5, 1.0) per failure, spec §7): a job's second backoff is not
/// its first one doubled.
#[tokio::test]
async fn jobs_that_fail_together_retry_spread_out_and_each_failure_draws_a_new_jitter() {
    const N: usize = 80;
    let app = spawn_app().await;
    let template = proto::CreateJobRequest {
        // Not the defaults: CreateJobs keeps each entry's policy.
        retry_policy: Some(policy(Some(400), Some(60_000))),
        ..new_job("jitter")
    };
    let ids: Vec<String> = create_many(&app, N, template)
        .await
        .into_iter()
        .map(|j| j.id)
        .collect();
    let start_all = |expected: S| {
        let ids = ids.clone();
        let app = &app;
        async move {
            let results = app
                .client
                .clone()
                .transition_jobs(proto::TransitionJobsRequest {
                    transitions: ids
                        .iter()
                        .map(|id| proto::TransitionJobRequest {
                            job_id: id.clone(),
                            to_status: S::Running as i32,
                            expected_status: Some(expected as i32),
                            ..Default::default()
                        })
                        .collect(),
                })
                .await
                .unwrap()
                .into_inner()
                .results;
            assert!(results.iter().all(|r| r.error.is_none()));
        }
    };
    start_all(S::Queued).await;
    let first = fail_all(&app, &ids, 1, 400.0).await;
    start_all(S::Failed).await;
    let second = fail_all(&app, &ids, 2, 800.0).await;

    // Spread: every fifth of [0.5, 1.0) has some of the jobs.
    let mut fifths = [0usize; 5];
    for f in &first {
        fifths[(((f - 0.5) / 0.1) as usize).min(4)] += 1;
    }
    println!("first backoffs of {N} jobs failed together, per fifth of [0.5, 1.0): {fifths:?}");
    assert!(fifths.iter().all(|n| *n > 0), "{fifths:?}");
    // A new draw per failure: the two attempts' factors are unrelated.
    let r = pearson(&first, &second);
    let same = first
        .iter()
        .zip(&second)
        .filter(|(a, b)| (*a - *b).abs() < 1e-3)
        .count();
    println!("correlation of the jitter of attempts 1 and 2 over {N} jobs: {r:.3}; {same} jobs drew the same factor twice");
    assert!(
        r.abs() < 0.5,
        "attempt 2's jitter follows attempt 1's (r = {r:.3})"
    );
}
