//! Work dispatch in the database: claims, heartbeats, the rescue of expired leases, and
//! queue settings (docs/dispatch.md).
//!
//! A claim locks the claimable jobs of its queues with `FOR UPDATE SKIP LOCKED`, so
//! concurrent claimers never take the same job and never wait for each other's rows;
//! each job it takes is the state machine's start (or retry) step, decided by
//! `ledger::apply` and written with the same statement as every transition, for the
//! whole batch in one transaction. A limited queue is claimed from by one transaction at
//! a time (a try-lock, so never waited for): its RUNNING jobs are counted after the lock,
//! and the limit cannot be overshot by racing claimers.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use super::transitions::{apply_locked, LockedJob, TransitionResult};
use super::{Store, TransitionOutcome};
use crate::ledger::{Job, JobStatus, LedgerError, Transition};

/// Whose jobs a claim takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimScope {
    Org(Uuid),
    /// Every org, round-robin, starting after this org (None: from the first).
    AllOrgs {
        after: Option<Uuid>,
    },
}

/// A validated ClaimJobs.
#[derive(Debug, Clone)]
pub(crate) struct ClaimRequest {
    pub scope: ClaimScope,
    pub types: Vec<String>,
    pub worker_id: String,
    pub max_jobs: usize,
    pub lease_ms: i32,
}

/// What one claim attempt came to.
#[derive(Debug, Default)]
pub(crate) struct Claim {
    pub claimed: Vec<TransitionOutcome>,
    /// Jobs may be claimable that this claim did not take (it was full, held rows it
    /// did not need, or found a limited queue busy): wake another waiting claim.
    pub more: bool,
    /// Queues this claim found at their running limit: a job leaving RUNNING there frees
    /// a slot.
    pub full: Vec<(Uuid, String)>,
    /// Nothing claimed: when the next scheduled job of its queues becomes claimable.
    pub next_due: Option<DateTime<Utc>>,
    /// All orgs: the last org served (the next claim starts after it).
    pub last_org: Option<Uuid>,
}

impl Claim {
    /// What a claim attempt found, for one of the requests claimed together, before it
    /// is given its jobs.
    fn without_jobs(&self) -> Claim {
        Claim {
            claimed: Vec::new(),
            more: self.more,
            full: self.full.clone(),
            next_due: self.next_due,
            last_org: self.last_org,
        }
    }
}

impl ClaimRequest {
    /// Requests with the same key can be claimed together (`Store::claim_together`):
    /// the same scope (all orgs, or the same org) and the same types.
    pub(crate) fn group_key(&self) -> (Option<Uuid>, Vec<String>) {
        let org = match self.scope {
            ClaimScope::Org(org) => Some(org),
            ClaimScope::AllOrgs { .. } => None,
        };
        let mut types = self.types.clone();
        types.sort_unstable();
        types.dedup();
        (org, types)
    }
}

/// Which request (by index) each of `taken` jobs in claim order goes to: the first
/// request's `max_jobs`, then the next request's, and so on.
fn owners(requests: &[ClaimRequest], taken: usize) -> Vec<usize> {
    requests
        .iter()
        .enumerate()
        .flat_map(|(i, r)| std::iter::repeat_n(i, r.max_jobs))
        .take(taken)
        .collect()
}

/// A queue (an org's jobs of one type) and how many jobs a claim may take from it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Take {
    org_id: Uuid,
    job_type: String,
    take: i32,
    /// A limited queue's free slots: the most it may give this claim in all.
    slots: Option<i32>,
}

/// One queue's numbers (ListQueues).
#[derive(Debug, Clone, PartialEq, FromRow)]
pub(crate) struct QueueStats {
    #[sqlx(rename = "type")]
    pub job_type: String,
    pub paused: bool,
    pub max_running: i32,
    pub ready: i64,
    pub scheduled: i64,
    pub running: i64,
    pub oldest_ready_age_secs: Option<f64>,
}

impl Store {
    /// Claims up to `max_jobs` claimable jobs for `worker_id` (see the module's doc).
    pub(crate) async fn claim_jobs(
        &self,
        request: &ClaimRequest,
        deadline: Option<std::time::Instant>,
    ) -> Result<Claim, LedgerError> {
        let claims = self
            .claim_together(std::slice::from_ref(request), deadline)
            .await;
        Ok(super::past_deadline(claims, deadline)?
            .into_iter()
            .next()
            .unwrap_or_default())
    }

