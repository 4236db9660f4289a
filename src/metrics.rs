//! Prometheus metrics: what the server counts, and `GET /metrics` on a port of its own
//! (`--metrics-addr`). docs/metrics.md lists every metric with its labels.
//!
//! Calls are counted by a tower layer around every gRPC service (`RpcMetricsLayer`),
//! transitions by the TransitionJob handler, probes by the health probe loop. Job counts,
//! open streams and pool connections are read when Prometheus scrapes; the job count is
//! one query over the whole `job` table, so it is cached and bounded in time.

use std::{
    collections::HashSet,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    str::FromStr,
    sync::{
        atomic::{AtomicI64, AtomicU64},
        Arc, Mutex,
    },
    task::{ready, Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};
use clap::Args;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};
use prost::Message as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::feed::Feed;
use crate::ledger::{JobEvent, JobStatus};
use crate::store::Store;

/// Where the metrics endpoint listens unless `--metrics-addr` says otherwise.
pub const DEFAULT_ADDR: &str = "0.0.0.0:9090";
/// The `type` label of transitions of job types past `--metrics-max-job-types`.
pub const OTHER_JOB_TYPE: &str = "(other)";
/// The `method` label of calls to a path no service of this server has.
pub const OTHER_METHOD: &str = "other";
/// How long the job count may take before a scrape goes on without it.
pub const JOB_COUNT_TIMEOUT: Duration = Duration::from_secs(2);
/// The Content-Type of the exposition (Prometheus asks for it and parses it natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the call duration histogram, in seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Metrics settings (`jobledger serve`).
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Metrics")]
pub struct MetricsArgs {
    /// Address of the Prometheus endpoint (`GET /metrics`), or `off`. Default
    /// 0.0.0.0:9090: left at the default, a port in use only logs a warning; an address
    /// given here must bind, or start-up fails.
    #[arg(
        long = "metrics-addr",
        env = "JOBLEDGER_METRICS_ADDR",
        value_name = "ADDR|off"
    )]
    pub addr: Option<MetricsAddr>,

    /// Most job types with a `type` label of their own on jobledger_transitions_total
    /// (the first ones seen); transitions of later types count as `(other)`.
    #[arg(long = "metrics-max-job-types", env = "JOBLEDGER_METRICS_MAX_JOB_TYPES",
          default_value_t = 50, value_parser = clap::value_parser!(u16).range(0..=1000))]
    pub max_job_types: u16,

    /// Shortest time between two counts of all jobs by status for jobledger_jobs (one
    /// query over the whole `job` table), in ms; scrapes in between get the last count.
    #[arg(long = "metrics-job-count-interval-ms", env = "JOBLEDGER_METRICS_JOB_COUNT_INTERVAL_MS",
          default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..))]
    pub job_count_interval_ms: u64,
}

impl MetricsArgs {
    pub fn job_count_interval(&self) -> Duration {
        Duration::from_millis(self.job_count_interval_ms)
    }
}

/// `--metrics-addr`: an address, or `off` (also an empty value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsAddr {
    Off,
    At(SocketAddr),
}

impl FromStr for MetricsAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<MetricsAddr, String> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("off") {
            return Ok(MetricsAddr::Off);
        }
        s.parse().map(MetricsAddr::At).map_err(|_| {
            format!("{s:?} is not an address like 0.0.0.0:9090 (or `off` to serve no metrics)")
        })
    }
}

