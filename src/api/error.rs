//! The one place a ledger error becomes a gRPC status. Every status carries an
//! ErrorInfo (domain `jobledger`, an UPPER_SNAKE reason); messages never contain SQL.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::ledger::{JobStatus, LedgerError};

pub const DOMAIN: &str = "jobledger";

fn names(list: &[JobStatus]) -> String {
    list.iter()
        .map(|s| s.api_name())
        .collect::<Vec<_>>()
        .join(",")
}

/// A status with an ErrorInfo and whatever other details the caller added.
pub fn status_with(
    code: Code,
    message: impl Into<String>,
    reason: &str,
    metadata: HashMap<String, String>,
    mut details: ErrorDetails,
) -> Status {
    details.set_error_info(reason, DOMAIN, metadata);
    Status::with_error_details(code, message, details)
}

fn meta<const N: usize>(pairs: [(&str, String); N]) -> HashMap<String, String> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

impl From<LedgerError> for Status {
    fn from(err: LedgerError) -> Status {
        let message = err.to_string();
        let mut details = ErrorDetails::new();
        let (code, reason, metadata) = match err {
            LedgerError::InvalidArgument(violations) => {
                for v in violations {
                    details.add_bad_request_violation(v.field, v.description);
                }
                (Code::InvalidArgument, "INVALID_ARGUMENT", HashMap::new())
            }
            LedgerError::NotFound { job_id } => (
                Code::NotFound,
                "JOB_NOT_FOUND",
                meta([("job_id", job_id.to_string())]),
            ),
            LedgerError::InvalidTransition { from, to, allowed } => {
                precondition_violations(&mut details, from, &allowed);
                (
                    Code::FailedPrecondition,
                    "INVALID_TRANSITION",
                    meta([
                        ("from", from.api_name().to_owned()),
                        ("to", to.api_name().to_owned()),
                        ("allowed", names(&allowed)),
                    ]),
                )
            }
            LedgerError::AttemptsExhausted {
                attempt,
                max_attempts,
                allowed,
            } => {
                precondition_violations(&mut details, JobStatus::Failed, &allowed);
                (
                    Code::FailedPrecondition,
                    "MAX_ATTEMPTS_EXHAUSTED",
                    meta([
                        ("attempt", attempt.to_string()),
                        ("max_attempts", max_attempts.to_string()),
                        ("allowed", names(&allowed)),
                    ]),
                )
            }
            LedgerError::StatusMismatch { expected, actual } => (
                Code::Aborted,
                "STATUS_MISMATCH",
                meta([
                    ("expected_status", expected.api_name().to_owned()),
                    ("status", actual.api_name().to_owned()),
                ]),
            ),
            LedgerError::StaleAttempt { reported, current } => (
                Code::Aborted,
                "STALE_ATTEMPT",
                meta([
                    ("attempt", reported.to_string()),
                    ("current_attempt", current.to_string()),
                ]),
            ),
            LedgerError::IdempotencyKeyReused { job_id } => (
                Code::AlreadyExists,
                "IDEMPOTENCY_KEY_REUSED",
                meta([("job_id", job_id.to_string())]),
            ),
            LedgerError::RequestIdReused { job_id } => (
                Code::AlreadyExists,
                "REQUEST_ID_REUSED",
                meta([("job_id", job_id.to_string())]),
            ),
            LedgerError::CursorOutOfRange { cursor } => (
                Code::OutOfRange,
                "CURSOR_OUT_OF_RANGE",
                meta([("cursor", cursor)]),
            ),
            LedgerError::TooManyStreams { limit } => (
                Code::ResourceExhausted,
                "TOO_MANY_STREAMS",
                meta([("limit", limit.to_string())]),
            ),
            LedgerError::ShuttingDown => {
                details.set_retry_info(Some(std::time::Duration::from_millis(100)));
                (Code::Unavailable, "SHUTTING_DOWN", HashMap::new())
            }
            LedgerError::DeadlineExceeded => {
                (Code::DeadlineExceeded, "DEADLINE_EXCEEDED", HashMap::new())
            }
            LedgerError::Unavailable { cause } => {
                tracing::warn!(%cause, "database unavailable");
                details.set_retry_info(Some(std::time::Duration::from_millis(500)));
                (Code::Unavailable, "DATABASE_UNAVAILABLE", HashMap::new())
            }
            LedgerError::Internal { cause } => {
                tracing::error!(%cause, "internal error");
                (Code::Internal, "INTERNAL", HashMap::new())
            }
        };
        status_with(code, message, reason, metadata, details)
    }
}

/// A ledger error as the `google.rpc.Status` message a CreateJobs entry carries: the
/// code, message and details (ErrorInfo, BadRequest, ...) that a call of its own would
/// have failed with.
pub fn entry_status(err: LedgerError) -> tonic_types::Status {
    let status = Status::from(err);
    // `Status::with_error_details` encodes exactly this message as the details.
    prost::Message::decode(status.details()).unwrap_or_else(|_| tonic_types::Status {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details: Vec::new(),
    })
}

/// One PreconditionFailure violation per allowed next status (type `STATUS`), or one
/// saying the status is final.
fn precondition_violations(details: &mut ErrorDetails, from: JobStatus, allowed: &[JobStatus]) {
    if allowed.is_empty() {
        details.add_precondition_failure_violation(
            "STATUS",
            from.api_name(),
            format!("{from} is final: no transition leaves it"),
        );
    }
    for s in allowed {
        details.add_precondition_failure_violation(
            "STATUS",
            s.api_name(),
            format!("allowed next status from {from}"),
        );
    }
}
