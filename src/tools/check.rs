//! The invariant checker: SQL over the whole database that verifies what the ledger
//! promises about its rows (`jobledger check`, and the tests after every fault).
//!
//! The state machine's rules are not written here a second time: the legal
//! (prev, next) pairs and how each changes `attempt` are derived from
//! [`machine::TABLE`] and [`machine::apply`] and passed to SQL as arrays.

use std::fmt::Write as _;

use chrono::{TimeZone, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::ledger::{machine, Job, JobStatus, Transition};

/// The status of a job's creation event (the spec's "(create) → QUEUED" row).
const CREATED_STATUS: JobStatus = JobStatus::Queued;

/// How many example job ids a violated invariant reports.
pub const MAX_EXAMPLES: usize = 10;

/// Names of the invariants, as reported (stable: scripts and tests match on them).
pub mod names {
    pub const EVERY_JOB_HAS_AN_EVENT: &str = "every_job_has_an_event";
    pub const STATUS_IS_NEWEST_EVENT: &str = "status_is_newest_event";
    pub const FINISHED_AT_IFF_FINAL: &str = "finished_at_iff_final";
    pub const LEGAL_EVENT_CHAIN: &str = "legal_event_chain";
    pub const ATTEMPTS_AGREE_WITH_EVENTS: &str = "attempts_agree_with_events";
    pub const UNIQUE_IDEMPOTENCY_KEY: &str = "unique_idempotency_key";
    pub const LEASE_ONLY_WHILE_RUNNING: &str = "lease_only_while_running";
    pub const EXPIRED_LEASES_RESCUED: &str = "expired_leases_rescued";
    pub const RUN_AFTER_ONLY_WHILE_WAITING: &str = "run_after_only_while_waiting";
}

/// How long after its lease expired a RUNNING job may still be RUNNING before the
/// checker calls it a violation: the rescuer moves it within ~2 s (docs/dispatch.md);
/// the margin covers a replica restarting.
pub const DEFAULT_RESCUE_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// The outcome of one invariant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvariantResult {
    pub name: &'static str,
    pub description: &'static str,
    /// How many jobs violate it (0 = it holds).
    pub violations: i64,
    /// Up to [`MAX_EXAMPLES`] of those jobs, by id.
    pub examples: Vec<Uuid>,
}

impl InvariantResult {
    pub fn holds(&self) -> bool {
        self.violations == 0
    }
}

/// Every invariant's outcome, read from one snapshot of the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    pub ok: bool,
    pub jobs: i64,
    pub events: i64,
    pub invariants: Vec<InvariantResult>,
}

impl CheckReport {
    /// The result of the invariant called `name` (see [`names`]).
    pub fn invariant(&self, name: &str) -> Option<&InvariantResult> {
        self.invariants.iter().find(|i| i.name == name)
    }

    /// The invariants that do not hold.
    pub fn violated(&self) -> impl Iterator<Item = &InvariantResult> {
        self.invariants.iter().filter(|i| !i.holds())
    }

    /// A readable report, one line per invariant.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "checked {} invariants over {} jobs and {} events",
            self.invariants.len(),
            self.jobs,
            self.events
        );
        for i in &self.invariants {
            if i.holds() {
                let _ = writeln!(out, "  ok        {:<28} {}", i.name, i.description);
            } else {
                let _ = writeln!(
                    out,
                    "  VIOLATED  {:<28} {}\n            {} job{}, e.g. {}",
                    i.name,
                    i.description,
                    i.violations,
                    if i.violations == 1 { "" } else { "s" },
                    i.examples
                        .iter()
                        .map(Uuid::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        let violated = self.violated().count();
        if violated == 0 {
            out.push_str("all invariants hold\n");
        } else {
            let _ = writeln!(
                out,
                "{violated} invariant{} violated",
                if violated == 1 { "" } else { "s" }
            );
        }
        out
    }
}

/// A legal step of the state machine as SQL sees it: the pair, and the attempt an event
/// of that step carries, `attempt_keep * previous attempt + attempt_add`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowedStep {
    pub prev: JobStatus,
    pub next: JobStatus,
    pub attempt_keep: i32,
    pub attempt_add: i32,
}

/// Every pair of [`machine::TABLE`], with its attempt rule found by asking
/// [`machine::apply`] what it does to a job at attempts 1 and 2 (a budget large enough
/// that neither a retry refusal nor the automatic dead-lettering gets in the way).
pub fn allowed_steps() -> Vec<AllowedStep> {
    machine::TABLE
        .iter()
        .map(|&(prev, next, _)| {
            let a1 = attempt_after(prev, next, 1);
            let a2 = attempt_after(prev, next, 2);
            let attempt_keep = a2 - a1;
            AllowedStep {
                prev,
                next,
                attempt_keep,
                attempt_add: a1 - attempt_keep,
            }
        })
        .collect()
}

/// The attempt on the (first) event `apply` writes for `prev → next` from `attempt`.
fn attempt_after(prev: JobStatus, next: JobStatus, attempt: i32) -> i32 {
    let t0 = Utc.timestamp_opt(0, 0).unwrap();
    let job = Job::at_status(prev, attempt, i32::MAX, t0);
    let transition = Transition::to(Uuid::nil(), Uuid::nil(), next);
    let applied = machine::apply(&job, &transition, t0)
        .unwrap_or_else(|e| panic!("TABLE pair {prev}->{next} refused by apply: {e}"));
    applied.events[0].attempt
}

/// The job's events in (xid, seq) order, with their position and the previous event's
/// status and attempt. `imported` marks events the legacy import wrote (the old stack's
/// history, which did not follow the machine).
const ORDERED_EVENTS: &str = "
    ev AS (
        SELECT e.job_id, e.prev_status, e.next_status, e.attempt,
               coalesce(e.detail_json ->> 'imported' = 'true', false) AS imported,
               row_number() OVER w AS n,
               lag(e.next_status) OVER w AS before_status,
               lag(e.attempt) OVER w AS before_attempt
        FROM job_event e
        WINDOW w AS (PARTITION BY e.job_id ORDER BY e.xid, e.seq)
    ),
    allowed AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::int4[], $4::int4[])
            AS a(prev, next, keep, add)
    )";

