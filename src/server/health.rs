//! Health: the database probe and what it publishes through `grpc.health.v1.Health`.
//!
//! `""` and `jobledger.v1.JobLedger` are SERVING iff the latest probe — a raw `SELECT 1`
//! on the probe's own connection, not the request pool — succeeded. `liveness` is
//! SERVING while the process runs, whatever the database does, so a Kubernetes liveness
//! probe never restarts pods for a database outage. Check reads the cached status;
//! each change is published once.

use std::time::{Duration, Instant};

use sqlx::{postgres::PgConnectOptions, ConnectOptions, Connection, Executor, PgConnection};
use tokio_util::sync::CancellationToken;
use tonic_health::{server::HealthReporter, ServingStatus};

/// The health service names that follow the database.
pub(super) const DATABASE_BACKED: [&str; 2] = ["", "jobledger.v1.JobLedger"];
/// The health service name that follows only the process.
pub(super) const LIVENESS: &str = "liveness";

/// Publishes statuses, once per change.
pub(super) struct HealthState {
    reporter: HealthReporter,
    database_ok: Option<bool>,
}

impl HealthState {
    /// Starts with the database-backed services NOT_SERVING and `liveness` SERVING.
    pub(super) async fn new(reporter: HealthReporter) -> Self {
        for name in DATABASE_BACKED {
            reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        reporter
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        HealthState {
            reporter,
            database_ok: None,
        }
    }

    /// Records a probe result, publishing only if it differs from the last one.
    pub(super) async fn record(&mut self, ok: bool) {
        if self.database_ok == Some(ok) {
            return;
        }
        let was = self.database_ok.replace(ok);
        let status = if ok {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if ok {
            tracing::info!("database reachable: serving");
        } else if was.is_some() {
            tracing::warn!("database unreachable: not serving");
        }
        // The initial NOT_SERVING was already published by `new`.
        if ok || was.is_some() {
            for name in DATABASE_BACKED {
                self.reporter.set_service_status(name, status).await;
            }
        }
    }

    /// Shutdown: everything NOT_SERVING, then the statuses are dropped, which ends
    /// open Watch streams so the server can drain.
    pub(super) async fn shut_down(mut self) {
        for name in DATABASE_BACKED.into_iter().chain([LIVENESS]) {
            self.reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        for name in DATABASE_BACKED.into_iter().chain([LIVENESS]) {
            self.reporter.clear_service_status(name).await;
        }
    }
}

/// The probe: every `interval`, `SELECT 1` within `timeout` on a dedicated connection
/// (reconnected after any failure). Runs until `stop` is cancelled.
pub(super) async fn probe_loop(
    mut state: HealthState,
    options: PgConnectOptions,
    interval: Duration,
    timeout: Duration,
    stop: CancellationToken,
    metrics: super::metrics::Metrics,
) {
    let options = options
        .application_name("jobledger-health")
        .disable_statement_logging();
    let mut conn: Option<PgConnection> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let started = Instant::now();
        let ok = tokio::time::timeout(timeout, probe_once(&mut conn, &options))
            .await
            .unwrap_or_else(|_| Err("probe timed out".into()));
        match &ok {
            Ok(()) => tracing::trace!(elapsed = ?started.elapsed(), "probe ok"),
            Err(e) => {
                tracing::debug!(error = %e, "probe failed");
                // The connection may be half-dead; the next probe opens a new one.
                conn = None;
            }
        }
        metrics.record_probe(ok.is_ok(), started.elapsed());
        state.record(ok.is_ok()).await;
    }
    state.shut_down().await;
}

async fn probe_once(
    conn: &mut Option<PgConnection>,
    options: &PgConnectOptions,
) -> Result<(), String> {
    if conn.is_none() {
        *conn = Some(
            PgConnection::connect_with(options)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let Some(c) = conn.as_mut() else {
        return Err("no connection".into());
    };
    c.execute("SELECT 1").await.map_err(|e| e.to_string())?;
    Ok(())
}
