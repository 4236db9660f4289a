//! Authentication: bearer JWTs (HS256 secret, ES256 PEM key, JWKS by kid), the org from
//! a claim, PERMISSION_DENIED for another org, health open without a token.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64URL, Engine};
use jobledger::{
    proto::{self, JobStatus},
    server::{
        config::{AuthConfig, Secret},
        Application, Config,
    },
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::{
    rand::SystemRandom,
    signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING},
};
use serde_json::{json, Value};
use tonic::{Code, Request, Status};
use uuid::Uuid;

use crate::helpers::{reason, spawn_app_with, TestApp};

const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!";
const ISSUER: &str = "https://issuer.test/";
const AUDIENCE: &str = "jobledger";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims of a token for `org`, valid for an hour, from ISSUER to AUDIENCE.
fn claims(org: Uuid) -> Value {
    json!({"sub": "svc", "org_id": org.to_string(), "exp": now() + 3600,
           "iss": ISSUER, "aud": AUDIENCE})
}

fn hs256(claims: &Value) -> String {
    sign(Algorithm::HS256, claims, SECRET)
}

fn sign(alg: Algorithm, claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// `message` with `authorization: <value>` metadata.
fn with_auth<T>(message: T, value: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", value.parse().unwrap());
    request
}

fn bearer<T>(message: T, token: &str) -> Request<T> {
    with_auth(message, &format!("Bearer {token}"))
}

/// A server checking HS256 tokens from ISSUER for AUDIENCE.
async fn hs256_app() -> TestApp {
    spawn_app_with(|a| {
        a.auth.get_or_insert_with(AuthConfig::new).hs256_secret = Some(Secret::new(SECRET));
        a.auth.get_or_insert_with(AuthConfig::new).issuer = Some(ISSUER.to_owned());
        a.auth.get_or_insert_with(AuthConfig::new).audience = Some(AUDIENCE.to_owned());
    })
    .await
}

fn get(org_id: &str, job_id: &str) -> proto::GetJobRequest {
    proto::GetJobRequest {
        org_id: org_id.to_owned(),
        job_id: job_id.to_owned(),
    }
}

fn create(org_id: &str) -> proto::CreateJobRequest {
    proto::CreateJobRequest {
        org_id: org_id.to_owned(),
        r#type: "auth_test".to_owned(),
        ..Default::default()
    }
}

#[track_caller]
fn assert_refused(result: Result<impl std::fmt::Debug, Status>, code: Code, why: &str) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason(&status), why, "{status:?}");
}

