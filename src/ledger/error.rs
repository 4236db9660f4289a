//! The one error type of the ledger. The API layer maps each variant to a gRPC status
//! in exactly one place (`api::error`); the store turns SQLSTATEs into these.

use uuid::Uuid;

use super::JobStatus;

/// A field that failed validation: `field` is the request field path (`params.a.b`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LedgerError {
    #[error("invalid request: {}", summarize(.0))]
    InvalidArgument(Vec<FieldViolation>),

    #[error("job {job_id} not found")]
    NotFound { job_id: Uuid },

    #[error("cannot move a job from {from} to {to}")]
    InvalidTransition {
        from: JobStatus,
        to: JobStatus,
        allowed: Vec<JobStatus>,
    },

    #[error("job has used all {max_attempts} attempts; redrive it from DEAD_LETTER or cancel it")]
    AttemptsExhausted {
        attempt: i32,
        max_attempts: i32,
        allowed: Vec<JobStatus>,
    },

    #[error("job is {actual}, not the expected {expected}")]
    StatusMismatch {
        expected: JobStatus,
        actual: JobStatus,
    },

    #[error("attempt {reported} is stale: the job is on attempt {current}")]
    StaleAttempt { reported: i32, current: i32 },

    /// A report or heartbeat of a worker whose job is no longer RUNNING (canceled,
    /// rescued, handed back): the worker must stop.
    #[error("job is {status}, no longer RUNNING: stop working on it")]
    JobNotRunning { status: JobStatus },

    #[error("idempotency key already used by job {job_id} with a different type or params")]
    IdempotencyKeyReused { job_id: Uuid },

    #[error("request_id already applied to this job with a different to_status")]
    RequestIdReused { job_id: Uuid },

    #[error("cursor {cursor:?} is not one this ledger can resume from")]
    CursorOutOfRange { cursor: String },

    #[error("too many open event streams on this server ({limit}); retry later or elsewhere")]
    TooManyStreams { limit: usize },

    #[error("too many claims waiting on this server ({limit}); retry later or elsewhere")]
    TooManyWaitingClaims { limit: usize },

    #[error("server shutting down; resume from the last cursor received")]
    ShuttingDown,

    /// The caller's deadline passed while the database was still working for it; the
    /// database work was cancelled and nothing was written.
    #[error("the call's deadline passed before the database finished; nothing was written")]
    DeadlineExceeded,

    #[error("database unavailable, retry later")]
    Unavailable { cause: String },

    /// A bug. The cause is logged, never sent to clients.
    #[error("internal error")]
    Internal { cause: String },
}

fn summarize(v: &[FieldViolation]) -> String {
    v.iter()
        .map(|f| format!("{}: {}", f.field, f.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl LedgerError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        LedgerError::InvalidArgument(vec![FieldViolation {
            field: field.into(),
            description: description.into(),
        }])
    }
}
