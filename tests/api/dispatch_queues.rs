//! Queues (spec §7; an org's jobs of one type): a running limit that racing claimers
//! never overshoot, pause and resume (a waiting claim woken by the resume), and
//! ListQueues' numbers.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use chrono::{TimeDelta, Utc};
use jobledger::proto::{self, JobStatus as S};
use uuid::Uuid;

use crate::dispatch_support::*;
use crate::helpers::{spawn_app, spawn_app_with, TestApp};

async fn update_queue(app: &TestApp, request: proto::UpdateQueueRequest) -> proto::Queue {
    app.client
        .clone()
        .update_queue(request)
        .await
        .unwrap_or_else(|s| panic!("update_queue refused: {s:?}"))
        .into_inner()
        .queue
        .expect("the queue")
}

fn limit(job_type: &str, max_running: i32) -> proto::UpdateQueueRequest {
    proto::UpdateQueueRequest {
        r#type: job_type.to_owned(),
        max_running: Some(max_running),
        ..Default::default()
    }
}

fn pause(job_type: &str, paused: bool) -> proto::UpdateQueueRequest {
    proto::UpdateQueueRequest {
        r#type: job_type.to_owned(),
        paused: Some(paused),
        ..Default::default()
    }
}

async fn list_queues(app: &TestApp, org_id: &str, job_type: &str) -> Vec<proto::Queue> {
    app.client
        .clone()
        .list_queues(proto::ListQueuesRequest {
            org_id: org_id.to_owned(),
            r#type: job_type.to_owned(),
        })
        .await
        .unwrap_or_else(|s| panic!("list_queues refused: {s:?}"))
        .into_inner()
        .queues
}

fn seconds(d: &Option<prost_types::Duration>) -> f64 {
    let d = d.as_ref().expect("a duration");
    d.seconds as f64 + f64::from(d.nanos) / 1e9
}

