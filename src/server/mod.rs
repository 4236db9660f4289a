//! The server: a typed [`Config`] in, a listening gRPC server out (and the HTTP/JSON API
//! beside it, `http`). [`Application::build`] prepares the database and binds the ports
//! (so tests learn them before serving); [`Application::run_until_stopped`] serves until
//! the shutdown future resolves, then drains (docs/architecture.md: the shutdown
//! sequence).

mod auth;
pub mod config;
mod health;
mod http;
mod metrics;
mod middleware;
pub mod service;
mod status;
pub mod telemetry;
mod tls;

pub use config::Config;

use std::{future::Future, net::SocketAddr, time::Instant};

use anyhow::Context;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{
    service::interceptor::InterceptedService,
    transport::{server::TcpIncoming, Server},
};

use crate::dispatch::{self, Dispatcher};
use crate::feed::{self, Feed};
use crate::proto::{self, job_ledger_server::JobLedgerServer};
use crate::store::{self, GroupCommit, PoolSettings, Store};
use auth::{AuthInterceptor, Verifier};
use health::{probe_loop, HealthState};
use metrics::Metrics;
use middleware::{AgedConnection, CallObserverLayer, InflightLimit};
use service::LedgerService;
use tls::ServerTls;

pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    store: Store,
    config: Config,
    auth: Option<Verifier>,
    tls: Option<ServerTls>,
    metrics: Metrics,
    metrics_listener: Option<TcpListener>,
    metrics_addr: Option<SocketAddr>,
    http_listener: Option<TcpListener>,
    http_addr: Option<SocketAddr>,
}

impl Application {
    /// Checks the settings and reads the key and certificate files (a bad one stops
    /// start-up at once), creates and migrates the database (waiting up to the start-up
    /// timeout for it to be reachable), then binds the listen and metrics addresses.
    pub async fn build(mut config: Config) -> anyhow::Result<Application> {
        config.validate()?;
        config.database = store::tune_options(config.database, config.statement_timeout);
        let options = &config.database;
        tracing::info!(
            host = options.get_host(),
            port = options.get_port(),
            database = options.get_database().unwrap_or_default(),
            user = options.get_username(),
            "using database"
        );
        let auth = config.auth.as_ref().map(Verifier::new).transpose()?;
        if auth.is_some() {
            tracing::info!("authentication on: JobLedger calls need a bearer token");
        }
        let tls = config.tls.as_ref().map(ServerTls::new).transpose()?;
        match config.tls.as_ref().map(|t| &t.client_ca_file) {
            Some(Some(ca)) => tracing::info!(
                client_ca_file = %ca.display(),
                "mutual TLS on: clients need a certificate signed by the client CA"
            ),
            Some(None) => tracing::info!("TLS on: plaintext connections are refused"),
            None => tracing::info!("TLS off: the port speaks plaintext HTTP/2"),
        }
        // The metrics port too: one given explicitly that cannot be bound stops start-up.
        let metrics_listener = metrics::bind(config.metrics.addr).await?;
        let metrics_addr = local_addr(&metrics_listener)?;
        let http_listener = http::bind(config.http.addr).await?;
        let http_addr = local_addr(&http_listener)?;
        let metrics = Metrics::new(config.metrics.max_job_types);
        prepare_with_retry(&config).await?;
        let store = Store::connect_lazy(
            config.database.clone(),
            &PoolSettings {
                size: config.pool_size,
                acquire_timeout: config.db_acquire_timeout,
                statement_timeout: config.statement_timeout,
            },
        );
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .with_context(|| format!("binding {}", config.listen_addr))?;
        let local_addr = listener.local_addr()?;
        Ok(Application {
            listener,
            local_addr,
            store,
            config,
            auth,
            tls,
            metrics,
            metrics_listener,
            metrics_addr,
            http_listener,
            http_addr,
        })
    }

