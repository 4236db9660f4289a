//! TransitionJob in the database: one call in its own transaction (`transition_job`),
//! or many concurrent calls in one transaction (`transition_jobs`, for group commit).
//! Both decide with `ledger::apply` on the locked current state of each job and write
//! with the same single statement (write_transitions.sql), so a batched call has exactly
//! the semantics of a call of its own.

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{types::Json, FromRow, PgConnection};
use uuid::Uuid;

use super::jobs::{EventRow, JobRow};
use super::{past_deadline, Store};
use crate::ledger::{apply, Job, JobEvent, LedgerError, NewEvent, Transition};

/// The outcome of a transition: the job after it and the events it wrote.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TransitionOutcome {
    pub job: Job,
    pub events: Vec<JobEvent>,
    /// True when this call wrote nothing: it answered with the recorded outcome of an
    /// earlier call with the same request_id.
    pub replayed: bool,
}

pub(crate) type TransitionResult = Result<TransitionOutcome, LedgerError>;

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
pub(super) struct LockedJob {
    #[sqlx(flatten)]
    job: JobRow,
    now: DateTime<Utc>,
}

impl LockedJob {
    /// The job and the time its transitions are stamped with: events of a job are in
    /// time order even if the clocks of two calls disagree.
    pub(super) fn into_current(self) -> Result<(Job, DateTime<Utc>), LedgerError> {
        let job: Job = self.job.try_into()?;
        let now = self.now.max(job.updated_at);
        Ok((job, now))
    }
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
    pub(crate) async fn transition_job(
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
        let locked: Option<LockedJob> = sqlx::query_as(include_str!("queries/lock_job.sql"))
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
        let (job, now) = locked.into_current()?;
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
    pub(crate) async fn transition_jobs(
        &self,
        batch: &[Transition],
    ) -> Result<Vec<Option<TransitionResult>>, LedgerError> {
        let mut tx = self.pool.begin().await?;
        let mut current = lock_batch(&mut tx, batch).await?;
        let members: Vec<&Transition> = batch
            .iter()
            .filter(|t| is_member(&current, t) && t.request_id.is_some())
            .collect();
        let recorded: HashMap<(Uuid, String), RecordedRequest> = if members.is_empty() {
            HashMap::new()
        } else {
            recorded_requests(&mut tx, &members)
                .await?
                .into_iter()
                .map(|r| ((r.job_id, r.request_id.clone()), r))
                .collect()
        };
        let (decided, answers) = decide_batch(batch, &mut current, &recorded);
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

    /// `transition_jobs`, or every entry to be run alone when PostgreSQL refused a value
    /// (validation should have caught it; it failed the whole statement, so each entry
    /// alone fails only its own call).
    pub(crate) async fn transition_jobs_or_alone(
        &self,
        batch: &[Transition],
    ) -> Result<Vec<Option<TransitionResult>>, LedgerError> {
        match self.transition_jobs(batch).await {
            Err(LedgerError::InvalidArgument(_)) => Ok(vec![None; batch.len()]),
            other => other,
        }
    }

    /// Many transitions, each with the outcome a call of its own would have: together in
    /// one transaction where their jobs' locks are free, the others each alone — one
    /// job's entries one after another in their order (each sees the one before), a few
    /// jobs at a time.
    pub(crate) async fn transition_many(
        &self,
        batch: &[Transition],
    ) -> Result<Vec<TransitionResult>, LedgerError> {
        use futures::StreamExt;
        const JOBS_AT_ONCE: usize = 4;
        let mut results: Vec<Option<TransitionResult>> =
            self.transition_jobs_or_alone(batch).await?;
        let mut alone: Vec<(Uuid, Vec<usize>)> = Vec::new();
        for (i, t) in batch
            .iter()
            .enumerate()
            .filter(|(i, _)| results[*i].is_none())
        {
            match alone.iter_mut().find(|(job, _)| *job == t.job_id) {
                Some((_, entries)) => entries.push(i),
                None => alone.push((t.job_id, vec![i])),
            }
        }
        let ran: Vec<Vec<(usize, TransitionResult)>> = futures::stream::iter(alone)
            .map(|(_, entries)| async move {
                let mut out = Vec::with_capacity(entries.len());
                for i in entries {
                    out.push((i, self.transition_job(&batch[i], None).await));
                }
                out
            })
            .buffer_unordered(JOBS_AT_ONCE)
            .collect()
            .await;
        for (i, result) in ran.into_iter().flatten() {
            results[i] = Some(result);
        }
        Ok(results
            .into_iter()
            .map(|r| r.expect("every entry ran together or alone"))
            .collect())
    }

    /// The recorded outcome of an applied `request_id`; nothing is written.
    async fn replay(&self, t: &Transition, recorded: RecordedRequest) -> TransitionResult {
        if recorded.to_status != t.to.as_db_str() {
            return Err(LedgerError::RequestIdReused { job_id: t.job_id });
        }
        let rows: Vec<EventRow> = sqlx::query_as(include_str!("queries/events_by_id.sql"))
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

/// Applies `transitions[i]` to `locked[i]` (a job this transaction holds, and the time
/// its transitions are stamped with) and writes every allowed one in one statement. Each
/// entry's outcome, or why the state machine refused it (nothing written for it).
pub(super) async fn apply_locked(
    tx: &mut PgConnection,
    locked: &[(Job, DateTime<Utc>)],
    transitions: &[Transition],
) -> Result<Vec<TransitionResult>, LedgerError> {
    let mut decided = Vec::new();
    let mut answers = Vec::with_capacity(locked.len());
    for ((job, now), t) in locked.iter().zip(transitions) {
        match apply(job, t, *now) {
            Ok(applied) => {
                answers.push(Ok(decided.len()));
                decided.push(Decided {
                    t,
                    job: applied.job,
                    events: applied.events,
                    now: *now,
                });
            }
            Err(e) => answers.push(Err(e)),
        }
    }
    let mut events = if decided.is_empty() {
        Vec::new()
    } else {
        write(tx, &decided).await?
    };
    Ok(answers
        .into_iter()
        .map(|answer| {
            answer.map(|k| TransitionOutcome {
                job: decided[k].job.clone(),
                events: std::mem::take(&mut events[k]),
                replayed: false,
            })
        })
        .collect())
}

/// The jobs of a batch whose locks were free, locked, each with the time its
/// transitions are stamped with.
async fn lock_batch(
    tx: &mut PgConnection,
    batch: &[Transition],
) -> Result<HashMap<Uuid, (Job, DateTime<Utc>)>, LedgerError> {
    let rows: Vec<LockedJob> = sqlx::query_as(include_str!("queries/lock_jobs.sql"))
        .bind(batch.iter().map(|t| t.job_id).collect::<Vec<_>>())
        .bind(batch.iter().map(|t| t.org_id).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
    let mut current = HashMap::with_capacity(rows.len());
    for row in rows {
        let (job, now) = row.into_current()?;
        current.insert(job.id, (job, now));
    }
    Ok(current)
}

/// Whether a batch entry's job is locked for the batch and in the entry's org.
fn is_member(current: &HashMap<Uuid, (Job, DateTime<Utc>)>, t: &Transition) -> bool {
    current
        .get(&t.job_id)
        .is_some_and(|(job, _)| job.org_id == t.org_id)
}

/// Decides each entry of a batch in order, on its job's state after the entries before
/// it: what to write, and how each entry is answered.
fn decide_batch<'a>(
    batch: &'a [Transition],
    current: &mut HashMap<Uuid, (Job, DateTime<Utc>)>,
    recorded: &HashMap<(Uuid, String), RecordedRequest>,
) -> (Vec<Decided<'a>>, Vec<Answer>) {
    let mut decided: Vec<Decided> = Vec::new();
    let mut applied_here: HashMap<(Uuid, String), usize> = HashMap::new();
    let mut answers = Vec::with_capacity(batch.len());
    for t in batch {
        if !is_member(current, t) {
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
        let (job, now) = current.get_mut(&t.job_id).expect("is_member checked it");
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
    (decided, answers)
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
    Ok(
        sqlx::query_as(include_str!("queries/recorded_requests.sql"))
            .bind(calls.iter().map(|t| t.job_id).collect::<Vec<_>>())
            .bind(
                calls
                    .iter()
                    .map(|t| t.request_id.as_deref())
                    .collect::<Vec<_>>(),
            )
            .fetch_all(tx)
            .await?,
    )
}

/// The job rows of write_transitions.sql: the last state of each job (a job may be
/// transitioned several times in a batch), one column per array.
#[derive(Default)]
struct JobColumns<'a> {
    id: Vec<Uuid>,
    status: Vec<&'static str>,
    attempt: Vec<i32>,
    ts: Vec<DateTime<Utc>>,
    started_at: Vec<Option<DateTime<Utc>>>,
    finished_at: Vec<Option<DateTime<Utc>>>,
    error_code: Vec<Option<&'a str>>,
    error_message: Vec<Option<&'a str>>,
    stage: Vec<Option<&'a str>>,
    progress: Vec<Option<i32>>,
    result: Vec<Option<&'a Value>>,
    run_after: Vec<Option<DateTime<Utc>>>,
    lease_expires_at: Vec<Option<DateTime<Utc>>>,
    lease_holder: Vec<Option<&'a str>>,
    lease_ms: Vec<Option<i32>>,
}

/// The recorded outcomes of the calls that carried a request_id, and the events of
/// every call in order, with each call's slice of them (1-based, inclusive).
#[derive(Default)]
struct EventColumns<'a> {
    id: Vec<Uuid>,
    job_id: Vec<Uuid>,
    org_id: Vec<Uuid>,
    ts: Vec<DateTime<Utc>>,
    prev: Vec<&'static str>,
    next: Vec<&'static str>,
    attempt: Vec<i32>,
    detail: Vec<Value>,
    slices: Vec<(i32, i32)>,
    request_job_id: Vec<Uuid>,
    request_id: Vec<&'a str>,
    request_to: Vec<&'static str>,
    request_snapshot: Vec<Json<&'a Job>>,
    request_first: Vec<i32>,
    request_last: Vec<i32>,
}

impl<'a> JobColumns<'a> {
    fn of(decided: &'a [Decided<'_>]) -> JobColumns<'a> {
        let mut last: HashMap<Uuid, usize> = HashMap::new();
        for (k, d) in decided.iter().enumerate() {
            last.insert(d.job.id, k);
        }
        let mut finals: Vec<&Decided> = last.values().map(|&k| &decided[k]).collect();
        finals.sort_by_key(|d| d.job.id);
        let mut c = JobColumns::default();
        for d in finals {
            let j = &d.job;
            c.id.push(j.id);
            c.status.push(j.status.as_db_str());
            c.attempt.push(j.attempt);
            c.ts.push(d.now);
            c.started_at.push(j.started_at);
            c.finished_at.push(j.finished_at);
            c.error_code.push(j.last_error_code.as_deref());
            c.error_message.push(j.last_error_message.as_deref());
            c.stage.push(j.stage.as_deref());
            c.progress.push(j.progress);
            c.result.push(j.result.as_ref());
            c.run_after.push(j.run_after);
            c.lease_expires_at
                .push(j.lease.as_ref().map(|l| l.expires_at));
            c.lease_holder
                .push(j.lease.as_ref().and_then(|l| l.holder.as_deref()));
            c.lease_ms.push(j.lease.as_ref().map(|l| l.ms));
        }
        c
    }
}

impl<'a> EventColumns<'a> {
    fn of(decided: &'a [Decided<'_>]) -> EventColumns<'a> {
        let mut c = EventColumns::default();
        for d in decided {
            let first = c.id.len() as i32 + 1;
            for e in &d.events {
                c.id.push(Uuid::new_v4());
                c.job_id.push(d.job.id);
                c.org_id.push(d.job.org_id);
                c.ts.push(d.now);
                c.prev.push(e.prev_status.as_db_str());
                c.next.push(e.next_status.as_db_str());
                c.attempt.push(e.attempt);
                c.detail.push(Value::Object(e.detail.clone()));
            }
            let slice = (first, c.id.len() as i32);
            c.slices.push(slice);
            if let Some(request_id) = &d.t.request_id {
                c.request_job_id.push(d.job.id);
                c.request_id.push(request_id);
                c.request_to.push(d.t.to.as_db_str());
                c.request_snapshot.push(Json(&d.job));
                c.request_first.push(slice.0);
                c.request_last.push(slice.1);
            }
        }
        c
    }
}