/// Binds the metrics port as `--metrics-addr` says (`None`: `default`, best effort).
pub async fn bind(
    setting: Option<MetricsAddr>,
    default: SocketAddr,
) -> anyhow::Result<Option<TcpListener>> {
    match setting {
        Some(MetricsAddr::Off) => Ok(None),
        Some(MetricsAddr::At(addr)) => TcpListener::bind(addr).await.map(Some).with_context(|| {
            format!("binding the metrics address {addr} (--metrics-addr / JOBLEDGER_METRICS_ADDR; `off` serves no metrics)")
        }),
        None => match TcpListener::bind(default).await {
            Ok(listener) => Ok(Some(listener)),
            Err(e) => {
                tracing::warn!(
                    addr = %default,
                    error = %e,
                    "metrics not served: the default metrics address is not free \
                     (set --metrics-addr / JOBLEDGER_METRICS_ADDR, or `off`)"
                );
                Ok(None)
            }
        },
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    from: &'static str,
    to: &'static str,
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    state: &'static str,
}

/// The server's metrics: cheap to clone, shared by everything that records.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    rpc_started: Family<MethodLabels, Counter>,
    rpc_requests: Family<CallLabels, Counter>,
    rpc_duration: Family<CallLabels, Histogram, fn() -> Histogram>,
    transitions: Family<TransitionLabels, Counter>,
    /// The job types that have a label of their own (at most `max_job_types`).
    job_types: Mutex<HashSet<String>>,
    max_job_types: usize,
    jobs: Family<StatusLabels, Gauge>,
    jobs_counted_at: Gauge<f64, AtomicU64>,
    open_streams: Gauge,
    pool_connections: Family<PoolLabels, Gauge>,
    pool_max: Gauge,
    probe_up: Gauge,
    probe_duration: Gauge<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(50)
    }
}

impl Metrics {
    /// Metrics that give at most `max_job_types` job types a label of their own.
    pub fn new(max_job_types: usize) -> Metrics {
        let mut registry = Registry::with_prefix("jobledger");
        let rpc_started = Family::<MethodLabels, Counter>::default();
        registry.register(
            "rpc_started",
            "gRPC calls started, by method (a stream counts when it opens)",
            rpc_started.clone(),
        );
        let rpc_requests = Family::<CallLabels, Counter>::default();
        registry.register(
            "rpc_requests",
            "gRPC calls finished, by method and status code (a stream counts when it ends)",
            rpc_requests.clone(),
        );
        let rpc_duration: Family<CallLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS));
        registry.register_with_unit(
            "rpc_duration",
            "Time from a gRPC call's arrival to its status, by method and status code \
             (for a stream: its whole life)",
            Unit::Seconds,
            rpc_duration.clone(),
        );
        let transitions = Family::<TransitionLabels, Counter>::default();
        registry.register(
            "transitions",
            "Status steps written by TransitionJob (one per event), by from and to status and \
             job type (types past --metrics-max-job-types as \"(other)\")",
            transitions.clone(),
        );
        let jobs = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "jobs",
            "Jobs by status over all orgs, as of jobledger_jobs_count_timestamp_seconds",
            jobs.clone(),
        );
        let jobs_counted_at = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "jobs_count_timestamp",
            "When jobledger_jobs was counted (Unix time; 0: not yet)",
            Unit::Seconds,
            jobs_counted_at.clone(),
        );
        let open_streams = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "open_streams",
            "StreamEvents streams open now (at most --max-streams)",
            open_streams.clone(),
        );
        let pool_connections = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "db_pool_connections",
            "Connections of the request pool, by state (in_use, idle)",
            pool_connections.clone(),
        );
        let pool_max = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "db_pool_max_connections",
            "Most connections the request pool opens (--pool-size)",
            pool_max.clone(),
        );
        let probe_up = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "db_probe_up",
            "1 if the latest database health probe (SELECT 1) succeeded, else 0",
            probe_up.clone(),
        );
        let probe_duration = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "db_probe_duration",
            "How long the latest database health probe took (a timed-out one: the timeout)",
            Unit::Seconds,
            probe_duration.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                rpc_started,
                rpc_requests,
                rpc_duration,
                transitions,
                job_types: Mutex::new(HashSet::new()),
                max_job_types,
                jobs,
                jobs_counted_at,
                open_streams,
                pool_connections,
                pool_max,
                probe_up,
                probe_duration,
            }),
        }
    }

    /// Counts the status steps a TransitionJob wrote for a job of `job_type`.
    pub fn record_transitions(&self, job_type: &str, events: &[JobEvent]) {
        let job_type = self.job_type_label(job_type);
        for event in events {
            let from = event.prev_status.map_or("", JobStatus::as_db_str);
            self.inner
                .transitions
                .get_or_create(&TransitionLabels {
                    from,
                    to: event.next_status.as_db_str(),
                    r#type: job_type.clone(),
                })
                .inc();
        }
    }

    /// Records one database health probe.
    pub fn record_probe(&self, up: bool, took: Duration) {
        self.inner.probe_up.set(i64::from(up));
        self.inner.probe_duration.set(took.as_secs_f64());
    }

    /// The job type itself while fewer than `max_job_types` have a label; `(other)` after.
    fn job_type_label(&self, job_type: &str) -> String {
        let mut known = self
            .inner
            .job_types
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if known.contains(job_type) {
            return job_type.to_owned();
        }
        if known.len() < self.inner.max_job_types {
            known.insert(job_type.to_owned());
            return job_type.to_owned();
        }
        OTHER_JOB_TYPE.to_owned()
    }

    fn call_started(&self, method: &str) {
        self.inner
            .rpc_started
            .get_or_create(&MethodLabels {
                method: method.to_owned(),
            })
            .inc();
    }

    fn call_finished(&self, method: &str, code: &'static str, took: Duration) {
        let labels = CallLabels {
            method: method.to_owned(),
            code,
        };
        self.inner.rpc_requests.get_or_create(&labels).inc();
        self.inner
            .rpc_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// The exposition of everything recorded so far.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.inner.registry);
        text
    }
}