    /// Where the HTTP/JSON API is served (None: off).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
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
    /// connections or calls, open streams end with UNAVAILABLE, in-flight calls finish
    /// within the drain timeout; then the background tasks stop and the pool closes.
    pub async fn run_until_stopped(
        mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let stop = CancellationToken::new();
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let background = self.start_background(reporter, &stop).await;
        let service = ledger_service(&self.store, &background, &self.config, &self.metrics);
        let ledger =
            JobLedgerServer::new(service).max_decoding_message_size(self.config.max_request_bytes);
        // Only the JobLedger service checks tokens: health and reflection stay open.
        let ledger = InterceptedService::new(ledger, AuthInterceptor::new(self.auth.take()));
        // One cap for both ports: an HTTP call takes a slot as a gRPC call does.
        let inflight = InflightLimit::new(self.config.connections.max_inflight_requests)?;
        let http = self.start_http(ledger.clone(), inflight.clone(), &stop);
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let (reflection_v1, reflection_v1alpha) = match self.config.reflection {
            true => (
                Some(reflection().build_v1()?),
                Some(reflection().build_v1alpha()?),
            ),
            false => (None, None),
        };
        let mut server = middleware::configure(Server::builder(), &self.config.connections);
        if let Some(tls) = &self.tls {
            server = tls.apply(server)?;
        }
        let server_stop = stop.clone();
        let serve = server
            // gRPC-Web calls become gRPC calls before anything else sees them, so every
            // layer below (and the metrics) treats them as what they are.
            .layer(tonic_web::GrpcWebLayer::new())
            // Then: metrics and the call's span record the status the client gets.
            .layer(CallObserverLayer::new(&self.metrics))
            .layer(tower::util::MapResponseLayer::new(
                status::client_errors_are_not_internal,
            ))
            .layer(inflight)
            .add_service(health_service)
            .add_service(ledger)
            .add_optional_service(reflection_v1)
            .add_optional_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(incoming(self.listener, &self.config), async move {
                server_stop.cancelled().await
            });
        tracing::info!(addr = %self.local_addr, "serving");
        drain(serve, http, shutdown, &stop, self.config.drain_timeout).await?;
        background.finish().await;
        self.store.close().await;
        Ok(())
    }

    /// Serves the HTTP/JSON API (if it has a port) until `stop`: its calls go through the
    /// same stack as the gRPC port's (`http::channel`), sharing the in-flight cap.
    fn start_http(
        &mut self,
        ledger: Ledger,
        inflight: InflightLimit,
        stop: &CancellationToken,
    ) -> Option<JoinHandle<()>> {
        let listener = self.http_listener.take()?;
        let stack = tower::ServiceBuilder::new()
            .map_response(|response: ::http::Response<_>| response.map(tonic::body::Body::new))
            .layer(CallObserverLayer::new(&self.metrics))
            .layer(tower::util::MapResponseLayer::new(
                status::client_errors_are_not_internal,
            ))
            .layer(inflight)
            // As tonic's router does: one body type under the layers.
            .map_response(|response: ::http::Response<_>| response.map(tonic::body::Body::new))
            .service(ledger);
        let api = http::HttpApi::new(
            tower::util::BoxCloneSyncService::new(stack),
            self.metrics.clone(),
            self.config.max_request_bytes,
            self.config.http.clone(),
        );
        Some(tokio::spawn(http::serve(listener, api, stop.clone())))
    }

    /// The health probe, the event feed's announcer and listener (all stopped by
    /// `stop`), and the metrics endpoint (stopped after the drain: it shows streams
    /// closing).
    async fn start_background(
        &mut self,
        reporter: tonic_health::server::HealthReporter,
        stop: &CancellationToken,
    ) -> Background {
        let options = &self.config.database;
        let health = HealthState::new(reporter).await;
        let probe = tokio::spawn(probe_loop(
            health,
            options.clone(),
            self.config.probe_interval,
            self.config.probe_timeout,
            stop.clone(),
            self.metrics.clone(),
        ));
        let (feed, announcements) =
            Feed::new(self.store.clone(), self.config.feed.clone(), stop.clone());
        let announcer = tokio::spawn(feed::announce_loop(
            announcements,
            options.clone(),
            feed.wakeups(),
            stop.clone(),
        ));
        let listener = tokio::spawn(feed::listen(options.clone(), feed.wakeups(), stop.clone()));
        let dispatcher = Dispatcher::new(
            self.store.clone(),
            feed.clone(),
            self.config.dispatch.clone(),
            self.config.group_commit.map(|g| g.writers),
            stop.clone(),
        );
        let rescuer = self.start_rescuer(&feed, stop);
        let metrics_stop = CancellationToken::new();
        let metrics_server = self.metrics_listener.take().map(|listener| {
            tokio::spawn(metrics::serve(
                listener,
                self.metrics.clone(),
                (self.store.clone(), feed.clone(), dispatcher.clone()),
                self.config.metrics.job_count_interval,
                metrics_stop.clone(),
            ))
        });
        Background {
            feed,
            dispatcher,
            tasks: vec![probe, announcer, listener, rescuer],
            metrics_server,
            stop_metrics: metrics_stop.drop_guard(),
        }
    }
    /// The rescuer, on a connection of its own: it never takes a request's connection
    /// or waits for one, and shows as `jobledger-rescuer` in pg_stat_activity.
    fn start_rescuer(&self, feed: &Feed, stop: &CancellationToken) -> JoinHandle<()> {
        let metrics = self.metrics.clone();
        tokio::spawn(dispatch::rescue_loop(
            Store::single(
                self.config.database.clone(),
                "jobledger-rescuer",
                self.config.statement_timeout,
            ),
            feed.clone(),
            self.config.dispatch.rescue_interval,
            move |outcome| {
                metrics.record_rescue(&outcome.job.job_type);
                metrics.record_transitions(&outcome.job.job_type, &outcome.events);
            },
            stop.clone(),
        ))
    }
}

