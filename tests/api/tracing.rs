//! Trace context and OTLP export, against the real binary (its global subscriber and
//! exporter are per process): a caller's `traceparent` becomes the parent of the call's
//! span, every log line of the call carries the trace id, the response carries it as
//! `x-trace-id`, and spans reach a fake OTLP collector (HTTP and gRPC) — or, when the
//! collector is unreachable, calls do not notice.

use std::{
    net::SocketAddr,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use jobledger::proto::{self, job_ledger_client::JobLedgerClient};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
    common::v1::any_value,
    trace::v1::Span,
};
use prost::Message;
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tonic::{transport::Channel, Code};

use crate::helpers::{ScratchDb, ServerProcess, BIN};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

/// A `jobledger serve` child process whose stdout (JSON logs unless told otherwise) is
/// collected line by line.
struct LoggingServer {
    process: ServerProcess,
    lines: Arc<Mutex<Vec<String>>>,
    client: JobLedgerClient<Channel>,
}

/// Starts the binary on `db` with `env` (RUST_LOG=info unless given; no OTEL_* variable
/// from the caller's environment) and `extra` flags; waits until it is SERVING.
async fn start_server(db: &ScratchDb, env: &[(&str, &str)], extra: &[&str]) -> LoggingServer {
    let mut command = ServerProcess::command(BIN, &db.url())
        // CreateJob writes in the handler's task, so its SQL runs inside the call's span.
        .args(&["--group-commit-writers", "0"])
        .args(extra)
        .env_remove_prefix("OTEL_")
        .env("RUST_LOG", "info")
        .show_logs(false)
        .capture_stdout();
    if !extra.contains(&"--log-format") {
        command = command.args(&["--log-format", "json"]);
    }
    for (name, value) in env {
        command = command.env(name, value);
    }
    let process = command.start().await.expect("jobledger serve");
    let channel = Channel::from_shared(process.addr.clone())
        .unwrap()
        .connect()
        .await
        .expect("client connects");
    LoggingServer {
        lines: process.stdout.clone(),
        process,
        client: JobLedgerClient::new(channel),
    }
}

