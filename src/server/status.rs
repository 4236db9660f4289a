//! Every gRPC status the server sends is built here: the ledger's errors, the refusals
//! of authentication and load shedding, the answers tonic gives by itself to
//! malformed calls, and the HTTP API's own refusals (a body that is not JSON or too
//! large, an unknown route or method). Every status carries an ErrorInfo (domain
//! `jobledger`, an UPPER_SNAKE reason); messages never contain SQL. [`json`] turns a
//! status into the HTTP API's answer: the mapped HTTP status and a google.rpc.Status body.

pub(crate) mod json;

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use uuid::Uuid;

use super::auth::{AuthError, Refusal};
use crate::ledger::{JobStatus, LedgerError};

pub const DOMAIN: &str = "jobledger";

fn names(list: &[JobStatus]) -> String {
    list.iter()
        .map(|s| s.api_name())
        .collect::<Vec<_>>()
        .join(",")
}

/// A status with an ErrorInfo and whatever other details the caller added.
fn status_with(
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
    // Why long: the mapping table, one arm per error: code, reason, metadata, details.
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
            LedgerError::JobNotRunning { status } => (
                Code::FailedPrecondition,
                "JOB_NOT_RUNNING",
                meta([("status", status.api_name().to_owned())]),
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
            LedgerError::TooManyWaitingClaims { limit } => (
                Code::ResourceExhausted,
                "TOO_MANY_WAITING_CLAIMS",
                meta([("limit", limit.to_string())]),
            ),
            LedgerError::ShuttingDown => {
                details.set_retry_info(Some(Duration::from_millis(100)));
                (Code::Unavailable, "SHUTTING_DOWN", HashMap::new())
            }
            LedgerError::DeadlineExceeded => {
                (Code::DeadlineExceeded, "DEADLINE_EXCEEDED", HashMap::new())
            }
            LedgerError::Unavailable { cause } => {
                tracing::warn!(%cause, "database unavailable");
                details.set_retry_info(Some(Duration::from_millis(500)));
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

impl From<AuthError> for Status {
    fn from(err: AuthError) -> Status {
        match err {
            AuthError::Refused(refusal) => unauthenticated(refusal),
            AuthError::OrgMismatch {
                named,
                token_org,
                entry,
            } => org_mismatch(named, token_org, entry),
            AuthError::WorkerScopeRequired => status_with(
                Code::PermissionDenied,
                "a claim of every org (all_orgs) needs a worker's token (the worker scope, \
                 --auth-worker-scope)",
                "WORKER_SCOPE_REQUIRED",
                HashMap::new(),
                ErrorDetails::new(),
            ),
        }
    }
}

fn unauthenticated(refusal: Refusal) -> Status {
    status_with(
        Code::Unauthenticated,
        refusal.message,
        refusal.reason,
        HashMap::new(),
        ErrorDetails::new(),
    )
}

fn org_mismatch(named: Uuid, token_org: Uuid, entry: Option<(&str, usize)>) -> Status {
    let mut metadata = HashMap::from([
        ("org_id".to_owned(), named.to_string()),
        ("authenticated_org_id".to_owned(), token_org.to_string()),
    ]);
    let message = match entry {
        Some((field, i)) => {
            metadata.insert("entry".to_owned(), i.to_string());
            format!("{field}[{i}]: the credentials are for org {token_org}, not {named}")
        }
        None => format!("the credentials are for org {token_org}, not {named}"),
    };
    status_with(
        Code::PermissionDenied,
        message,
        "ORG_MISMATCH",
        metadata,
        ErrorDetails::new(),
    )
}

/// The answer of `--max-inflight-requests` to a call past the cap.
pub fn too_many_requests(limit: usize) -> Status {
    let mut details = ErrorDetails::new();
    details.set_retry_info(Some(Duration::from_secs(1)));
    status_with(
        Code::ResourceExhausted,
        format!(
            "the server is handling its maximum of {limit} calls (--max-inflight-requests); \
             retry later"
        ),
        "TOO_MANY_REQUESTS",
        meta([("limit", limit.to_string())]),
        details,
    )
}

/// The ErrorInfo reason of a body over `--max-request-bytes` (HTTP 413, not 429).
pub const REQUEST_TOO_LARGE: &str = "REQUEST_TOO_LARGE";
/// The ErrorInfo reason of a known path asked with another method (HTTP 405).
pub const METHOD_NOT_ALLOWED: &str = "METHOD_NOT_ALLOWED";

/// An HTTP request body that is not JSON (or not all of it).
pub fn malformed_json(description: &str) -> Status {
    status_with(
        Code::InvalidArgument,
        format!("the body is not valid JSON: {description}"),
        "MALFORMED_JSON",
        HashMap::new(),
        ErrorDetails::new(),
    )
}

/// An HTTP request body larger than `--max-request-bytes`.
pub fn body_too_large(limit: usize) -> Status {
    status_with(
        Code::ResourceExhausted,
        format!("the request body is larger than the limit of {limit} bytes (--max-request-bytes)"),
        REQUEST_TOO_LARGE,
        meta([("limit", limit.to_string())]),
        ErrorDetails::new(),
    )
}

/// A path the HTTP API does not have.
pub fn route_not_found(path: &str) -> Status {
    status_with(
        Code::NotFound,
        format!("no route {path} (GET /openapi.json lists them)"),
        "ROUTE_NOT_FOUND",
        HashMap::new(),
        ErrorDetails::new(),
    )
}

/// A path of the HTTP API asked with a method it does not take; `allowed` lists the
/// ones it does (`GET, POST`), which the answer's `Allow` header repeats.
pub fn method_not_allowed(method: &str, path: &str, allowed: &str) -> Status {
    status_with(
        Code::Unimplemented,
        format!("{path} does not take {method}; it takes {allowed}"),
        METHOD_NOT_ALLOWED,
        meta([("allowed", allowed.to_owned())]),
        ErrorDetails::new(),
    )
}

/// The caller's deadline (`grpc-timeout`, `?timeout=`) passed before the answer.
pub fn deadline_exceeded() -> Status {
    Status::from(LedgerError::DeadlineExceeded)
}

/// A bad value of an HTTP request: a query parameter, a path segment, a header.
pub fn invalid_field(field: &str, description: impl Into<String>) -> Status {
    Status::from(LedgerError::invalid(field, description))
}

/// What cannot happen: the in-process call failed outside any status, or a response of
/// the service did not print as JSON. Logged; the client sees INTERNAL (a bug).
pub fn http_bug(what: &str) -> Status {
    Status::from(LedgerError::Internal {
        cause: what.to_owned(),
    })
}

/// tonic answers some client mistakes itself, before any handler runs: a body that is
/// not valid protobuf or holds no message (INTERNAL), a message over the size limit
/// (OUT_OF_RANGE), an unknown method (UNIMPLEMENTED without details). Clients caused
/// them, so they become INVALID_ARGUMENT, RESOURCE_EXHAUSTED and UNIMPLEMENTED with the
/// ErrorInfo every jobledger error carries, and without the decoder's internals. A
/// Struct nested past the decoder's recursion limit names its field in a BadRequest.
pub fn client_errors_are_not_internal<B: Default>(
    response: http::Response<B>,
) -> http::Response<B> {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    let has_details = response.headers().contains_key("grpc-status-details-bin");
    let Some(replacement) = replacement(&status, has_details) else {
        return response;
    };
    let (mut parts, body) = response.into_parts();
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        parts.headers.remove(name);
    }
    // On the (impossible) failure to encode, the original headers are gone; the
    // response then carries no status, which clients read as UNKNOWN, not INTERNAL.
    let _ = replacement.add_header(&mut parts.headers);
    http::Response::from_parts(parts, body)
}

/// What a client should get instead of tonic's own answer, if anything.
fn replacement(status: &Status, has_details: bool) -> Option<Status> {
    let mut details = ErrorDetails::new();
    let (code, reason, message) = match status.code() {
        Code::Internal
            if status
                .message()
                .starts_with("failed to decode Protobuf message") =>
        {
            match too_deep_field(status.message()) {
                Some(field) => {
                    details.add_bad_request_violation(&field, "nests too deeply");
                    (
                        Code::InvalidArgument,
                        "INVALID_ARGUMENT",
                        format!("invalid request: {field}: nests too deeply"),
                    )
                }
                None => (
                    Code::InvalidArgument,
                    "MALFORMED_REQUEST",
                    "the request is not a valid protobuf message of this method's type".to_owned(),
                ),
            }
        }
        Code::Internal if status.message() == "Missing request message." => (
            Code::InvalidArgument,
            "MALFORMED_REQUEST",
            "the call carried no request message".to_owned(),
        ),
        // The router's answer for a method this server does not have.
        Code::Unimplemented if !has_details => (
            Code::Unimplemented,
            "METHOD_NOT_FOUND",
            "no such method on this server".to_owned(),
        ),
        Code::OutOfRange if status.message().contains("message length too large") => (
            Code::ResourceExhausted,
            "REQUEST_TOO_LARGE",
            status.message().trim_start_matches("Error, ").to_owned(),
        ),
        _ => return None,
    };
    Some(status_with(code, message, reason, HashMap::new(), details))
}

/// The request field whose value hit prost's recursion limit: prost lists the path
/// innermost first (`Struct.fields: ...: CreateJobRequest.params: recursion limit
/// reached`), so the outermost field is the last segment.
fn too_deep_field(message: &str) -> Option<String> {
    let path = message.strip_suffix(": recursion limit reached")?;
    let outermost = path.rsplit(": ").next()?;
    let (_, field) = outermost.rsplit_once('.')?;
    Some(field.to_owned())
}

#[cfg(test)]
mod tests {
    use super::too_deep_field;

    #[test]
    fn the_outermost_field_of_a_too_deep_message_is_named() {
        let m = "failed to decode Protobuf message: Struct.fields: Value.kind: Struct.fields: \
                 TransitionJobRequest.detail: recursion limit reached";
        assert_eq!(too_deep_field(m).as_deref(), Some("detail"));
        assert_eq!(
            too_deep_field("failed to decode Protobuf message: invalid wire type"),
            None
        );
    }
}
