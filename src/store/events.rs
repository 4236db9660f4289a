//! Reading the event feed: pages of events after a cursor, in (xid, seq) order.

use uuid::Uuid;

use super::jobs::{parse_status, EventRow};
use super::Store;
use crate::ledger::{Cursor, JobEvent, JobStatus, LedgerError};

/// Whose events a feed carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedScope {
    Job { org_id: Uuid, job_id: Uuid },
    Org { org_id: Uuid },
}

/// The transaction horizon now: every xid below `xmin` has finished; `xmax` is the
/// first xid not yet assigned; `snapshot` (`pg_snapshot` text) tells which xids in
/// between had committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FeedPosition {
    pub xmin: i64,
    pub xmax: i64,
    pub snapshot: String,
}

impl Store {
    pub(crate) async fn feed_position(&self) -> Result<FeedPosition, LedgerError> {
        let (xmin, xmax, snapshot): (i64, i64, String) =
            sqlx::query_as(include_str!("queries/feed_position.sql"))
                .fetch_one(&self.pool)
                .await?;
        Ok(FeedPosition {
            xmin,
            xmax,
            snapshot,
        })
    }

    /// The job's status, if it exists in the org (another org's job does not).
    pub(crate) async fn job_status(
        &self,
        org_id: Uuid,
        job_id: Uuid,
    ) -> Result<Option<JobStatus>, LedgerError> {
        let status: Option<String> = sqlx::query_scalar(include_str!("queries/job_status.sql"))
            .bind(job_id)
            .bind(org_id)
            .fetch_optional(&self.pool)
            .await?;
        status.as_deref().map(parse_status).transpose()
    }

    /// Up to `limit` events after `after`, in feed order, leaving out (org scope) events
    /// of transactions that had committed in `seen_before`, a `pg_snapshot`.
    ///
    /// Job scope reads every committed event of the job: the job's row lock serializes
    /// its writers, so a later commit always sorts after what is visible now. Org scope
    /// spans many jobs whose transactions commit out of order, so it stops at the oldest
    /// transaction of this database still running: an event above that horizon may yet
    /// be joined by one that sorts before it.
    pub(crate) async fn events_after(
        &self,
        scope: FeedScope,
        after: Cursor,
        seen_before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<JobEvent>, LedgerError> {
        let query = match scope {
            FeedScope::Job { org_id, job_id } => {
                sqlx::query_as::<_, EventRow>(include_str!("queries/job_events_after.sql"))
                    .bind(job_id)
                    .bind(org_id)
            }
            FeedScope::Org { org_id } => {
                sqlx::query_as::<_, EventRow>(include_str!("queries/org_events_after.sql"))
                    .bind(org_id)
                    .bind(seen_before)
            }
        };
        let rows = query
            .bind(after.xid.to_string())
            .bind(after.seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(JobEvent::try_from).collect()
    }
}

/// Tells the other replicas (their LISTEN connections on `channel`) that these jobs
/// have new events: one notification per `"<org_id> <job_id>"` payload, in a statement
/// that writes nothing (a NOTIFY inside a writing transaction would serialize commits).
pub(crate) async fn notify_events(
    pool: &sqlx::PgPool,
    channel: &str,
    payloads: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query(include_str!("queries/notify_events.sql"))
        .bind(channel)
        .bind(payloads)
        .execute(pool)
        .await
        .map(|_| ())
}