/// Where a side port (metrics, HTTP) listens, if it does.
fn local_addr(listener: &Option<TcpListener>) -> std::io::Result<Option<SocketAddr>> {
    listener.as_ref().map(TcpListener::local_addr).transpose()
}

/// The JobLedger service as both ports serve it: behind the authentication interceptor.
type Ledger = InterceptedService<JobLedgerServer<LedgerService>, AuthInterceptor>;

/// What runs beside the gRPC server.
struct Background {
    feed: Feed,
    dispatcher: Dispatcher,
    /// Stopped by the server's stop token.
    tasks: Vec<JoinHandle<()>>,
    metrics_server: Option<JoinHandle<()>>,
    /// Stops the metrics endpoint when dropped (also when serving ends in an error).
    stop_metrics: tokio_util::sync::DropGuard,
}

impl Background {
    /// Stops the metrics endpoint, then waits for the tasks the stop token ended.
    async fn finish(self) {
        drop(self.stop_metrics);
        if let Some(mut server) = self.metrics_server {
            // A scraper's connection does not hold up the exit for long.
            let limit = std::time::Duration::from_secs(1);
            if tokio::time::timeout(limit, &mut server).await.is_err() {
                server.abort();
            }
        }
        for task in self.tasks {
            task.await.ok();
        }
    }
}

/// The accepted connections: TCP_NODELAY (small responses and stream events go out at
/// once instead of waiting out the peer's delayed ACK, 40 ms per event otherwise), TCP
/// keepalive, and cut past their maximum age plus grace.
fn incoming(
    listener: TcpListener,
    config: &Config,
) -> impl tokio_stream::Stream<Item = std::io::Result<AgedConnection>> {
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(std::time::Duration::from_secs(60)));
    let lifetime = config.connections.connection_deadline();
    tokio_stream::StreamExt::map(incoming, move |accepted| {
        accepted.map(|tcp| AgedConnection::new(tcp, lifetime))
    })
}

fn ledger_service(
    store: &Store,
    background: &Background,
    config: &Config,
    metrics: &Metrics,
) -> LedgerService {
    let group_commit = config
        .group_commit
        .map(|g| GroupCommit::start(store.clone(), g.writers, g.max_batch));
    LedgerService::new(
        store.clone(),
        group_commit,
        background.feed.clone(),
        background.dispatcher.clone(),
        config.limits.clone(),
        metrics.clone(),
    )
}

/// Serves until the server fails or `shutdown` resolves; then cancels `stop` (health
/// NOT_SERVING, streams end, no new calls or HTTP connections) and gives in-flight calls
/// of both ports the drain timeout.
async fn drain(
    serve: impl Future<Output = Result<(), tonic::transport::Error>>,
    mut http: Option<JoinHandle<()>>,
    shutdown: impl Future<Output = ()>,
    stop: &CancellationToken,
    drain_timeout: std::time::Duration,
) -> anyhow::Result<()> {
    tokio::pin!(serve);
    let result = tokio::select! {
        result = &mut serve => {
            stop.cancel();
            result.context("gRPC server failed")
        }
        _ = shutdown => {
            tracing::info!(?drain_timeout, "shutting down: draining calls");
            let started = Instant::now();
            stop.cancel();
            let http_drained = async {
                if let Some(task) = &mut http {
                    task.await.ok();
                }
            };
            let drained = tokio::time::timeout(drain_timeout, async {
                tokio::join!(&mut serve, http_drained).0
            });
            let result = match drained.await {
                Ok(result) => result.context("gRPC server failed while draining"),
                Err(_) => {
                    tracing::warn!("drain timeout reached; closing remaining calls");
                    Ok(())
                }
            };
            tracing::info!(elapsed = ?started.elapsed(), "drained");
            result
        }
    };
    if let Some(task) = http {
        task.abort();
    }
    result
}

async fn prepare_with_retry(config: &Config) -> anyhow::Result<()> {
    let deadline = Instant::now() + config.startup_timeout;
    let mut delay = std::time::Duration::from_millis(100);
    loop {
        match store::prepare_database(&config.database).await {
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
