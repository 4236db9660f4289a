//! ListJobs and CountJobs: each filter, keyset paging (every job exactly once, newest
//! first, also while jobs are being created), page token misuse, page size limits,
//! tenant isolation, and counts that match the table.

use std::collections::{HashMap, HashSet};

use jobledger::proto::{self, CountJobsRequest, CreateJobRequest, JobStatus, ListJobsRequest};
use tonic::Status;

use crate::helpers::{spawn_app, violated_fields, TestApp};

const ORG_A: &str = "0a000000-0000-4000-8000-00000000000a";
const ORG_B: &str = "0b000000-0000-4000-8000-00000000000b";

fn entry(org: &str, job_type: &str, key: &str) -> CreateJobRequest {
    CreateJobRequest {
        org_id: org.to_owned(),
        r#type: job_type.to_owned(),
        idempotency_key: key.to_owned(),
        ..Default::default()
    }
}

/// Creates the jobs in one CreateJobs call (so they share one `created_at`).
async fn create_batch(app: &TestApp, jobs: Vec<CreateJobRequest>) -> Vec<proto::Job> {
    app.client
        .clone()
        .create_jobs(proto::CreateJobsRequest { jobs })
        .await
        .expect("create_jobs")
        .into_inner()
        .results
        .into_iter()
        .map(|r| r.job.unwrap_or_else(|| panic!("{:?}", r.error)))
        .collect()
}

async fn list(app: &TestApp, request: ListJobsRequest) -> Result<proto::ListJobsResponse, Status> {
    app.client
        .clone()
        .list_jobs(request)
        .await
        .map(|r| r.into_inner())
}

