//! How the server protects itself from its clients (docs/security.md): HTTP/2 keepalive,
//! a cap on concurrent streams per connection, a maximum connection age (so clients
//! reconnect and spread over replicas) with a grace after which a connection is cut, and
//! a server-wide cap on in-flight unary calls whose excess is refused at once (load
//! shedding, not queueing).

use std::{
    collections::HashSet,
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use prost::Message;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::Semaphore,
    time::Sleep,
};
use tonic::{
    transport::server::{Connected, TcpConnectInfo},
    Code,
};
use tonic_types::ErrorDetails;

use crate::api::error::status_with;
use crate::config::ProtectionArgs;

impl ProtectionArgs {
    /// The refusals of combinations clap cannot express.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.max_connection_age_grace_ms.is_some() && self.max_connection_age_ms == 0 {
            anyhow::bail!(
                "--max-connection-age-grace-ms needs --max-connection-age-ms above 0 \
                 (the grace starts when a connection reaches its maximum age)"
            );
        }
        Ok(())
    }

    pub fn http2_keepalive_interval(&self) -> Option<Duration> {
        (self.http2_keepalive_interval_ms > 0)
            .then(|| Duration::from_millis(self.http2_keepalive_interval_ms))
    }

    pub fn http2_keepalive_timeout(&self) -> Duration {
        Duration::from_millis(self.http2_keepalive_timeout_ms)
    }

    pub fn max_connection_age(&self) -> Option<Duration> {
        (self.max_connection_age_ms > 0).then(|| Duration::from_millis(self.max_connection_age_ms))
    }

    /// How long after it was accepted a connection is cut, open calls or not.
    pub fn connection_deadline(&self) -> Option<Duration> {
        let grace = Duration::from_millis(self.max_connection_age_grace_ms?);
        Some(self.max_connection_age()? + grace)
    }

    /// tonic's own settings: keepalive PINGs, SETTINGS_MAX_CONCURRENT_STREAMS, and a
    /// graceful GOAWAY at the maximum age. Its `max_connection_age_grace` is not used:
    /// in tonic 0.14.9 setting it replaces the GOAWAY by an abrupt close at age + grace,
    /// so the grace is enforced by [`AgedConnection`] instead.
    pub fn apply<L>(&self, server: tonic::transport::Server<L>) -> tonic::transport::Server<L> {
        let server = server
            .max_concurrent_streams(self.max_concurrent_streams_per_connection)
            .http2_keepalive_interval(self.http2_keepalive_interval())
            .http2_keepalive_timeout(Some(self.http2_keepalive_timeout()));
        match self.max_connection_age() {
            Some(age) => server.max_connection_age(age),
            None => server,
        }
    }
}

/// An accepted connection that fails every read and write once it is older than its
/// deadline (`--max-connection-age-ms` + `--max-connection-age-grace-ms`), so the server
/// drops it even while calls (e.g. a StreamEvents follower) are still open on it.
pub struct AgedConnection {
    stream: TcpStream,
    deadline: Option<Pin<Box<Sleep>>>,
    expired: bool,
}

impl AgedConnection {
    pub fn new(stream: TcpStream, lifetime: Option<Duration>) -> AgedConnection {
        AgedConnection {
            stream,
            deadline: lifetime.map(|d| Box::pin(tokio::time::sleep(d))),
            expired: false,
        }
    }

    /// Err once the deadline has passed; otherwise registers for it, so a connection
    /// waiting to read is woken and cut on time.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.expired {
            let Some(deadline) = &mut self.deadline else {
                return Ok(());
            };
            if deadline.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            self.expired = true;
            tracing::debug!(
                peer = ?self.stream.peer_addr().ok(),
                "closing a connection older than its maximum age plus grace"
            );
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "connection older than --max-connection-age-ms + --max-connection-age-grace-ms",
        ))
    }
}

impl AsyncRead for AgedConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for AgedConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl Connected for AgedConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

/// The server-wide cap on in-flight unary calls of the ledger's services
/// (`--max-inflight-requests`), as a tower layer around every service on the port.
/// Streaming methods (StreamEvents: long-lived, capped by `--max-streams`), health and
/// reflection do not count, so probes answer and followers stay connected under load.
#[derive(Clone)]
pub struct InflightLimit {
    gate: Option<Arc<Gate>>,
}

struct Gate {
    permits: Arc<Semaphore>,
    limit: usize,
    /// gRPC path prefixes of the ledger's services, e.g. `/jobledger.v1.JobLedger/`.
    services: Vec<String>,
    /// Paths of their streaming methods, which do not count.
    streaming: HashSet<String>,
    started: Instant,
    /// Refusals not yet logged, and when (ms since `started`, or NEVER) the last log
    /// line was.
    refused: AtomicU64,
    last_logged_ms: AtomicU64,
}

