//! ClaimJobs (spec §7): every job handed out exactly once however many claimers race on
//! however many servers, in claim order (priority, then run_after or created_at), not
//! before its run_after, at most max_jobs at a time, and fairly across orgs.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use chrono::{TimeDelta, Utc};
use jobledger::proto::{self, JobStatus as S};
use uuid::Uuid;

use crate::dispatch_support::*;
use crate::helpers::{base_url, spawn_app, spawn_app_on, spawn_app_with, to_json};

const JOBS: usize = 200;
const CLAIMERS: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_job_is_claimed_exactly_once_by_32_claimers_on_two_servers() {
    // Two servers on one database; pools kept small (the shared PostgreSQL has 100
    // connections for every test running at once).
    let a = spawn_app_with(|c| c.pool_size = 6).await;
    let b = spawn_app_on(&base_url(), &a.db_name, |c| c.pool_size = 6).await;
    let created: BTreeSet<String> = create_many(&a, JOBS, new_job("once"))
        .await
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(created.len(), JOBS);

    let total = Arc::new(AtomicUsize::new(0));
    // Claims in flight at once, seen from the clients: the race must really happen.
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most_in_flight = Arc::new(AtomicUsize::new(0));
    let mut claimers = Vec::new();
    for i in 0..CLAIMERS {
        let server = if i % 2 == 0 { &a } else { &b };
        let mut client = server.new_client().await;
        let total = total.clone();
        let (in_flight, most_in_flight) = (in_flight.clone(), most_in_flight.clone());
        let worker = format!("worker-{i}");
        let max_jobs = 1 + (i % 7) as i32;
        claimers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let give_up = Instant::now() + Duration::from_secs(60);
            loop {
                let request = proto::ClaimJobsRequest {
                    lease: Some(secs(120)),
                    ..claim_of(&["once"], &worker, max_jobs)
                };
                let now_in_flight = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                most_in_flight.fetch_max(now_in_flight, Ordering::SeqCst);
                let answer = claim_on(&mut client, request).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                let answer = answer.unwrap_or_else(|s| panic!("{worker}: claim refused: {s:?}"));
                let received = Utc::now();
                assert!(
                    answer.len() <= max_jobs as usize,
                    "{worker} asked for {max_jobs} and got {}",
                    answer.len()
                );
                if answer.is_empty() {
                    // Nothing claimable for this claimer now: the others may hold the
                    // rest locked. Stop once every job is out (or the time is up).
                    if total.load(Ordering::SeqCst) >= JOBS || Instant::now() > give_up {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                total.fetch_add(answer.len(), Ordering::SeqCst);
                got.extend(answer.into_iter().map(|c| (c, received)));
            }
            (worker, got)
        }));
    }

    // Who got which job, from the answers.
    let mut holder_of: HashMap<String, String> = HashMap::new();
    let mut answered = 0;
    for claimer in claimers {
        let (worker, got) = claimer.await.expect("claimer task");
        for (claimed, received) in got {
            answered += 1;
            let job = claimed.job.as_ref().expect("job");
            let event = claimed.event.as_ref().expect("the start event");
            assert!(created.contains(&job.id), "claimed an unknown job {job:?}");
            if let Some(other) = holder_of.insert(job.id.clone(), worker.clone()) {
                panic!("job {} claimed twice: by {other} and by {worker}", job.id);
            }
            assert_eq!(status_of(job), S::Running, "{job:?}");
            assert_eq!(job.attempt, 1, "{job:?}");
            assert_eq!(job.lease_holder, worker, "{job:?}");
            let expires = time(job.lease_expires_at.as_ref().expect("a lease"));
            assert!(
                expires > received,
                "lease {expires} already over at {received}"
            );
            assert!(
                expires <= received + TimeDelta::seconds(121),
                "lease {expires} longer than asked"
            );
            assert_eq!(event.job_id, job.id);
            assert_eq!(event.prev_status, S::Queued as i32);
            assert_eq!(event.next_status, S::Running as i32);
            assert_eq!(event.attempt, 1);
            let detail = to_json(event.detail.as_ref().expect("event detail"));
            assert_eq!(detail["actor"], serde_json::json!(worker), "{detail}");
        }
    }
    let most_in_flight = most_in_flight.load(Ordering::SeqCst);
    println!(
        "{answered} jobs claimed by {CLAIMERS} claimers on 2 servers, up to {most_in_flight} claims in flight at once"
    );
    assert!(
        most_in_flight >= 8,
        "the claims hardly overlapped: {most_in_flight}"
    );
    assert_eq!(answered, JOBS, "every job once: {answered} claims");
    assert_eq!(
        holder_of.keys().cloned().collect::<BTreeSet<_>>(),
        created,
        "the union of the claims is every job"
    );

    // The rows agree: one start event per job, by the claimer that got it.
    type Row = (Uuid, String, i32, Option<String>, i64, Vec<Option<String>>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT j.id, j.status, j.attempt, j.lease_holder,
                count(*) FILTER (WHERE e.next_status = 'running'),
                array_agg(e.detail_json->>'actor') FILTER (WHERE e.next_status = 'running')
         FROM job j JOIN job_event e ON e.job_id = j.id
         WHERE j.type = 'once'
         GROUP BY j.id, j.status, j.attempt, j.lease_holder",
    )
    .fetch_all(&a.db)
    .await
    .unwrap();
    assert_eq!(rows.len(), JOBS);
    for (id, status, attempt, lease_holder, starts, actors) in rows {
        let holder = &holder_of[&id.to_string()];
        assert_eq!(
            (status.as_str(), attempt, lease_holder.as_ref()),
            ("running", 1, Some(holder)),
            "job {id}"
        );
        assert_eq!(starts, 1, "job {id} has {starts} start events");
        assert_eq!(actors, vec![Some(holder.clone())], "job {id}");
    }
    assert_invariants_hold(&a.db).await;
}

