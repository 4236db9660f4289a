//! Creating and reading jobs, and the rows every query maps: `JobRow` and `EventRow`.
//! Each RPC is one transaction with as few round trips as its rules allow; the state
//! machine's decision comes from `ledger::apply`, never from SQL.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{types::Json, FromRow};
use uuid::Uuid;

use super::Store;
use crate::ledger::{Job, JobEvent, JobStatus, Lease, LedgerError, NewJob, RetryPolicy};

#[derive(FromRow)]
pub(super) struct JobRow {
    id: Uuid,
    org_id: Uuid,
    #[sqlx(rename = "type")]
    job_type: String,
    status: String,
    attempt: i32,
    max_attempts: i32,
    priority: i32,
    idempotency_key: Option<String>,
    requested_by: Option<String>,
    params: Option<Json<Value>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    last_error_code: Option<String>,
    last_error_message: Option<String>,
    stage: Option<String>,
    progress: Option<i32>,
    result: Option<Json<Value>>,
    run_after: Option<DateTime<Utc>>,
    lease_expires_at: Option<DateTime<Utc>>,
    lease_holder: Option<String>,
    lease_ms: Option<i32>,
    retry_initial_backoff_ms: Option<i64>,
    retry_max_backoff_ms: Option<i64>,
}

impl TryFrom<JobRow> for Job {
    type Error = LedgerError;
    fn try_from(r: JobRow) -> Result<Job, LedgerError> {
        Ok(Job {
            id: r.id,
            org_id: r.org_id,
            job_type: r.job_type,
            status: parse_status(&r.status)?,
            attempt: r.attempt,
            max_attempts: r.max_attempts,
            priority: r.priority,
            idempotency_key: r.idempotency_key,
            requested_by: r.requested_by,
            params: r.params.map(|j| j.0),
            created_at: r.created_at,
            updated_at: r.updated_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            last_error_code: r.last_error_code,
            last_error_message: r.last_error_message,
            stage: r.stage,
            progress: r.progress,
            result: r.result.map(|j| j.0),
            run_after: r.run_after,
            // A lease is its expiry and length; rows the old stack wrote have neither.
            lease: r
                .lease_expires_at
                .zip(r.lease_ms)
                .map(|(expires_at, ms)| Lease {
                    expires_at,
                    holder: r.lease_holder,
                    ms,
                }),
            retry: RetryPolicy {
                initial_backoff_ms: r.retry_initial_backoff_ms,
                max_backoff_ms: r.retry_max_backoff_ms,
            },
        })
    }
}

#[derive(FromRow)]
pub(super) struct EventRow {
    id: Uuid,
    job_id: Uuid,
    org_id: Uuid,
    ts: DateTime<Utc>,
    prev_status: Option<String>,
    next_status: String,
    attempt: Option<i32>,
    detail_json: Option<Json<Value>>,
    seq: i64,
    xid: i64,
}

impl TryFrom<EventRow> for JobEvent {
    type Error = LedgerError;
    fn try_from(r: EventRow) -> Result<JobEvent, LedgerError> {
        Ok(JobEvent {
            id: r.id,
            job_id: r.job_id,
            org_id: r.org_id,
            ts: r.ts,
            prev_status: r.prev_status.as_deref().map(parse_status).transpose()?,
            next_status: parse_status(&r.next_status)?,
            attempt: r.attempt.unwrap_or(0),
            detail: r.detail_json.map(|j| j.0),
            seq: r.seq,
            xid: r.xid,
        })
    }
}

pub(super) fn parse_status(s: &str) -> Result<JobStatus, LedgerError> {
    JobStatus::from_db_str(s).ok_or_else(|| LedgerError::Internal {
        cause: format!("unknown status {s:?} in the database"),
    })
}

/// What creating one job came to: the job and whether this call created it, or why not.
pub(crate) type CreateOutcome = Result<(Job, bool), LedgerError>;

impl Store {
    /// Creates a job and its creation event, or returns the job that already holds the
    /// idempotency key (`created = false`) if its type and params are the same. The
    /// same statement as a batch of one (`create_jobs`).
    #[tracing::instrument(skip_all, fields(org_id = %new.org_id, job_type = %new.job_type))]
    pub(crate) async fn create_job(&self, new: &NewJob) -> CreateOutcome {
        let mut outcomes = self.create_jobs(std::slice::from_ref(new)).await?;
        outcomes.pop().unwrap_or_else(|| {
            Err(LedgerError::Internal {
                cause: "create_job: no outcome for the one job".into(),
            })
        })
    }