/// One query per invariant, each selecting the ids of the jobs that violate it.
/// Parameters: $1..$4 the allowed steps, $5 the creation status, $6 the final statuses.
// Why long: one SQL statement per invariant, listed together.
fn invariants() -> [(&'static str, &'static str, String); 9] {
    [
        (
            names::EVERY_JOB_HAS_AN_EVENT,
            "every job has at least one event",
            "SELECT j.id FROM job j
             WHERE NOT EXISTS (SELECT 1 FROM job_event e WHERE e.job_id = j.id)"
                .into(),
        ),
        (
            names::STATUS_IS_NEWEST_EVENT,
            "job.status is the next_status of its newest event (by xid, seq)",
            "SELECT j.id FROM job j
             JOIN LATERAL (SELECT e.next_status FROM job_event e WHERE e.job_id = j.id
                           ORDER BY e.xid DESC, e.seq DESC LIMIT 1) newest ON true
             WHERE newest.next_status IS DISTINCT FROM j.status"
                .into(),
        ),
        (
            names::FINISHED_AT_IFF_FINAL,
            "finished_at is set iff the status is succeeded, failed, canceled or dead_letter",
            "SELECT j.id FROM job j
             WHERE (j.finished_at IS NOT NULL) <> (j.status = ANY($6::text[]))"
                .into(),
        ),
        (
            names::LEGAL_EVENT_CHAIN,
            "events form a legal path: created into queued (or imported), each prev_status \
             the previous next_status, each step allowed by the state machine",
            format!(
                "WITH {ORDERED_EVENTS}
                 SELECT DISTINCT ev.job_id FROM ev
                 LEFT JOIN allowed a ON a.prev = ev.prev_status AND a.next = ev.next_status
                 WHERE CASE WHEN ev.n = 1 THEN
                           NOT ev.imported
                           AND (ev.prev_status IS NOT NULL OR ev.next_status <> $5)
                       ELSE
                           ev.prev_status IS DISTINCT FROM ev.before_status
                           OR (NOT ev.imported AND a.prev IS NULL)
                       END"
            ),
        ),
        (
            names::ATTEMPTS_AGREE_WITH_EVENTS,
            "job.attempt is its newest event's; a creation event has attempt 0, entering \
             running adds 1, a redrive resets to 0, other steps keep it",
            format!(
                "WITH {ORDERED_EVENTS}
                 SELECT j.id FROM job j
                 JOIN LATERAL (SELECT e.attempt FROM job_event e
                               WHERE e.job_id = j.id AND e.attempt IS NOT NULL
                               ORDER BY e.xid DESC, e.seq DESC LIMIT 1) newest ON true
                 WHERE newest.attempt <> j.attempt
                 UNION
                 SELECT ev.job_id FROM ev
                 JOIN allowed a ON a.prev = ev.prev_status AND a.next = ev.next_status
                 WHERE ev.n > 1 AND NOT ev.imported
                   AND ev.attempt IS NOT NULL AND ev.before_attempt IS NOT NULL
                   AND ev.attempt <> ev.before_attempt * a.keep + a.add
                 UNION
                 SELECT ev.job_id FROM ev
                 WHERE ev.n = 1 AND NOT ev.imported AND ev.attempt <> 0"
            ),
        ),
        (
            names::UNIQUE_IDEMPOTENCY_KEY,
            "no two jobs share (org_id, idempotency_key)",
            "SELECT j.id FROM job j
             JOIN (SELECT org_id, idempotency_key FROM job
                   WHERE idempotency_key IS NOT NULL
                   GROUP BY org_id, idempotency_key HAVING count(*) > 1) dup
               ON dup.org_id = j.org_id AND dup.idempotency_key = j.idempotency_key"
                .into(),
        ),
        (
            names::LEASE_ONLY_WHILE_RUNNING,
            "lease_expires_at and lease_holder are set only on running jobs",
            "SELECT j.id FROM job j
             WHERE j.status <> 'running'
               AND (j.lease_expires_at IS NOT NULL OR j.lease_holder IS NOT NULL)"
                .into(),
        ),
        (
            names::EXPIRED_LEASES_RESCUED,
            "no running job's lease expired longer ago than the rescue window",
            "SELECT j.id FROM job j
             WHERE j.status = 'running'
               AND j.lease_expires_at < now() - make_interval(secs => $7 / 1000.0)"
                .into(),
        ),
        (
            names::RUN_AFTER_ONLY_WHILE_WAITING,
            "run_after is set only on queued and failed jobs",
            "SELECT j.id FROM job j
             WHERE j.run_after IS NOT NULL AND j.status NOT IN ('queued', 'failed')"
                .into(),
        ),
    ]
}

