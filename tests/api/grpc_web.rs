//! gRPC-Web on the gRPC port (tonic-web): a gRPC-Web client over HTTP/1.1, as a browser
//! would be, makes unary and server-streaming calls with the same answers, errors and
//! authentication as gRPC clients.

use jobledger::proto::{self, job_ledger_client::JobLedgerClient, JobStatus as S};
use tonic::Code;

use crate::helpers::{reason, spawn_app, TestApp};

/// A JobLedger client speaking gRPC-Web over HTTP/1.1 to the gRPC port.
fn grpc_web_client(
    app: &TestApp,
) -> JobLedgerClient<
    tonic_web::GrpcWebClientService<
        hyper_util::client::legacy::Client<
            hyper_util::client::legacy::connect::HttpConnector,
            tonic_web::GrpcWebCall<tonic::body::Body>,
        >,
    >,
> {
    let http1 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let service = tower::ServiceBuilder::new()
        .layer(tonic_web::GrpcWebClientLayer::new())
        .service(http1);
    JobLedgerClient::with_origin(service, app.addr.parse().unwrap())
}

#[tokio::test]
async fn grpc_web_clients_call_the_ledger_over_http1() {
    let app = spawn_app().await;
    let mut client = grpc_web_client(&app);
    let job = client
        .create_job(proto::CreateJobRequest {
            r#type: "web".into(),
            ..Default::default()
        })
        .await
        .expect("CreateJob over gRPC-Web")
        .into_inner()
        .job
        .unwrap();
    assert_eq!(app.get(&job.id).await.unwrap().r#type, "web");
    // Errors keep their code and details.
    let refused = client
        .create_job(proto::CreateJobRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(reason(&refused), "INVALID_ARGUMENT");
    // Server streaming: the job's events until it ends.
    app.transition(&job.id, S::Canceled).await.unwrap();
    let mut events = client
        .stream_events(proto::StreamEventsRequest {
            job_id: job.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut statuses = Vec::new();
    while let Some(event) = events.message().await.expect("events over gRPC-Web") {
        statuses.push(event.next_status);
    }
    assert_eq!(statuses, [S::Queued as i32, S::Canceled as i32]);
}
