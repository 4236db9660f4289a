//! The ledger's queries. Each RPC is one transaction with as few round trips as its
//! rules allow; the state machine's decision comes from `ledger::apply`, never from SQL.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{types::Json, FromRow};
use uuid::Uuid;

use super::Store;
use crate::ledger::{Job, JobEvent, JobStatus, LedgerError, NewJob};

pub(super) const JOB_COLUMNS: &str = "id, org_id, type, status, attempt, max_attempts, priority, \
     idempotency_key, requested_by, params, created_at, updated_at, started_at, finished_at, \
     last_error_code, last_error_message, stage, progress, result";

pub(super) const EVENT_COLUMNS: &str = "id, job_id, org_id, ts, prev_status, next_status, \
     attempt, detail_json, seq, xid::text::int8 AS xid";

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
pub type CreateOutcome = Result<(Job, bool), LedgerError>;

impl Store {
    /// Creates a job and its creation event, or returns the job that already holds the
    /// idempotency key (`created = false`) if its type and params are the same.
    #[tracing::instrument(skip_all, fields(org_id = %new.org_id, job_type = %new.job_type))]
    pub async fn create_job(&self, new: &NewJob) -> Result<(Job, bool), LedgerError> {
        let insert = format!(
            "WITH new_job AS (
                INSERT INTO job (org_id, type, priority, idempotency_key, requested_by,
                                 max_attempts, params)
                VALUES ($1, $2, $3, $4, $5, $6, $7)
                ON CONFLICT (org_id, idempotency_key) WHERE idempotency_key IS NOT NULL
                DO NOTHING
                RETURNING *
             ), creation_event AS (
                INSERT INTO job_event (job_id, org_id, ts, prev_status, next_status, attempt,
                                       detail_json)
                SELECT id, org_id, created_at, NULL, 'queued', 0, $8 FROM new_job
             )
             SELECT {JOB_COLUMNS} FROM new_job"
        );
        let mut detail = serde_json::Map::new();
        if let Some(by) = &new.requested_by {
            detail.insert("actor".into(), Value::String(by.clone()));
        }
        // Without a key there is no conflict to lose; with one, the loser of a race
        // re-reads the winner (committed by then: ON CONFLICT waits for it).
        for _ in 0..3 {
            let created: Option<JobRow> = sqlx::query_as(&insert)
                .bind(new.org_id)
                .bind(&new.job_type)
                .bind(new.priority)
                .bind(&new.idempotency_key)
                .bind(&new.requested_by)
                .bind(new.max_attempts)
                .bind(new.params.as_ref().map(Json))
                .bind(Json(Value::Object(detail.clone())))
                .fetch_optional(&self.pool)
                .await?;
            if let Some(row) = created {
                return Ok((row.try_into()?, true));
            }
            let Some(key) = &new.idempotency_key else {
                break;
            };
            let existing: Option<SameInputRow> = sqlx::query_as(&format!(
                "SELECT {JOB_COLUMNS},
                        (type = $3 AND params IS NOT DISTINCT FROM $4::jsonb) AS same_input
                 FROM job WHERE org_id = $1 AND idempotency_key = $2"
            ))
            .bind(new.org_id)
            .bind(key)
            .bind(&new.job_type)
            .bind(new.params.as_ref().map(Json))
            .fetch_optional(&self.pool)
            .await?;
            match existing {
                Some(SameInputRow {
                    job,
                    same_input: true,
                }) => return Ok((job.try_into()?, false)),
                Some(SameInputRow { job, .. }) => {
                    return Err(LedgerError::IdempotencyKeyReused { job_id: job.id })
                }
                None => continue,
            }
        }
        Err(LedgerError::Internal {
            cause: "create_job: insert neither created nor found a job".into(),
        })
    }

    /// The job with this id in this org; another org's job is not found.
    #[tracing::instrument(skip_all, fields(%org_id, %job_id))]
    pub async fn get_job(&self, org_id: Uuid, job_id: Uuid) -> Result<Job, LedgerError> {
        let row: Option<JobRow> = sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} FROM job WHERE id = $1 AND org_id = $2"
        ))
        .bind(job_id)
        .bind(org_id)
        .fetch_optional(&self.pool)
        .await?;
        row.ok_or(LedgerError::NotFound { job_id })?.try_into()
    }

    /// Creates many jobs (CreateJobs): one statement inserts every job and its creation
    /// event and finds the jobs that already hold a key, so one round trip answers a
    /// whole batch in the common case. Each entry gets the outcome `create_job` would give
    /// it (idempotency included): entries sharing a key with an earlier entry of the batch,
    /// and losers of a race with a concurrent writer, are answered by a re-run of the
    /// statement, which sees the winners (committed by then: ON CONFLICT waits for them).
    /// Rows are inserted in (org_id, idempotency_key) order, so concurrent batches with
    /// overlapping keys wait for each other in one order and never deadlock.
    #[tracing::instrument(skip_all, fields(jobs = jobs.len()))]
    pub async fn create_jobs(&self, jobs: &[NewJob]) -> Result<Vec<CreateOutcome>, LedgerError> {
        let statement = format!(
            "WITH input AS (
                SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::int4[], $5::text[],
                                     $6::text[], $7::int4[], $8::jsonb[], $9::int4[], $10::bool[])
                    AS i(id, org_id, type, priority, idempotency_key, requested_by,
                         max_attempts, params, n, first)
             ), new_job AS (
                INSERT INTO job (id, org_id, type, priority, idempotency_key, requested_by,
                                 max_attempts, params)
                SELECT id, org_id, type, priority, idempotency_key, requested_by, max_attempts,
                       params
                FROM input WHERE first
                ORDER BY org_id, idempotency_key
                ON CONFLICT (org_id, idempotency_key) WHERE idempotency_key IS NOT NULL
                DO NOTHING
                RETURNING *
             ), creation_event AS (
                INSERT INTO job_event (job_id, org_id, ts, prev_status, next_status, attempt,
                                       detail_json)
                SELECT id, org_id, created_at, NULL, 'queued', 0,
                       CASE WHEN requested_by IS NULL THEN '{{}}'::jsonb
                            ELSE jsonb_build_object('actor', requested_by) END
                FROM new_job
             )
             SELECT {new_columns}, i.n, true AS created, true AS same_input
             FROM new_job nj JOIN input i ON i.id = nj.id
             UNION ALL
             SELECT {existing_columns}, i.n, false,
                    (j.type = i.type AND j.params IS NOT DISTINCT FROM i.params)
             FROM input i JOIN job j
                  ON j.org_id = i.org_id AND j.idempotency_key = i.idempotency_key",
            new_columns = qualified_job_columns("nj"),
            existing_columns = qualified_job_columns("j"),
        );
        let mut outcomes: Vec<Option<CreateOutcome>> =
            std::iter::repeat_with(|| None).take(jobs.len()).collect();
        let mut pending: Vec<usize> = (0..jobs.len()).collect();
        for _ in 0..3 {
            if pending.is_empty() {
                break;
            }
            let mut seen = std::collections::HashSet::new();
            let first: Vec<bool> = pending
                .iter()
                .map(|&i| match &jobs[i].idempotency_key {
                    Some(key) => seen.insert((jobs[i].org_id, key.as_str())),
                    None => true,
                })
                .collect();
            let entries = pending.iter().map(|&i| &jobs[i]);
            let rows: Vec<BatchRow> = sqlx::query_as(&statement)
                .bind(pending.iter().map(|_| Uuid::new_v4()).collect::<Vec<_>>())
                .bind(entries.clone().map(|j| j.org_id).collect::<Vec<_>>())
                .bind(
                    entries
                        .clone()
                        .map(|j| j.job_type.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(entries.clone().map(|j| j.priority).collect::<Vec<_>>())
                .bind(
                    entries
                        .clone()
                        .map(|j| j.idempotency_key.as_deref())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    entries
                        .clone()
                        .map(|j| j.requested_by.as_deref())
                        .collect::<Vec<_>>(),
                )
                .bind(entries.clone().map(|j| j.max_attempts).collect::<Vec<_>>())
                .bind(entries.map(|j| j.params.clone()).collect::<Vec<_>>())
                .bind(pending.iter().map(|&i| i as i32).collect::<Vec<_>>())
                .bind(first)
                .fetch_all(&self.pool)
                .await?;
            for row in rows {
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

    /// A job's events in order (the creation event first).
    #[tracing::instrument(skip_all, fields(%org_id, %job_id))]
    pub async fn job_events(
        &self,
        org_id: Uuid,
        job_id: Uuid,
    ) -> Result<Vec<JobEvent>, LedgerError> {
        let rows: Vec<EventRow> = sqlx::query_as(&format!(
            "SELECT {EVENT_COLUMNS} FROM job_event WHERE job_id = $1 AND org_id = $2 \
             ORDER BY xid, seq"
        ))
        .bind(job_id)
        .bind(org_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(JobEvent::try_from).collect()
    }
}

#[derive(FromRow)]
struct SameInputRow {
    #[sqlx(flatten)]
    job: JobRow,
    same_input: bool,
}

/// A row of `create_jobs`: the job, which entry of the batch it answers, and how.
#[derive(FromRow)]
struct BatchRow {
    #[sqlx(flatten)]
    job: JobRow,
    n: i32,
    created: bool,
    same_input: bool,
}

/// `JOB_COLUMNS` of the table aliased `alias` (for statements that join `job`).
fn qualified_job_columns(alias: &str) -> String {
    JOB_COLUMNS
        .split(',')
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}