/// Writes decided transitions in one statement: each job's final state, every event in
/// order, and the outcome of each call that carried a request_id. Returns each call's
/// events with the sequence numbers and transaction id the database gave them.
async fn write(
    tx: &mut PgConnection,
    decided: &[Decided<'_>],
) -> Result<Vec<Vec<JobEvent>>, LedgerError> {
    let jobs = JobColumns::of(decided);
    let events = EventColumns::of(decided);
    let rows: Vec<(Uuid, i64, i64)> = sqlx::query_as(include_str!("queries/write_transitions.sql"))
        .bind(&jobs.id)
        .bind(&jobs.status)
        .bind(&jobs.attempt)
        .bind(&jobs.ts)
        .bind(&jobs.started_at)
        .bind(&jobs.finished_at)
        .bind(&jobs.error_code)
        .bind(&jobs.error_message)
        .bind(&jobs.stage)
        .bind(&jobs.progress)
        .bind(&jobs.result)
        .bind(&events.id)
        .bind(&events.request_job_id)
        .bind(&events.request_id)
        .bind(&events.request_to)
        .bind(&events.request_snapshot)
        .bind(&events.request_first)
        .bind(&events.request_last)
        .bind(&events.job_id)
        .bind(&events.org_id)
        .bind(&events.ts)
        .bind(&events.prev)
        .bind(&events.next)
        .bind(&events.attempt)
        .bind(&events.detail)
        .bind(&jobs.run_after)
        .bind(&jobs.lease_expires_at)
        .bind(&jobs.lease_holder)
        .bind(&jobs.lease_ms)
        .fetch_all(&mut *tx)
        .await?;
    Ok(written_events(decided, &events, rows))
}

/// Each call's events, with the sequence number and transaction id the database gave
/// each (`rows`: id, seq, xid), in order.
fn written_events(
    decided: &[Decided<'_>],
    events: &EventColumns<'_>,
    rows: Vec<(Uuid, i64, i64)>,
) -> Vec<Vec<JobEvent>> {
    let written: HashMap<Uuid, (i64, i64)> = rows
        .into_iter()
        .map(|(id, seq, xid)| (id, (seq, xid)))
        .collect();
    decided
        .iter()
        .zip(&events.slices)
        .map(|(d, &(first, last))| {
            let ids = &events.id[(first - 1) as usize..last as usize];
            let mut written_events: Vec<JobEvent> = d
                .events
                .iter()
                .zip(ids)
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
            written_events.sort_by_key(|e| e.seq);
            written_events
        })
        .collect()
}