/// The canonical name of a gRPC status code, as the `code` label spells it.
fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// The `grpc-status` of a header or trailer map, if it has one.
fn grpc_code(headers: &http::HeaderMap) -> Option<&'static str> {
    let value = headers.get("grpc-status")?;
    let code = value.to_str().ok()?.trim().parse::<i32>().ok()?;
    Some(code_name(code))
}

/// The gRPC methods this server has, as `package.Service/Method`: read from the
/// descriptors of the services it serves, so a new RPC needs no change here.
fn served_methods() -> HashSet<String> {
    let sets: [&[u8]; 4] = [
        crate::proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut methods = HashSet::new();
    for set in sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
            continue;
        };
        for file in set.file {
            let package = file.package();
            for service in &file.service {
                for method in &service.method {
                    let service_name = match package {
                        "" => service.name().to_owned(),
                        package => format!("{package}.{}", service.name()),
                    };
                    methods.insert(format!("{service_name}/{}", method.name()));
                }
            }
        }
    }
    methods
}

/// Counts and times every gRPC call by method and status code. Put it outside the
/// layers that rewrite statuses, so it records what the client receives.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    metrics: Metrics,
    methods: Arc<HashSet<String>>,
}

impl RpcMetricsLayer {
    pub fn new(metrics: &Metrics) -> RpcMetricsLayer {
        RpcMetricsLayer {
            metrics: metrics.clone(),
            methods: Arc::new(served_methods()),
        }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;
    fn layer(&self, inner: S) -> RpcMetricsService<S> {
        RpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
            methods: self.methods.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Metrics,
    methods: Arc<HashSet<String>>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RpcMetricsService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        // A label per path a client makes up would grow without bound: unknown paths
        // share one.
        let path = request.uri().path().trim_start_matches('/');
        let method = if self.methods.contains(path) {
            path.to_owned()
        } else {
            OTHER_METHOD.to_owned()
        };
        let call = Call::start(self.metrics.clone(), method);
        let response = self.inner.call(request);
        Box::pin(async move {
            match response.await {
                Ok(response) => Ok(call.watch(response)),
                Err(e) => {
                    call.finish("UNKNOWN");
                    Err(e)
                }
            }
        })
    }
}

/// One call in flight. Its status is recorded once: from the response headers (an
/// error before any message), the trailers (after the messages), or, if the response
/// is dropped before either (the client cancelled or went away), as CANCELLED.
struct Call {
    metrics: Metrics,
    method: String,
    started: Instant,
    finished: bool,
}

impl Call {
    fn start(metrics: Metrics, method: String) -> Call {
        metrics.call_started(&method);
        Call {
            metrics,
            method,
            started: Instant::now(),
            finished: false,
        }
    }