impl InflightLimit {
    /// A cap of `limit` calls (0: no cap) on the methods of the services described by
    /// `file_descriptor_set` (the ledger's encoded descriptors).
    pub fn new(limit: u32, file_descriptor_set: &[u8]) -> anyhow::Result<InflightLimit> {
        if limit == 0 {
            return Ok(InflightLimit { gate: None });
        }
        let (services, streaming) = methods(file_descriptor_set)?;
        Ok(InflightLimit {
            gate: Some(Arc::new(Gate {
                permits: Arc::new(Semaphore::new(limit as usize)),
                limit: limit as usize,
                services,
                streaming,
                started: Instant::now(),
                refused: AtomicU64::new(0),
                last_logged_ms: AtomicU64::new(NEVER),
            })),
        })
    }
}

/// The gRPC path prefixes of every service in the set, and the paths of their
/// streaming methods.
fn methods(file_descriptor_set: &[u8]) -> anyhow::Result<(Vec<String>, HashSet<String>)> {
    let set = prost_types::FileDescriptorSet::decode(file_descriptor_set)?;
    let mut services = Vec::new();
    let mut streaming = HashSet::new();
    for file in &set.file {
        for service in &file.service {
            let prefix = format!("/{}.{}/", file.package(), service.name());
            for method in &service.method {
                if method.server_streaming() || method.client_streaming() {
                    streaming.insert(format!("{prefix}{}", method.name()));
                }
            }
            services.push(prefix);
        }
    }
    anyhow::ensure!(!services.is_empty(), "the descriptor set holds no service");
    Ok((services, streaming))
}

const NEVER: u64 = u64::MAX;

impl Gate {
    fn counts(&self, path: &str) -> bool {
        self.services.iter().any(|p| path.starts_with(p.as_str())) && !self.streaming.contains(path)
    }

    fn refusal(&self) -> tonic::Status {
        self.refused.fetch_add(1, Ordering::Relaxed);
        // At most one log line a second, however many calls are refused.
        let now_ms = self.started.elapsed().as_millis() as u64;
        let last = self.last_logged_ms.load(Ordering::Relaxed);
        if (last == NEVER || now_ms.saturating_sub(last) >= 1000)
            && self
                .last_logged_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                limit = self.limit,
                refused = self.refused.swap(0, Ordering::Relaxed),
                "shedding load: calls refused with RESOURCE_EXHAUSTED at --max-inflight-requests"
            );
        }
        let mut details = ErrorDetails::new();
        details.set_retry_info(Some(Duration::from_secs(1)));
        status_with(
            Code::ResourceExhausted,
            format!(
                "the server is handling its maximum of {} calls (--max-inflight-requests); \
                 retry later",
                self.limit
            ),
            "TOO_MANY_REQUESTS",
            [("limit".to_owned(), self.limit.to_string())].into(),
            details,
        )
    }
}

impl<S> tower::Layer<S> for InflightLimit {
    type Service = InflightLimited<S>;

    fn layer(&self, inner: S) -> InflightLimited<S> {
        InflightLimited {
            inner,
            gate: self.gate.clone(),
        }
    }
}