    /// The claims of several requests of the same queues (one scope, one set of types:
    /// see `ClaimRequest::group_key`) in one transaction, as if the requests were one
    /// whose `max_jobs` is their sum; the jobs taken go to the requests in order, each
    /// getting the next ones in claim order up to its own `max_jobs`, started under its
    /// own worker and lease. One Claim per request.
    pub(crate) async fn claim_together(
        &self,
        requests: &[ClaimRequest],
        deadline: Option<std::time::Instant>,
    ) -> Result<Vec<Claim>, LedgerError> {
        let Some(first) = requests.first() else {
            return Ok(Vec::new());
        };
        let request = ClaimRequest {
            max_jobs: requests.iter().map(|r| r.max_jobs).sum(),
            ..first.clone()
        };
        let mut tx = self.begin_claim(deadline).await?;
        let queues = match request.scope {
            ClaimScope::Org(org_id) => request.types.iter().map(|t| (org_id, t.clone())).collect(),
            ClaimScope::AllOrgs { .. } => claimable_orgs(&mut tx, &request.types).await?,
        };
        let mut claim = Claim::default();
        let takes = takes(&mut tx, &request, &queues, &mut claim).await?;
        let rows = lock_claimable(&mut tx, &takes, &[]).await?;
        let mut picked = pick(&request, rows, &mut claim);
        if let ClaimScope::AllOrgs { .. } = request.scope {
            picked = self
                .fill_up(&mut tx, &request, &takes, picked, &mut claim)
                .await?;
        }
        if picked.is_empty() {
            claim.next_due = next_due(&mut tx, &queues).await?;
            tx.commit().await?;
            return Ok(requests.iter().map(|_| claim.without_jobs()).collect());
        }
        claim.last_org = picked.last().map(|(job, _)| job.org_id);
        let owners = owners(requests, picked.len());
        let starts: Vec<Transition> = picked
            .iter()
            .zip(&owners)
            .map(|((job, _), &owner)| start(job, &requests[owner]))
            .collect();
        let outcomes = apply_locked(&mut tx, &picked, &starts).await?;
        tx.commit().await?;
        let mut claims: Vec<Claim> = requests.iter().map(|_| claim.without_jobs()).collect();
        // The SQL picked only claimable jobs the state machine starts; a refusal here
        // would be a rule the SQL and the machine disagree on: leave the job as it is.
        for (outcome, owner) in outcomes.into_iter().zip(owners) {
            claims[owner].claimed.extend(log_refusal(outcome));
        }
        Ok(claims)
    }

    /// All orgs: when the first round left room and some queues gave all they were
    /// asked for, takes more from those queues (round-robin again; a limited queue no
    /// more than its free slots in all).
    async fn fill_up(
        &self,
        tx: &mut PgConnection,
        request: &ClaimRequest,
        takes: &[Take],
        picked: Vec<(Job, DateTime<Utc>)>,
        claim: &mut Claim,
    ) -> Result<Vec<(Job, DateTime<Utc>)>, LedgerError> {
        let free = request.max_jobs.saturating_sub(picked.len());
        if free == 0 {
            return Ok(picked);
        }
        let taken: Vec<Uuid> = picked.iter().map(|(job, _)| job.id).collect();
        let again: Vec<Take> = takes
            .iter()
            .filter_map(|t| {
                let given = picked
                    .iter()
                    .filter(|(j, _)| j.org_id == t.org_id && j.job_type == t.job_type)
                    .count() as i32;
                let room = t
                    .slots
                    .map_or(free as i32, |s| (s - given).min(free as i32));
                (given >= t.take && room > 0).then(|| Take {
                    take: room,
                    ..t.clone()
                })
            })
            .collect();
        if again.is_empty() {
            return Ok(picked);
        }
        let rows = lock_claimable(tx, &again, &taken).await?;
        let more = ClaimRequest {
            max_jobs: free,
            ..request.clone()
        };
        let mut all = picked;
        all.extend(pick(&more, rows, claim));
        Ok(all)
    }