    /// The job with this id in this org; another org's job is not found.
    #[tracing::instrument(skip_all, fields(%org_id, %job_id))]
    pub(crate) async fn get_job(&self, org_id: Uuid, job_id: Uuid) -> Result<Job, LedgerError> {
        let row: Option<JobRow> = sqlx::query_as(include_str!("queries/get_job.sql"))
            .bind(job_id)
            .bind(org_id)
            .fetch_optional(&self.pool)
            .await?;
        row.ok_or(LedgerError::NotFound { job_id })?.try_into()
    }

    /// Creates many jobs (CreateJobs, and CreateJob's group commit): one statement
    /// inserts every job and its creation event and finds the jobs that already hold a
    /// key, so one round trip answers a whole batch in the common case. Each entry gets
    /// its own outcome (idempotency included): entries sharing a key with an earlier
    /// entry of the batch, and losers of a race with a concurrent writer, are answered by
    /// a re-run of the statement, which sees the winners (committed by then: ON CONFLICT
    /// waits for them).
    #[tracing::instrument(skip_all, fields(jobs = jobs.len()))]
    pub(crate) async fn create_jobs(
        &self,
        jobs: &[NewJob],
    ) -> Result<Vec<CreateOutcome>, LedgerError> {
        let mut outcomes: Vec<Option<CreateOutcome>> =
            std::iter::repeat_with(|| None).take(jobs.len()).collect();
        let mut pending: Vec<usize> = (0..jobs.len()).collect();
        for _ in 0..3 {
            if pending.is_empty() {
                break;
            }
            for row in self.insert_jobs(jobs, &pending).await? {
                let slot = &mut outcomes[row.n as usize];
                // A created job wins over a lookup of the same entry (there is none: the
                // lookup reads the snapshot from before the insert).
                if slot.as_ref().is_some_and(|o| o.is_ok()) && !row.created {
                    continue;
                }
                *slot = Some(match (row.created, row.same_input) {
                    (true, _) => Ok((row.job.try_into()?, true)),
                    (false, true) => Ok((row.job.try_into()?, false)),
                    (false, false) => Err(LedgerError::IdempotencyKeyReused { job_id: row.job.id }),
                });
            }
            pending.retain(|&i| outcomes[i].is_none());
        }
        Ok(outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    Err(LedgerError::Internal {
                        cause: "create_jobs: insert neither created nor found a job".into(),
                    })
                })
            })
            .collect())
    }

    /// One run of create_jobs.sql for the entries `pending` of `jobs`.
    async fn insert_jobs(
        &self,
        jobs: &[NewJob],
        pending: &[usize],
    ) -> Result<Vec<BatchRow>, LedgerError> {
        let mut seen = std::collections::HashSet::new();
        let first: Vec<bool> = pending
            .iter()
            .map(|&i| match &jobs[i].idempotency_key {
                Some(key) => seen.insert((jobs[i].org_id, key.as_str())),
                None => true,
            })
            .collect();
        let entries = || pending.iter().map(|&i| &jobs[i]);
        Ok(sqlx::query_as(include_str!("queries/create_jobs.sql"))
            .bind(pending.iter().map(|_| Uuid::new_v4()).collect::<Vec<_>>())
            .bind(entries().map(|j| j.org_id).collect::<Vec<_>>())
            .bind(entries().map(|j| j.job_type.as_str()).collect::<Vec<_>>())
            .bind(entries().map(|j| j.priority).collect::<Vec<_>>())
            .bind(
                entries()
                    .map(|j| j.idempotency_key.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(
                entries()
                    .map(|j| j.requested_by.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(entries().map(|j| j.max_attempts).collect::<Vec<_>>())
            .bind(entries().map(|j| j.params.clone()).collect::<Vec<_>>())
            .bind(pending.iter().map(|&i| i as i32).collect::<Vec<_>>())
            .bind(first)
            .bind(entries().map(|j| j.run_after).collect::<Vec<_>>())
            .bind(
                entries()
                    .map(|j| j.retry.initial_backoff_ms)
                    .collect::<Vec<_>>(),
            )
            .bind(
                entries()
                    .map(|j| j.retry.max_backoff_ms)
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&self.pool)
            .await?)
    }
}

/// A row of create_jobs.sql: the job, which entry of the batch it answers, and how.
#[derive(FromRow)]
struct BatchRow {
    #[sqlx(flatten)]
    job: JobRow,
    n: i32,
    created: bool,
    same_input: bool,
}
