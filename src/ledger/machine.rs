//! The status state machine, as data, and the one function that applies it.
//!
//! [`TABLE`] is the whole policy: a (from, to) pair not in it is refused. [`apply`]
//! consults it and computes the job's next state and the events to write; the store
//! only persists what `apply` decided.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Map, Value};

use super::{Job, JobStatus, Lease, LedgerError, NewEvent, RetryPolicy, Transition};
use JobStatus::*;

/// What a legal (from, to) pair means; the kind carries the special rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// QUEUED → RUNNING: a worker takes the job (`attempt += 1`).
    Start,
    /// RUNNING → RUNNING: a progress report; status and attempt unchanged.
    Progress,
    /// RUNNING → QUEUED: hand the job back without using up an attempt.
    Requeue,
    Succeed,
    /// RUNNING → FAILED; the last attempt moves on to DEAD_LETTER.
    Fail,
    Cancel,
    /// FAILED → QUEUED/RUNNING: refused once `attempt >= max_attempts`.
    Retry,
    /// FAILED → DEAD_LETTER by hand.
    Bury,
    /// DEAD_LETTER → QUEUED: a fresh budget (`attempt = 0`).
    Redrive,
}

/// Every legal transition (spec §3). SUCCEEDED and CANCELED are final: no row leaves them.
pub const TABLE: &[(JobStatus, JobStatus, StepKind)] = &[
    (Queued, Running, StepKind::Start),
    (Queued, Canceled, StepKind::Cancel),
    (Running, Queued, StepKind::Requeue),
    (Running, Running, StepKind::Progress),
    (Running, Succeeded, StepKind::Succeed),
    (Running, Failed, StepKind::Fail),
    (Running, Canceled, StepKind::Cancel),
    (Failed, Queued, StepKind::Retry),
    (Failed, Running, StepKind::Retry),
    (Failed, Canceled, StepKind::Cancel),
    (Failed, DeadLetter, StepKind::Bury),
    (DeadLetter, Queued, StepKind::Redrive),
];

/// The kind of the step from `from` to `to`, if the table allows it.
pub fn step(from: JobStatus, to: JobStatus) -> Option<StepKind> {
    TABLE
        .iter()
        .find(|(f, t, _)| *f == from && *t == to)
        .map(|(_, _, kind)| *kind)
}

/// The statuses a job in `from` may move to, in table order.
pub fn allowed_next(from: JobStatus) -> Vec<JobStatus> {
    TABLE
        .iter()
        .filter(|(f, _, _)| *f == from)
        .map(|(_, t, _)| *t)
        .collect()
}

/// Keys the server writes into an event's detail; a client's `detail` may not use them.
pub const RESERVED_DETAIL_KEYS: &[&str] = &[
    "stage",
    "progress",
    "result",
    "error_code",
    "error_message",
    "actor",
    "request_id",
    "reason",
    "run_after",
];

/// The backoff of a job whose RetryPolicy leaves it unset (spec §7).
pub const DEFAULT_INITIAL_BACKOFF_MS: i64 = 1_000;
pub const DEFAULT_MAX_BACKOFF_MS: i64 = 3_600_000;

/// The outcome of a legal transition: the job's next state and the events, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub job: Job,
    pub events: Vec<NewEvent>,
}

/// Decides a transition of `job` (its current, locked state) at time `now`.
///
/// Order of checks: compare-and-set (`expected_status`), fencing (`attempt`), then
/// the table, then the retry budget. The first failing check is the error.
pub fn apply(job: &Job, t: &Transition, now: DateTime<Utc>) -> Result<Applied, LedgerError> {
    let kind = check(job, t)?;
    let mut next = next_state(job, t, kind, now);
    let mut detail = event_detail(t);
    if let Some(run_after) = next.run_after.filter(|_| kind == StepKind::Fail) {
        detail.insert("run_after".into(), json!(run_after));
    }
    let mut events = vec![NewEvent {
        prev_status: job.status,
        next_status: t.to,
        attempt: next.attempt,
        detail,
    }];
    if kind == StepKind::Fail && next.attempt >= next.max_attempts {
        next.status = DeadLetter;
        next.run_after = None;
        let mut detail = Map::new();
        detail.insert("reason".into(), json!("max_attempts_exhausted"));
        detail.insert("max_attempts".into(), json!(next.max_attempts));
        events.push(NewEvent {
            prev_status: Failed,
            next_status: DeadLetter,
            attempt: next.attempt,
            detail,
        });
    }
    Ok(Applied { job: next, events })
}

