//! TransitionJob in the database: one call in its own transaction (`transition_job`),
//! or many concurrent calls in one transaction (`transition_jobs`, for group commit).
//! Both decide with `ledger::apply` on the locked current state of each job and write
//! with the same single statement, so a batched call has exactly the semantics of a call
//! of its own.

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{types::Json, FromRow, PgConnection, Postgres, Transaction};
use uuid::Uuid;

use super::jobs::{EventRow, JobRow, EVENT_COLUMNS, JOB_COLUMNS};
use super::{past_deadline, Store};
use crate::ledger::{apply, Job, JobEvent, LedgerError, NewEvent, Transition};

/// The outcome of a transition: the job after it and the events it wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct TransitionOutcome {
    pub job: Job,
    pub events: Vec<JobEvent>,
    /// True when this call wrote nothing: it answered with the recorded outcome of an
    /// earlier call with the same request_id.
    pub replayed: bool,
}

pub type TransitionResult = Result<TransitionOutcome, LedgerError>;

/// What an applied `request_id` recorded.
#[derive(FromRow, Clone)]
struct RecordedRequest {
    job_id: Uuid,
    request_id: String,
    to_status: String,
    job_snapshot: Json<Job>,
    event_ids: Vec<Uuid>,
}

/// The current row of a job, locked, with the database's clock read after the lock.
#[derive(FromRow)]
struct LockedJob {
    #[sqlx(flatten)]
    job: JobRow,
    now: DateTime<Utc>,
}

/// A transition the state machine allowed, waiting to be written.
struct Decided<'a> {
    t: &'a Transition,
    /// The job right after this transition.
    job: Job,
    events: Vec<NewEvent>,
    now: DateTime<Utc>,
}

/// How a batch entry is answered once the batch has committed.
enum Answer {
    /// Written in the batch: the index into the decided list.
    Decided(usize),
    /// The same (job, request_id) as an earlier entry of the batch.
    SameRequestAs(usize),
    /// Its request_id was applied by an earlier call.
    Replay(Box<RecordedRequest>),
    Failed(LedgerError),
    /// Not decided in the batch (its job's lock was busy, or no such job in its org):
    /// the caller runs it as a call of its own.
    Alone,
}

impl Store {
    /// Applies a transition under the job's locks: concurrent transitions of one job run
    /// one after another, each seeing the previous one's result. With a `deadline`, the
    /// database stops working for the call when it passes (a lock wait included), and
    /// nothing is written: the call then fails with `DeadlineExceeded`.
    #[tracing::instrument(skip_all, fields(org_id = %t.org_id, job_id = %t.job_id, to = %t.to))]
    pub async fn transition_job(
        &self,
        t: &Transition,
        deadline: Option<Instant>,
    ) -> TransitionResult {
        past_deadline(self.transition_alone(t, deadline).await, deadline)
    }

