//! Wiring: settings in, a listening server out. `Application::build` prepares the
//! database and binds the port (so tests learn it before serving);
//! `run_until_stopped` serves until the shutdown future resolves, then drains.

use std::{future::Future, net::SocketAddr, time::Instant};

use anyhow::Context;
use sqlx::postgres::PgConnectOptions;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{
    service::interceptor::InterceptedService,
    transport::{server::TcpIncoming, Server},
    Code, Status,
};
use tonic_types::ErrorDetails;

use crate::api::{error::status_with, LedgerService};
use crate::auth::{AuthInterceptor, Verifier};
use crate::config::ServeArgs;
use crate::feed::{self, Feed};
use crate::health::{probe_loop, HealthState};
use crate::metrics::{self, Metrics, RpcMetricsLayer};
use crate::protection::{AgedConnection, InflightLimit};
use crate::proto::{self, job_ledger_server::JobLedgerServer};
use crate::store::{self, GroupCommit, PoolSettings, Store};
use crate::tls::ServerTls;

pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    options: PgConnectOptions,
    store: Store,
    args: ServeArgs,
    auth: Option<Verifier>,
    tls: Option<ServerTls>,
    metrics: Metrics,
    metrics_listener: Option<TcpListener>,
    metrics_addr: Option<SocketAddr>,
}

impl Application {
    /// Creates and migrates the database (waiting up to the start-up timeout for it to
    /// be reachable), then binds the listen address.
    pub async fn build(args: ServeArgs) -> anyhow::Result<Application> {
        let options =
            store::tune_options(args.database.connect_options()?, args.statement_timeout());
        tracing::info!(
            host = options.get_host(),
            port = options.get_port(),
            database = options.get_database().unwrap_or_default(),
            user = options.get_username(),
            "using database"
        );
        // Key files are read before the database is prepared: a bad one stops start-up at once.
        let auth = Verifier::from_args(&args.auth)?;
        if auth.is_some() {
            tracing::info!("authentication on: JobLedger calls need a bearer token");
        }
        // So are the TLS files, and the protection settings are checked.
        let tls = ServerTls::from_args(&args.tls)?;
        match tls.as_ref().map(|t| t.client_ca_file()) {
            Some(Some(ca)) => tracing::info!(
                client_ca_file = %ca.display(),
                "mutual TLS on: clients need a certificate signed by the client CA"
            ),
            Some(None) => tracing::info!("TLS on: plaintext connections are refused"),
            None => tracing::info!("TLS off: the port speaks plaintext HTTP/2"),
        }
        args.protection.check()?;
        // The metrics port too: one given explicitly that cannot be bound stops start-up.
        let default_metrics_addr = metrics::DEFAULT_ADDR.parse()?;
        let metrics_listener = metrics::bind(args.metrics.addr, default_metrics_addr).await?;
        let metrics_addr = match &metrics_listener {
            Some(listener) => Some(listener.local_addr()?),
            None => None,
        };
        let metrics = Metrics::new(args.metrics.max_job_types.into());
        prepare_with_retry(&options, &args).await?;
        let store = Store::connect_lazy(
            options.clone(),
            &PoolSettings {
                size: args.pool_size,
                acquire_timeout: args.acquire_timeout(),
                statement_timeout: args.statement_timeout(),
            },
        );
        let listener = TcpListener::bind(args.listen_addr)
            .await
            .with_context(|| format!("binding {}", args.listen_addr))?;
        let local_addr = listener.local_addr()?;
        Ok(Application {
            listener,
            local_addr,
            options,
            store,
            args,
            auth,
            tls,
            metrics,
            metrics_listener,
            metrics_addr,
        })
    }

    /// Where `GET /metrics` is served (None: metrics off).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// Serves until `shutdown` resolves. Then: health NOT_SERVING at once, no new
    /// connections or calls, in-flight calls finish within the drain timeout.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let args = self.args;
        let stop = CancellationToken::new();

        let (reporter, health_service) = tonic_health::server::health_reporter();
        let health = HealthState::new(reporter).await;
        let probe = tokio::spawn(probe_loop(
            health,
            self.options.clone(),
            args.probe_interval(),
            args.probe_timeout(),
            stop.clone(),
            self.metrics.clone(),
        ));

