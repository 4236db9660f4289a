//! The HTTP/JSON API (spec §8, docs/http.md) on its own port (`--http-addr`), HTTP/1.1
//! and HTTP/2: the JobLedger RPCs in the proto3 JSON mapping, StreamEvents as
//! Server-Sent Events, the old REST API's two routes, and an OpenAPI document.
//!
//! | file | what |
//! |---|---|
//! | `routes.rs` | the route table (one line per route) and the path matcher |
//! | `channel.rs` | the in-process gRPC channel: every call goes through the gRPC stack |
//! | `json.rs` | an HTTP request (body, query, path, headers) as the RPC's request |
//! | `sse.rs` | a server stream as Server-Sent Events |
//! | `rest.rs` | the old REST API in its old response shape |
//! | `openapi.rs` | the OpenAPI 3 document, made from the routes and the descriptors |
//!
//! Errors answer as `server::status::json` makes them: the mapped HTTP status and a
//! google.rpc.Status body.

mod channel;
mod json;
mod openapi;
mod rest;
mod routes;
mod sse;

pub(crate) use channel::GrpcStack;

use std::{net::SocketAddr, sync::Arc, time::Instant};

use anyhow::Context as _;
use axum::{body::Body, extract::State, response::Response, Router};
use http::{header, HeaderValue};
use prost_reflect::MethodDescriptor;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::config::{HttpAddr, HttpConfig, DEFAULT_HTTP_ADDR};
use super::metrics::Metrics;
use super::status;
use super::telemetry::TRACE_ID_HEADER;
use crate::proto::reflect;
use channel::Channel;
use routes::{Lookup, Route, Target};

/// Binds the HTTP port as `--http-addr` says (the default: best effort, like metrics).
pub(crate) async fn bind(setting: HttpAddr) -> anyhow::Result<Option<TcpListener>> {
    match setting {
        HttpAddr::Off => Ok(None),
        HttpAddr::At(addr) => TcpListener::bind(addr).await.map(Some).with_context(|| {
            format!("binding the HTTP address {addr} (--http-addr / JOBLEDGER_HTTP_ADDR; `off` serves no HTTP API)")
        }),
        HttpAddr::Preferred(addr) => match TcpListener::bind(addr).await {
            Ok(listener) => Ok(Some(listener)),
            Err(_) => Ok(Some(TcpListener::bind((addr.ip(), 0)).await.with_context(
                || format!("binding the HTTP address {} on any port", addr.ip()),
            )?)),
        },
        HttpAddr::Default => {
            let addr: SocketAddr = DEFAULT_HTTP_ADDR.parse()?;
            match TcpListener::bind(addr).await {
                Ok(listener) => Ok(Some(listener)),
                Err(e) => {
                    tracing::warn!(
                        %addr,
                        error = %e,
                        "HTTP API not served: the default HTTP address is not free \
                         (set --http-addr / JOBLEDGER_HTTP_ADDR, or `off`)"
                    );
                    Ok(None)
                }
            }
        }
    }
}

/// What every request handler shares.
pub(crate) struct HttpApi {
    channel: Channel,
    metrics: Metrics,
    /// `--max-request-bytes`: larger bodies get 413.
    max_body: usize,
    settings: HttpConfig,
}

impl HttpApi {
    pub(crate) fn new(
        stack: GrpcStack,
        metrics: Metrics,
        max_body: usize,
        settings: HttpConfig,
    ) -> HttpApi {
        HttpApi {
            channel: Channel::new(stack),
            metrics,
            max_body,
            settings,
        }
    }
}

/// Serves the API on `listener` until `stop` is cancelled; then stops accepting, and
/// returns once open requests are answered (streams end at once with UNAVAILABLE: the
/// event feed stops with the same token).
pub(crate) async fn serve(listener: TcpListener, api: HttpApi, stop: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving the HTTP/JSON API");
    }
    let app = Router::new().fallback(handle).with_state(Arc::new(api));
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "HTTP API failed");
    }
}

