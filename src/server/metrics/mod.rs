//! Prometheus metrics: what the server counts, and `GET /metrics` on a port of its own
//! (`--metrics-addr`). docs/metrics.md lists every metric with its labels.
//!
//! Calls are counted by the call observer around every gRPC service (`middleware`), HTTP
//! API requests by its handler (`server::http`),
//! transitions by the TransitionJob handler, probes by the health probe loop. Job counts,
//! open streams and pool connections are read when Prometheus scrapes; the job count is
//! one query over the whole `job` table, so it is cached and bounded in time.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        atomic::{AtomicI64, AtomicU64},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod dispatch;

use dispatch::{DispatchMetrics, OutcomeLabels, QueueStateLabels, TypeLabels};

use crate::dispatch::Dispatcher;
use crate::feed::Feed;
use crate::ledger::{JobEvent, JobStatus};
use crate::server::config::{MetricsAddr, DEFAULT_METRICS_ADDR};
use crate::store::Store;

/// The `type` label of transitions of job types past `--metrics-max-job-types`.
pub(super) const OTHER_JOB_TYPE: &str = "(other)";
/// How long the job count may take before a scrape goes on without it.
pub(super) const JOB_COUNT_TIMEOUT: Duration = Duration::from_secs(2);
/// The Content-Type of the exposition (Prometheus asks for it and parses it natively).
pub(super) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the call duration histogram, in seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Binds the metrics port as `--metrics-addr` says (the default: best effort).
pub(super) async fn bind(setting: MetricsAddr) -> anyhow::Result<Option<TcpListener>> {
    bind_or_default(setting, DEFAULT_METRICS_ADDR.parse()?).await
}