        let (feed, announcements) =
            Feed::new(self.store.clone(), args.feed_settings(), stop.clone());
        let feed_announcer = tokio::spawn(feed::announce_loop(
            announcements,
            self.options.clone(),
            feed.wakeups(),
            stop.clone(),
        ));
        let feed_listener = tokio::spawn(feed::listen(
            self.options.clone(),
            feed.wakeups(),
            stop.clone(),
        ));
        // Metrics are served until the drain is over: it shows streams closing.
        let metrics_stop = CancellationToken::new();
        // Also stopped when this returns early on an error.
        let _stop_metrics_on_return = metrics_stop.clone().drop_guard();
        let metrics_server = self.metrics_listener.map(|listener| {
            tokio::spawn(metrics::serve(
                listener,
                self.metrics.clone(),
                self.store.clone(),
                feed.clone(),
                args.metrics.job_count_interval(),
                metrics_stop.clone(),
            ))
        });
        let mut service = LedgerService::new(self.store.clone(), feed, args.limits.limits())
            .with_metrics(self.metrics.clone());
        if args.group_commit_writers > 0 {
            service = service.with_group_commit(GroupCommit::start(
                self.store.clone(),
                args.group_commit_writers.into(),
                args.group_commit_max_batch.into(),
            ));
        }
        let ledger =
            JobLedgerServer::new(service).max_decoding_message_size(args.max_request_bytes);
        // Only the JobLedger service checks tokens: health and reflection stay open.
        let ledger = InterceptedService::new(ledger, AuthInterceptor::new(self.auth));

        let (reflection_v1, reflection_v1alpha) = if args.reflection {
            let builder = || {
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            };
            (
                Some(builder().build_v1()?),
                Some(builder().build_v1alpha()?),
            )
        } else {
            (None, None)
        };

        // TCP_NODELAY: small responses and stream events go out at once instead of
        // waiting out the peer's delayed ACK (40 ms per event otherwise).
        let incoming = TcpIncoming::from(self.listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(std::time::Duration::from_secs(60)));
        // A connection past its maximum age plus grace is cut under its open calls.
        let lifetime = args.protection.connection_deadline();
        let incoming = tokio_stream::StreamExt::map(incoming, move |accepted| {
            accepted.map(|tcp| AgedConnection::new(tcp, lifetime))
        });
        let mut server = args.protection.apply(Server::builder());
        if let Some(tls) = &self.tls {
            server = tls.apply(server)?;
        }
        let inflight = InflightLimit::new(
            args.protection.max_inflight_requests,
            proto::FILE_DESCRIPTOR_SET,
        )?;
        let server_stop = stop.clone();
        let serve = server
            // Outermost: it records the status the client gets.
            .layer(RpcMetricsLayer::new(&self.metrics))
            // A span per call (parent: the caller's traceparent), x-trace-id, a log line;
            // outside the layers that change statuses, so it records what the client gets.
            .layer(crate::telemetry::RpcTraceLayer)
            .layer(tower::util::MapResponseLayer::new(
                client_errors_are_not_internal,
            ))
            .layer(inflight)
            .add_service(health_service)
            .add_service(ledger)
            .add_optional_service(reflection_v1)
            .add_optional_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(incoming, async move { server_stop.cancelled().await });
        tracing::info!(addr = %self.local_addr, "serving");

        tokio::pin!(serve);
        tokio::select! {
            result = &mut serve => {
                stop.cancel();
                result.context("gRPC server failed")?;
            }
            _ = shutdown => {
                tracing::info!(drain_timeout = ?args.drain_timeout(), "shutting down: draining calls");
                let started = Instant::now();
                stop.cancel();
                match tokio::time::timeout(args.drain_timeout(), &mut serve).await {
                    Ok(result) => result.context("gRPC server failed while draining")?,
                    Err(_) => tracing::warn!("drain timeout reached; closing remaining calls"),
                }
                tracing::info!(elapsed = ?started.elapsed(), "drained");
            }
        }
        metrics_stop.cancel();
        if let Some(mut server) = metrics_server {
            // A scraper's connection does not hold up the exit for long.
            let limit = std::time::Duration::from_secs(1);
            if tokio::time::timeout(limit, &mut server).await.is_err() {
                server.abort();
            }
        }
        probe.await.ok();
        feed_listener.await.ok();
        feed_announcer.await.ok();
        self.store.pool().close().await;
        Ok(())
    }
}

