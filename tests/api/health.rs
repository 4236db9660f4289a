//! Health: `""` and `jobledger.v1.JobLedger` follow the database probe, `liveness`
//! follows only the process. Outages are staged on a private cluster.

use std::time::{Duration, Instant};

use jobledger::{
    proto,
    server::{Application, Config},
};
use tokio_stream::StreamExt;
use tonic::{transport::Channel, Code};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use crate::helpers::{reason, spawn_app, spawn_app_on};
use jobledger::testkit::cluster::PrivateCluster;

async fn check(
    health: &HealthClient<Channel>,
    service: &str,
) -> Result<ServingStatus, tonic::Status> {
    health
        .clone()
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map(|r| r.into_inner().status())
}

/// Polls `service` until it reports `want`; returns how long that took.
async fn wait_for(
    health: &HealthClient<Channel>,
    service: &str,
    want: ServingStatus,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        if check(health, service).await.ok() == Some(want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{service:?} did not become {want:?} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn all_services_serve_when_the_database_answers() {
    let app = spawn_app().await;
    wait_for(
        &app.health,
        "",
        ServingStatus::Serving,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        check(&app.health, "jobledger.v1.JobLedger").await.unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(
        check(&app.health, "liveness").await.unwrap(),
        ServingStatus::Serving
    );
    let unknown = check(&app.health, "no.such.Service").await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

/// The spec's flip: NOT_SERVING within 2 s of the database going away, SERVING within
/// 2 s of its return, liveness SERVING throughout, requests UNAVAILABLE meanwhile and
/// fine afterwards without a restart, and each change published once on Watch.
async fn flip(mode: &str) {
    let cluster = PrivateCluster::start();
    let app = spawn_app_on(&cluster.base_url(), "jobledger", |args| {
        // The defaults: the timing measured here is the timing operators get.
        args.probe_interval = std::time::Duration::from_millis(1000);
        args.probe_timeout = std::time::Duration::from_millis(500);
        args.db_acquire_timeout = std::time::Duration::from_millis(1000);
    })
    .await;
    wait_for(
        &app.health,
        "",
        ServingStatus::Serving,
        Duration::from_secs(5),
    )
    .await;
    let job = app.create("before-outage").await;

    let mut watch = app
        .health
        .clone()
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap().status();
    assert_eq!(first, ServingStatus::Serving);

    cluster.stop(mode);
    let down_after = wait_for(
        &app.health,
        "",
        ServingStatus::NotServing,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        check(&app.health, "jobledger.v1.JobLedger").await.unwrap(),
        ServingStatus::NotServing
    );
    assert_eq!(
        check(&app.health, "liveness").await.unwrap(),
        ServingStatus::Serving
    );

    let refused = app
        .client
        .clone()
        .create_job(proto::CreateJobRequest {
            r#type: "during-outage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(reason(&refused), "DATABASE_UNAVAILABLE");
    let refused_get = app.get(&job.id).await.unwrap_err();
    assert_eq!(refused_get.code(), Code::Unavailable, "{refused_get:?}");

    cluster.start_again();
    let up_after = wait_for(
        &app.health,
        "",
        ServingStatus::Serving,
        Duration::from_secs(2),
    )
    .await;
    eprintln!("health flip ({mode}): NOT_SERVING after {down_after:?}, SERVING {up_after:?} after restart");

    // The pool reconnects by itself.
    assert_eq!(app.get(&job.id).await.unwrap().id, job.id);
    app.create("after-outage").await;

    // Watch saw each change exactly once: SERVING (initial), NOT_SERVING, SERVING.
    let mut seen = vec![first];
    while seen.len() < 3 {
        let next = tokio::time::timeout(Duration::from_secs(2), watch.next())
            .await
            .expect("watch update")
            .unwrap()
            .unwrap()
            .status();
        seen.push(next);
    }
    assert_eq!(
        seen,
        [
            ServingStatus::Serving,
            ServingStatus::NotServing,
            ServingStatus::Serving
        ]
    );
    let extra = tokio::time::timeout(Duration::from_millis(2500), watch.next()).await;
    assert!(extra.is_err(), "unexpected duplicate publish: {extra:?}");
}

#[tokio::test]
async fn health_flips_when_the_database_stops_fast_and_returns() {
    flip("fast").await;
}

#[tokio::test]
async fn health_flips_when_the_database_stops_immediately_and_returns() {
    flip("immediate").await;
}

#[tokio::test]
async fn not_serving_until_the_first_probe_succeeds() {
    let cluster = PrivateCluster::start();
    let url = format!("{}/jobledger", cluster.base_url());
    let mut args = Config::for_database(&url).unwrap();
    args.listen_addr = "127.0.0.1:0".parse().unwrap();
    args.probe_interval = std::time::Duration::from_millis(100);
    // Migrated, then the database goes away before the server starts serving.
    let app = Application::build(args).await.unwrap();
    let port = app.port();
    cluster.stop("fast");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        rx.await.ok();
    }));
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel);
    for _ in 0..10 {
        assert_eq!(check(&health, "").await.unwrap(), ServingStatus::NotServing);
        assert_eq!(
            check(&health, "liveness").await.unwrap(),
            ServingStatus::Serving
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.start_again();
    wait_for(&health, "", ServingStatus::Serving, Duration::from_secs(3)).await;
    tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}