    async fn transition_alone(
        &self,
        t: &Transition,
        deadline: Option<Instant>,
    ) -> TransitionResult {
        let mut tx = self.begin(deadline).await?;
        // Writers of one job are serialized by a transaction-level advisory lock taken
        // *before* the row lock. Waiting for a row lock already assigns a transaction id,
        // so with the row lock alone, waiters could commit in a different order than
        // their ids; an advisory lock assigns none, so ids are taken in lock order, which
        // is commit order. The event feed relies on it: a job's events sort by
        // (xid, seq) in the order they were committed.
        // clock_timestamp(), not now(): a call that waited for the lock must not stamp
        // its event earlier than the one it waited for.
        let locked: Option<LockedJob> = sqlx::query_as(&format!(
            "WITH serialized AS (SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0)))
             SELECT {JOB_COLUMNS}, clock_timestamp() AS now
             FROM serialized, job WHERE id = $1 AND org_id = $2 FOR UPDATE OF job"
        ))
        .bind(t.job_id)
        .bind(t.org_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(locked) = locked else {
            return Err(LedgerError::NotFound { job_id: t.job_id });
        };
        if t.request_id.is_some() {
            if let Some(recorded) = recorded_requests(&mut tx, &[t]).await?.pop() {
                drop(tx);
                return self.replay(t, recorded).await;
            }
        }
        let job: Job = locked.job.try_into()?;
        // Events of a job are in time order even if the clocks of two calls disagree.
        let now = locked.now.max(job.updated_at);
        let applied = apply(&job, t, now)?;
        let decided = [Decided {
            t,
            job: applied.job,
            events: applied.events,
            now,
        }];
        let events = write(&mut tx, &decided).await?;
        tx.commit().await?;
        let [Decided { job, .. }] = decided;
        Ok(TransitionOutcome {
            job,
            events: events.into_iter().next().unwrap_or_default(),
            replayed: false,
        })
    }

    /// Applies many transitions (of any jobs and orgs, several of one job included) in one
    /// transaction, in the order given, each as if it were a call of its own. It never
    /// waits for a lock: an entry whose job is locked by another call is answered `None`
    /// (as is one whose job is not in its org), for the caller to run it alone, so one
    /// stuck job never holds up the rest of a batch. `Err` fails the whole batch (nothing
    /// written); a value PostgreSQL refused is `InvalidArgument`, and the caller then runs
    /// each entry alone so that it fails only its own call.
    #[tracing::instrument(skip_all, fields(transitions = batch.len()))]
    pub async fn transition_jobs(
        &self,
        batch: &[Transition],
    ) -> Result<Vec<Option<TransitionResult>>, LedgerError> {
        let mut tx = self.pool.begin().await?;
        // Try-locks in hash order, then the row locks, skipping rows locked by others.
        // The same lock order as `transition_alone` (advisory, then row), so the event
        // feed's commit order holds for batched writes too.
        let rows: Vec<LockedJob> = sqlx::query_as(&format!(
            "WITH wanted AS MATERIALIZED (
                SELECT DISTINCT ON (h) id, org_id, h
                FROM (SELECT w.id, w.org_id, hashtextextended(w.id::text, 0) AS h
                      FROM unnest($1::uuid[], $2::uuid[]) AS w(id, org_id)) AS w
                ORDER BY h
             ), serialized AS MATERIALIZED (
                SELECT id, org_id FROM wanted WHERE pg_try_advisory_xact_lock(h)
             )
             SELECT {JOB_COLUMNS}, clock_timestamp() AS now
             FROM job WHERE (id, org_id) IN (SELECT id, org_id FROM serialized)
             FOR UPDATE OF job SKIP LOCKED"
        ))
        .bind(batch.iter().map(|t| t.job_id).collect::<Vec<_>>())
        .bind(batch.iter().map(|t| t.org_id).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        let mut current: HashMap<Uuid, (Job, DateTime<Utc>)> = HashMap::new();
        for row in rows {
            let job: Job = row.job.try_into()?;
            let now = row.now.max(job.updated_at);
            current.insert(job.id, (job, now));
        }
        let in_batch: Vec<bool> = batch
            .iter()
            .map(|t| {
                current
                    .get(&t.job_id)
                    .is_some_and(|(job, _)| job.org_id == t.org_id)
            })
            .collect();
        let with_request_id: Vec<&Transition> = batch
            .iter()
            .zip(&in_batch)
            .filter(|(t, &member)| t.request_id.is_some() && member)
            .map(|(t, _)| t)
            .collect();
        let recorded: HashMap<(Uuid, String), RecordedRequest> = if with_request_id.is_empty() {
            HashMap::new()
        } else {
            recorded_requests(&mut tx, &with_request_id)
                .await?
                .into_iter()
                .map(|r| ((r.job_id, r.request_id.clone()), r))
                .collect()
        };

        let mut decided: Vec<Decided> = Vec::new();
        let mut applied_here: HashMap<(Uuid, String), usize> = HashMap::new();
        let mut answers = Vec::with_capacity(batch.len());
        for (t, member) in batch.iter().zip(in_batch) {
            if !member {
                answers.push(Answer::Alone);
                continue;
            }
            if let Some(request_id) = &t.request_id {
                let key = (t.job_id, request_id.clone());
                if let Some(recorded) = recorded.get(&key) {
                    answers.push(Answer::Replay(Box::new(recorded.clone())));
                    continue;
                }
                if let Some(&k) = applied_here.get(&key) {
                    answers.push(Answer::SameRequestAs(k));
                    continue;
                }
            }
            let (job, now) = current.get_mut(&t.job_id).expect("in_batch checked it");
            match apply(job, t, *now) {
                Ok(applied) => {
                    *job = applied.job.clone();
                    if let Some(request_id) = &t.request_id {
                        applied_here.insert((t.job_id, request_id.clone()), decided.len());
                    }
                    answers.push(Answer::Decided(decided.len()));
                    decided.push(Decided {
                        t,
                        job: applied.job,
                        events: applied.events,
                        now: *now,
                    });
                }
                Err(e) => answers.push(Answer::Failed(e)),
            }
        }
        let events = if decided.is_empty() {
            Vec::new()
        } else {
            write(&mut tx, &decided).await?
        };
        tx.commit().await?;

        let mut results = Vec::with_capacity(batch.len());
        for (t, answer) in batch.iter().zip(answers) {
            results.push(match answer {
                Answer::Alone => None,
                Answer::Failed(e) => Some(Err(e)),
                Answer::Decided(k) => Some(Ok(TransitionOutcome {
                    job: decided[k].job.clone(),
                    events: events[k].clone(),
                    replayed: false,
                })),
                Answer::SameRequestAs(k) if decided[k].t.to != t.to => {
                    Some(Err(LedgerError::RequestIdReused { job_id: t.job_id }))
                }
                Answer::SameRequestAs(k) => Some(Ok(TransitionOutcome {
                    job: decided[k].job.clone(),
                    events: events[k].clone(),
                    replayed: true,
                })),
                Answer::Replay(recorded) => Some(self.replay(t, *recorded).await),
            });
        }
        Ok(results)
    }

    /// A transaction; with a deadline, its statements are cancelled by PostgreSQL when
    /// the deadline passes.
    async fn begin(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Transaction<'static, Postgres>, LedgerError> {
        match self.deadline_transaction(deadline).await? {
            Some(tx) => Ok(tx),
            None => Ok(self.pool.begin().await?),
        }
    }

    /// The recorded outcome of an applied `request_id`; nothing is written.
    async fn replay(&self, t: &Transition, recorded: RecordedRequest) -> TransitionResult {
        if recorded.to_status != t.to.as_db_str() {
            return Err(LedgerError::RequestIdReused { job_id: t.job_id });
        }
        let rows: Vec<EventRow> = sqlx::query_as(&format!(
            "SELECT {EVENT_COLUMNS} FROM job_event WHERE id = ANY($1) ORDER BY xid, seq"
        ))
        .bind(&recorded.event_ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(TransitionOutcome {
            job: recorded.job_snapshot.0,
            events: rows
                .into_iter()
                .map(JobEvent::try_from)
                .collect::<Result<_, _>>()?,
            replayed: true,
        })
    }
}

/// The recorded outcomes of these calls' request_ids, where there are any. A statement of
/// its own, after the locks: under READ COMMITTED it gets a fresh snapshot and so sees the
/// outcome recorded by a concurrent call with the same request_id that held the lock
/// before us. (Joined into the locking statement, it would be read from that statement's
/// older snapshot.)
async fn recorded_requests(
    tx: &mut PgConnection,
    calls: &[&Transition],
) -> Result<Vec<RecordedRequest>, LedgerError> {
    Ok(sqlx::query_as(
        "SELECT job_id, request_id, to_status, job_snapshot, event_ids
         FROM job_transition_request
         WHERE (job_id, request_id) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))",
    )
    .bind(calls.iter().map(|t| t.job_id).collect::<Vec<_>>())
    .bind(
        calls
            .iter()
            .map(|t| t.request_id.as_deref())
            .collect::<Vec<_>>(),
    )
    .fetch_all(tx)
    .await?)
}