async fn prepare_with_retry(options: &PgConnectOptions, args: &ServeArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + args.startup_timeout();
    let mut delay = std::time::Duration::from_millis(100);
    loop {
        match store::prepare_database(options).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() + delay < deadline => {
                tracing::warn!(error = format!("{e:#}"), retry_in = ?delay, "database not ready");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
            Err(e) => {
                return Err(e.context("the database was not ready within the start-up timeout"))
            }
        }
    }
}

/// tonic answers some client mistakes itself, before any handler runs: a body that is
/// not valid protobuf or holds no message (INTERNAL), a message over the size limit
/// (OUT_OF_RANGE), an unknown method (UNIMPLEMENTED without details). Clients caused
/// them, so they become INVALID_ARGUMENT, RESOURCE_EXHAUSTED and UNIMPLEMENTED with the
/// ErrorInfo every jobledger error carries, and without the decoder's internals. A
/// Struct nested past the decoder's recursion limit names its field in a BadRequest.
fn client_errors_are_not_internal<B: Default>(response: http::Response<B>) -> http::Response<B> {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    let mut details = ErrorDetails::new();
    let (code, reason, message) = match status.code() {
        Code::Internal
            if status
                .message()
                .starts_with("failed to decode Protobuf message") =>
        {
            match too_deep_field(status.message()) {
                Some(field) => {
                    details.add_bad_request_violation(&field, "nests too deeply");
                    (
                        Code::InvalidArgument,
                        "INVALID_ARGUMENT",
                        format!("invalid request: {field}: nests too deeply"),
                    )
                }
                None => (
                    Code::InvalidArgument,
                    "MALFORMED_REQUEST",
                    "the request is not a valid protobuf message of this method's type".to_owned(),
                ),
            }
        }
        Code::Internal if status.message() == "Missing request message." => (
            Code::InvalidArgument,
            "MALFORMED_REQUEST",
            "the call carried no request message".to_owned(),
        ),
        // The router's answer for a method this server does not have.
        Code::Unimplemented if !response.headers().contains_key("grpc-status-details-bin") => (
            Code::Unimplemented,
            "METHOD_NOT_FOUND",
            "no such method on this server".to_owned(),
        ),
        Code::OutOfRange if status.message().contains("message length too large") => (
            Code::ResourceExhausted,
            "REQUEST_TOO_LARGE",
            status.message().trim_start_matches("Error, ").to_owned(),
        ),
        _ => return response,
    };
    let (mut parts, body) = response.into_parts();
    let replacement = status_with(code, message, reason, Default::default(), details);
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        parts.headers.remove(name);
    }
    // On the (impossible) failure to encode, the original headers are gone; the
    // response then carries no status, which clients read as UNKNOWN, not INTERNAL.
    let _ = replacement.add_header(&mut parts.headers);
    http::Response::from_parts(parts, body)
}

/// The request field whose value hit prost's recursion limit: prost lists the path
/// innermost first (`Struct.fields: ...: CreateJobRequest.params: recursion limit
/// reached`), so the outermost field is the last segment.
fn too_deep_field(message: &str) -> Option<String> {
    let path = message.strip_suffix(": recursion limit reached")?;
    let outermost = path.rsplit(": ").next()?;
    let (_, field) = outermost.rsplit_once('.')?;
    Some(field.to_owned())
}

#[cfg(test)]
mod tests {
    use super::too_deep_field;

    #[test]
    fn the_outermost_field_of_a_too_deep_message_is_named() {
        let m = "failed to decode Protobuf message: Struct.fields: Value.kind: Struct.fields: \
                 TransitionJobRequest.detail: recursion limit reached";
        assert_eq!(too_deep_field(m).as_deref(), Some("detail"));
        assert_eq!(
            too_deep_field("failed to decode Protobuf message: invalid wire type"),
            None
        );
    }
}