async fn bind_or_default(
    setting: MetricsAddr,
    default: SocketAddr,
) -> anyhow::Result<Option<TcpListener>> {
    match setting {
        MetricsAddr::Off => Ok(None),
        MetricsAddr::At(addr) => TcpListener::bind(addr).await.map(Some).with_context(|| {
            format!("binding the metrics address {addr} (--metrics-addr / JOBLEDGER_METRICS_ADDR; `off` serves no metrics)")
        }),
        MetricsAddr::Default => match TcpListener::bind(default).await {
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

/// An HTTP API request: the route's method and path template (`other` for requests that
/// matched no route), and the HTTP status of the answer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: &'static str,
    route: &'static str,
    status: String,
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
pub(crate) struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    rpc_started: Family<MethodLabels, Counter>,
    rpc_requests: Family<CallLabels, Counter>,
    rpc_duration: Family<CallLabels, Histogram, fn() -> Histogram>,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<HttpLabels, Histogram, fn() -> Histogram>,
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
    dispatch: DispatchMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(50)
    }
}

impl Metrics {
    /// Metrics that give at most `max_job_types` job types a label of their own.
    // Why long: one registration per metric, with its help text.
    pub(crate) fn new(max_job_types: usize) -> Metrics {
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
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP API requests answered, by route (method and path template; `other` when \
             none matched) and HTTP status (a Server-Sent Events stream counts when it opens)",
            http_requests.clone(),
        );
        let http_duration: Family<HttpLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS));
        registry.register_with_unit(
            "http_request_duration",
            "Time from an HTTP API request's arrival to its answer's headers, by route and \
             HTTP status",
            Unit::Seconds,
            http_duration.clone(),
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
        let dispatch = DispatchMetrics::register(&mut registry);
        Metrics {
            inner: Arc::new(Inner {
                registry,
                rpc_started,
                rpc_requests,
                rpc_duration,
                http_requests,
                http_duration,
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
                dispatch,
            }),
        }
    }

    /// Counts the status steps a TransitionJob wrote for a job of `job_type`.
    pub(crate) fn record_transitions(&self, job_type: &str, events: &[JobEvent]) {
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

    /// Counts a ClaimJobs call and the jobs it handed out.
    pub(crate) fn record_claim<'a>(&self, jobs: impl Iterator<Item = &'a crate::ledger::Job>) {
        let d = &self.inner.dispatch;
        let mut claimed = false;
        for job in jobs {
            claimed = true;
            d.claimed_jobs
                .get_or_create(&TypeLabels {
                    r#type: self.job_type_label(&job.job_type),
                })
                .inc();
        }
        let outcome = if claimed { "claimed" } else { "empty" };
        d.claims.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Counts a rescue of a job whose lease expired.
    pub(crate) fn record_rescue(&self, job_type: &str) {
        self.inner
            .dispatch
            .rescues
            .get_or_create(&TypeLabels {
                r#type: self.job_type_label(job_type),
            })
            .inc();
    }

    /// Counts a HeartbeatJob call by its outcome.
    pub(crate) fn record_heartbeat<T>(&self, result: &Result<T, crate::ledger::LedgerError>) {
        use crate::ledger::LedgerError;
        let outcome = match result {
            Ok(_) => "ok",
            Err(LedgerError::StaleAttempt { .. }) => "stale_attempt",
            Err(LedgerError::JobNotRunning { .. }) => "job_not_running",
            Err(LedgerError::NotFound { .. }) => "not_found",
            Err(_) => "error",
        };
        self.inner
            .dispatch
            .heartbeats
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Records one database health probe.
    pub(crate) fn record_probe(&self, up: bool, took: Duration) {
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

    pub(crate) fn call_started(&self, method: &str) {
        self.inner
            .rpc_started
            .get_or_create(&MethodLabels {
                method: method.to_owned(),
            })
            .inc();
    }

    pub(crate) fn call_finished(&self, method: &str, code: &'static str, took: Duration) {
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

    /// Records one answered HTTP API request.
    pub(crate) fn http_request(
        &self,
        method: &'static str,
        route: &'static str,
        status: u16,
        took: Duration,
    ) {
        let labels = HttpLabels {
            method,
            route,
            status: status.to_string(),
        };
        self.inner.http_requests.get_or_create(&labels).inc();
        self.inner
            .http_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// The exposition of everything recorded so far.
    pub(crate) fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.inner.registry);
        text
    }
}

/// What a scrape reads besides the recorded metrics.
struct Scrape {
    metrics: Metrics,
    store: Store,
    feed: Feed,
    dispatcher: Dispatcher,
    job_count_interval: Duration,
    /// When the job count was last attempted (successful or not): at most one per interval.
    job_count_attempted: tokio::sync::Mutex<Option<Instant>>,
}

/// Serves `GET /metrics` on `listener` until `stop` is cancelled; any other path is 404.
pub(super) async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    (store, feed, dispatcher): (Store, Feed, Dispatcher),
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
        dispatcher,
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
        let pool = self.store.pool_stats();
        for (state, n) in [("in_use", pool.in_use), ("idle", pool.idle)] {
            inner
                .pool_connections
                .get_or_create(&PoolLabels { state })
                .set(gauge_value(n));
        }
        inner.pool_max.set(i64::from(pool.max));
        inner
            .dispatch
            .waiting_claims
            .set(gauge_value(self.dispatcher.waiting_claims()));
        self.refresh_job_counts().await;
    }

    /// Every type's ready, scheduled and running jobs over all orgs (with the job counts:
    /// at most once per interval).
    async fn refresh_queue_gauges(&self) {
        let totals = tokio::time::timeout(
            JOB_COUNT_TIMEOUT + Duration::from_millis(100),
            self.store.queue_totals(JOB_COUNT_TIMEOUT),
        )
        .await;
        let totals = match totals {
            Ok(Ok(totals)) => totals,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "metrics: counting queued jobs by type failed");
                return;
            }
            Err(_) => {
                tracing::warn!(timeout = ?JOB_COUNT_TIMEOUT, "metrics: counting queued jobs by type timed out");
                return;
            }
        };
        let d = &self.metrics.inner.dispatch;
        // Types that had jobs and have none now show 0, not their last numbers.
        d.queue_jobs.clear();
        d.oldest_ready_age.clear();
        for (job_type, ready, scheduled, running, oldest) in totals {
            let t = self.metrics.job_type_label(&job_type);
            for (state, n) in [
                ("ready", ready),
                ("scheduled", scheduled),
                ("running", running),
            ] {
                d.queue_jobs
                    .get_or_create(&QueueStateLabels {
                        r#type: t.clone(),
                        state,
                    })
                    .inc_by(n);
            }
            d.oldest_ready_age
                .get_or_create(&TypeLabels { r#type: t })
                .set(oldest.unwrap_or(0.0));
        }
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
        // Both at once: a scrape waits for one timeout at most.
        let (_, counted) = tokio::join!(
            self.refresh_queue_gauges(),
            tokio::time::timeout(
                JOB_COUNT_TIMEOUT + Duration::from_millis(100),
                self.store.count_all_jobs_by_status(JOB_COUNT_TIMEOUT),
            )
        );
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
                .find(|(s, _)| *s == status)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_explicit_address_must_bind_the_default_need_not() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        // Explicit: start-up fails, naming the flag.
        let err = bind_or_default(MetricsAddr::At(addr), addr)
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("--metrics-addr"), "{err:#}");
        // Default: served without metrics.
        assert!(bind_or_default(MetricsAddr::Default, addr)
            .await
            .unwrap()
            .is_none());
        assert!(bind_or_default(MetricsAddr::Off, addr)
            .await
            .unwrap()
            .is_none());
        drop(taken);
        let free: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert!(bind_or_default(MetricsAddr::Default, free)
            .await
            .unwrap()
            .is_some());
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
}
