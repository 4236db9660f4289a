//! ListJobs and CountJobs: an org's jobs a keyset page at a time (see
//! `ledger::listing`), and exact counts.

use std::time::{Duration, Instant};

use sqlx::{FromRow, Postgres, QueryBuilder};
use uuid::Uuid;

use super::jobs::{parse_status, JobRow};
use super::Store;
use crate::ledger::{Job, JobPosition, JobStatus, LedgerError, ListFilter};

/// The columns of a `JobRow`, for the one statement built at run time.
const JOB_COLUMNS: &str = "id, org_id, type, status, attempt, max_attempts, priority, \
     idempotency_key, requested_by, params, created_at, updated_at, started_at, finished_at, \
     last_error_code, last_error_message, stage, progress, result, run_after, lease_expires_at, \
     lease_holder, lease_ms, retry_initial_backoff_ms, retry_max_backoff_ms";

/// One page of a listing.
#[derive(Debug, Clone)]
pub(crate) struct JobPage {
    pub jobs: Vec<Job>,
    /// Set when more jobs follow.
    pub next: Option<JobPosition>,
}

/// The jobs of one (type, status) of an org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TypeStatusCount {
    pub job_type: String,
    pub status: JobStatus,
    pub count: i64,
}

#[derive(FromRow)]
struct CountRow {
    #[sqlx(rename = "type")]
    job_type: String,
    status: String,
    count: i64,
}

impl Store {
    /// A page of at most `page_size` jobs of `filter`, after `after` (a token already
    /// checked against the filter). One statement; it reads one row more than the page
    /// to learn whether another page follows.
    #[tracing::instrument(skip_all, fields(org_id = %filter.org_id, page_size))]
    pub(crate) async fn list_jobs(
        &self,
        filter: &ListFilter,
        after: Option<&JobPosition>,
        page_size: usize,
        deadline: Option<Instant>,
    ) -> Result<JobPage, LedgerError> {
        // Only the conditions in use are in the statement (rather than `$n IS NULL OR
        // ...`), so the planner sees each one and can use an index for it: the keyset
        // condition and the order match idx_job_org_created (migration 0004).
        let mut q: QueryBuilder<Postgres> =
            QueryBuilder::new(format!("SELECT {JOB_COLUMNS} FROM job WHERE org_id = "));
        q.push_bind(filter.org_id);
        if !filter.statuses.is_empty() {
            let statuses: Vec<&str> = filter.statuses.iter().map(|s| s.as_db_str()).collect();
            q.push(" AND status = ANY(").push_bind(statuses).push(")");
        }
        if let Some(t) = &filter.job_type {
            q.push(" AND type = ").push_bind(t.clone());
        }
        if let Some(t) = filter.created_after {
            q.push(" AND created_at >= ").push_bind(t);
        }
        if let Some(t) = filter.created_before {
            q.push(" AND created_at < ").push_bind(t);
        }
        if let Some(k) = &filter.idempotency_key {
            q.push(" AND idempotency_key = ").push_bind(k.clone());
        }
        if let Some(after) = after {
            q.push(" AND (created_at, id) < (")
                .push_bind(after.created_at)
                .push(", ")
                .push_bind(after.id)
                .push(")");
        }
        q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(page_size as i64 + 1);
        let rows = self
            .fetch_all_within(q.build_query_as::<JobRow>(), deadline)
            .await?;
        let more = rows.len() > page_size;
        let jobs = rows
            .into_iter()
            .take(page_size)
            .map(Job::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let next = match jobs.last() {
            Some(last) if more => Some(JobPosition {
                created_at: last.created_at,
                id: last.id,
            }),
            _ => None,
        };
        Ok(JobPage { jobs, next })
    }

    /// Exact counts of an org's jobs by (type, status), sorted by type then status, in
    /// one statement (one snapshot: the numbers add up).
    #[tracing::instrument(skip_all, fields(%org_id))]
    pub(crate) async fn count_jobs(
        &self,
        org_id: Uuid,
        job_type: Option<&str>,
        deadline: Option<Instant>,
    ) -> Result<Vec<TypeStatusCount>, LedgerError> {
        let query = sqlx::query_as::<_, CountRow>(include_str!("queries/count_jobs.sql"))
            .bind(org_id)
            .bind(job_type);
        let rows = self.fetch_all_within(query, deadline).await?;
        rows.into_iter()
            .map(|r| {
                Ok(TypeStatusCount {
                    job_type: r.job_type,
                    status: parse_status(&r.status)?,
                    count: r.count,
                })
            })
            .collect()
    }

    /// Every org's jobs by status, for the metrics: one scan of the whole table, so
    /// PostgreSQL gives it at most `timeout`.
    pub(crate) async fn count_all_jobs_by_status(
        &self,
        timeout: Duration,
    ) -> Result<Vec<(JobStatus, i64)>, LedgerError> {
        let mut tx = self.begin_with_timeout(timeout).await?;
        let rows: Vec<(String, i64)> =
            sqlx::query_as(include_str!("queries/count_jobs_by_status.sql"))
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        rows.into_iter()
            .map(|(status, n)| Ok((parse_status(&status)?, n)))
            .collect()
    }
}
