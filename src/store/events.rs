//! Reading the event feed: pages of events after a cursor, in (xid, seq) order.

use uuid::Uuid;

use super::jobs::{EventRow, EVENT_COLUMNS};
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
pub struct FeedPosition {
    pub xmin: i64,
    pub xmax: i64,
    pub snapshot: String,
}

impl Store {
    pub async fn feed_position(&self) -> Result<FeedPosition, LedgerError> {
        let (xmin, xmax, snapshot): (i64, i64, String) = sqlx::query_as(
            "SELECT pg_snapshot_xmin(s)::text::int8, pg_snapshot_xmax(s)::text::int8, s::text
             FROM pg_current_snapshot() s",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(FeedPosition {
            xmin,
            xmax,
            snapshot,
        })
    }

    /// The job's status, if it exists in the org (another org's job does not).
    pub async fn job_status(
        &self,
        org_id: Uuid,
        job_id: Uuid,
    ) -> Result<Option<JobStatus>, LedgerError> {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM job WHERE id = $1 AND org_id = $2")
                .bind(job_id)
                .bind(org_id)
                .fetch_optional(&self.pool)
                .await?;
        status
            .map(|s| {
                JobStatus::from_db_str(&s).ok_or_else(|| LedgerError::Internal {
                    cause: format!("unknown status {s:?} in the database"),
                })
            })
            .transpose()
    }

    /// Up to `limit` events after `after`, in feed order, leaving out (org scope) events
    /// of transactions that had committed in `seen_before`, a `pg_snapshot`.
    ///
    /// Job scope reads every committed event of the job: the job's row lock serializes
    /// its writers, so a later commit always sorts after what is visible now. Org scope
    /// spans many jobs whose transactions commit out of order, so it stops at the oldest
    /// transaction of this database still running: an event above that horizon may yet
    /// be joined by one that sorts before it.
    pub async fn events_after(
        &self,
        scope: FeedScope,
        after: Cursor,
        seen_before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<JobEvent>, LedgerError> {
        let query = match scope {
            FeedScope::Job { org_id, job_id } => sqlx::query_as::<_, EventRow>(job_feed_sql())
                .bind(job_id)
                .bind(org_id),
            FeedScope::Org { org_id } => sqlx::query_as::<_, EventRow>(org_feed_sql())
                .bind(org_id)
                .bind(seen_before),
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

fn job_feed_sql() -> &'static str {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT {EVENT_COLUMNS} FROM job_event
             WHERE job_id = $1 AND org_id = $2 AND (xid, seq) > ($3::text::xid8, $4)
             ORDER BY xid, seq LIMIT $5"
        )
    });
    &SQL
}

fn org_feed_sql() -> &'static str {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT {EVENT_COLUMNS} FROM job_event
             WHERE org_id = $1 AND (xid, seq) > ($3::text::xid8, $4)
               AND xid < (
                   -- The horizon: the oldest running transaction that may have written
                   -- to this database. xmin is cluster-wide, so skip transactions that
                   -- pg_stat_activity places in another database (one it cannot place
                   -- yet counts as ours: the safe side).
                   SELECT CASE WHEN pg_snapshot_xmin(s) = pg_snapshot_xmax(s)
                               THEN pg_snapshot_xmax(s)
                               ELSE coalesce(
                                   (SELECT min(x) FROM pg_snapshot_xip(s) x
                                    WHERE xid(x) NOT IN (
                                        SELECT backend_xid FROM pg_stat_activity
                                        WHERE backend_xid IS NOT NULL
                                          AND datname IS DISTINCT FROM current_database())),
                                   pg_snapshot_xmax(s))
                          END
                   FROM pg_current_snapshot() s)
               AND ($2::text IS NULL OR NOT pg_visible_in_snapshot(xid, $2::text::pg_snapshot))
             ORDER BY xid, seq LIMIT $5"
        )
    });
    &SQL
}