const LIMITED_JOBS: usize = 50;
const LIMIT: i64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_limit_of_3_is_never_exceeded_by_32_racing_claimers_on_two_servers() {
    let app = spawn_app_with(|c| c.pool_size = 6).await;
    let replica = crate::helpers::spawn_app_on(&crate::helpers::base_url(), &app.db_name, |c| {
        c.pool_size = 6
    })
    .await;
    let queue = update_queue(&app, limit("limited", LIMIT as i32)).await;
    assert_eq!((queue.max_running, queue.paused), (3, false));
    create_many(&app, LIMITED_JOBS, new_job("limited")).await;

    // The database, watched all along.
    let stop = Arc::new(AtomicBool::new(false));
    let most_seen = Arc::new(AtomicI64::new(0));
    let monitor = {
        let (db, stop, most_seen) = (app.db.clone(), stop.clone(), most_seen.clone());
        tokio::spawn(async move {
            let mut looks = 0;
            while !stop.load(Ordering::SeqCst) {
                most_seen.fetch_max(running(&db, "limited").await, Ordering::SeqCst);
                looks += 1;
            }
            looks
        })
    };

    // Jobs held, seen from the workers: counted from the claim's answer until just
    // before the completion is sent, a span within the job's time RUNNING, so it can
    // never exceed the limit either.
    let held = Arc::new(AtomicI64::new(0));
    let most_held = Arc::new(AtomicI64::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let most_after_claim = Arc::new(AtomicI64::new(0));
    let mut claimers = Vec::new();
    for i in 0..32 {
        let server = if i % 2 == 0 { &app } else { &replica };
        let mut client = server.new_client().await;
        let db = app.db.clone();
        let (held, most_held, done, most_after_claim) = (
            held.clone(),
            most_held.clone(),
            done.clone(),
            most_after_claim.clone(),
        );
        claimers.push(tokio::spawn(async move {
            let worker = format!("w{i}");
            let give_up = Instant::now() + Duration::from_secs(60);
            let mut claims = 0;
            while done.load(Ordering::SeqCst) < LIMITED_JOBS {
                assert!(Instant::now() < give_up, "{worker}: the jobs never all ran");
                let request = proto::ClaimJobsRequest {
                    wait: Some(ms(500)),
                    ..claim_of(&["limited"], &worker, 1 + (i % 7))
                };
                let jobs = jobs_of(&claim_on(&mut client, request).await.unwrap());
                if jobs.is_empty() {
                    continue;
                }
                claims += 1;
                let now = held.fetch_add(jobs.len() as i64, Ordering::SeqCst) + jobs.len() as i64;
                most_held.fetch_max(now, Ordering::SeqCst);
                most_after_claim.fetch_max(running(&db, "limited").await, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                for job in jobs {
                    held.fetch_sub(1, Ordering::SeqCst);
                    client
                        .transition_job(report(&job.id, S::Succeeded, job.attempt))
                        .await
                        .unwrap_or_else(|s| panic!("{worker}: completion refused: {s:?}"));
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }
            claims
        }));
    }
    let mut claims = 0;
    for c in claimers {
        claims += c.await.expect("claimer task");
    }
    stop.store(true, Ordering::SeqCst);
    let looks = monitor.await.unwrap();
    let (most_seen, most_held, most_after_claim) = (
        most_seen.load(Ordering::SeqCst),
        most_held.load(Ordering::SeqCst),
        most_after_claim.load(Ordering::SeqCst),
    );
    println!(
        "limit {LIMIT}: {claims} successful claims; most RUNNING seen by the monitor {most_seen} \
         ({looks} looks), right after a claim {most_after_claim}, held by workers {most_held}"
    );
    assert!(most_seen <= LIMIT, "{most_seen} RUNNING at once");
    assert!(
        most_after_claim <= LIMIT,
        "{most_after_claim} RUNNING after a claim"
    );
    assert!(most_held <= LIMIT, "workers held {most_held} jobs at once");
    assert!(
        most_held >= 2,
        "the limit was never approached: the test proves little"
    );
    assert_eq!(
        statuses(&app.db, "limited").await,
        [("succeeded".into(), 50)]
    );
    assert_invariants_hold(&app.db).await;
}

#[tokio::test]
async fn completing_a_job_frees_a_slot_raising_the_limit_wakes_a_waiting_claim_and_0_is_none() {
    let app = spawn_app().await;
    update_queue(&app, limit("lim", 2)).await;
    let other_org = Uuid::new_v4().to_string();
    create_many(&app, 7, new_job("lim")).await;
    create_many(
        &app,
        3,
        proto::CreateJobRequest {
            org_id: other_org.clone(),
            ..new_job("lim")
        },
    )
    .await;

    let first = jobs_of(&claim(&app, claim_of(&["lim"], "w", 5)).await);
    assert_eq!(first.len(), 2, "limit 2");
    assert!(
        claim(&app, claim_of(&["lim"], "w", 5)).await.is_empty(),
        "full"
    );
    // The limit is the org's: the same type in another org is not limited.
    let theirs = proto::ClaimJobsRequest {
        org_id: other_org.clone(),
        ..claim_of(&["lim"], "w", 5)
    };
    assert_eq!(claim(&app, theirs).await.len(), 3);

    // Completing one frees one slot.
    transition_ok(&app, report(&first[0].id, S::Succeeded, 1)).await;
    assert_eq!(claim(&app, claim_of(&["lim"], "w", 5)).await.len(), 1);
    assert!(
        claim(&app, claim_of(&["lim"], "w", 5)).await.is_empty(),
        "full"
    );
    // A failure leaves RUNNING too (the job retries in an hour).
    transition_ok(
        &app,
        proto::TransitionJobRequest {
            retry_after: Some(secs(3600)),
            ..report(&first[1].id, S::Failed, 1)
        },
    )
    .await;
    assert_eq!(claim(&app, claim_of(&["lim"], "w", 5)).await.len(), 1);
    assert_eq!(running(&app.db, "lim").await, 2 + 3);

    // A claim waiting on the full queue is woken when the limit is raised.
    let waiting = {
        let mut client = app.new_client().await;
        tokio::spawn(async move {
            let request = proto::ClaimJobsRequest {
                wait: Some(secs(20)),
                ..claim_of(&["lim"], "waiter", 5)
            };
            let answer = claim_on(&mut client, request).await;
            (answer, Instant::now())
        })
    };
    until_waiting(&app, 1).await;
    let raised = Instant::now();
    let queue = update_queue(&app, limit("lim", 3)).await;
    assert_eq!(queue.max_running, 3);
    let (answer, answered) = waiting.await.unwrap();
    let woken_after = answered - raised;
    println!("a claim waiting on a full queue answered {woken_after:?} after the limit was raised");
    assert_eq!(answer.unwrap().len(), 1);
    assert!(woken_after < Duration::from_secs(1), "{woken_after:?}");

    // 0: no limit.
    let queue = update_queue(&app, limit("lim", 0)).await;
    assert_eq!(queue.max_running, 0);
    assert_eq!(claim(&app, claim_of(&["lim"], "w", 5)).await.len(), 2);
    assert_eq!(running(&app.db, "lim").await, 3 + 2 + 3);
}

#[tokio::test]
async fn list_queues_counts_ready_scheduled_and_running_jobs_and_shows_the_settings() {
    let app = spawn_app().await;
    let t = "lq";
    let at = |offset: TimeDelta| Some(timestamp(Utc::now() + offset));
    // Ready: one claimable for ten minutes already, two just created.
    create(
        &app,
        proto::CreateJobRequest {
            run_after: at(-TimeDelta::minutes(10)),
            ..new_job(t)
        },
    )
    .await;
    create_many(&app, 2, new_job(t)).await;
    // Scheduled: due in an hour.
    create(
        &app,
        proto::CreateJobRequest {
            run_after: at(TimeDelta::hours(1)),
            ..new_job(t)
        },
    )
    .await;
    // Six urgent jobs claimed, then: one failed to retry in an hour (scheduled), one
    // failed to retry at once (ready), one left RUNNING, one dead-lettered, one
    // succeeded, one canceled (none of the last three counts).
    let urgent = |max_attempts: i32| proto::CreateJobRequest {
        priority: 10,
        max_attempts,
        ..new_job(t)
    };
    for max_attempts in [5, 5, 5, 1, 5, 5] {
        create(&app, urgent(max_attempts)).await;
    }
    let mut claimed = jobs_of(&claim(&app, claim_of(&[t], "w", 6)).await);
    claimed.sort_by_key(|j| j.max_attempts);
    assert_eq!(claimed.len(), 6);
    let dead = &claimed[0];
    assert_eq!(dead.max_attempts, 1);
    let failed = |id: &str, retry_after: prost_types::Duration| proto::TransitionJobRequest {
        retry_after: Some(retry_after),
        ..report(id, S::Failed, 1)
    };
    transition_ok(&app, failed(&claimed[1].id, secs(3600))).await;
    transition_ok(&app, failed(&claimed[2].id, ms(0))).await;
    transition_ok(&app, report(&dead.id, S::Failed, 1)).await;
    transition_ok(&app, report(&claimed[4].id, S::Succeeded, 1)).await;
    transition_ok(&app, report(&claimed[5].id, S::Canceled, 1)).await;
    // Another type, another org, and a configured queue without jobs.
    create(&app, new_job("lq2")).await;
    create(
        &app,
        proto::CreateJobRequest {
            org_id: Uuid::new_v4().to_string(),
            ..new_job(t)
        },
    )
    .await;
    update_queue(&app, pause("lq0", true)).await;

    let queues = list_queues(&app, "", "").await;
    let types: Vec<&str> = queues.iter().map(|q| q.r#type.as_str()).collect();
    assert_eq!(types, ["lq", "lq0", "lq2"], "by type");
    let lq = &queues[0];
    assert_eq!(
        (
            lq.ready,
            lq.scheduled,
            lq.running,
            lq.paused,
            lq.max_running
        ),
        (4, 2, 1, false, 0),
        "{lq:?}"
    );
    let age = seconds(&lq.oldest_ready_age);
    assert!((599.0..660.0).contains(&age), "oldest ready age {age} s");
    let lq0 = &queues[1];
    assert_eq!(
        (lq0.ready, lq0.scheduled, lq0.running, lq0.paused),
        (0, 0, 0, true),
        "{lq0:?}"
    );
    assert_eq!(seconds(&lq0.oldest_ready_age), 0.0);
    let lq2 = &queues[2];
    assert_eq!(
        (lq2.ready, lq2.scheduled, lq2.running),
        (1, 0, 0),
        "{lq2:?}"
    );
    assert!(seconds(&lq2.oldest_ready_age) < 60.0);

    // Paused and limited: the settings change, the counts (ready ignores the pause) do not.
    let updated = update_queue(
        &app,
        proto::UpdateQueueRequest {
            r#type: t.into(),
            paused: Some(true),
            max_running: Some(5),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        (
            updated.r#type.as_str(),
            updated.paused,
            updated.max_running,
            updated.ready,
            updated.scheduled,
            updated.running
        ),
        ("lq", true, 5, 4, 2, 1)
    );
    let only = list_queues(&app, "", t).await;
    assert_eq!(only.len(), 1, "filtered by type: {only:?}");
    assert_eq!(
        (only[0].paused, only[0].max_running, only[0].ready),
        (true, 5, 4)
    );
    // A setting left unset is unchanged.
    let resumed = update_queue(&app, pause(t, false)).await;
    assert_eq!((resumed.paused, resumed.max_running), (false, 5));
}

#[tokio::test]
async fn a_paused_queue_hands_out_nothing_keeps_its_jobs_and_a_resume_wakes_a_waiting_claim() {
    let app = spawn_app_with(|c| c.dispatch.recheck_interval = Duration::from_secs(30)).await;
    let paused_jobs = create_many(&app, 3, new_job("p")).await;
    let other_type = create(&app, new_job("np")).await;
    let other_org = Uuid::new_v4().to_string();
    create(
        &app,
        proto::CreateJobRequest {
            org_id: other_org.clone(),
            ..new_job("p")
        },
    )
    .await;

    let queue = update_queue(&app, pause("p", true)).await;
    assert!(queue.paused);
    assert_eq!(queue.ready, 3);
    assert!(claim(&app, claim_of(&["p"], "w", 10)).await.is_empty());
    let both = ids_of(&claim(&app, claim_of(&["p", "np"], "w", 10)).await);
    assert_eq!(both, [other_type.id], "only the queue that is not paused");
    // Pausing is per org.
    let theirs = proto::ClaimJobsRequest {
        org_id: other_org,
        ..claim_of(&["p"], "w", 10)
    };
    assert_eq!(claim(&app, theirs).await.len(), 1);
    for job in &paused_jobs {
        let row = job_row(&app.db, &job.id).await;
        assert_eq!((row.status.as_str(), row.attempt), ("queued", 0));
    }
    // Changing only the limit leaves it paused.
    assert!(update_queue(&app, limit("p", 0)).await.paused);
    assert!(claim(&app, claim_of(&["p"], "w", 10)).await.is_empty());

    // A claim waiting on the paused queue is woken by the resume.
    let waiting = {
        let mut client = app.new_client().await;
        tokio::spawn(async move {
            let request = proto::ClaimJobsRequest {
                wait: Some(secs(20)),
                ..claim_of(&["p"], "waiter", 1)
            };
            let answer = claim_on(&mut client, request).await;
            (answer, Instant::now())
        })
    };
    until_waiting(&app, 1).await;
    let resumed = Instant::now();
    assert!(!update_queue(&app, pause("p", false)).await.paused);
    let (answer, answered) = waiting.await.unwrap();
    let latency = answered - resumed;
    println!("a claim waiting on a paused queue answered {latency:?} after the resume");
    let got = jobs_of(&answer.unwrap());
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].lease_holder, "waiter");
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    // The rest are claimable again; nothing was lost.
    assert_eq!(claim(&app, claim_of(&["p"], "w", 10)).await.len(), 2);
    assert_eq!(statuses(&app.db, "p").await, [("running".into(), 4)]);
}

/// The most RUNNING jobs of `job_type` in any one org now.
async fn most_running_in_an_org(db: &sqlx::PgPool, job_type: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(max(n), 0) FROM (
            SELECT count(*) AS n FROM job WHERE type = $1 AND status = 'running'
            GROUP BY org_id) AS per_org",
    )
    .bind(job_type)
    .fetch_one(db)
    .await
    .unwrap()
}

/// Claims of every org take from several limited queues at once, while workers of single
/// orgs claim from theirs (each org's queue limited to 1; claims of up to 7 jobs;
/// claimers that do not wait, so their transactions overlap and find some queues busy);
/// each queue's limit holds all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn running_limits_hold_for_racing_claims_of_every_org() {
    const ORGS: usize = 6;
    const PER_ORG: usize = 10;
    const ORG_LIMIT: i64 = 1;
    let app = spawn_app().await;
    let orgs: Vec<String> = (0..ORGS).map(|_| Uuid::new_v4().to_string()).collect();
    for org in orgs.clone() {
        update_queue(
            &app,
            proto::UpdateQueueRequest {
                org_id: org.clone(),
                ..limit("limited_all", ORG_LIMIT as i32)
            },
        )
        .await;
        create_many(
            &app,
            PER_ORG,
            proto::CreateJobRequest {
                org_id: org,
                ..new_job("limited_all")
            },
        )
        .await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let most_seen = Arc::new(AtomicI64::new(0));
    let monitor = {
        let (db, stop, most_seen) = (app.db.clone(), stop.clone(), most_seen.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                most_seen.fetch_max(
                    most_running_in_an_org(&db, "limited_all").await,
                    Ordering::SeqCst,
                );
            }
        })
    };
    let done = Arc::new(AtomicUsize::new(0));
    let most_claimed = Arc::new(AtomicUsize::new(0));
    let mut claimers = Vec::new();
    for i in 0..16 {
        let mut client = app.new_client().await;
        let (done, most_claimed) = (done.clone(), most_claimed.clone());
        // Even claimers serve every org, odd ones one org each.
        let (all_orgs, org_id) = match i % 2 {
            0 => (true, String::new()),
            _ => (false, orgs[i % ORGS].clone()),
        };
        claimers.push(tokio::spawn(async move {
            let give_up = Instant::now() + Duration::from_secs(60);
            while done.load(Ordering::SeqCst) < ORGS * PER_ORG {
                assert!(Instant::now() < give_up, "the jobs never all ran");
                let request = proto::ClaimJobsRequest {
                    all_orgs,
                    org_id: org_id.clone(),
                    ..claim_of(&["limited_all"], &format!("w{i}"), 7)
                };
                let jobs = jobs_of(&claim_on(&mut client, request).await.unwrap());
                if jobs.is_empty() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                // A claim may take at most one job of each org.
                for job in &jobs {
                    let of_org = jobs.iter().filter(|j| j.org_id == job.org_id).count();
                    most_claimed.fetch_max(of_org, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                for job in jobs {
                    client
                        .transition_job(proto::TransitionJobRequest {
                            org_id: job.org_id.clone(),
                            ..report(&job.id, S::Succeeded, job.attempt)
                        })
                        .await
                        .unwrap();
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for c in claimers {
        c.await.expect("claimer task");
    }
    stop.store(true, Ordering::SeqCst);
    monitor.await.unwrap();
    let (most_seen, most_claimed) = (
        most_seen.load(Ordering::SeqCst),
        most_claimed.load(Ordering::SeqCst) as i64,
    );
    println!(
        "limit {ORG_LIMIT} per org, claims of every org: most RUNNING in one org seen {most_seen}, \
         most jobs of one org in one claim {most_claimed}"
    );
    assert!(
        most_claimed <= ORG_LIMIT,
        "one claim took {most_claimed} jobs of one org's queue"
    );
    assert!(
        most_seen <= ORG_LIMIT,
        "{most_seen} RUNNING in one org's queue"
    );
    assert_eq!(
        statuses(&app.db, "limited_all").await,
        [("succeeded".into(), (ORGS * PER_ORG) as i64)]
    );
}

/// A claim waiting on a queue at its limit is woken when a job of the queue leaves
/// RUNNING on another server.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_freed_on_another_server_wakes_a_claim_waiting_on_a_full_queue() {
    let settings = |c: &mut jobledger::server::Config| {
        c.dispatch.recheck_interval = Duration::from_secs(30);
        c.pool_size = 6;
    };
    let a = spawn_app_with(settings).await;
    let b = crate::helpers::spawn_app_on(&crate::helpers::base_url(), &a.db_name, settings).await;
    update_queue(&a, limit("slot", 1)).await;
    create_many(&a, 2, new_job("slot")).await;
    let held = jobs_of(&claim(&a, claim_of(&["slot"], "first", 1)).await);
    assert_eq!(held.len(), 1);
    let waiting = {
        let mut client = a.new_client().await;
        tokio::spawn(async move {
            let request = proto::ClaimJobsRequest {
                wait: Some(secs(20)),
                ..claim_of(&["slot"], "second", 1)
            };
            (claim_on(&mut client, request).await, Instant::now())
        })
    };
    until_waiting(&a, 1).await;
    transition_ok(&b, report(&held[0].id, S::Succeeded, 1)).await;
    let freed = Instant::now();
    let (answer, answered) = waiting.await.unwrap();
    let latency = answered.saturating_duration_since(freed);
    println!(
        "a claim waiting on a full queue, slot freed on another server: answered after {latency:?}"
    );
    assert_eq!(jobs_of(&answer.unwrap()).len(), 1);
    assert!(latency < Duration::from_secs(1), "{latency:?}");
}

/// A resume (or a raised limit) on one server wakes a claim waiting on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resume_on_another_server_wakes_a_waiting_claim() {
    let settings = |c: &mut jobledger::server::Config| {
        c.dispatch.recheck_interval = Duration::from_secs(30);
        c.pool_size = 6;
    };
    let a = spawn_app_with(settings).await;
    let b = crate::helpers::spawn_app_on(&crate::helpers::base_url(), &a.db_name, settings).await;
    update_queue(&a, pause("remote_resume", true)).await;
    let job = create(&a, new_job("remote_resume")).await;
    let waiting = {
        let mut client = b.new_client().await;
        tokio::spawn(async move {
            let request = proto::ClaimJobsRequest {
                wait: Some(secs(20)),
                ..claim_of(&["remote_resume"], "waiter", 1)
            };
            (claim_on(&mut client, request).await, Instant::now())
        })
    };
    until_waiting(&b, 1).await;
    update_queue(&a, pause("remote_resume", false)).await;
    let resumed = Instant::now();
    let (answer, answered) = waiting.await.unwrap();
    let latency = answered.saturating_duration_since(resumed);
    println!("a claim waiting on another server answered {latency:?} after the resume");
    assert_eq!(ids_of(&answer.unwrap()), [job.id]);
    assert!(latency < Duration::from_secs(1), "{latency:?}");
}