#[tokio::test]
async fn claims_take_the_highest_priority_first_then_the_oldest_run_after_or_created_at() {
    let app = spawn_app().await;
    let job = |priority: i32| proto::CreateJobRequest {
        priority,
        ..new_job("order")
    };
    // h is the oldest, but after failing it waits for (and is ordered by) its run_after.
    let h = create(&app, job(0)).await.id;
    let a = create(&app, job(0)).await.id;
    assert_eq!(
        ids_of(&claim(&app, claim_of(&["order"], "w", 1)).await),
        std::slice::from_ref(&h)
    );
    transition_ok(
        &app,
        proto::TransitionJobRequest {
            retry_after: Some(ms(0)),
            ..report(&h, S::Failed, 1)
        },
    )
    .await;
    let b = create(&app, job(5)).await.id;
    let c = create(&app, job(0)).await.id;
    let d = create(&app, job(5)).await.id;
    let e = create(&app, job(10)).await.id;
    // Created last, but its run_after (an hour ago) puts it before every other 0.
    let f = create(
        &app,
        proto::CreateJobRequest {
            run_after: Some(timestamp(Utc::now() - TimeDelta::hours(1))),
            ..job(0)
        },
    )
    .await
    .id;
    let g = create(&app, job(-3)).await.id;

    // Three at once: the three most urgent.
    let first: BTreeSet<String> = ids_of(&claim(&app, claim_of(&["order"], "w", 3)).await)
        .into_iter()
        .collect();
    assert_eq!(first, BTreeSet::from([e, b, d]));
    // Then one at a time.
    let mut order = Vec::new();
    for _ in 0..5 {
        let claimed = jobs_of(&claim(&app, claim_of(&["order"], "w", 1)).await);
        assert_eq!(claimed.len(), 1, "max_jobs 1 gives one job");
        order.push((claimed[0].id.clone(), claimed[0].attempt));
    }
    assert_eq!(order, [(f, 1), (a, 1), (h, 2), (c, 1), (g, 1)]);
    assert!(claim(&app, claim_of(&["order"], "w", 10)).await.is_empty());
}