/// Runs every invariant over the whole database, in one read-only snapshot, with the
/// default rescue window.
pub async fn check(pool: &PgPool) -> Result<CheckReport, sqlx::Error> {
    check_with(pool, DEFAULT_RESCUE_WINDOW).await
}

/// Runs every invariant over the whole database, in one read-only snapshot: a RUNNING
/// job whose lease expired more than `rescue_window` ago is a violation.
pub async fn check_with(
    pool: &PgPool,
    rescue_window: std::time::Duration,
) -> Result<CheckReport, sqlx::Error> {
    let steps = allowed_steps();
    let prev: Vec<&str> = steps.iter().map(|s| s.prev.as_db_str()).collect();
    let next: Vec<&str> = steps.iter().map(|s| s.next.as_db_str()).collect();
    let keep: Vec<i32> = steps.iter().map(|s| s.attempt_keep).collect();
    let add: Vec<i32> = steps.iter().map(|s| s.attempt_add).collect();
    let finished: Vec<&str> = JobStatus::ALL
        .into_iter()
        .filter(|s| s.is_finished())
        .map(JobStatus::as_db_str)
        .collect();

    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let (jobs, events): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM job), (SELECT count(*) FROM job_event)")
            .fetch_one(&mut *tx)
            .await?;
    let mut results = Vec::new();
    for (name, description, query) in invariants() {
        // Every query gets all parameters, used or not (sqlx sends their types).
        let (violations, examples): (i64, Vec<Uuid>) = sqlx::query_as(&format!(
            "SELECT count(*), coalesce((array_agg(bad.id ORDER BY bad.id))[1:{MAX_EXAMPLES}],
                                       '{{}}')
             FROM ({query}) AS bad(id)"
        ))
        .bind(&prev)
        .bind(&next)
        .bind(&keep)
        .bind(&add)
        .bind(CREATED_STATUS.as_db_str())
        .bind(&finished)
        .bind(rescue_window.as_millis() as f64)
        .fetch_one(&mut *tx)
        .await?;
        results.push(InvariantResult {
            name,
            description,
            violations,
            examples,
        });
    }
    tx.rollback().await?;
    Ok(CheckReport {
        ok: results.iter().all(InvariantResult::holds),
        jobs,
        events,
        invariants: results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobStatus::*;

    fn rule(prev: JobStatus, next: JobStatus) -> (i32, i32) {
        let s = allowed_steps()
            .into_iter()
            .find(|s| (s.prev, s.next) == (prev, next))
            .unwrap_or_else(|| panic!("{prev}->{next} not allowed"));
        (s.attempt_keep, s.attempt_add)
    }

    #[test]
    fn every_table_pair_is_allowed_and_nothing_else() {
        let steps = allowed_steps();
        assert_eq!(steps.len(), machine::TABLE.len());
        for (prev, next, _) in machine::TABLE {
            assert!(steps.iter().any(|s| (s.prev, s.next) == (*prev, *next)));
        }
    }

    #[test]
    fn attempt_rules_follow_apply() {
        // Entering RUNNING from another status counts an attempt.
        assert_eq!(rule(Queued, Running), (1, 1));
        assert_eq!(rule(Failed, Running), (1, 1));
        // A progress report does not.
        assert_eq!(rule(Running, Running), (1, 0));
        // A redrive resets.
        assert_eq!(rule(DeadLetter, Queued), (0, 0));
        // Everything else keeps it.
        for (prev, next) in [
            (Running, Queued),
            (Running, Failed),
            (Running, Succeeded),
            (Failed, DeadLetter),
            (Failed, Queued),
            (Queued, Canceled),
        ] {
            assert_eq!(rule(prev, next), (1, 0), "{prev}->{next}");
        }
    }
}
