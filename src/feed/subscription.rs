//! One subscriber: read a page after the cursor, hand it over at the reader's pace,
//! wait for a wake-up (or the poll interval), repeat.

use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::{Feed, FeedItem};
use crate::ledger::{Cursor, JobStatus, LedgerError};
use crate::store::FeedScope;

pub(super) struct Subscription {
    pub feed: Feed,
    pub scope: FeedScope,
    pub cursor: Cursor,
    /// Job scope: the status of the newest event delivered or known to lie before the
    /// cursor (the job's status when the stream opened, then each delivered event's).
    pub newest_status: Option<JobStatus>,
    /// Org "from now": the snapshot at subscribe time and its xmax. Events of
    /// transactions it saw committed are not sent; once the cursor passes xmax no
    /// such event can come, and the filter is dropped.
    pub seen_before: Option<(String, i64)>,
    pub history_only: bool,
    pub tx: mpsc::Sender<FeedItem>,
    /// Held for the life of the stream: one of `max_streams`.
    pub _permit: OwnedSemaphorePermit,
}

/// Why a subscription stopped.
enum End {
    /// The feed is complete (history delivered, or the job reached its end).
    Done,
    /// The reader went away.
    Gone,
    Failed(LedgerError),
}

impl Subscription {
    pub(super) async fn run(mut self) {
        let end = self.follow().await;
        match end {
            End::Done | End::Gone => {}
            End::Failed(e) => {
                // Wait until the reader takes the error (or goes away): dropping it would
                // end the stream as OK, as if the feed were complete. Shutdown does not
                // wait here: the API layer ends streams itself on shutdown.
                tokio::select! {
                    _ = self.tx.send(Err(e)) => {}
                    _ = self.tx.closed() => {}
                }
            }
        }
    }

    async fn follow(&mut self) -> End {
        let key = match self.scope {
            FeedScope::Job { job_id, .. } => job_id,
            FeedScope::Org { org_id } => org_id,
        };
        let (mut own, mut everyone) = self.feed.wakeups.subscribe(key);
        let shutdown = self.feed.shutdown.clone();
        let page_size = self.feed.settings.page_size;
        loop {
            // Mark wake-ups seen *before* reading: one that arrives during the read
            // makes the wait below return at once.
            own.borrow_and_update();
            everyone.borrow_and_update();
            if self
                .seen_before
                .as_ref()
                .is_some_and(|(_, xmax)| self.cursor.xid >= *xmax)
            {
                self.seen_before = None;
            }
            let seen_before = self.seen_before.as_ref().map(|(s, _)| s.as_str());
            let page = tokio::select! {
                _ = shutdown.cancelled() => return End::Failed(LedgerError::ShuttingDown),
                page = self.feed.store.events_after(self.scope, self.cursor, seen_before, page_size) => page,
            };
            let page = match page {
                Ok(page) => page,
                Err(e) => return End::Failed(e),
            };
            let full = page.len() as i64 == page_size;
            for event in page {
                self.cursor = Cursor::of(&event);
                if self.newest_status.is_some() {
                    self.newest_status = Some(event.next_status);
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return End::Failed(LedgerError::ShuttingDown),
                    sent = self.tx.send(Ok(event)) => if sent.is_err() { return End::Gone },
                }
            }
            if full {
                continue;
            }
            // Caught up. A job's feed ends once its newest event is into an ending
            // status (a redriven job's history goes on past an earlier one).
            if self.newest_status.is_some_and(JobStatus::ends_stream) {
                return End::Done;
            }
            if self.history_only {
                return End::Done;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return End::Failed(LedgerError::ShuttingDown),
                _ = self.tx.closed() => return End::Gone,
                _ = own.changed() => {}
                _ = everyone.changed() => {}
                _ = tokio::time::sleep(self.feed.settings.poll_interval) => {}
            }
        }
    }
}