/// The kind of step `t` is from `job`'s state, or why it is refused.
fn check(job: &Job, t: &Transition) -> Result<StepKind, LedgerError> {
    let (from, to) = (job.status, t.to);
    if let Some(expected) = t.expected_status {
        if expected != from {
            return Err(LedgerError::StatusMismatch {
                expected,
                actual: from,
            });
        }
    }
    // A report into RUNNING that names its attempt and no expected status comes from
    // the holder of that attempt: it is a progress report, never a start or retry. Once
    // the job left RUNNING (canceled, rescued, handed back) the worker must stop.
    let holder_report = to == JobStatus::Running
        && t.attempt.is_some_and(|a| a >= 1)
        && t.expected_status.is_none();
    if holder_report && from != JobStatus::Running {
        return Err(LedgerError::JobNotRunning { status: from });
    }
    if let Some(reported) = t.attempt {
        if reported != job.attempt {
            return Err(LedgerError::StaleAttempt {
                reported,
                current: job.attempt,
            });
        }
    }
    let Some(kind) = step(from, to) else {
        return Err(LedgerError::InvalidTransition {
            from,
            to,
            allowed: allowed_next(from),
        });
    };
    if kind == StepKind::Retry && job.attempt >= job.max_attempts {
        return Err(LedgerError::AttemptsExhausted {
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            allowed: allowed_next(from)
                .into_iter()
                .filter(|s| step(from, *s) != Some(StepKind::Retry))
                .collect(),
        });
    }
    Ok(kind)
}

/// The job after a legal step of `kind` (before a failure of the last attempt moves it
/// on to DEAD_LETTER).
fn next_state(job: &Job, t: &Transition, kind: StepKind, now: DateTime<Utc>) -> Job {
    let (from, to) = (job.status, t.to);
    let mut next = job.clone();
    next.status = to;
    next.updated_at = now;
    if to == Running && from != Running {
        next.attempt += 1;
        next.started_at = Some(now);
    }
    if kind == StepKind::Redrive {
        next.attempt = 0;
    }
    next.finished_at = to.is_finished().then_some(now);
    if let Some(stage) = &t.stage {
        next.stage = Some(stage.clone());
    }
    if let Some(progress) = t.progress {
        next.progress = Some(progress);
    }
    if to == Succeeded {
        next.result = t.result.clone();
    }
    if to == Failed {
        next.last_error_code = t.error_code.clone();
        next.last_error_message = t.error_message.clone();
    } else if to == DeadLetter {
        if t.error_code.is_some() {
            next.last_error_code = t.error_code.clone();
        }
        if t.error_message.is_some() {
            next.last_error_message = t.error_message.clone();
        }
    }
    next.lease = next_lease(job, t, now);
    next.run_after = match kind {
        // A failure with attempts left waits out the backoff (or the worker's retry_after).
        StepKind::Fail if next.attempt < next.max_attempts => {
            let delay_ms = t
                .retry_after_ms
                .unwrap_or_else(|| backoff_ms(&job.retry, job.id, job.attempt));
            Some(now + TimeDelta::milliseconds(delay_ms))
        }
        // Anything else that ends QUEUED (requeue, retry, redrive) is claimable at once;
        // other statuses have no run_after.
        _ => None,
    };
    next
}