    fn finish(mut self, code: &'static str) {
        self.record(code);
    }

    fn record(&mut self, code: &'static str) {
        if !self.finished {
            self.finished = true;
            self.metrics
                .call_finished(&self.method, code, self.started.elapsed());
        }
    }

    fn watch<B: Body>(mut self, response: http::Response<B>) -> http::Response<MeteredBody<B>> {
        if let Some(code) = grpc_code(response.headers()) {
            self.record(code);
        } else if response.body().is_end_stream() {
            // No status and nothing to come: not a gRPC answer.
            self.record("UNKNOWN");
        }
        response.map(|inner| MeteredBody { inner, call: self })
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.record("CANCELLED");
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its call's status when the trailers go out.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        call: Call,
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.call.record(grpc_code(trailers).unwrap_or("UNKNOWN"));
                }
            }
            // The stream is reset; the client sees no status of ours.
            Some(Err(_)) => this.call.record("UNKNOWN"),
            None => this.call.record("UNKNOWN"),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a scrape reads besides the recorded metrics.
struct Scrape {
    metrics: Metrics,
    store: Store,
    feed: Feed,
    job_count_interval: Duration,
    /// When the job count was last attempted (successful or not): at most one per interval.
    job_count_attempted: tokio::sync::Mutex<Option<Instant>>,
}

/// Serves `GET /metrics` on `listener` until `stop` is cancelled; any other path is 404.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    store: Store,
    feed: Feed,
    job_count_interval: Duration,
    stop: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving metrics at /metrics");
    }
    let scrape = Arc::new(Scrape {
        metrics,
        store,
        feed,
        job_count_interval,
        job_count_attempted: tokio::sync::Mutex::new(None),
    });
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .with_state(scrape);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "metrics endpoint failed");
    }
}

async fn metrics_page(State(scrape): State<Arc<Scrape>>) -> impl IntoResponse {
    scrape.refresh().await;
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        scrape.metrics.encode(),
    )
}

impl Scrape {
    /// Reads the values that are not recorded as they change.
    async fn refresh(&self) {
        let inner = &self.metrics.inner;
        inner
            .open_streams
            .set(gauge_value(self.feed.open_streams()));
        // Before the job count, which would show its own connection in use.
        let pool = self.store.pool();
        let open = pool.size() as usize;
        let idle = pool.num_idle().min(open);
        for (state, n) in [("in_use", open - idle), ("idle", idle)] {
            inner
                .pool_connections
                .get_or_create(&PoolLabels { state })
                .set(gauge_value(n));
        }
        inner
            .pool_max
            .set(i64::from(pool.options().get_max_connections()));
        self.refresh_job_counts().await;
    }

