//! Dispatch with authentication on (spec §7, issue 12 item 7): claims of every org need a
//! token carrying the worker scope (`scope` or `scp`); an org's token gets
//! PERMISSION_DENIED (WORKER_SCOPE_REQUIRED). A worker's token claims across orgs and then
//! heartbeats and reports for the jobs of those orgs, naming their org.

use jobledger::{
    proto::{self, JobStatus as S},
    server::config::AuthConfig,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tonic::{Code, Request};
use uuid::Uuid;

use crate::dispatch_support::*;
use crate::helpers::{reason, spawn_app_with, TestApp};

const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!";

async fn auth_app(worker_scope: Option<&str>) -> TestApp {
    spawn_app_with(|c| {
        let mut auth = AuthConfig::hs256(SECRET);
        if let Some(scope) = worker_scope {
            auth.worker_scope = scope.to_owned();
        }
        c.auth = Some(auth);
    })
    .await
}

fn sign(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn exp() -> i64 {
    chrono::Utc::now().timestamp() + 3600
}

fn org_token(org: Uuid) -> String {
    sign(&json!({"sub": "svc", "org_id": org.to_string(), "exp": exp()}))
}

/// A token with `scopes` under `claim` (`scope` or `scp`), and no org.
fn scoped_token(claim: &str, scopes: Value) -> String {
    sign(&json!({"sub": "worker-pool", claim: scopes, "exp": exp()}))
}

fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn all_orgs(job_type: &str, max_jobs: i32) -> proto::ClaimJobsRequest {
    proto::ClaimJobsRequest {
        all_orgs: true,
        ..claim_of(&[job_type], "pool-worker", max_jobs)
    }
}

async fn claim_as(
    app: &TestApp,
    token: &str,
    request: proto::ClaimJobsRequest,
) -> Result<Vec<proto::Job>, tonic::Status> {
    app.client
        .clone()
        .claim_jobs(bearer(request, token))
        .await
        .map(|r| jobs_of(&r.into_inner().jobs))
}

/// Two jobs of `job_type` in each of two new orgs, created with their org's token.
async fn jobs_in_two_orgs(app: &TestApp, job_type: &str) -> (Uuid, Uuid) {
    let orgs = (Uuid::new_v4(), Uuid::new_v4());
    for org in [orgs.0, orgs.1] {
        for _ in 0..2 {
            app.client
                .clone()
                .create_job(bearer(new_job(job_type), &org_token(org)))
                .await
                .expect("create with the org's token");
        }
    }
    orgs
}

#[tokio::test]
async fn a_claim_of_every_org_needs_the_worker_scope() {
    let app = auth_app(None).await;
    let (org, _) = jobs_in_two_orgs(&app, "scoped").await;
    for (what, token) in [
        ("an org's token", org_token(org)),
        (
            "an org's token with other scopes",
            sign(
                &json!({"sub": "svc", "org_id": org.to_string(), "exp": exp(),
                         "scope": "jobledger.read jobledger.workers", "scp": ["worker"]}),
            ),
        ),
    ] {
        let refused = claim_as(&app, &token, all_orgs("scoped", 10))
            .await
            .expect_err(what);
        assert_eq!(
            refused.code(),
            Code::PermissionDenied,
            "{what}: {refused:?}"
        );
        assert_eq!(reason(&refused), "WORKER_SCOPE_REQUIRED", "{what}");
    }
    assert_eq!(running(&app.db, "scoped").await, 0, "nothing claimed");
    // The org's token claims its own org's jobs, and only those.
    let own = claim_as(&app, &org_token(org), claim_of(&["scoped"], "w", 10))
        .await
        .unwrap();
    assert_eq!(own.len(), 2);
    assert!(own.iter().all(|j| j.org_id == org.to_string()));
    // Naming another org is refused.
    let other = proto::ClaimJobsRequest {
        org_id: Uuid::new_v4().to_string(),
        ..claim_of(&["scoped"], "w", 10)
    };
    assert_refused(
        claim_as(&app, &org_token(org), other).await,
        Code::PermissionDenied,
        "ORG_MISMATCH",
    );
    // Without a token at all: UNAUTHENTICATED.
    let anonymous = app.client.clone().claim_jobs(all_orgs("scoped", 10)).await;
    assert_eq!(
        anonymous.expect_err("refused").code(),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn a_worker_token_claims_across_orgs_and_reports_for_their_jobs() {
    let app = auth_app(None).await;
    let (org_a, org_b) = jobs_in_two_orgs(&app, "pool").await;
    let worker = scoped_token("scope", json!("openid jobledger.worker profile"));

    let claimed = claim_as(&app, &worker, all_orgs("pool", 10)).await.unwrap();
    assert_eq!(claimed.len(), 4);
    let orgs: std::collections::BTreeSet<String> =
        claimed.iter().map(|j| j.org_id.clone()).collect();
    assert_eq!(
        orgs,
        [org_a.to_string(), org_b.to_string()].into_iter().collect()
    );
    assert!(claimed.iter().all(|j| j.lease_holder == "pool-worker"));

    let mut client = app.client.clone();
    for job in &claimed {
        let beat = proto::HeartbeatJobRequest {
            org_id: job.org_id.clone(),
            ..heartbeat_of(&job.id, 1)
        };
        client
            .heartbeat_job(bearer(beat, &worker))
            .await
            .unwrap_or_else(|s| panic!("the worker's heartbeat for org {}: {s:?}", job.org_id));
    }
    // One success alone, the rest in a batch.
    let done = |job: &proto::Job| proto::TransitionJobRequest {
        org_id: job.org_id.clone(),
        actor: "pool-worker".into(),
        ..report(&job.id, S::Succeeded, 1)
    };
    client
        .transition_job(bearer(done(&claimed[0]), &worker))
        .await
        .expect("the worker's report");
    let results = client
        .transition_jobs(bearer(
            proto::TransitionJobsRequest {
                transitions: claimed[1..].iter().map(done).collect(),
            },
            &worker,
        ))
        .await
        .expect("the worker's batch")
        .into_inner()
        .results;
    assert!(results.iter().all(|r| r.error.is_none()), "{results:?}");
    assert_eq!(
        statuses(&app.db, "pool").await,
        [("succeeded".to_owned(), 4)]
    );

    // An org's token may not report for another org's job.
    let (org_c, _) = jobs_in_two_orgs(&app, "pool2").await;
    let theirs = claim_as(&app, &worker, all_orgs("pool2", 1)).await.unwrap();
    let not_mine = proto::HeartbeatJobRequest {
        org_id: theirs[0].org_id.clone(),
        ..heartbeat_of(&theirs[0].id, 1)
    };
    let stranger = if theirs[0].org_id == org_c.to_string() {
        Uuid::new_v4()
    } else {
        org_c
    };
    assert_refused(
        client
            .heartbeat_job(bearer(not_mine, &org_token(stranger)))
            .await
            .map(|_| ()),
        Code::PermissionDenied,
        "ORG_MISMATCH",
    );
}

#[tokio::test]
async fn the_worker_scope_may_come_in_scp_and_is_configurable() {
    let app = auth_app(Some("queue:work")).await;
    jobs_in_two_orgs(&app, "custom").await;
    // The default name is not the configured one: an org's token carrying it is an
    // org's token, and one without an org is no valid token at all.
    let org = Uuid::new_v4().to_string();
    let default_name = sign(&json!({"sub": "w", "org_id": org, "exp": exp(),
                                    "scope": "jobledger.worker"}));
    assert_refused(
        claim_as(&app, &default_name, all_orgs("custom", 1)).await,
        Code::PermissionDenied,
        "WORKER_SCOPE_REQUIRED",
    );
    let no_org = scoped_token("scope", json!("jobledger.worker"));
    assert_refused(
        claim_as(&app, &no_org, all_orgs("custom", 1)).await,
        Code::Unauthenticated,
        "ORG_CLAIM_MISSING",
    );
    for token in [
        scoped_token("scope", json!("queue:work")),
        scoped_token("scp", json!(["queue:read", "queue:work"])),
        scoped_token("scp", json!("queue:work")),
    ] {
        let got = claim_as(&app, &token, all_orgs("custom", 1)).await.unwrap();
        assert_eq!(got.len(), 1);
    }
}