/// The lease after `t`: a start or retry with a lease takes one (held by its actor); a
/// progress report moves it on by its own lease or else the current lease's length;
/// leaving RUNNING, or a start without one, has none.
fn next_lease(job: &Job, t: &Transition, now: DateTime<Utc>) -> Option<Lease> {
    if t.to != Running {
        return None;
    }
    let lengthen = |ms: i32, holder: Option<String>| Lease {
        expires_at: now + TimeDelta::milliseconds(ms.into()),
        holder,
        ms,
    };
    match (&job.lease, job.status) {
        (Some(current), Running) => {
            let ms = t.lease_ms.unwrap_or(current.ms);
            Some(lengthen(ms, current.holder.clone()))
        }
        (None, Running) => t.lease_ms.map(|ms| lengthen(ms, None)),
        _ => t.lease_ms.map(|ms| lengthen(ms, t.actor.clone())),
    }
}

/// How long a job waits after failing `attempt` (≥ 1) before it is claimable again:
/// d = min(max, initial × 2^(attempt − 1)), then d × a factor in [0.5, 1.0) that spreads
/// retries of jobs that failed together. The factor comes from the job's id and attempt,
/// so the same failure always gets the same delay (and the rule can be tested).
pub fn backoff_ms(policy: &RetryPolicy, job_id: uuid::Uuid, attempt: i32) -> i64 {
    let initial = policy
        .initial_backoff_ms
        .unwrap_or(DEFAULT_INITIAL_BACKOFF_MS);
    let max = policy.max_backoff_ms.unwrap_or(DEFAULT_MAX_BACKOFF_MS);
    let doublings = (attempt.max(1) - 1).min(62) as u32;
    let d = initial
        .saturating_mul(1i64.checked_shl(doublings).unwrap_or(i64::MAX))
        .min(max);
    // FNV-1a over the id and attempt, then SplitMix64's finalizer (FNV alone moves its
    // high bits only slightly for a change in the last bytes, so one job's attempts would
    // share a factor): a stable fraction in [0, 1).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in job_id.as_bytes().iter().chain(&attempt.to_be_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    let fraction = (h >> 11) as f64 / (1u64 << 53) as f64;
    (d as f64 * (0.5 + 0.5 * fraction)) as i64
}