impl LoggingServer {
    /// The JSON log lines so far.
    fn json_lines(&self) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Waits (up to 10 s) for the JSON line of the finished call with `trace_id`.
    async fn finished_call(&self, trace_id: &str) -> Value {
        let started = Instant::now();
        loop {
            let found = self
                .json_lines()
                .into_iter()
                .find(|line| line["message"] == "call finished" && line["trace_id"] == trace_id);
            if let Some(line) = found {
                return line;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no `call finished` line with trace_id {trace_id}; the log:\n{}",
                self.lines.lock().unwrap().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn create(&self, traceparent: Option<&str>) -> (String, tonic::metadata::MetadataMap) {
        let mut request = tonic::Request::new(proto::CreateJobRequest {
            r#type: "traced".to_owned(),
            ..Default::default()
        });
        if let Some(traceparent) = traceparent {
            request
                .metadata_mut()
                .insert("traceparent", traceparent.parse().unwrap());
        }
        let response = self
            .client
            .clone()
            .create_job(request)
            .await
            .expect("create_job");
        let metadata = response.metadata().clone();
        (response.into_inner().job.unwrap().id, metadata)
    }
}

/// The `x-trace-id` of a response, checked to be a valid trace id.
fn trace_id_of(metadata: &tonic::metadata::MetadataMap) -> String {
    let id = metadata
        .get("x-trace-id")
        .expect("x-trace-id metadata")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(is_hex_id(&id, 32), "{id:?} is not a trace id");
    id
}

fn is_hex_id(id: &str, len: usize) -> bool {
    id.len() == len
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && id.bytes().any(|b| b != b'0')
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_callers_traceparent_is_the_parent_of_the_call_and_on_every_log_line_of_it() {
    let db = ScratchDb::new();
    // sqlx logs each statement at debug: lines written in the middle of the call.
    let server = start_server(&db, &[("RUST_LOG", "info,sqlx::query=debug")], &[]).await;

    let create_trace = "0af7651916cd43dd8448eb211c80319c";
    let (job_id, metadata) = server
        .create(Some(&format!("00-{create_trace}-b7ad6b7169203331-01")))
        .await;
    assert_eq!(trace_id_of(&metadata), create_trace);

    let mut get = tonic::Request::new(proto::GetJobRequest {
        job_id: job_id.clone(),
        ..Default::default()
    });
    get.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
            .parse()
            .unwrap(),
    );
    get.metadata_mut()
        .insert("tracestate", "vendor=opaque".parse().unwrap());
    let response = server.client.clone().get_job(get).await.unwrap();
    assert_eq!(trace_id_of(response.metadata()), TRACE_ID);

    // An error response carries it too (a trailers-only response: in the status).
    let missing_trace = "11111111111111111111111111111111";
    let mut missing = tonic::Request::new(proto::GetJobRequest {
        job_id: uuid::Uuid::new_v4().to_string(),
        ..Default::default()
    });
    missing.metadata_mut().insert(
        "traceparent",
        format!("00-{missing_trace}-2222222222222222-00")
            .parse()
            .unwrap(),
    );
    let status = server.client.clone().get_job(missing).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(trace_id_of(status.metadata()), missing_trace);

    // One info line per call: method, gRPC code, duration, and the caller's trace.
    let line = server.finished_call(TRACE_ID).await;
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["method"], "jobledger.v1.JobLedger/GetJob");
    assert_eq!(line["code"], "OK");
    assert!(line["duration_ms"].as_f64().unwrap() >= 0.0, "{line}");
    let span_id = line["span_id"].as_str().unwrap();
    assert!(is_hex_id(span_id, 16), "{line}");
    assert_ne!(
        span_id, PARENT_SPAN_ID,
        "the server's span is a child, not the caller's"
    );

    let line = server.finished_call(missing_trace).await;
    assert_eq!(line["method"], "jobledger.v1.JobLedger/GetJob");
    assert_eq!(line["code"], "NOT_FOUND");
    let line = server.finished_call(create_trace).await;
    assert_eq!(line["method"], "jobledger.v1.JobLedger/CreateJob");
    assert_eq!(line["code"], "OK");

    // Every statement the calls ran was logged inside the call: with its trace id. (Those
    // before `serving` are the migrations; the probe's and the listener's are not on `job`;
    // the rescuer's run in its own background span.)
    let statements: Vec<Value> = server
        .json_lines()
        .into_iter()
        .skip_while(|line| line["message"] != "serving")
        .filter(|line| line["target"] == "sqlx::query")
        .filter(|line| line["span"]["name"] != "rescue_expired")
        .filter(|line| {
            let sql = line["db.statement"].as_str().unwrap_or_default();
            sql.contains("job") && !sql.contains("pg_")
        })
        .collect();
    let traced = |trace_id: &str| {
        statements
            .iter()
            .filter(|line| line["trace_id"] == trace_id)
            .count()
    };
    assert!(traced(create_trace) >= 1, "{statements:#?}");
    assert!(traced(TRACE_ID) >= 1, "{statements:#?}");
    assert!(traced(missing_trace) >= 1, "{statements:#?}");
    for line in &statements {
        let trace_id = line["trace_id"].as_str();
        assert!(
            [create_trace, TRACE_ID, missing_trace].contains(&trace_id.unwrap_or_default()),
            "a statement of a call logged without the call's trace id: {line}"
        );
        assert!(is_hex_id(line["span_id"].as_str().unwrap(), 16), "{line}");
    }
}

#[tokio::test]
async fn a_call_without_traceparent_starts_a_new_trace() {
    let db = ScratchDb::new();
    let server = start_server(&db, &[], &[]).await;
    let (_, first) = server.create(None).await;
    let (_, second) = server.create(None).await;
    let (first, second) = (trace_id_of(&first), trace_id_of(&second));
    assert_ne!(first, second, "each call is a trace of its own");
    for trace_id in [&first, &second] {
        let line = server.finished_call(trace_id).await;
        assert_eq!(line["method"], "jobledger.v1.JobLedger/CreateJob");
        assert_eq!(line["code"], "OK");
    }
    // Health checks (start_server's, Kubernetes' probes) log at debug only.
    assert!(
        !server.json_lines().iter().any(|line| line["method"]
            .as_str()
            .is_some_and(|m| m.starts_with("grpc.health"))),
        "a health check was logged at info"
    );
    // Start-up lines are outside any call: no ids.
    let serving = server
        .json_lines()
        .into_iter()
        .find(|line| line["message"] == "serving")
        .expect("the serving line");
    assert!(serving.get("trace_id").is_none(), "{serving}");
}

#[tokio::test]
async fn a_malformed_traceparent_is_ignored_and_the_call_starts_a_new_trace() {
    let db = ScratchDb::new();
    let server = start_server(&db, &[], &[]).await;
    let malformed = [
        "garbage".to_owned(),
        format!("00-{TRACE_ID}-{PARENT_SPAN_ID}"),
        format!("00-{}-{PARENT_SPAN_ID}-01", "0".repeat(32)),
        format!("00-{TRACE_ID}-{}-01", "0".repeat(16)),
        format!("ff-{TRACE_ID}-{PARENT_SPAN_ID}-01"),
        format!("00-{}-{PARENT_SPAN_ID}-01", TRACE_ID.to_uppercase()),
        format!("00-{}zz-{PARENT_SPAN_ID}-01", &TRACE_ID[..30]),
    ];
    let mut seen = Vec::new();
    for traceparent in &malformed {
        let (_, metadata) = server.create(Some(traceparent)).await;
        let trace_id = trace_id_of(&metadata);
        assert_ne!(trace_id, TRACE_ID, "{traceparent:?} was taken as a parent");
        assert_ne!(trace_id, TRACE_ID.to_lowercase());
        assert!(!seen.contains(&trace_id), "{traceparent:?} reused a trace");
        let line = server.finished_call(&trace_id).await;
        assert_eq!(line["code"], "OK");
        seen.push(trace_id);
    }
}

#[tokio::test]
async fn a_stream_is_one_span_until_it_ends_and_a_client_going_away_is_cancelled() {
    let db = ScratchDb::new();
    let server = start_server(&db, &[], &[]).await;
    let mut request = tonic::Request::new(proto::StreamEventsRequest::default());
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
            .parse()
            .unwrap(),
    );
    let stream = server
        .client
        .clone()
        .stream_events(request)
        .await
        .expect("stream_events");
    assert_eq!(trace_id_of(stream.metadata()), TRACE_ID);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !server
            .json_lines()
            .iter()
            .any(|line| line["trace_id"] == TRACE_ID && line["message"] == "call finished"),
        "the call was over while its stream was open"
    );
    drop(stream);
    let line = server.finished_call(TRACE_ID).await;
    assert_eq!(line["method"], "jobledger.v1.JobLedger/StreamEvents");
    assert_eq!(line["code"], "CANCELLED");
    assert!(line["duration_ms"].as_f64().unwrap() >= 300.0, "{line}");
}

