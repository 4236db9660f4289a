//! What stands between a connection and the `JobLedger` service, outside in:
//!
//! 1. [`AgedConnection`]: a connection past its maximum age plus grace is cut.
//! 2. tonic's HTTP/2 settings ([`configure`]): keepalive PINGs, concurrent streams per
//!    connection, a GOAWAY at the maximum age; TLS (`server::tls`).
//! 3. `tonic_web::GrpcWebLayer`: a gRPC-Web call (HTTP/1.1, browsers) becomes a gRPC
//!    call, and its answer gRPC-Web again.
//! 4. [`CallObserverLayer`]: metrics and the call's span and log line.
//! 5. `status::client_errors_are_not_internal`: tonic's own answers to malformed calls
//!    rewritten as the client errors they are.
//! 6. [`InflightLimit`]: load shedding past `--max-inflight-requests`.
//! 7. the authentication interceptor, on the JobLedger service only (`server::auth`).

mod connection;
mod inflight;
mod observe;

pub(super) use connection::AgedConnection;
pub(super) use inflight::InflightLimit;
pub(super) use observe::CallObserverLayer;

use crate::server::config::ConnectionConfig;

/// tonic's own settings: keepalive PINGs, SETTINGS_MAX_CONCURRENT_STREAMS, a graceful
/// GOAWAY at the maximum age, and HTTP/1.1 beside HTTP/2 (gRPC-Web clients, browsers
/// among them, speak HTTP/1.1; gRPC itself still needs HTTP/2). Its `max_connection_age_grace` is not used: in
/// tonic 0.14.9 setting it replaces the GOAWAY by an abrupt close at age + grace, so the
/// grace is enforced by [`AgedConnection`] instead.
pub(super) fn configure<L>(
    server: tonic::transport::Server<L>,
    connections: &ConnectionConfig,
) -> tonic::transport::Server<L> {
    let server = server
        .accept_http1(true)
        .max_concurrent_streams(connections.max_concurrent_streams_per_connection)
        .http2_keepalive_interval(connections.http2_keepalive_interval)
        .http2_keepalive_timeout(Some(connections.http2_keepalive_timeout));
    match connections.max_connection_age {
        Some(age) => server.max_connection_age(age),
        None => server,
    }
}