    /// Counts all jobs by status, unless that was tried less than an interval ago. The
    /// count is bounded by `JOB_COUNT_TIMEOUT` on both sides (PostgreSQL's
    /// statement_timeout and ours, which covers waiting for a connection); a failed count
    /// leaves the last one in place, and its timestamp shows how old it is.
    async fn refresh_job_counts(&self) {
        // Concurrent scrapes wait for one count instead of each running one.
        let mut attempted = self.job_count_attempted.lock().await;
        if attempted.is_some_and(|at| at.elapsed() < self.job_count_interval) {
            return;
        }
        *attempted = Some(Instant::now());
        let counted = tokio::time::timeout(
            JOB_COUNT_TIMEOUT + Duration::from_millis(100),
            count_jobs(&self.store),
        )
        .await;
        let counts = match counted {
            Ok(Ok(counts)) => counts,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "metrics: counting jobs by status failed");
                return;
            }
            Err(_) => {
                tracing::warn!(timeout = ?JOB_COUNT_TIMEOUT, "metrics: counting jobs by status timed out");
                return;
            }
        };
        let inner = &self.metrics.inner;
        for status in JobStatus::ALL {
            let n = counts
                .iter()
                .find(|(s, _)| s == status.as_db_str())
                .map_or(0, |(_, n)| *n);
            inner
                .jobs
                .get_or_create(&StatusLabels {
                    status: status.as_db_str(),
                })
                .set(n);
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        inner.jobs_counted_at.set(now.as_secs_f64());
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Jobs by status over every org, in one statement with its own statement_timeout.
async fn count_jobs(store: &Store) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let mut tx = store.pool().begin().await?;
    sqlx::query(&format!(
        "SET LOCAL statement_timeout = {}",
        JOB_COUNT_TIMEOUT.as_millis()
    ))
    .execute(&mut *tx)
    .await?;
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT status::text, count(*) FROM job GROUP BY status")
            .fetch_all(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_addr_is_an_address_or_off() {
        assert_eq!("off".parse(), Ok(MetricsAddr::Off));
        assert_eq!("OFF".parse(), Ok(MetricsAddr::Off));
        assert_eq!("".parse(), Ok(MetricsAddr::Off));
        assert_eq!(
            "127.0.0.1:9100".parse(),
            Ok(MetricsAddr::At("127.0.0.1:9100".parse().unwrap()))
        );
        let err = "localhost".parse::<MetricsAddr>().unwrap_err();
        assert!(err.contains("off"), "{err}");
    }

    #[test]
    fn the_flag_reaches_the_settings() {
        use crate::config::Cli;
        use clap::Parser;
        let cli = Cli::try_parse_from(["jobledger", "--metrics-addr", "off"]).unwrap();
        assert_eq!(cli.serve.metrics.addr, Some(MetricsAddr::Off));
        assert!(Cli::try_parse_from(["jobledger", "--metrics-addr", "nowhere"]).is_err());
        let cli = Cli::try_parse_from(["jobledger"]).unwrap();
        assert_eq!(cli.serve.metrics.max_job_types, 50);
        assert_eq!(cli.serve.metrics.job_count_interval_ms, 5000);
    }

    #[tokio::test]
    async fn an_explicit_address_must_bind_the_default_need_not() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        // Explicit: start-up fails, naming the flag.
        let err = bind(Some(MetricsAddr::At(addr)), addr).await.unwrap_err();
        assert!(format!("{err:#}").contains("--metrics-addr"), "{err:#}");
        // Default: served without metrics.
        assert!(bind(None, addr).await.unwrap().is_none());
        assert!(bind(Some(MetricsAddr::Off), addr).await.unwrap().is_none());
        drop(taken);
        let free: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert!(bind(None, free).await.unwrap().is_some());
    }

    #[test]
    fn job_types_past_the_cap_share_one_label() {
        let metrics = Metrics::new(2);
        assert_eq!(metrics.job_type_label("a"), "a");
        assert_eq!(metrics.job_type_label("b"), "b");
        assert_eq!(metrics.job_type_label("c"), OTHER_JOB_TYPE);
        assert_eq!(metrics.job_type_label("a"), "a");
        assert_eq!(Metrics::new(0).job_type_label("a"), OTHER_JOB_TYPE);
    }

    #[test]
    fn served_methods_come_from_the_descriptors() {
        let methods = served_methods();
        for m in [
            "jobledger.v1.JobLedger/CreateJob",
            "jobledger.v1.JobLedger/StreamEvents",
            "grpc.health.v1.Health/Check",
            "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(methods.contains(m), "{m} missing from {methods:?}");
        }
        assert!(!methods.contains("jobledger.v1.JobLedger/Nope"));
    }

    #[test]
    fn codes_have_their_canonical_names() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_code(&headers), None);
        headers.insert("grpc-status", "3".parse().unwrap());
        assert_eq!(grpc_code(&headers), Some("INVALID_ARGUMENT"));
        headers.insert("grpc-status", "16".parse().unwrap());
        assert_eq!(grpc_code(&headers), Some("UNAUTHENTICATED"));
        headers.insert("grpc-status", "99".parse().unwrap());
        assert_eq!(grpc_code(&headers), Some("UNKNOWN"));
    }
}
