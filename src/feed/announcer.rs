//! Announcing committed events, after the commit.
//!
//! A NOTIFY sent inside the writing transaction would make PostgreSQL serialize the
//! commits of every writer (it holds a database-wide lock through the commit of any
//! transaction that notified), so concurrent writes could never share a WAL flush. So
//! the server announces after its own commits: it wakes its own subscribers at once and
//! tells the other replicas with one batched `pg_notify` in a statement of its own that
//! writes nothing. A lost announcement (a crash between commit and NOTIFY, or events
//! written by another program) is caught by the subscribers' periodic re-read.

use std::{collections::HashSet, sync::Arc};

use sqlx::postgres::PgConnectOptions;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{announcement::Announcement, listener::CHANNEL, wakeups::Wakeups};

/// Most announcements sent in one NOTIFY statement.
const BATCH: usize = 1000;

/// The write side's handle: `announce` after a commit. Never blocks.
#[derive(Clone, Debug)]
pub(crate) struct Announcer {
    tx: mpsc::UnboundedSender<Announcement>,
}

/// The queue `announce_loop` drains.
pub(crate) struct AnnounceQueue(mpsc::UnboundedReceiver<Announcement>);

impl Announcer {
    pub(crate) fn new() -> (Announcer, AnnounceQueue) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Announcer { tx }, AnnounceQueue(rx))
    }

    /// A change was committed.
    pub(crate) fn announce(&self, announcement: Announcement) {
        // Only fails when the loop has stopped (shutdown): nobody is left to wake.
        let _ = self.tx.send(announcement);
    }
}

/// Drains the queue until `stop`: wakes local subscribers, then notifies the other
/// replicas, coalescing whatever accumulated while the previous NOTIFY was in flight.
pub(crate) async fn announce_loop(
    AnnounceQueue(mut rx): AnnounceQueue,
    options: PgConnectOptions,
    wakeups: Arc<Wakeups>,
    stop: CancellationToken,
) {
    let pool = crate::store::single_connection_pool(options, "jobledger-announcer");
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => break,
            next = rx.recv() => match next {
                Some(pair) => pair,
                None => break,
            },
        };
        let mut batch = HashSet::from([first]);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(pair) => {
                    batch.insert(pair);
                }
                Err(_) => break,
            }
        }
        for announcement in &batch {
            wakeups.announced(announcement);
        }
        let payloads: Vec<String> = batch.iter().map(Announcement::payload).collect();
        let sent = crate::store::notify_events(&pool, CHANNEL, &payloads).await;
        if let Err(e) = sent {
            // Other replicas find these events at their next periodic re-read.
            tracing::debug!(error = %e, events = payloads.len(), "notify failed");
        }
    }
    pool.close().await;
}