/// Writes decided transitions in one statement: each job's final state, every event in
/// order, and the outcome of each call that carried a request_id. Returns each call's
/// events with the sequence numbers and transaction id the database gave them.
async fn write(
    tx: &mut PgConnection,
    decided: &[Decided<'_>],
) -> Result<Vec<Vec<JobEvent>>, LedgerError> {
    // The job rows: the last state of each job (a job may be transitioned several times).
    let mut last: HashMap<Uuid, usize> = HashMap::new();
    for (k, d) in decided.iter().enumerate() {
        last.insert(d.job.id, k);
    }
    let mut finals: Vec<&Decided> = last.values().map(|&k| &decided[k]).collect();
    finals.sort_by_key(|d| d.job.id);
    // The events, in call order, and each call's slice of them (1-based, inclusive).
    let mut ids = Vec::new();
    let mut slices = Vec::with_capacity(decided.len());
    for d in decided {
        let first = ids.len() as i32 + 1;
        ids.extend(d.events.iter().map(|_| Uuid::new_v4()));
        slices.push((first, ids.len() as i32));
    }
    let events = || {
        decided
            .iter()
            .flat_map(|d| d.events.iter().map(move |e| (d, e)))
    };
    let recorded: Vec<(&Decided, (i32, i32))> = decided
        .iter()
        .zip(slices.iter().copied())
        .filter(|(d, _)| d.t.request_id.is_some())
        .collect();
    let rows: Vec<(Uuid, i64, i64)> = sqlx::query_as(
        "WITH updated AS (
            UPDATE job SET status = u.status, attempt = u.attempt, updated_at = u.ts,
                started_at = u.started_at, finished_at = u.finished_at,
                last_error_code = u.error_code, last_error_message = u.error_message,
                stage = u.stage, progress = u.progress, result = u.result
            FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::timestamptz[],
                        $5::timestamptz[], $6::timestamptz[], $7::text[], $8::text[],
                        $9::text[], $10::int4[], $11::jsonb[])
                 AS u(id, status, attempt, ts, started_at, finished_at, error_code,
                      error_message, stage, progress, result)
            WHERE job.id = u.id
         ), recorded AS (
            INSERT INTO job_transition_request (job_id, request_id, to_status, job_snapshot,
                                                event_ids)
            SELECT r.job_id, r.request_id, r.to_status, r.snapshot,
                   ($12::uuid[])[r.first_event:r.last_event]
            FROM unnest($13::uuid[], $14::text[], $15::text[], $16::jsonb[], $17::int4[],
                        $18::int4[])
                 AS r(job_id, request_id, to_status, snapshot, first_event, last_event)
         )
         INSERT INTO job_event (id, job_id, org_id, ts, prev_status, next_status, attempt,
                                detail_json)
         SELECT e.id, e.job_id, e.org_id, e.ts, e.prev, e.next, e.attempt, e.detail
         FROM unnest($12::uuid[], $19::uuid[], $20::uuid[], $21::timestamptz[], $22::text[],
                     $23::text[], $24::int4[], $25::jsonb[])
              WITH ORDINALITY AS e(id, job_id, org_id, ts, prev, next, attempt, detail, n)
         ORDER BY e.n
         RETURNING id, seq, xid::text::int8",
    )
    .bind(finals.iter().map(|d| d.job.id).collect::<Vec<_>>())
    .bind(
        finals
            .iter()
            .map(|d| d.job.status.as_db_str())
            .collect::<Vec<_>>(),
    )
    .bind(finals.iter().map(|d| d.job.attempt).collect::<Vec<_>>())
    .bind(finals.iter().map(|d| d.now).collect::<Vec<_>>())
    .bind(finals.iter().map(|d| d.job.started_at).collect::<Vec<_>>())
    .bind(finals.iter().map(|d| d.job.finished_at).collect::<Vec<_>>())
    .bind(
        finals
            .iter()
            .map(|d| d.job.last_error_code.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        finals
            .iter()
            .map(|d| d.job.last_error_message.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        finals
            .iter()
            .map(|d| d.job.stage.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(finals.iter().map(|d| d.job.progress).collect::<Vec<_>>())
    .bind(
        finals
            .iter()
            .map(|d| d.job.result.clone())
            .collect::<Vec<_>>(),
    )
    .bind(&ids)
    .bind(recorded.iter().map(|(d, _)| d.job.id).collect::<Vec<_>>())
    .bind(
        recorded
            .iter()
            .map(|(d, _)| d.t.request_id.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        recorded
            .iter()
            .map(|(d, _)| d.t.to.as_db_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        recorded
            .iter()
            .map(|(d, _)| Json(&d.job))
            .collect::<Vec<_>>(),
    )
    .bind(recorded.iter().map(|(_, s)| s.0).collect::<Vec<_>>())
    .bind(recorded.iter().map(|(_, s)| s.1).collect::<Vec<_>>())
    .bind(events().map(|(d, _)| d.job.id).collect::<Vec<_>>())
    .bind(events().map(|(d, _)| d.job.org_id).collect::<Vec<_>>())
    .bind(events().map(|(d, _)| d.now).collect::<Vec<_>>())
    .bind(
        events()
            .map(|(_, e)| e.prev_status.as_db_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        events()
            .map(|(_, e)| e.next_status.as_db_str())
            .collect::<Vec<_>>(),
    )
    .bind(events().map(|(_, e)| e.attempt).collect::<Vec<_>>())
    .bind(
        events()
            .map(|(_, e)| Value::Object(e.detail.clone()))
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut *tx)
    .await?;
    let written: HashMap<Uuid, (i64, i64)> = rows
        .into_iter()
        .map(|(id, seq, xid)| (id, (seq, xid)))
        .collect();
    Ok(decided
        .iter()
        .zip(slices)
        .map(|(d, (first, last))| {
            let mut events: Vec<JobEvent> = d
                .events
                .iter()
                .zip(&ids[(first - 1) as usize..last as usize])
                .map(|(e, id)| {
                    let (seq, xid) = written.get(id).copied().unwrap_or_default();
                    JobEvent {
                        id: *id,
                        job_id: d.job.id,
                        org_id: d.job.org_id,
                        ts: d.now,
                        prev_status: Some(e.prev_status),
                        next_status: e.next_status,
                        attempt: e.attempt,
                        detail: Some(Value::Object(e.detail.clone())),
                        seq,
                        xid,
                    }
                })
                .collect();
            events.sort_by_key(|e| e.seq);
            events
        })
        .collect())
}