    /// The rescuer: moves up to `limit` RUNNING jobs whose lease expired to FAILED
    /// (`LEASE_EXPIRED`, actor `jobledger`; the last attempt dead-letters, as any failure
    /// does). A job another transaction holds is left for the next round, so every
    /// expired lease is rescued exactly once, whichever replica gets to it.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn rescue_expired(
        &self,
        limit: i64,
    ) -> Result<Vec<TransitionOutcome>, LedgerError> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<LockedJob> = sqlx::query_as(include_str!("queries/lock_expired.sql"))
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let locked = rows
            .into_iter()
            .map(LockedJob::into_current)
            .collect::<Result<Vec<_>, _>>()?;
        let failures: Vec<Transition> = locked.iter().map(|(job, _)| lease_expired(job)).collect();
        let outcomes = apply_locked(&mut tx, &locked, &failures).await?;
        tx.commit().await?;
        Ok(outcomes.into_iter().filter_map(log_refusal).collect())
    }

    /// Moves the lease of a RUNNING job at `attempt` on; writes no event. The new expiry,
    /// or why not: another org's or no job (NOT_FOUND), no longer RUNNING
    /// (JOB_NOT_RUNNING: the worker must stop), another attempt (STALE_ATTEMPT).
    #[tracing::instrument(skip_all, fields(%org_id, %job_id))]
    pub(crate) async fn heartbeat(
        &self,
        org_id: Uuid,
        job_id: Uuid,
        attempt: i32,
        lease_ms: Option<i32>,
    ) -> Result<DateTime<Utc>, LedgerError> {
        let extended: Option<DateTime<Utc>> =
            sqlx::query_scalar(include_str!("queries/heartbeat.sql"))
                .bind(job_id)
                .bind(org_id)
                .bind(attempt)
                .bind(lease_ms)
                .bind(crate::ledger::DEFAULT_LEASE_MS)
                .fetch_optional(&self.pool)
                .await?;
        if let Some(expires_at) = extended {
            return Ok(expires_at);
        }
        // Why not: read the job as it is now.
        let job = self.get_job(org_id, job_id).await?;
        if job.status != JobStatus::Running {
            return Err(LedgerError::JobNotRunning { status: job.status });
        }
        Err(LedgerError::StaleAttempt {
            reported: attempt,
            current: job.attempt,
        })
    }

    /// Pauses, resumes or limits a queue (None leaves a setting as it is); its settings.
    pub(crate) async fn update_queue(
        &self,
        org_id: Uuid,
        job_type: &str,
        paused: Option<bool>,
        max_running: Option<i32>,
    ) -> Result<(bool, i32), LedgerError> {
        Ok(sqlx::query_as(include_str!("queries/update_queue.sql"))
            .bind(org_id)
            .bind(job_type)
            .bind(paused)
            .bind(max_running)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Every org's active jobs by type (type, ready, scheduled, running, oldest ready age
    /// in seconds), for the metrics: PostgreSQL gives it at most `timeout`.
    pub(crate) async fn queue_totals(
        &self,
        timeout: std::time::Duration,
    ) -> Result<Vec<(String, i64, i64, i64, Option<f64>)>, LedgerError> {
        let mut tx = self.begin_with_timeout(timeout).await?;
        let rows = sqlx::query_as(include_str!("queries/queue_totals.sql"))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// An org's queues (optionally of one type), by type.
    pub(crate) async fn list_queues(
        &self,
        org_id: Uuid,
        job_type: Option<&str>,
    ) -> Result<Vec<QueueStats>, LedgerError> {
        Ok(sqlx::query_as(include_str!("queries/list_queues.sql"))
            .bind(org_id)
            .bind(job_type)
            .fetch_all(&self.pool)
            .await?)
    }
}

/// A claim's start (or retry) of `job`: from its current status, fenced on its attempt,
/// under a lease held by the worker.
fn start(job: &Job, request: &ClaimRequest) -> Transition {
    let mut t = Transition::to(job.org_id, job.id, JobStatus::Running);
    t.expected_status = Some(job.status);
    t.actor = Some(request.worker_id.clone());
    t.lease_ms = Some(request.lease_ms);
    t
}

/// The rescuer's failure of a job whose lease expired.
fn lease_expired(job: &Job) -> Transition {
    let mut t = Transition::to(job.org_id, job.id, JobStatus::Failed);
    t.expected_status = Some(JobStatus::Running);
    t.attempt = Some(job.attempt);
    t.actor = Some("jobledger".to_owned());
    t.error_code = Some("LEASE_EXPIRED".to_owned());
    let (holder, expired) = match &job.lease {
        Some(lease) => (
            lease.holder.as_deref().unwrap_or("(no holder)"),
            lease.expires_at.to_rfc3339(),
        ),
        None => ("(no holder)", String::new()),
    };
    t.error_message = Some(format!(
        "the lease of attempt {} held by {holder} expired at {expired}",
        job.attempt
    ));
    t
}

fn log_refusal(result: TransitionResult) -> Option<TransitionOutcome> {
    match result {
        Ok(outcome) => Some(outcome),
        Err(e) => {
            tracing::error!(error = %e, "the state machine refused a dispatch step the SQL chose");
            None
        }
    }
}

/// The (org, type) queues of every org with jobs of these types that are or will be
/// claimable.
async fn claimable_orgs(
    tx: &mut PgConnection,
    types: &[String],
) -> Result<Vec<(Uuid, String)>, LedgerError> {
    Ok(sqlx::query_as(include_str!("queries/claim_orgs.sql"))
        .bind(types)
        .fetch_all(&mut *tx)
        .await?)
}

/// How many jobs the claim may take from each queue: none from a paused one, at most
/// the free slots of a limited one (whose try-lock this transaction then holds; a busy
/// one is skipped, and `claim.more` says so), and for every org an equal share.
async fn takes(
    tx: &mut PgConnection,
    request: &ClaimRequest,
    queues: &[(Uuid, String)],
    claim: &mut Claim,
) -> Result<Vec<Take>, LedgerError> {
    let (orgs, types): (Vec<Uuid>, Vec<String>) = queues.iter().cloned().unzip();
    let settings: Vec<(Uuid, String, bool, i32)> =
        sqlx::query_as(include_str!("queries/queue_settings.sql"))
            .bind(&orgs)
            .bind(&types)
            .fetch_all(&mut *tx)
            .await?;
    let paused: HashSet<(Uuid, &str)> = settings
        .iter()
        .filter(|s| s.2)
        .map(|s| (s.0, s.1.as_str()))
        .collect();
    let limits: HashMap<(Uuid, &str), i32> = settings
        .iter()
        .filter(|s| !s.2 && s.3 > 0)
        .map(|s| ((s.0, s.1.as_str()), s.3))
        .collect();
    let slots = free_slots(tx, &limits, claim).await?;
    let share = match request.scope {
        ClaimScope::Org(_) => request.max_jobs,
        ClaimScope::AllOrgs { .. } => {
            let orgs: HashSet<Uuid> = orgs.iter().copied().collect();
            request.max_jobs.div_ceil(orgs.len().max(1))
        }
    };
    Ok(queues
        .iter()
        .filter(|(org, t)| !paused.contains(&(*org, t.as_str())))
        .filter_map(|(org, t)| {
            let slots = match limits.get(&(*org, t.as_str())) {
                Some(_) => Some(*slots.get(&(*org, t.clone()))?),
                None => None,
            };
            let take = slots.unwrap_or(share).min(share) as i32;
            (take > 0).then(|| Take {
                org_id: *org,
                job_type: t.clone(),
                take,
                slots: slots.map(|s| s as i32),
            })
        })
        .collect())
}

/// The free slots of limited queues this transaction could lock (a busy one is left
/// out; a full one is recorded in `claim.full`).
async fn free_slots(
    tx: &mut PgConnection,
    limits: &HashMap<(Uuid, &str), i32>,
    claim: &mut Claim,
) -> Result<HashMap<(Uuid, String), usize>, LedgerError> {
    if limits.is_empty() {
        return Ok(HashMap::new());
    }
    let (orgs, types): (Vec<Uuid>, Vec<&str>) = limits.keys().copied().unzip();
    let locked: Vec<(Uuid, String, bool)> = sqlx::query_as(include_str!("queries/queue_locks.sql"))
        .bind(&orgs)
        .bind(&types)
        .fetch_all(&mut *tx)
        .await?;
    claim.more |= locked.iter().any(|(_, _, got)| !got);
    let (orgs, types): (Vec<Uuid>, Vec<String>) = locked
        .into_iter()
        .filter(|(_, _, got)| *got)
        .map(|(org, t, _)| (org, t))
        .unzip();
    let running: Vec<(Uuid, String, i64)> =
        sqlx::query_as(include_str!("queries/queue_running.sql"))
            .bind(&orgs)
            .bind(&types)
            .fetch_all(&mut *tx)
            .await?;
    let mut slots = HashMap::new();
    for (org, t, running) in running {
        let max = i64::from(limits[&(org, t.as_str())]);
        if running >= max {
            claim.full.push((org, t.clone()));
        }
        slots.insert((org, t), (max - running).max(0) as usize);
    }
    Ok(slots)
}

/// Locks up to `take` claimable jobs of each queue, leaving out `excluded`.
async fn lock_claimable(
    tx: &mut PgConnection,
    takes: &[Take],
    excluded: &[Uuid],
) -> Result<Vec<(Job, DateTime<Utc>)>, LedgerError> {
    if takes.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<LockedJob> = sqlx::query_as(include_str!("queries/claim_lock.sql"))
        .bind(takes.iter().map(|t| t.org_id).collect::<Vec<_>>())
        .bind(
            takes
                .iter()
                .map(|t| t.job_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(takes.iter().map(|t| t.take).collect::<Vec<_>>())
        .bind(excluded)
        .fetch_all(&mut *tx)
        .await?;
    rows.into_iter().map(LockedJob::into_current).collect()
}

/// Which of the locked jobs the claim takes: in claim order (priority, then run_after
/// or created_at); of every org round-robin, starting after the org served last. Rows
/// locked and not taken (or a take filled up) set `claim.more`.
fn pick(
    request: &ClaimRequest,
    mut rows: Vec<(Job, DateTime<Utc>)>,
    claim: &mut Claim,
) -> Vec<(Job, DateTime<Utc>)> {
    rows.sort_by_key(|(job, _)| claim_order(job));
    let after = match request.scope {
        ClaimScope::Org(_) => {
            claim.more |= rows.len() >= request.max_jobs;
            rows.truncate(request.max_jobs);
            return rows;
        }
        ClaimScope::AllOrgs { after } => after,
    };
    // Each org's jobs in claim order; orgs in rotation order.
    let mut by_org: BTreeMap<Uuid, std::collections::VecDeque<(Job, DateTime<Utc>)>> =
        BTreeMap::new();
    for row in rows {
        by_org.entry(row.0.org_id).or_default().push_back(row);
    }
    let mut orgs: Vec<Uuid> = by_org.keys().copied().collect();
    let start = after.map_or(0, |a| orgs.iter().position(|o| *o > a).unwrap_or(0));
    orgs.rotate_left(start);
    let mut picked = Vec::new();
    while picked.len() < request.max_jobs {
        let before = picked.len();
        for org in &orgs {
            if picked.len() == request.max_jobs {
                break;
            }
            if let Some(row) = by_org.get_mut(org).and_then(|q| q.pop_front()) {
                picked.push(row);
            }
        }
        if picked.len() == before {
            break;
        }
    }
    claim.more |= by_org.values().any(|q| !q.is_empty()) || picked.len() == request.max_jobs;
    picked
}

/// Claim order: higher priority first, then the earlier of run_after or created_at.
fn claim_order(job: &Job) -> (std::cmp::Reverse<i32>, DateTime<Utc>, Uuid) {
    (
        std::cmp::Reverse(job.priority),
        job.run_after.unwrap_or(job.created_at),
        job.id,
    )
}

/// When the next job of these queues becomes claimable, if one is scheduled.
async fn next_due(
    tx: &mut PgConnection,
    queues: &[(Uuid, String)],
) -> Result<Option<DateTime<Utc>>, LedgerError> {
    if queues.is_empty() {
        return Ok(None);
    }
    let (orgs, types): (Vec<Uuid>, Vec<&str>) =
        queues.iter().map(|(o, t)| (*o, t.as_str())).unzip();
    Ok(sqlx::query_scalar(include_str!("queries/next_due.sql"))
        .bind(&orgs)
        .bind(&types)
        .fetch_one(&mut *tx)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(scope: ClaimScope, types: &[&str], max_jobs: usize) -> ClaimRequest {
        ClaimRequest {
            scope,
            types: types.iter().map(|t| t.to_string()).collect(),
            worker_id: "w".into(),
            max_jobs,
            lease_ms: 30_000,
        }
    }

    #[test]
    fn jobs_claimed_together_go_to_the_requests_in_order_each_up_to_its_max() {
        let org = ClaimScope::Org(Uuid::nil());
        let requests = [
            request(org, &["t"], 2),
            request(org, &["t"], 3),
            request(org, &["t"], 1),
        ];
        assert_eq!(owners(&requests, 6), [0, 0, 1, 1, 1, 2]);
        assert_eq!(owners(&requests, 4), [0, 0, 1, 1]);
        assert_eq!(owners(&requests, 0), Vec::<usize>::new());
    }

    #[test]
    fn claims_group_by_scope_and_set_of_types() {
        let a = ClaimScope::Org(Uuid::from_u128(1));
        let b = ClaimScope::Org(Uuid::from_u128(2));
        let all = |after| ClaimScope::AllOrgs { after };
        let key = |scope, types: &[&str]| request(scope, types, 1).group_key();
        assert_eq!(key(a, &["x", "y"]), key(a, &["y", "x", "x"]));
        assert_ne!(key(a, &["x"]), key(b, &["x"]));
        assert_ne!(key(a, &["x"]), key(a, &["x", "y"]));
        assert_ne!(key(a, &["x"]), key(all(None), &["x"]));
        assert_eq!(key(all(None), &["x"]), key(all(Some(Uuid::nil())), &["x"]));
    }
}
