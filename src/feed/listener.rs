//! The process's one LISTEN connection. A notification wakes the subscribers of its
//! org and job; a lost connection wakes everyone (notifications may have been missed
//! while it was down) and is re-established.

use std::{sync::Arc, time::Duration};

use sqlx::postgres::{PgConnectOptions, PgListener};
use tokio_util::sync::CancellationToken;

use super::{announcement::Announcement, wakeups::Wakeups};

/// The NOTIFY channel written by the `job_event` insert trigger (migration 0002).
pub(crate) const CHANNEL: &str = "jobledger_events";

const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Runs until `stop` is cancelled.
pub(crate) async fn listen(
    options: PgConnectOptions,
    wakeups: Arc<Wakeups>,
    stop: CancellationToken,
) {
    // A pool of its own, so the listener never takes a request connection.
    let pool = crate::store::single_connection_pool(options, "jobledger-listener");
    let mut retry = Duration::from_millis(100);
    while !stop.is_cancelled() {
        let mut listener = match connect(&pool).await {
            Ok(l) => {
                retry = Duration::from_millis(100);
                l
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?retry, "event listener cannot connect");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        tracing::debug!("event listener connected");
        // Anything committed while we were not listening is found by a re-read.
        wakeups.wake_everyone();
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = sweep.tick() => wakeups.sweep(),
                received = listener.try_recv() => match received {
                    Ok(Some(n)) => wake(&wakeups, n.payload()),
                    Ok(None) => {
                        tracing::warn!("event listener connection lost; reconnecting");
                        wakeups.wake_everyone();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "event listener failed; reconnecting");
                        wakeups.wake_everyone();
                        break;
                    }
                },
            }
        }
    }
    pool.close().await;
}

async fn connect(pool: &sqlx::PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.ignore_pool_close_event(true);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

fn wake(wakeups: &Wakeups, payload: &str) {
    match Announcement::parse(payload) {
        Some(announcement) => wakeups.announced(&announcement),
        // Not ours to interpret (an older replica's, say): wake everyone rather than
        // miss something.
        None => wakeups.wake_everyone(),
    }
}