/// Every request: find its route, serve it, count it.
async fn handle(State(api): State<Arc<HttpApi>>, request: axum::extract::Request) -> Response {
    let started = Instant::now();
    let path = request.uri().path().to_owned();
    let (labels, response) = match routes::lookup(request.method(), &path) {
        Lookup::Found(route, fields) => (
            (route.verb.as_str(), route.path),
            serve_route(&api, route, fields, request).await,
        ),
        Lookup::WrongMethod(allowed) => {
            let refusal = status::method_not_allowed(request.method().as_str(), &path, &allowed);
            (("other", "other"), status::json::response(&refusal))
        }
        Lookup::NotFound => (
            ("other", "other"),
            status::json::response(&status::route_not_found(&path)),
        ),
    };
    api.metrics.http_request(
        labels.0,
        labels.1,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

async fn serve_route(
    api: &HttpApi,
    route: &'static Route,
    fields: Vec<(&'static str, String)>,
    request: axum::extract::Request,
) -> Response {
    match route.target {
        Target::Rpc(_) => match route.method() {
            Some(method) => serve_rpc(api, route, &method, fields, request).await,
            None => status::json::response(&status::http_bug("a route names no RPC")),
        },
        Target::LegacyCreate => rest::create(api, request).await,
        Target::LegacyGet => rest::get(api, fields, request).await,
        Target::OpenApi => openapi::response(),
    }
}

/// A JSON route: the request message from the HTTP request, the RPC through the gRPC
/// stack, the response message (or a stream of them) as JSON.
async fn serve_rpc(
    api: &HttpApi,
    route: &'static Route,
    method: &MethodDescriptor,
    fields: Vec<(&'static str, String)>,
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    // GET bodies are ignored, as HTTP says they carry no meaning.
    let body = match route.verb {
        routes::Verb::Post => match json::read_body(&parts.headers, body, api.max_body).await {
            Ok(body) => body,
            Err(refusal) => return status::json::response(&refusal),
        },
        routes::Verb::Get => bytes::Bytes::new(),
    };
    let call = match json::call(route, &method.input(), fields, &parts, &body) {
        Ok(call) => call,
        Err(refusal) => return status::json::response(&refusal),
    };
    if method.is_server_streaming() {
        return sse::serve(api, method, call).await;
    }
    unary(api, method, call).await
}

/// A unary call; its response as JSON (status 200), or the status it failed with.
async fn unary(api: &HttpApi, method: &MethodDescriptor, call: json::Call) -> Response {
    let timeout = call.timeout;
    match call_unary(api, method, call.into_request(), timeout).await {
        Ok(response) => {
            let trace_id = response.metadata().get(TRACE_ID_HEADER).cloned();
            let mut response = match reflect::to_json(&method.output(), response.get_ref()) {
                Ok(json) => json_response(json),
                Err(e) => status::json::response(&status::http_bug(&e)),
            };
            if let Some(id) = trace_id.and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()) {
                response.headers_mut().insert(TRACE_ID_HEADER, id);
            }
            response
        }
        Err(refusal) => with_trace_id(status::json::response(&refusal), &refusal),
    }
}

/// Calls a unary RPC through the gRPC stack, answered within `timeout` (the service
/// gets it as `grpc-timeout` too, and stops its database work when it passes).
pub(crate) async fn call_unary(
    api: &HttpApi,
    method: &MethodDescriptor,
    request: tonic::Request<bytes::Bytes>,
    timeout: Option<std::time::Duration>,
) -> Result<tonic::Response<bytes::Bytes>, tonic::Status> {
    let answer = api.channel.unary(method, request);
    match timeout {
        Some(limit) => tokio::time::timeout(limit, answer)
            .await
            .unwrap_or_else(|_| Err(status::deadline_exceeded())),
        None => answer.await,
    }
}

/// 200 with a JSON body.
pub(crate) fn json_response(json: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(json));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The `x-trace-id` the gRPC stack answered with, on an error answer too.
pub(crate) fn with_trace_id(mut response: Response, status: &tonic::Status) -> Response {
    if let Some(id) = status
        .metadata()
        .get(TRACE_ID_HEADER)
        .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok())
    {
        response.headers_mut().insert(TRACE_ID_HEADER, id);
    }
    response
}