#[tokio::test]
async fn max_jobs_is_honoured_and_0_means_1() {
    let app = spawn_app().await;
    create_many(&app, 10, new_job("max")).await;
    assert_eq!(claim(&app, claim_of(&["max"], "w", 4)).await.len(), 4);
    assert_eq!(claim(&app, claim_of(&["max"], "w", 0)).await.len(), 1);
    assert_eq!(claim(&app, claim_of(&["max"], "w", 1)).await.len(), 1);
    assert_eq!(claim(&app, claim_of(&["max"], "w", 100)).await.len(), 4);
    assert!(claim(&app, claim_of(&["max"], "w", 100)).await.is_empty());
    // Only the types asked for.
    create(&app, new_job("other")).await;
    assert!(claim(&app, claim_of(&["max"], "w", 100)).await.is_empty());
    assert_eq!(
        claim(&app, claim_of(&["max", "other"], "w", 100))
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn a_scheduled_job_is_not_claimable_before_its_run_after_and_is_after() {
    let app = spawn_app().await;
    let run_after = Utc::now() + TimeDelta::milliseconds(1000);
    let job = create(
        &app,
        proto::CreateJobRequest {
            run_after: Some(timestamp(run_after)),
            priority: 100,
            ..new_job("scheduled")
        },
    )
    .await;
    let run_after = time(job.run_after.as_ref().expect("run_after is shown"));
    assert_eq!(app.get(&job.id).await.unwrap().run_after, job.run_after);
    assert_eq!(status_of(&job), S::Queued);
    // A job due now, of lower priority, is claimable meanwhile.
    let now_job = create(&app, new_job("scheduled")).await.id;

    // Poll with claims that answer at once: never the scheduled job before it is due.
    let mut empty_before_due = 0;
    let give_up = Instant::now() + Duration::from_secs(10);
    let claimed = loop {
        let asked = Utc::now();
        let got: Vec<_> = jobs_of(&claim(&app, claim_of(&["scheduled"], "w", 10)).await)
            .into_iter()
            .filter(|j| j.id != now_job)
            .collect();
        if let Some(job) = got.into_iter().next() {
            break job;
        }
        if asked + TimeDelta::milliseconds(50) < run_after {
            empty_before_due += 1;
        }
        assert!(
            Instant::now() < give_up,
            "the scheduled job was never claimed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(claimed.id, job.id);
    let started = time(claimed.started_at.as_ref().unwrap());
    assert!(
        started >= run_after,
        "claimed at {started}, before its run_after {run_after}"
    );
    assert_eq!(claimed.run_after, None, "a RUNNING job has no run_after");
    assert!(
        empty_before_due > 0,
        "the test never claimed before the job was due"
    );
    println!(
        "scheduled job claimed {} ms after its run_after ({empty_before_due} empty claims before)",
        (started - run_after).num_milliseconds()
    );
}

/// Claims of every org: three orgs, one with a backlog of 100 older jobs.
#[tokio::test]
async fn claims_of_all_orgs_serve_the_orgs_round_robin() {
    let app = spawn_app().await;
    for (job_type, max_jobs, rounds) in [("fair3", 3, 2), ("fair1", 1, 6)] {
        let big = Uuid::new_v4();
        let small = [Uuid::new_v4(), Uuid::new_v4()];
        let in_org = |org: Uuid| proto::CreateJobRequest {
            org_id: org.to_string(),
            ..new_job(job_type)
        };
        create_many(&app, 100, in_org(big)).await;
        let mut small_jobs = BTreeSet::new();
        for org in small {
            for _ in 0..2 {
                small_jobs.insert(create(&app, in_org(org)).await.id);
            }
        }

        let mut claimed = Vec::new();
        for _ in 0..rounds {
            let request = proto::ClaimJobsRequest {
                all_orgs: true,
                ..claim_of(&[job_type], "w", max_jobs)
            };
            let got = jobs_of(&claim(&app, request).await);
            assert_eq!(got.len(), max_jobs as usize, "{job_type}");
            claimed.extend(got);
        }
        let orgs: Vec<String> = claimed.iter().map(|j| j.org_id.clone()).collect();
        println!("{job_type}: orgs served in order {orgs:?}");
        // The first three jobs handed out are of three different orgs.
        let first: BTreeSet<&String> = orgs[..3].iter().collect();
        assert_eq!(first.len(), 3, "{job_type}: first three jobs from {orgs:?}");
        // Within two rounds of orgs, the small orgs' jobs are all out.
        let ids: BTreeSet<String> = claimed.iter().map(|j| j.id.clone()).collect();
        assert!(
            small_jobs.is_subset(&ids),
            "{job_type}: the small orgs waited behind the backlog: {orgs:?}"
        );
        let per_org: BTreeMap<&String, usize> = orgs.iter().fold(BTreeMap::new(), |mut m, o| {
            *m.entry(o).or_default() += 1;
            m
        });
        assert_eq!(per_org[&big.to_string()], 2, "{job_type}: {per_org:?}");
    }
}

/// Claims of every org take as many jobs as they may: when some orgs have fewer than
/// their share, the others' jobs fill the claim up to max_jobs.
#[tokio::test]
async fn a_claim_of_all_orgs_fills_up_to_max_jobs_from_the_orgs_with_more() {
    let app = spawn_app().await;
    let big = Uuid::new_v4();
    let in_org = |org: Uuid| proto::CreateJobRequest {
        org_id: org.to_string(),
        ..new_job("fill")
    };
    create_many(&app, 100, in_org(big)).await;
    let mut small_jobs = BTreeSet::new();
    for org in [Uuid::new_v4(), Uuid::new_v4()] {
        for _ in 0..2 {
            small_jobs.insert(create(&app, in_org(org)).await.id);
        }
    }
    let request = proto::ClaimJobsRequest {
        all_orgs: true,
        ..claim_of(&["fill"], "w", 10)
    };
    let got = jobs_of(&claim(&app, request).await);
    let per_org: BTreeMap<String, usize> = got.iter().fold(BTreeMap::new(), |mut m, j| {
        *m.entry(j.org_id.clone()).or_default() += 1;
        m
    });
    println!("max_jobs 10 over orgs with 100, 2 and 2 jobs: {per_org:?}");
    let ids: BTreeSet<String> = got.iter().map(|j| j.id.clone()).collect();
    assert!(
        small_jobs.is_subset(&ids),
        "the small orgs' jobs come first: {per_org:?}"
    );
    assert_eq!(got.len(), 10, "96 jobs claimable, max_jobs 10: {per_org:?}");
    assert_eq!(per_org[&big.to_string()], 6);
}

#[tokio::test]
async fn a_claim_of_several_types_takes_the_most_urgent_of_them_all() {
    let app = spawn_app().await;
    let job = |job_type: &str, priority: i32| proto::CreateJobRequest {
        priority,
        ..new_job(job_type)
    };
    let low = create(&app, job("type_a", 0)).await.id;
    let high = create(&app, job("type_b", 5)).await.id;
    let mid = create(&app, job("type_a", 3)).await.id;
    let mut order = Vec::new();
    for _ in 0..3 {
        order.extend(ids_of(
            &claim(&app, claim_of(&["type_a", "type_b"], "w", 1)).await,
        ));
    }
    assert_eq!(order, [high, mid, low]);
}