/// The detail stored on a transition's event: the client's free-form detail plus the
/// reported fields under their reserved keys.
fn event_detail(t: &Transition) -> Map<String, Value> {
    let mut detail = t.detail.clone();
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(v) = value {
            detail.insert(key.to_owned(), v);
        }
    };
    put("stage", t.stage.clone().map(Value::String));
    put("progress", t.progress.map(Value::from));
    put("result", t.result.clone());
    put("error_code", t.error_code.clone().map(Value::String));
    put("error_message", t.error_message.clone().map(Value::String));
    put("actor", t.actor.clone().map(Value::String));
    put("request_id", t.request_id.clone().map(Value::String));
    detail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::DEFAULT_ORG;
    use chrono::TimeZone;
    use uuid::Uuid;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }
    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 1, 0).unwrap()
    }

    fn job(status: JobStatus, attempt: i32, max_attempts: i32) -> Job {
        Job {
            id: Uuid::from_u128(1),
            job_type: "t".into(),
            ..Job::at_status(status, attempt, max_attempts, t0())
        }
    }

    fn to(status: JobStatus) -> Transition {
        Transition::to(DEFAULT_ORG, Uuid::from_u128(1), status)
    }

    /// The spec's table, written out independently of `TABLE`, cell by cell.
    fn spec_allows(from: JobStatus, to: JobStatus) -> bool {
        matches!(
            (from, to),
            (Queued, Running)
                | (Queued, Canceled)
                | (Running, Queued)
                | (Running, Running)
                | (Running, Succeeded)
                | (Running, Failed)
                | (Running, Canceled)
                | (Failed, Queued)
                | (Failed, Running)
                | (Failed, Canceled)
                | (Failed, DeadLetter)
                | (DeadLetter, Queued)
        )
    }

    #[test]
    fn every_pair_of_the_table_is_allowed_or_refused_as_the_spec_says() {
        let mut checked = 0;
        for from in JobStatus::ALL {
            for target in JobStatus::ALL {
                // attempt 1 of 5: no budget rule interferes.
                let result = apply(&job(from, 1, 5), &to(target), now());
                if spec_allows(from, target) {
                    let applied = result.unwrap_or_else(|e| panic!("{from}->{target}: {e}"));
                    assert_eq!(applied.events[0].prev_status, from);
                    assert_eq!(applied.events[0].next_status, target);
                    assert_eq!(applied.job.status, target, "{from}->{target}");
                    assert_eq!(
                        applied.job.finished_at.is_some(),
                        target.is_finished(),
                        "{from}->{target} finished_at"
                    );
                } else {
                    match result {
                        Err(LedgerError::InvalidTransition {
                            from: f,
                            to: t,
                            allowed,
                        }) => {
                            assert_eq!((f, t), (from, target));
                            let expected: Vec<_> = JobStatus::ALL
                                .into_iter()
                                .filter(|s| spec_allows(from, *s))
                                .collect();
                            let mut allowed_sorted = allowed.clone();
                            allowed_sorted.sort();
                            assert_eq!(allowed_sorted, expected, "allowed from {from}");
                        }
                        other => panic!("{from}->{target} should be refused, got {other:?}"),
                    }
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 36);
    }

    #[test]
    fn succeeded_and_canceled_are_final() {
        assert!(allowed_next(Succeeded).is_empty());
        assert!(allowed_next(Canceled).is_empty());
    }

    #[test]
    fn start_counts_an_attempt_and_clears_finished_at() {
        let a = apply(&job(Queued, 0, 5), &to(Running), now()).unwrap();
        assert_eq!(a.job.attempt, 1);
        assert_eq!(a.job.started_at, Some(now()));
        assert_eq!(a.job.finished_at, None);
        assert_eq!(a.events.len(), 1);
        assert_eq!(a.events[0].attempt, 1);

        let retry = apply(&job(Failed, 2, 5), &to(Running), now()).unwrap();
        assert_eq!(retry.job.attempt, 3);
        assert_eq!(retry.job.finished_at, None);
        assert_eq!(retry.job.started_at, Some(now()));
    }

    #[test]
    fn progress_report_keeps_status_and_attempt_and_records_stage() {
        let mut t = to(Running);
        t.stage = Some("download".into());
        t.progress = Some(40);
        let a = apply(&job(Running, 2, 5), &t, now()).unwrap();
        assert_eq!(a.job.status, Running);
        assert_eq!(a.job.attempt, 2);
        assert_eq!(
            a.job.started_at, None,
            "a progress report is not a new start"
        );
        assert_eq!(a.job.stage.as_deref(), Some("download"));
        assert_eq!(a.job.progress, Some(40));
        assert_eq!(a.events[0].detail["stage"], json!("download"));
        assert_eq!(a.events[0].detail["progress"], json!(40));
    }

    #[test]
    fn requeue_keeps_the_attempt() {
        let a = apply(&job(Running, 1, 5), &to(Queued), now()).unwrap();
        assert_eq!(a.job.attempt, 1);
        let b = apply(&a.job, &to(Running), now()).unwrap();
        assert_eq!(b.job.attempt, 2);
    }

    #[test]
    fn failure_records_the_error_and_leaves_budget() {
        let mut t = to(Failed);
        t.error_code = Some("E_IO".into());
        t.error_message = Some("disk full".into());
        let a = apply(&job(Running, 1, 3), &t, now()).unwrap();
        assert_eq!(a.job.status, Failed);
        assert_eq!(a.events.len(), 1);
        assert_eq!(a.job.last_error_code.as_deref(), Some("E_IO"));
        assert_eq!(a.job.last_error_message.as_deref(), Some("disk full"));
        assert_eq!(a.job.finished_at, Some(now()));
    }

    #[test]
    fn failing_the_last_attempt_dead_letters_in_the_same_step() {
        let mut t = to(Failed);
        t.error_message = Some("boom".into());
        let a = apply(&job(Running, 3, 3), &t, now()).unwrap();
        assert_eq!(a.job.status, DeadLetter);
        assert_eq!(a.events.len(), 2);
        assert_eq!(
            (a.events[0].prev_status, a.events[0].next_status),
            (Running, Failed)
        );
        assert_eq!(
            (a.events[1].prev_status, a.events[1].next_status),
            (Failed, DeadLetter)
        );
        assert_eq!(
            a.events[1].detail["reason"],
            json!("max_attempts_exhausted")
        );
        assert_eq!(a.events[1].attempt, 3);
        assert_eq!(a.job.finished_at, Some(now()));
        assert_eq!(a.job.last_error_message.as_deref(), Some("boom"));
    }

    #[test]
    fn retry_is_refused_once_the_budget_is_spent() {
        for target in [Queued, Running] {
            match apply(&job(Failed, 5, 5), &to(target), now()) {
                Err(LedgerError::AttemptsExhausted {
                    attempt,
                    max_attempts,
                    allowed,
                }) => {
                    assert_eq!((attempt, max_attempts), (5, 5));
                    assert_eq!(allowed, vec![Canceled, DeadLetter]);
                }
                other => panic!("expected AttemptsExhausted, got {other:?}"),
            }
        }
        // One attempt left: retry allowed.
        assert!(apply(&job(Failed, 4, 5), &to(Queued), now()).is_ok());
        // Cancel and bury are not retries.
        assert!(apply(&job(Failed, 5, 5), &to(Canceled), now()).is_ok());
        assert!(apply(&job(Failed, 5, 5), &to(DeadLetter), now()).is_ok());
    }

    #[test]
    fn redrive_gives_a_fresh_budget() {
        let a = apply(&job(DeadLetter, 5, 5), &to(Queued), now()).unwrap();
        assert_eq!(a.job.status, Queued);
        assert_eq!(a.job.attempt, 0);
        assert_eq!(a.job.finished_at, None);
        assert_eq!(a.events[0].attempt, 0);
        let started = apply(&a.job, &to(Running), now()).unwrap();
        assert_eq!(started.job.attempt, 1);
    }

    #[test]
    fn expected_status_is_a_compare_and_set() {
        let mut t = to(Running);
        t.expected_status = Some(Queued);
        assert!(apply(&job(Queued, 0, 5), &t, now()).is_ok());
        match apply(&job(Running, 1, 5), &t, now()) {
            Err(LedgerError::StatusMismatch { expected, actual }) => {
                assert_eq!((expected, actual), (Queued, Running))
            }
            other => panic!("expected StatusMismatch, got {other:?}"),
        }
    }

    #[test]
    fn attempt_is_a_fencing_token() {
        let mut t = to(Succeeded);
        t.attempt = Some(1);
        match apply(&job(Running, 2, 5), &t, now()) {
            Err(LedgerError::StaleAttempt { reported, current }) => {
                assert_eq!((reported, current), (1, 2))
            }
            other => panic!("expected StaleAttempt, got {other:?}"),
        }
        t.attempt = Some(2);
        assert!(apply(&job(Running, 2, 5), &t, now()).is_ok());
    }

    #[test]
    fn compare_and_set_is_checked_before_legality() {
        // Both wrong: the CAS failure (ABORTED) wins over the illegal pair.
        let mut t = to(Running);
        t.expected_status = Some(Queued);
        assert!(matches!(
            apply(&job(Succeeded, 1, 5), &t, now()),
            Err(LedgerError::StatusMismatch { .. })
        ));
    }

    #[test]
    fn success_keeps_the_result_and_the_event_carries_it() {
        let mut t = to(Succeeded);
        t.result = Some(json!({"rows": 3}));
        t.actor = Some("worker-1".into());
        t.detail.insert("host".into(), json!("h1"));
        let a = apply(&job(Running, 1, 5), &t, now()).unwrap();
        assert_eq!(a.job.result, Some(json!({"rows": 3})));
        let d = &a.events[0].detail;
        assert_eq!(d["result"], json!({"rows": 3}));
        assert_eq!(d["actor"], json!("worker-1"));
        assert_eq!(d["host"], json!("h1"));
    }
}