#[tokio::test]
async fn pretty_log_lines_of_a_call_carry_its_trace_id() {
    let db = ScratchDb::new();
    let server = start_server(&db, &[], &["--log-format", "pretty"]).await;
    let (_, metadata) = server
        .create(Some(&format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01")))
        .await;
    assert_eq!(trace_id_of(&metadata), TRACE_ID);
    let started = Instant::now();
    loop {
        let lines: Vec<String> = server
            .lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| without_ansi(l))
            .collect();
        if let Some(line) = lines.iter().find(|l| l.contains("call finished")) {
            assert!(
                line.starts_with(&format!("trace_id={TRACE_ID} span_id=")),
                "{line}"
            );
            assert!(line.contains("code=\"OK\""), "{line}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no `call finished` line:\n{}",
            lines.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `line` without its terminal colour codes (`ESC [ ... m`).
fn without_ansi(line: &str) -> String {
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain
}

/// What a fake collector received: every span with its resource's `service.name`.
#[derive(Clone, Default)]
struct Received {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl Received {
    fn record(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
    }

    /// Waits up to `limit` for a span named `name` of trace `trace_id`.
    async fn span(&self, trace_id: &str, name: &str, limit: Duration) -> (String, Span) {
        let started = Instant::now();
        loop {
            let found = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .find(|(_, s)| hex(&s.trace_id) == trace_id && s.name == name)
                .cloned();
            if let Some(found) = found {
                return found;
            }
            assert!(
                started.elapsed() < limit,
                "no span {name} of trace {trace_id} reached the collector; it has: {:?}",
                self.spans
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(_, s)| (hex(&s.trace_id), s.name.clone()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn int_attribute(span: &Span, key: &str) -> Option<i64> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::IntValue(i) => Some(*i),
            _ => None,
        })
}

fn str_attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
}

/// An OTLP/HTTP collector (POST /v1/traces, protobuf) on a port of its own: plain
/// HTTP/1.1 with Content-Length, which is what the exporter sends.
async fn http_collector() -> (SocketAddr, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let sink = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_http_exports(stream, sink.clone()));
        }
    });
    (addr, received)
}

async fn serve_http_exports(mut stream: TcpStream, received: Received) {
    let mut buffer = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buffer.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buffer.drain(..head_end + length).skip(head_end).collect();
        let request_line = head.lines().next().unwrap_or_default().to_owned();
        received.paths.lock().unwrap().push(request_line);
        if let Ok(request) = ExportTraceServiceRequest::decode(body.as_slice()) {
            received.record(request);
        }
        let response = ExportTraceServiceResponse::default().encode_to_vec();
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
            response.len()
        );
        if stream.write_all(head.as_bytes()).await.is_err()
            || stream.write_all(&response).await.is_err()
        {
            return;
        }
    }
}

struct GrpcCollector(Received);

#[tonic::async_trait]
impl TraceService for GrpcCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.record(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn grpc_collector() -> (SocketAddr, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let service = TraceServiceServer::new(GrpcCollector(received.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, received)
}

/// Checks the server span of a GetJob whose caller sent TRACE_ID / PARENT_SPAN_ID.
fn assert_server_span_of_get(span: &Span) {
    assert_eq!(hex(&span.parent_span_id), PARENT_SPAN_ID);
    assert_eq!(span.trace_state, "vendor=opaque");
    assert_eq!(span.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(str_attribute(span, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        str_attribute(span, "rpc.service").as_deref(),
        Some("jobledger.v1.JobLedger")
    );
    assert_eq!(str_attribute(span, "rpc.method").as_deref(), Some("GetJob"));
    assert_eq!(int_attribute(span, "rpc.grpc.status_code"), Some(0));
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
}

async fn traced_get(
    server: &LoggingServer,
    job_id: &str,
) -> tonic::Response<proto::GetJobResponse> {
    let mut get = tonic::Request::new(proto::GetJobRequest {
        job_id: job_id.to_owned(),
        ..Default::default()
    });
    get.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
            .parse()
            .unwrap(),
    );
    get.metadata_mut()
        .insert("tracestate", "vendor=opaque".parse().unwrap());
    server.client.clone().get_job(get).await.expect("get_job")
}

#[tokio::test]
async fn spans_reach_an_otlp_http_collector_and_the_last_ones_are_flushed_on_shutdown() {
    let (collector, received) = http_collector().await;
    let db = ScratchDb::new();
    let endpoint = format!("http://{collector}");
    let mut server = start_server(
        &db,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            // Nothing is sent on a timer during the test: what arrives was flushed at exit.
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ],
        &[],
    )
    .await;
    let (job_id, _) = server.create(None).await;
    let response = traced_get(&server, &job_id).await;
    assert_eq!(trace_id_of(response.metadata()), TRACE_ID);
    server.finished_call(TRACE_ID).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        received.spans.lock().unwrap().is_empty(),
        "spans were sent before the schedule delay or shutdown"
    );

    server.process.signal("TERM");
    let started = Instant::now();
    assert_eq!(server.process.wait(Duration::from_secs(15)).await, Some(0));
    let (service, span) = received
        .span(
            TRACE_ID,
            "jobledger.v1.JobLedger/GetJob",
            Duration::from_secs(1),
        )
        .await;
    assert_eq!(service, "jobledger", "the default service name");
    assert_server_span_of_get(&span);
    // The store's span of the call is a child of the call's span.
    let (_, store) = received
        .span(TRACE_ID, "get_job", Duration::from_secs(1))
        .await;
    assert_eq!(store.parent_span_id, span.span_id);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(received
        .paths
        .lock()
        .unwrap()
        .iter()
        .all(|line| line == "POST /v1/traces HTTP/1.1"));
}

#[tokio::test]
async fn spans_reach_an_otlp_grpc_collector_while_the_server_runs() {
    let (collector, received) = grpc_collector().await;
    let db = ScratchDb::new();
    let endpoint = format!("http://{collector}");
    let server = start_server(
        &db,
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_SERVICE_NAME", "ledger-canary"),
        ],
        &[],
    )
    .await;
    let (job_id, _) = server.create(None).await;
    traced_get(&server, &job_id).await;
    let (service, span) = received
        .span(
            TRACE_ID,
            "jobledger.v1.JobLedger/GetJob",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        service, "ledger-canary",
        "OTEL_SERVICE_NAME names the service"
    );
    assert_server_span_of_get(&span);
}

/// A collector that accepts connections and never answers: the worst case, every export
/// waits out its timeout.
async fn black_hole() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

#[tokio::test]
async fn an_unreachable_collector_neither_slows_nor_fails_calls() {
    let hole = black_hole().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    for (protocol, collector) in [
        ("http/protobuf", hole),
        ("grpc", hole),
        ("http/protobuf", closed),
    ] {
        let db = ScratchDb::new();
        let endpoint = format!("http://{collector}");
        let mut server = start_server(
            &db,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "30000"),
                // Export constantly, and a queue small enough to overflow.
                ("OTEL_BSP_SCHEDULE_DELAY", "10"),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "16"),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4"),
            ],
            &[],
        )
        .await;
        let mut slowest = Duration::ZERO;
        for _ in 0..60 {
            let started = Instant::now();
            server.create(None).await;
            slowest = slowest.max(started.elapsed());
        }
        assert!(
            slowest < Duration::from_secs(1),
            "{protocol} to {collector}: a call took {slowest:?}"
        );
        // Shutdown gives up on the collector after a bounded flush.
        server.process.signal("TERM");
        let started = Instant::now();
        assert_eq!(server.process.wait(Duration::from_secs(15)).await, Some(0));
        eprintln!(
            "{protocol} to {collector}: slowest of 60 calls {slowest:?}, exit after SIGTERM {:?}",
            started.elapsed()
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{protocol} to {collector}: exit took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn exporter_settings_the_server_cannot_honour_stop_start_up_naming_the_variable() {
    let cases = [
        (
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ],
            "OTEL_EXPORTER_OTLP_PROTOCOL=\"http/json\" is not supported",
        ),
        (
            vec![(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "https://collector.example:4318",
            )],
            "OTEL_EXPORTER_OTLP_ENDPOINT=\"https://collector.example:4318\": https://",
        ),
    ];
    for (env, expected) in cases {
        let mut command = Command::new(BIN);
        command
            .args([
                "serve",
                "--database-url",
                "postgres://postgres@127.0.0.1:1/none",
            ])
            .args(["--listen-addr", "127.0.0.1:0"]);
        for (name, _) in std::env::vars() {
            if name.starts_with("OTEL_") {
                command.env_remove(name);
            }
        }
        let output = command.envs(env).output().unwrap();
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{stderr}");
    }
}
