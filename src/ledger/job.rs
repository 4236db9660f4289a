//! Jobs, their events, and the validated inputs that create and move them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::JobStatus;

/// The org used when authentication is off and a request names none.
pub const DEFAULT_ORG: Uuid = Uuid::nil();

/// A job as stored: the row of `job`, including the compatibility view
/// (`stage`, `progress`, `result`, `last_error_*`) kept current by every transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: Uuid,
    pub org_id: Uuid,
    pub job_type: String,
    pub status: JobStatus,
    pub attempt: i32,
    pub max_attempts: i32,
    pub priority: i32,
    pub idempotency_key: Option<String>,
    pub requested_by: Option<String>,
    pub params: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_error_code: Option<String>,
    pub last_error_message: Option<String>,
    pub stage: Option<String>,
    pub progress: Option<i32>,
    pub result: Option<Value>,
    /// QUEUED/FAILED: not claimable before this instant (None: at once).
    #[serde(default)]
    pub run_after: Option<DateTime<Utc>>,
    /// The lease of a RUNNING job (None: no lease).
    #[serde(default)]
    pub lease: Option<Lease>,
    #[serde(default)]
    pub retry: RetryPolicy,
}

/// Who holds a RUNNING job, until when, and the length a heartbeat extends it by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub expires_at: DateTime<Utc>,
    /// The worker that holds it ("" when the start that set it named no actor).
    pub holder: Option<String>,
    /// Its length in milliseconds.
    pub ms: i32,
}

/// A job's backoff between attempts; None: the server's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub initial_backoff_ms: Option<i64>,
    pub max_backoff_ms: Option<i64>,
}

/// One row of `job_event`. `(xid, seq)` orders events (see `Cursor`).
#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent {
    pub id: Uuid,
    pub job_id: Uuid,
    pub org_id: Uuid,
    pub ts: DateTime<Utc>,
    pub prev_status: Option<JobStatus>,
    pub next_status: JobStatus,
    pub attempt: i32,
    pub detail: Option<Value>,
    pub seq: i64,
    /// The id of the transaction that wrote the event.
    pub xid: i64,
}

/// An event decided by the state machine, not yet written.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub prev_status: JobStatus,
    pub next_status: JobStatus,
    pub attempt: i32,
    pub detail: Map<String, Value>,
}

/// A validated CreateJob.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub org_id: Uuid,
    pub job_type: String,
    pub priority: i32,
    pub idempotency_key: Option<String>,
    pub requested_by: Option<String>,
    pub max_attempts: i32,
    pub params: Option<Value>,
    /// Not claimable before this instant.
    pub run_after: Option<DateTime<Utc>>,
    pub retry: RetryPolicy,
}

/// A validated TransitionJob.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub org_id: Uuid,
    pub job_id: Uuid,
    pub to: JobStatus,
    pub expected_status: Option<JobStatus>,
    pub attempt: Option<i32>,
    pub stage: Option<String>,
    pub progress: Option<i32>,
    pub result: Option<Value>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// Free-form detail from the client; never contains a reserved key.
    pub detail: Map<String, Value>,
    pub actor: Option<String>,
    pub request_id: Option<String>,
    /// Into RUNNING: the lease, in milliseconds (the holder is the actor of a start).
    pub lease_ms: Option<i32>,
    /// Into FAILED: claimable again after this many milliseconds (instead of the backoff).
    pub retry_after_ms: Option<i64>,
}

impl Transition {
    /// A bare move of `job_id` to `to`: no compare-and-set, no fencing, nothing reported.
    pub fn to(org_id: Uuid, job_id: Uuid, to: JobStatus) -> Transition {
        Transition {
            org_id,
            job_id,
            to,
            expected_status: None,
            attempt: None,
            stage: None,
            progress: None,
            result: None,
            error_code: None,
            error_message: None,
            detail: Map::new(),
            actor: None,
            request_id: None,
            lease_ms: None,
            retry_after_ms: None,
        }
    }
}

impl Job {
    /// A job in `status` at `attempt` of `max_attempts`, created and last changed `at`,
    /// with nothing else set: what the state machine's rules are checked against.
    pub fn at_status(status: JobStatus, attempt: i32, max_attempts: i32, at: DateTime<Utc>) -> Job {
        Job {
            id: Uuid::nil(),
            org_id: DEFAULT_ORG,
            job_type: String::new(),
            status,
            attempt,
            max_attempts,
            priority: 0,
            idempotency_key: None,
            requested_by: None,
            params: None,
            created_at: at,
            updated_at: at,
            started_at: None,
            finished_at: status.is_finished().then_some(at),
            last_error_code: None,
            last_error_message: None,
            stage: None,
            progress: None,
            result: None,
            run_after: None,
            lease: None,
            retry: RetryPolicy::default(),
        }
    }
}
