//! The live event feed behind StreamEvents.
//!
//! The database is the source of truth: each subscriber reads its events from
//! `job_event` after its cursor, in pages, at its own pace. Wake-ups only make it read
//! early: the server announces its own commits (waking local subscribers, and other
//! replicas by NOTIFY, one listener connection per process); a periodic re-read covers
//! a lost notification, a dropped listener, or events written by another program. Memory per
//! subscriber is bounded by one page plus a small channel, however slow the reader.

mod announcement;
mod announcer;
mod claims;
mod listener;
mod subscription;
mod wakeups;

use std::{sync::Arc, time::Duration};

use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

pub(crate) use announcement::Announcement;
pub(crate) use announcer::{announce_loop, AnnounceQueue, Announcer};
pub(crate) use claims::{ClaimWaiter, ClaimWakeups, QueueKey};
pub(crate) use listener::listen;
use wakeups::Wakeups;

use crate::ledger::{Cursor, JobEvent, LedgerError};
use crate::store::{FeedScope, Store};

#[derive(Debug, Clone)]
pub struct FeedSettings {
    /// Most open streams per process; more get RESOURCE_EXHAUSTED.
    pub max_streams: usize,
    /// How often an idle subscriber re-reads without a notification.
    pub poll_interval: Duration,
    /// Events read from the database per query.
    pub page_size: i64,
    /// Events buffered between a subscriber's reader task and its gRPC stream.
    pub buffer: usize,
}

impl Default for FeedSettings {
    fn default() -> Self {
        FeedSettings {
            max_streams: 10_000,
            poll_interval: Duration::from_millis(1000),
            page_size: 100,
            buffer: 16,
        }
    }
}

/// One process's feed: the wake-up hub, the announcer, the stream cap and the
/// shutdown signal.
#[derive(Clone)]
pub(crate) struct Feed {
    store: Store,
    settings: FeedSettings,
    wakeups: Arc<Wakeups>,
    announcer: Announcer,
    streams: Arc<Semaphore>,
    shutdown: CancellationToken,
}

/// What a subscriber asked for.
#[derive(Debug, Clone, Copy)]
pub struct Subscribe {
    pub scope: FeedScope,
    /// None: a job's first event, or for an org, now.
    pub after: Option<Cursor>,
    pub history_only: bool,
}

/// An item of a subscription: an event, or the error that ends it.
pub(crate) type FeedItem = Result<JobEvent, LedgerError>;

impl Feed {
    /// The feed, and the queue of announcements for `announce_loop` to drain.
    pub(crate) fn new(
        store: Store,
        settings: FeedSettings,
        shutdown: CancellationToken,
    ) -> (Feed, AnnounceQueue) {
        let (announcer, queue) = Announcer::new();
        let feed = Feed {
            store,
            streams: Arc::new(Semaphore::new(settings.max_streams)),
            settings,
            wakeups: Arc::new(Wakeups::default()),
            announcer,
            shutdown,
        };
        (feed, queue)
    }

    /// Call after committing an event of `job_id`: wakes its subscribers here and on
    /// the other replicas.
    pub(crate) fn announce(&self, announcement: Announcement) {
        self.announcer.announce(announcement);
    }

    /// Call after committing the events of a job: wakes its subscribers and waiting
    /// claims here and on the other replicas.
    pub(crate) fn announce_events(&self, job: &crate::ledger::Job, events: &[JobEvent]) {
        if events.is_empty() {
            return;
        }
        self.announce(Announcement::Event {
            org_id: job.org_id,
            job_id: job.id,
            job_type: job.job_type.clone(),
            prev: events[0].prev_status,
            next: job.status,
        });
    }

    /// Call after creating a job (QUEUED).
    pub(crate) fn announce_created(&self, job: &crate::ledger::Job) {
        self.announce(Announcement::Event {
            org_id: job.org_id,
            job_id: job.id,
            job_type: job.job_type.clone(),
            prev: None,
            next: job.status,
        });
    }

    /// The waiting claims of this process.
    pub(crate) fn claims(&self) -> &Arc<ClaimWakeups> {
        &self.wakeups.claims
    }

    /// The hub the listener task wakes.
    pub(crate) fn wakeups(&self) -> Arc<Wakeups> {
        self.wakeups.clone()
    }

    pub(crate) fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Number of streams open now.
    pub(crate) fn open_streams(&self) -> usize {
        self.settings.max_streams - self.streams.available_permits()
    }

    /// Checks the request against the database and starts a subscriber task; its
    /// events arrive on the returned channel, which closes when the feed ends.
    pub(crate) async fn subscribe(
        &self,
        request: Subscribe,
    ) -> Result<mpsc::Receiver<FeedItem>, LedgerError> {
        if self.shutdown.is_cancelled() {
            return Err(LedgerError::ShuttingDown);
        }
        let permit =
            self.streams
                .clone()
                .try_acquire_owned()
                .map_err(|_| LedgerError::TooManyStreams {
                    limit: self.settings.max_streams,
                })?;
        let job_status = match request.scope {
            FeedScope::Job { org_id, job_id } => Some(
                self.store
                    .job_status(org_id, job_id)
                    .await?
                    .ok_or(LedgerError::NotFound { job_id })?,
            ),
            FeedScope::Org { .. } => None,
        };
        let position = self.store.feed_position().await?;
        let mut seen_before = None;
        let start = match request.after {
            Some(cursor) if cursor.xid >= position.xmax => {
                return Err(LedgerError::CursorOutOfRange {
                    cursor: cursor.encode(),
                })
            }
            Some(cursor) => cursor,
            None => match request.scope {
                FeedScope::Job { .. } => Cursor::START,
                // "From now": events of transactions from xmin on, except those already
                // committed now (visible in this snapshot). Transactions still running
                // now may commit later with a lower xid than later ones: kept.
                FeedScope::Org { .. } => {
                    seen_before = Some((position.snapshot, position.xmax));
                    Cursor {
                        xid: position.xmin,
                        seq: 0,
                    }
                }
            },
        };
        let (tx, rx) = mpsc::channel(self.settings.buffer);
        let task = subscription::Subscription {
            feed: self.clone(),
            scope: request.scope,
            cursor: start,
            newest_status: job_status,
            seen_before,
            history_only: request.history_only,
            tx,
            _permit: permit,
        };
        tokio::spawn(task.run());
        Ok(rx)
    }
}