#[tokio::test]
async fn calls_without_valid_credentials_are_unauthenticated() {
    let app = hs256_app().await;
    let mut client = app.client.clone();
    let org = Uuid::new_v4();
    let job = Uuid::new_v4().to_string();

    // No metadata at all, another scheme, an empty bearer.
    assert_refused(
        client.get_job(get("", &job)).await,
        Code::Unauthenticated,
        "MISSING_CREDENTIALS",
    );
    for value in ["Basic dXNlcjpwYXNz", "Bearer ", "Bearer"] {
        assert_refused(
            client.get_job(with_auth(get("", &job), value)).await,
            Code::Unauthenticated,
            "MISSING_CREDENTIALS",
        );
    }

    let expired = {
        let mut c = claims(org);
        c["exp"] = json!(now() - 3600);
        hs256(&c)
    };
    let no_exp = {
        let mut c = claims(org);
        c.as_object_mut().unwrap().remove("exp");
        hs256(&c)
    };
    let wrong_iss = {
        let mut c = claims(org);
        c["iss"] = json!("https://elsewhere.test/");
        hs256(&c)
    };
    let no_iss = {
        let mut c = claims(org);
        c.as_object_mut().unwrap().remove("iss");
        hs256(&c)
    };
    let wrong_aud = {
        let mut c = claims(org);
        c["aud"] = json!("another-service");
        hs256(&c)
    };
    let not_yet = {
        let mut c = claims(org);
        c["nbf"] = json!(now() + 3600);
        hs256(&c)
    };
    // `alg: none`, crafted by hand: header and claims, empty signature.
    let alg_none = format!(
        "{}.{}.",
        B64URL.encode(r#"{"alg":"none","typ":"JWT"}"#),
        B64URL.encode(claims(org).to_string())
    );
    let alg_none_signed = format!("{alg_none}c2lnbmF0dXJl");
    let mut tampered = hs256(&claims(org));
    let payload = B64URL.encode(claims(Uuid::new_v4()).to_string());
    let parts: Vec<&str> = tampered.split('.').collect();
    tampered = format!("{}.{payload}.{}", parts[0], parts[2]);

    let cases = [
        ("garbage", "not-a-jwt".to_owned(), "INVALID_TOKEN"),
        ("expired", expired, "TOKEN_EXPIRED"),
        ("no exp", no_exp, "INVALID_TOKEN"),
        (
            "wrong secret",
            sign(
                Algorithm::HS256,
                &claims(org),
                "another-secret-of-at-least-32-bytes!!",
            ),
            "INVALID_TOKEN",
        ),
        ("tampered claims", tampered, "INVALID_TOKEN"),
        ("wrong iss", wrong_iss, "INVALID_TOKEN"),
        ("no iss", no_iss, "INVALID_TOKEN"),
        ("wrong aud", wrong_aud, "INVALID_TOKEN"),
        ("nbf in the future", not_yet, "INVALID_TOKEN"),
        ("alg none", alg_none, "INVALID_TOKEN"),
        (
            "alg none with a signature",
            alg_none_signed,
            "INVALID_TOKEN",
        ),
        (
            "HS512, not configured",
            sign(Algorithm::HS512, &claims(org), SECRET),
            "INVALID_TOKEN",
        ),
        (
            "no org claim",
            hs256(&json!({"exp": now() + 60, "iss": ISSUER, "aud": AUDIENCE})),
            "ORG_CLAIM_MISSING",
        ),
        (
            "org claim not a uuid",
            hs256(&json!({"exp": now() + 60, "iss": ISSUER, "aud": AUDIENCE, "org_id": "acme"})),
            "ORG_CLAIM_MISSING",
        ),
    ];
    for (what, token, why) in &cases {
        let status = client
            .get_job(bearer(get("", &job), token))
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert_eq!(reason(&status), *why, "{what}: {status:?}");
        assert!(
            !status.message().contains(token.as_str()),
            "{what}: the message quotes the token"
        );
        // Every RPC is behind the same check, and nothing is written.
        assert_refused(
            client.create_job(bearer(create(""), token)).await,
            Code::Unauthenticated,
            why,
        );
        let stream = client
            .stream_events(bearer(
                proto::StreamEventsRequest {
                    job_id: job.clone(),
                    ..Default::default()
                },
                token,
            ))
            .await;
        assert_refused(stream.map(|_| ()), Code::Unauthenticated, why);
    }
    assert_eq!(app.count("job").await, 0);
    assert_eq!(app.count("job_event").await, 0);

    // The same checks pass a valid token.
    let ok = client
        .get_job(bearer(get("", &job), &hs256(&claims(org))))
        .await
        .unwrap_err();
    assert_eq!(ok.code(), Code::NotFound, "{ok:?}");
}

#[tokio::test]
async fn a_token_scopes_every_rpc_to_its_org() {
    let app = hs256_app().await;
    let mut client = app.client.clone();
    let org_a = Uuid::new_v4();
    let org_b = Uuid::new_v4();
    let (a, b) = (org_a.to_string(), org_b.to_string());
    let token = hs256(&claims(org_a));

    // CreateJob: "" is the token's org, and so is org A named explicitly.
    let implicit = client
        .create_job(bearer(create(""), &token))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(implicit.org_id, a);
    let explicit = client
        .create_job(bearer(create(&a.to_uppercase()), &token))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(explicit.org_id, a);

    // GetJob with "" and with org A.
    for org in ["", a.as_str()] {
        let job = client
            .get_job(bearer(get(org, &implicit.id), &token))
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        assert_eq!(job.id, implicit.id);
    }

    // TransitionJob with "" and with org A.
    for (org, to) in [("", JobStatus::Running), (a.as_str(), JobStatus::Succeeded)] {
        let moved = client
            .transition_job(bearer(
                proto::TransitionJobRequest {
                    org_id: org.to_owned(),
                    job_id: implicit.id.clone(),
                    to_status: to as i32,
                    ..Default::default()
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(moved.job.unwrap().status, to as i32);
    }

    // StreamEvents (job scope, history) with "" and with org A.
    for org in ["", a.as_str()] {
        let mut stream = client
            .stream_events(bearer(
                proto::StreamEventsRequest {
                    org_id: org.to_owned(),
                    job_id: implicit.id.clone(),
                    history_only: true,
                    ..Default::default()
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        let mut seen = Vec::new();
        while let Some(event) = stream.message().await.unwrap() {
            assert_eq!(event.org_id, a);
            seen.push(event.next_status);
        }
        assert_eq!(
            seen,
            [JobStatus::Queued, JobStatus::Running, JobStatus::Succeeded].map(|s| s as i32)
        );
    }

    // CreateJobs: entries with "" and with org A land in org A.
    let batch = client
        .create_jobs(bearer(
            proto::CreateJobsRequest {
                jobs: vec![create(""), create(&a)],
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.results.len(), 2);
    for result in &batch.results {
        assert!(result.error.is_none(), "{result:?}");
        assert_eq!(result.job.as_ref().unwrap().org_id, a);
    }

    // An org-scope live stream of "" follows org A.
    let mut live = client
        .stream_events(bearer(proto::StreamEventsRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    let fresh = client
        .create_job(bearer(create(""), &token))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let event = tokio::time::timeout(std::time::Duration::from_secs(10), live.message())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!((event.job_id, event.org_id), (fresh.id.clone(), a.clone()));
    drop(live);

    // Naming org B: PERMISSION_DENIED on every RPC, before the database is asked
    // (also for a job that does not exist), and nothing is written.
    let jobs_before = app.count("job").await;
    let events_before = app.count("job_event").await;
    let missing = Uuid::new_v4().to_string();
    assert_refused(
        client.create_job(bearer(create(&b), &token)).await,
        Code::PermissionDenied,
        "ORG_MISMATCH",
    );
    for job_id in [&implicit.id, &missing] {
        assert_refused(
            client.get_job(bearer(get(&b, job_id), &token)).await,
            Code::PermissionDenied,
            "ORG_MISMATCH",
        );
        assert_refused(
            client
                .transition_job(bearer(
                    proto::TransitionJobRequest {
                        org_id: b.clone(),
                        job_id: job_id.clone(),
                        to_status: JobStatus::Canceled as i32,
                        ..Default::default()
                    },
                    &token,
                ))
                .await,
            Code::PermissionDenied,
            "ORG_MISMATCH",
        );
        let stream = client
            .stream_events(bearer(
                proto::StreamEventsRequest {
                    org_id: b.clone(),
                    job_id: job_id.clone(),
                    ..Default::default()
                },
                &token,
            ))
            .await;
        assert_refused(stream.map(|_| ()), Code::PermissionDenied, "ORG_MISMATCH");
    }
    let stream = client
        .stream_events(bearer(
            proto::StreamEventsRequest {
                org_id: b.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await;
    assert_refused(stream.map(|_| ()), Code::PermissionDenied, "ORG_MISMATCH");
    // One entry naming org B refuses the whole batch; the valid entries are not written.
    let status = client
        .create_jobs(bearer(
            proto::CreateJobsRequest {
                jobs: vec![create(""), create(&a), create(&b)],
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(reason(&status), "ORG_MISMATCH");
    let info = tonic_types::StatusExt::get_details_error_info(&status).unwrap();
    assert_eq!(info.metadata["entry"], "2");
    assert!(status.message().starts_with("jobs[2]: "), "{status:?}");
    assert_eq!(app.count("job").await, jobs_before);
    assert_eq!(app.count("job_event").await, events_before);
    // The same for TransitionJobs, its entries named by their own field.
    let entry = |org: &str| proto::TransitionJobRequest {
        org_id: org.to_owned(),
        job_id: missing.clone(),
        to_status: proto::JobStatus::Canceled as i32,
        ..Default::default()
    };
    let status = client
        .transition_jobs(bearer(
            proto::TransitionJobsRequest {
                transitions: vec![entry(&a), entry(&b)],
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "ORG_MISMATCH");
    assert!(
        status.message().starts_with("transitions[1]: "),
        "{status:?}"
    );

    // A malformed org_id is still INVALID_ARGUMENT on the field.
    let status = client
        .get_job(bearer(get("not-a-uuid", &missing), &token))
        .await
        .unwrap_err();
    assert_eq!(
        crate::helpers::violated_fields(&status),
        vec!["org_id".to_owned()]
    );

    // Org B's token sees none of org A's jobs.
    let token_b = hs256(&claims(org_b));
    let status = client
        .get_job(bearer(get("", &implicit.id), &token_b))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

#[tokio::test]
async fn health_stays_open_and_auth_is_off_by_default() {
    let app = hs256_app().await;
    let mut health = app.health.clone();
    for service in ["", "liveness", "jobledger.v1.JobLedger"] {
        let mut serving = false;
        for _ in 0..50 {
            let status = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.to_owned(),
                })
                .await
                .expect("health needs no token")
                .into_inner()
                .status;
            if status == 1 {
                serving = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(serving, "{service:?} never SERVING");
    }
    assert_eq!(
        app.client
            .clone()
            .create_job(create(""))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );

    // Default settings: no token needed, "" is the default org, a token is ignored.
    let open = spawn_app_with(|_| {}).await;
    let job = open.create("no_auth").await;
    assert_eq!(job.org_id, Uuid::nil().to_string());
    let other = Uuid::new_v4().to_string();
    let job = open
        .client
        .clone()
        .create_job(bearer(create(&other), "garbage"))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(job.org_id, other);
}

/// An ES256 key pair: (the signing key, the public key as PEM, its JWK with `kid`).
fn es256_key(kid: &str) -> (EncodingKey, String, Value) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref(); // 0x04 || x || y
    assert_eq!(point.len(), 65);
    // SubjectPublicKeyInfo of a P-256 key: the fixed algorithm header, then the point.
    let mut spki = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    spki.extend_from_slice(point);
    let body = base64::engine::general_purpose::STANDARD.encode(&spki);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    );
    let jwk = json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                     "x": B64URL.encode(&point[1..33]), "y": B64URL.encode(&point[33..])});
    (EncodingKey::from_ec_der(pkcs8.as_ref()), pem, jwk)
}

fn es256(key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

#[tokio::test]
async fn es256_public_key_file_with_a_nested_org_claim() {
    let dir = tempfile::tempdir().unwrap();
    let (key, pem, _) = es256_key("k1");
    let path = dir.path().join("public.pem");
    std::fs::write(&path, &pem).unwrap();
    let app = spawn_app_with(|a| {
        a.auth.get_or_insert_with(AuthConfig::new).public_key_file = Some(path.clone());
        a.auth.get_or_insert_with(AuthConfig::new).org_claim = "app_metadata.org_id".to_owned();
    })
    .await;
    let mut client = app.client.clone();
    let org = Uuid::new_v4();

    let nested = json!({"exp": now() + 600, "app_metadata": {"org_id": org.to_string()}});
    let job = client
        .create_job(bearer(create(""), &es256(&key, None, &nested)))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(job.org_id, org.to_string());

    // The top-level claim is not the configured path.
    let flat = json!({"exp": now() + 600, "org_id": org.to_string()});
    assert_refused(
        client
            .get_job(bearer(get("", &job.id), &es256(&key, None, &flat)))
            .await,
        Code::Unauthenticated,
        "ORG_CLAIM_MISSING",
    );
    // Another key's signature; HS256 (no secret configured), also keyed with the
    // public key's own PEM (the classic algorithm confusion).
    let (other_key, _, _) = es256_key("k2");
    let hs_with_pem = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &nested,
        &EncodingKey::from_secret(pem.as_bytes()),
    )
    .unwrap();
    for token in [
        es256(&other_key, None, &nested),
        hs256(&nested),
        hs_with_pem,
    ] {
        assert_refused(
            client.get_job(bearer(get("", &job.id), &token)).await,
            Code::Unauthenticated,
            "INVALID_TOKEN",
        );
    }
    let mut expired = nested.clone();
    expired["exp"] = json!(now() - 600);
    assert_refused(
        client
            .get_job(bearer(get("", &job.id), &es256(&key, None, &expired)))
            .await,
        Code::Unauthenticated,
        "TOKEN_EXPIRED",
    );
}

#[tokio::test]
async fn jwks_picks_the_key_by_kid() {
    let dir = tempfile::tempdir().unwrap();
    let (key1, _, jwk1) = es256_key("k1");
    let (key2, _, jwk2) = es256_key("k2");
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, json!({"keys": [jwk1, jwk2]}).to_string()).unwrap();
    let app = spawn_app_with(|a| {
        a.auth.get_or_insert_with(AuthConfig::new).jwks_file = Some(path.clone());
        a.auth.get_or_insert_with(AuthConfig::new).audience = Some(AUDIENCE.to_owned());
    })
    .await;
    let mut client = app.client.clone();
    let org = Uuid::new_v4();
    let c = json!({"exp": now() + 600, "aud": AUDIENCE, "org_id": org.to_string()});

    for (key, kid) in [(&key1, "k1"), (&key2, "k2")] {
        let job = client
            .create_job(bearer(create(""), &es256(key, Some(kid), &c)))
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        assert_eq!(job.org_id, org.to_string());
    }
    let no_aud = json!({"exp": now() + 600, "org_id": org.to_string()});
    for (what, token) in [
        ("signed by k1, kid k2", es256(&key1, Some("k2"), &c)),
        ("unknown kid", es256(&key1, Some("k3"), &c)),
        ("no kid among two keys", es256(&key1, None, &c)),
        ("no aud", es256(&key1, Some("k1"), &no_aud)),
    ] {
        let status = client
            .get_job(bearer(get("", &Uuid::new_v4().to_string()), &token))
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert_eq!(reason(&status), "INVALID_TOKEN", "{what}");
    }
    assert_eq!(app.count("job").await, 2);
}

#[tokio::test]
async fn unusable_auth_settings_stop_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_key = dir.path().join("not-a-key.pem");
    std::fs::write(&not_a_key, "hello").unwrap();
    let empty_jwks = dir.path().join("empty.json");
    std::fs::write(&empty_jwks, r#"{"keys": []}"#).unwrap();
    type Configure<'a> = Box<dyn Fn(&mut Config) + 'a>;
    let cases: Vec<(&str, Configure)> = vec![
        (
            "short secret",
            Box::new(|a| {
                a.auth.get_or_insert_with(AuthConfig::new).hs256_secret = Some(Secret::new("short"))
            }),
        ),
        (
            "issuer without a key",
            Box::new(|a| {
                a.auth.get_or_insert_with(AuthConfig::new).issuer = Some(ISSUER.to_owned())
            }),
        ),
        (
            "missing key file",
            Box::new(|a| {
                a.auth.get_or_insert_with(AuthConfig::new).public_key_file =
                    Some("/nonexistent/key.pem".into())
            }),
        ),
        (
            "not a key",
            Box::new(|a| {
                a.auth.get_or_insert_with(AuthConfig::new).public_key_file = Some(not_a_key.clone())
            }),
        ),
        (
            "empty key set",
            Box::new(|a| {
                a.auth.get_or_insert_with(AuthConfig::new).jwks_file = Some(empty_jwks.clone())
            }),
        ),
    ];
    for (what, configure) in cases {
        // No database is reached: the settings are refused first.
        let mut args = Config::for_database("postgres://postgres@127.0.0.1:1/none").unwrap();
        args.listen_addr = "127.0.0.1:0".parse().unwrap();
        args.startup_timeout = std::time::Duration::from_millis(100);
        configure(&mut args);
        let err = match Application::build(args).await {
            Ok(_) => panic!("{what}: started"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("--auth-"), "{what}: {err}");
    }
}