/// Every page of `request`, followed to the end; the ids in the order listed.
async fn list_all(app: &TestApp, mut request: ListJobsRequest) -> Vec<String> {
    let mut ids = Vec::new();
    loop {
        let page = list(app, request.clone()).await.expect("list_jobs");
        ids.extend(page.jobs.into_iter().map(|j| j.id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        request.page_token = page.next_page_token;
    }
}

/// The ids of `org`'s jobs matching `condition` (SQL), newest first.
async fn sql_ids(app: &TestApp, org: &str, condition: &str) -> Vec<String> {
    sqlx::query_scalar(&format!(
        "SELECT id::text FROM job WHERE org_id = $1::uuid AND ({condition})
         ORDER BY created_at DESC, id DESC"
    ))
    .bind(org)
    .fetch_all(&app.db)
    .await
    .expect("sql ids")
}

async fn to(app: &TestApp, org: &str, job_id: &str, status: JobStatus) {
    app.transition_with(proto::TransitionJobRequest {
        org_id: org.to_owned(),
        job_id: job_id.to_owned(),
        to_status: status as i32,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{job_id} to {status:?}: {e:?}"));
}

fn in_org(org: &str) -> ListJobsRequest {
    ListJobsRequest {
        org_id: org.to_owned(),
        ..Default::default()
    }
}

#[tokio::test]
async fn each_filter_narrows_the_listing_as_sql_does() {
    let app = spawn_app().await;
    let mut jobs = Vec::new();
    for round in 0..3 {
        let batch = (0..4)
            .map(|i| {
                let job_type = if i % 2 == 0 { "resize" } else { "encode" };
                entry(ORG_A, job_type, &format!("key-{round}-{i}"))
            })
            .collect();
        jobs.extend(create_batch(&app, batch).await);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    to(&app, ORG_A, &jobs[0].id, JobStatus::Running).await;
    to(&app, ORG_A, &jobs[1].id, JobStatus::Running).await;
    to(&app, ORG_A, &jobs[1].id, JobStatus::Succeeded).await;
    to(&app, ORG_A, &jobs[2].id, JobStatus::Canceled).await;

    // No filter: every job of the org, newest first.
    let all = list_all(&app, in_org(ORG_A)).await;
    assert_eq!(all, sql_ids(&app, ORG_A, "true").await);
    assert_eq!(all.len(), 12);

    // Statuses (any of them; repeats and order do not matter).
    let request = ListJobsRequest {
        statuses: vec![
            JobStatus::Succeeded as i32,
            JobStatus::Running as i32,
            JobStatus::Running as i32,
        ],
        ..in_org(ORG_A)
    };
    let listed = list_all(&app, request).await;
    assert_eq!(
        listed,
        sql_ids(&app, ORG_A, "status IN ('running', 'succeeded')").await
    );
    assert_eq!(listed.len(), 2);

    // Type.
    let request = ListJobsRequest {
        r#type: "encode".into(),
        ..in_org(ORG_A)
    };
    let listed = list_all(&app, request).await;
    assert_eq!(listed, sql_ids(&app, ORG_A, "type = 'encode'").await);
    assert_eq!(listed.len(), 6);

    // Idempotency key: exactly that job.
    let request = ListJobsRequest {
        idempotency_key: "key-1-2".into(),
        ..in_org(ORG_A)
    };
    let listed = list_all(&app, request).await;
    assert_eq!(listed, vec![jobs[6].id.clone()]);

    // created_after is inclusive, created_before exclusive: the middle batch's
    // created_at selects exactly that batch.
    let middle = jobs[4].created_at;
    let after_last_batch = jobs[8].created_at;
    let request = ListJobsRequest {
        created_after: middle,
        created_before: after_last_batch,
        ..in_org(ORG_A)
    };
    let listed: HashSet<String> = list_all(&app, request).await.into_iter().collect();
    let expected: HashSet<String> = jobs[4..8].iter().map(|j| j.id.clone()).collect();
    assert_eq!(listed, expected);
    let request = ListJobsRequest {
        created_before: middle,
        ..in_org(ORG_A)
    };
    let listed: HashSet<String> = list_all(&app, request).await.into_iter().collect();
    let expected: HashSet<String> = jobs[0..4].iter().map(|j| j.id.clone()).collect();
    assert_eq!(listed, expected);

    // Filters combine (AND).
    let request = ListJobsRequest {
        r#type: "resize".into(),
        statuses: vec![JobStatus::Queued as i32],
        created_after: middle,
        ..in_org(ORG_A)
    };
    let listed = list_all(&app, request).await;
    let expected: Vec<String> = sql_ids(
        &app,
        ORG_A,
        "type = 'resize' AND status = 'queued' AND created_at >= (SELECT created_at FROM job \
         WHERE idempotency_key = 'key-1-0')",
    )
    .await;
    assert_eq!(listed, expected);
    assert_eq!(listed.len(), 4);

    // The jobs are the full Job messages GetJob returns.
    let page = list(
        &app,
        ListJobsRequest {
            idempotency_key: "key-0-1".into(),
            ..in_org(ORG_A)
        },
    )
    .await
    .unwrap();
    let got = app
        .client
        .clone()
        .get_job(proto::GetJobRequest {
            org_id: ORG_A.into(),
            job_id: jobs[1].id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(page.jobs, vec![got]);
    assert!(page.next_page_token.is_empty());
}

#[tokio::test]
async fn paging_returns_every_job_exactly_once_newest_first() {
    let app = spawn_app().await;
    // Batches share a created_at, so the id breaks ties inside a page and across pages.
    for size in [120, 1, 80, 49] {
        let batch = (0..size).map(|_| entry("", "page", "")).collect();
        create_batch(&app, batch).await;
    }
    let mut request = ListJobsRequest {
        page_size: 100,
        ..Default::default()
    };
    let mut ids = Vec::new();
    let mut pages = Vec::new();
    loop {
        let page = list(&app, request.clone()).await.unwrap();
        pages.push(page.jobs.len());
        ids.extend(page.jobs.into_iter().map(|j| j.id));
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    assert_eq!(pages, vec![100, 100, 50]);
    assert_eq!(
        ids,
        sql_ids(&app, "00000000-0000-0000-0000-000000000000", "true").await
    );
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 250);
}

#[tokio::test]
async fn paging_is_stable_while_jobs_are_created() {
    let app = spawn_app().await;
    for _ in 0..5 {
        let batch = (0..50).map(|_| entry("", "existing", "")).collect();
        create_batch(&app, batch).await;
    }
    let existing: Vec<String> = sql_ids(&app, "00000000-0000-0000-0000-000000000000", "true").await;
    assert_eq!(existing.len(), 250);

    // Creators run all the while; each page is also followed by a batch of new jobs.
    let stop = tokio_util::sync::CancellationToken::new();
    let creators: Vec<_> = (0..3)
        .map(|_| {
            let mut client = app.client.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.is_cancelled() {
                    client
                        .create_job(entry("", "concurrent", ""))
                        .await
                        .expect("create during paging");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut request = ListJobsRequest {
        page_size: 100,
        ..Default::default()
    };
    let mut listed = Vec::new();
    loop {
        let page = list(&app, request.clone()).await.unwrap();
        listed.extend(page.jobs.into_iter().map(|j| j.id));
        let batch = (0..20).map(|_| entry("", "between-pages", "")).collect();
        create_batch(&app, batch).await;
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.cancel();
    let mut created = 0;
    for c in creators {
        created += c.await.unwrap();
    }
    assert!(created > 0, "the creators created nothing while paging");

    // Nothing twice; every job that existed at the start, in order.
    assert_eq!(
        listed.iter().collect::<HashSet<_>>().len(),
        listed.len(),
        "a job was listed twice"
    );
    let existing_set: HashSet<&String> = existing.iter().collect();
    let old: Vec<String> = listed
        .iter()
        .filter(|id| existing_set.contains(id))
        .cloned()
        .collect();
    assert_eq!(old, existing);
}

#[tokio::test]
async fn page_size_defaults_to_50_and_is_lowered_to_1000() {
    let app = spawn_app().await;
    for _ in 0..2 {
        let batch = (0..550).map(|_| entry("", "many", "")).collect();
        create_batch(&app, batch).await;
    }
    let page = list(&app, ListJobsRequest::default()).await.unwrap();
    assert_eq!(page.jobs.len(), 50);
    assert!(!page.next_page_token.is_empty());

    let page = list(
        &app,
        ListJobsRequest {
            page_size: 5000,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(page.jobs.len(), 1000);
    let rest = list(
        &app,
        ListJobsRequest {
            page_size: i32::MAX,
            page_token: page.next_page_token,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(rest.jobs.len(), 100);
    assert!(rest.next_page_token.is_empty());

    // Exactly a page's worth left: the page is full and the next one is empty.
    let page = list(
        &app,
        ListJobsRequest {
            page_size: 1100,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(page.jobs.len(), 1000);
    let page = list(
        &app,
        ListJobsRequest {
            page_size: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(page.jobs.len(), 1);

    let err = list(
        &app,
        ListJobsRequest {
            page_size: -1,
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(violated_fields(&err), vec!["page_size"]);
}

#[tokio::test]
async fn page_token_misuse_and_bad_fields_are_invalid_argument() {
    let app = spawn_app().await;
    let batch = (0..5).map(|_| entry(ORG_A, "t", "")).collect();
    create_batch(&app, batch).await;
    let first = list(
        &app,
        ListJobsRequest {
            page_size: 2,
            r#type: "t".into(),
            ..in_org(ORG_A)
        },
    )
    .await
    .unwrap();
    let token = first.next_page_token.clone();
    assert!(!token.is_empty());

    // The same filter continues.
    let next = list(
        &app,
        ListJobsRequest {
            page_size: 3,
            r#type: "t".into(),
            page_token: token.clone(),
            ..in_org(ORG_A)
        },
    )
    .await
    .unwrap();
    assert_eq!(next.jobs.len(), 3);

    let misuses = [
        // A different filter.
        ListJobsRequest {
            r#type: "other".into(),
            page_token: token.clone(),
            ..in_org(ORG_A)
        },
        ListJobsRequest {
            page_token: token.clone(),
            ..in_org(ORG_A)
        },
        ListJobsRequest {
            r#type: "t".into(),
            statuses: vec![JobStatus::Queued as i32],
            page_token: token.clone(),
            ..in_org(ORG_A)
        },
        // Another org.
        ListJobsRequest {
            r#type: "t".into(),
            page_token: token.clone(),
            ..in_org(ORG_B)
        },
        // Not a token.
        ListJobsRequest {
            r#type: "t".into(),
            page_token: "garbage!".into(),
            ..in_org(ORG_A)
        },
        ListJobsRequest {
            r#type: "t".into(),
            page_token: token[..token.len() - 2].to_owned(),
            ..in_org(ORG_A)
        },
        ListJobsRequest {
            r#type: "t".into(),
            page_token: "c1.1.2".into(),
            ..in_org(ORG_A)
        },
    ];
    for request in misuses {
        let what = format!("{request:?}");
        let err = list(&app, request).await.expect_err(&what);
        assert_eq!(violated_fields(&err), vec!["page_token"], "{what}");
    }

    // Bad fields are named; all of them at once.
    let err = list(
        &app,
        ListJobsRequest {
            org_id: "not-a-uuid".into(),
            statuses: vec![JobStatus::Queued as i32, 0, 99],
            r#type: "x".repeat(101),
            created_after: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: -1,
            }),
            created_before: Some(prost_types::Timestamp {
                seconds: 253_402_300_800,
                nanos: 0,
            }),
            idempotency_key: "a\0b".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        violated_fields(&err),
        vec![
            "org_id",
            "statuses[1]",
            "statuses[2]",
            "type",
            "created_after",
            "created_before",
            "idempotency_key"
        ]
    );
    let err = app
        .client
        .clone()
        .count_jobs(CountJobsRequest {
            org_id: "nope".into(),
            r#type: "\0".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), vec!["org_id", "type"]);
}

#[tokio::test]
async fn another_org_sees_nothing() {
    let app = spawn_app().await;
    let a = create_batch(&app, (0..3).map(|_| entry(ORG_A, "t", "")).collect()).await;
    create_batch(&app, (0..2).map(|_| entry("", "t", "")).collect()).await;
    // The same idempotency key in two orgs: each org lists only its own job.
    let keyed = create_batch(&app, vec![entry(ORG_A, "t", "shared")]).await;
    create_batch(&app, vec![entry("", "t", "shared")]).await;

    assert!(list_all(&app, in_org(ORG_B)).await.is_empty());
    let mut listed_a: Vec<String> = list_all(&app, in_org(ORG_A)).await;
    listed_a.sort();
    let mut expected: Vec<String> = a.iter().chain(&keyed).map(|j| j.id.clone()).collect();
    expected.sort();
    assert_eq!(listed_a, expected);
    assert_eq!(list_all(&app, ListJobsRequest::default()).await.len(), 3);
    let request = ListJobsRequest {
        idempotency_key: "shared".into(),
        ..in_org(ORG_A)
    };
    assert_eq!(list_all(&app, request).await, vec![keyed[0].id.clone()]);

    let counts = app
        .client
        .clone()
        .count_jobs(CountJobsRequest {
            org_id: ORG_B.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counts.total, 0);
    assert!(counts.counts.is_empty());
    assert_eq!(counts.by_status.len(), 6);
    assert!(counts.by_status.iter().all(|s| s.count == 0));
}

#[tokio::test]
async fn count_jobs_is_exact_after_a_mix_of_transitions() {
    let app = spawn_app().await;
    let mut jobs = create_batch(&app, (0..12).map(|_| entry(ORG_A, "alpha", "")).collect()).await;
    jobs.extend(create_batch(&app, (0..7).map(|_| entry(ORG_A, "beta", "")).collect()).await);
    // Noise in another org, and a job that fails its only attempt into DEAD_LETTER.
    create_batch(&app, (0..4).map(|_| entry(ORG_B, "alpha", "")).collect()).await;
    let once = app
        .client
        .clone()
        .create_job(CreateJobRequest {
            max_attempts: 1,
            ..entry(ORG_A, "beta", "")
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    to(&app, ORG_A, &once.id, JobStatus::Running).await;
    to(&app, ORG_A, &once.id, JobStatus::Failed).await;
    use JobStatus::*;
    let plans: [&[JobStatus]; 8] = [
        &[Running],
        &[Running, Succeeded],
        &[Running, Failed],
        &[Canceled],
        &[Running, Failed, Running],
        &[Running, Failed, DeadLetter],
        &[Running, Queued],
        &[Running, Failed, Canceled],
    ];
    for (i, plan) in plans.iter().enumerate() {
        for job in [&jobs[i], &jobs[12 + (i % 7)]] {
            // Skip the plan for a beta job a previous index already moved.
            let current = app
                .client
                .clone()
                .get_job(proto::GetJobRequest {
                    org_id: ORG_A.into(),
                    job_id: job.id.clone(),
                })
                .await
                .unwrap()
                .into_inner()
                .job
                .unwrap();
            if current.status != Queued as i32 {
                continue;
            }
            for step in *plan {
                to(&app, ORG_A, &job.id, *step).await;
            }
        }
    }

    let sql: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT type::text, status::text, count(*) FROM job WHERE org_id = $1::uuid
         GROUP BY 1, 2",
    )
    .bind(ORG_A)
    .fetch_all(&app.db)
    .await
    .unwrap();
    let name = |s: i32| {
        JobStatus::try_from(s)
            .unwrap()
            .as_str_name()
            .trim_start_matches("JOB_STATUS_")
            .to_lowercase()
    };
    let count = |job_type: &str| {
        let mut client = app.client.clone();
        let job_type = job_type.to_owned();
        async move {
            client
                .count_jobs(CountJobsRequest {
                    org_id: ORG_A.into(),
                    r#type: job_type,
                })
                .await
                .unwrap()
                .into_inner()
        }
    };

    let all = count("").await;
    let got: HashMap<(String, String), i64> = all
        .counts
        .iter()
        .map(|c| ((c.r#type.clone(), name(c.status)), c.count))
        .collect();
    let expected: HashMap<(String, String), i64> = sql
        .iter()
        .map(|(t, s, n)| ((t.clone(), s.clone()), *n))
        .collect();
    assert_eq!(got, expected);
    assert!(all.counts.iter().all(|c| c.count > 0));
    assert_eq!(all.total, 20);
    let mut sorted = all.counts.clone();
    sorted.sort_by(|a, b| (&a.r#type, a.status).cmp(&(&b.r#type, b.status)));
    assert_eq!(all.counts, sorted);
    // by_status: every status in enum order, summing the (type, status) counts.
    assert_eq!(
        all.by_status.iter().map(|s| s.status).collect::<Vec<_>>(),
        (1..=6).collect::<Vec<i32>>()
    );
    for s in &all.by_status {
        let expected: i64 = sql
            .iter()
            .filter(|(_, st, _)| *st == name(s.status))
            .map(|(_, _, n)| n)
            .sum();
        assert_eq!(s.count, expected, "{}", name(s.status));
    }
    assert!(
        all.by_status.iter().all(|s| s.count > 0),
        "{:?}",
        all.by_status
    );

    // The type filter.
    let beta = count("beta").await;
    assert!(beta.counts.iter().all(|c| c.r#type == "beta"));
    assert_eq!(beta.total, 8);
    let dead: i64 = beta
        .by_status
        .iter()
        .filter(|s| s.status == DeadLetter as i32)
        .map(|s| s.count)
        .sum();
    let sql_dead: i64 = sql
        .iter()
        .filter(|(t, s, _)| t == "beta" && s == "dead_letter")
        .map(|(_, _, n)| n)
        .sum();
    assert_eq!(dead, sql_dead);
    assert_eq!(count("gamma").await.total, 0);
}