#[derive(Clone)]
pub struct InflightLimited<S> {
    inner: S,
    gate: Option<Arc<Gate>>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for InflightLimited<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<http::Response<ResBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let Some(gate) = self
            .gate
            .as_ref()
            .filter(|g| g.counts(request.uri().path()))
        else {
            return Box::pin(self.inner.call(request));
        };
        match gate.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let call = self.inner.call(request);
                Box::pin(async move {
                    let response = call.await;
                    drop(permit);
                    response
                })
            }
            Err(_) => {
                let response = gate.refusal().into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cli;
    use clap::Parser;

    #[test]
    fn only_unary_ledger_methods_count() {
        let limit = InflightLimit::new(1, crate::proto::FILE_DESCRIPTOR_SET).unwrap();
        let gate = limit.gate.unwrap();
        assert!(gate.counts("/jobledger.v1.JobLedger/CreateJob"));
        assert!(gate.counts("/jobledger.v1.JobLedger/TransitionJob"));
        assert!(!gate.counts("/jobledger.v1.JobLedger/StreamEvents"));
        assert!(!gate.counts("/grpc.health.v1.Health/Check"));
        assert!(!gate.counts("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"));
        assert!(InflightLimit::new(0, crate::proto::FILE_DESCRIPTOR_SET)
            .unwrap()
            .gate
            .is_none());
    }

    #[test]
    fn defaults_and_variables_are_the_documented_ones() {
        let cli = Cli::try_parse_from(["jobledger"]).unwrap();
        let p = &cli.serve.protection;
        assert_eq!(p.max_inflight_requests, 1000);
        assert_eq!(p.max_concurrent_streams_per_connection, 1000);
        assert_eq!(p.http2_keepalive_interval(), Some(Duration::from_secs(60)));
        assert_eq!(p.http2_keepalive_timeout(), Duration::from_secs(20));
        assert_eq!(p.max_connection_age(), None);
        assert_eq!(p.connection_deadline(), None);
        p.check().unwrap();
        assert_eq!(cli.serve.tls.tls_handshake_timeout_ms, 10_000);
        assert!(cli.serve.tls.tls_cert_file.is_none());

        use clap::CommandFactory;
        let command = Cli::command();
        for (id, variable) in [
            ("max_inflight_requests", "JOBLEDGER_MAX_INFLIGHT_REQUESTS"),
            (
                "max_concurrent_streams_per_connection",
                "JOBLEDGER_MAX_CONCURRENT_STREAMS_PER_CONNECTION",
            ),
            (
                "http2_keepalive_interval_ms",
                "JOBLEDGER_HTTP2_KEEPALIVE_INTERVAL_MS",
            ),
            (
                "http2_keepalive_timeout_ms",
                "JOBLEDGER_HTTP2_KEEPALIVE_TIMEOUT_MS",
            ),
            ("max_connection_age_ms", "JOBLEDGER_MAX_CONNECTION_AGE_MS"),
            (
                "max_connection_age_grace_ms",
                "JOBLEDGER_MAX_CONNECTION_AGE_GRACE_MS",
            ),
            ("tls_cert_file", "JOBLEDGER_TLS_CERT_FILE"),
            ("tls_key_file", "JOBLEDGER_TLS_KEY_FILE"),
            ("tls_client_ca_file", "JOBLEDGER_TLS_CLIENT_CA_FILE"),
            (
                "tls_handshake_timeout_ms",
                "JOBLEDGER_TLS_HANDSHAKE_TIMEOUT_MS",
            ),
        ] {
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == id)
                .unwrap_or_else(|| panic!("no argument {id}"));
            assert_eq!(
                arg.get_env().and_then(|v| v.to_str()),
                Some(variable),
                "{id}"
            );
        }
    }

    #[test]
    fn flags_reach_the_settings_and_bad_values_are_refused() {
        let cli = Cli::try_parse_from([
            "jobledger",
            "serve",
            "--max-inflight-requests",
            "7",
            "--max-concurrent-streams-per-connection",
            "9",
            "--http2-keepalive-interval-ms",
            "0",
            "--http2-keepalive-timeout-ms",
            "1500",
        ])
        .unwrap();
        let Some(crate::config::Command::Serve(serve)) = cli.command else {
            panic!("not serve");
        };
        let p = &serve.protection;
        assert_eq!(p.max_inflight_requests, 7);
        assert_eq!(p.max_concurrent_streams_per_connection, 9);
        assert_eq!(p.http2_keepalive_interval(), None, "0 turns PINGs off");
        assert_eq!(p.http2_keepalive_timeout(), Duration::from_millis(1500));
        for bad in [
            ["--max-concurrent-streams-per-connection", "0"],
            ["--http2-keepalive-timeout-ms", "0"],
            ["--max-inflight-requests", "many"],
            ["--tls-handshake-timeout-ms", "0"],
        ] {
            let e = Cli::try_parse_from(["jobledger", bad[0], bad[1]]).unwrap_err();
            assert!(e.to_string().contains(bad[0]), "{e}");
        }
        // A certificate without its key, and a client CA without a certificate.
        for half in [
            &["--tls-cert-file", "s.pem"][..],
            &["--tls-key-file", "s.key"][..],
            &["--tls-client-ca-file", "ca.pem"][..],
        ] {
            let e = Cli::try_parse_from(["jobledger"].iter().chain(half)).unwrap_err();
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::MissingRequiredArgument,
                "{e}"
            );
        }
    }

    #[test]
    fn a_grace_without_an_age_is_refused() {
        let cli = Cli::try_parse_from([
            "jobledger",
            "--max-connection-age-ms",
            "0",
            "--max-connection-age-grace-ms",
            "5000",
        ])
        .unwrap();
        let e = cli.serve.protection.check().unwrap_err().to_string();
        assert!(e.contains("--max-connection-age-ms"), "{e}");
        let cli = Cli::try_parse_from([
            "jobledger",
            "--max-connection-age-ms",
            "60000",
            "--max-connection-age-grace-ms",
            "5000",
        ])
        .unwrap();
        cli.serve.protection.check().unwrap();
        assert_eq!(
            cli.serve.protection.connection_deadline(),
            Some(Duration::from_millis(65_000))
        );
    }
}
