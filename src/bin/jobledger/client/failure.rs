//! Why a command failed: the exit code, and the error as a person or a script reads it.

use std::{io::Write, process::ExitCode};

use jobledger::proto::code_name;
use serde_json::{json, Value};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::{clean, connect::chain, exit, Output};

/// Why a command failed; decides the exit code.
#[derive(Debug)]
pub enum Failure {
    /// The command line cannot work (exit 1), found before any call.
    Usage(String),
    /// The server could not be reached (exit 2).
    Connect(String),
    /// The server answered with an error (exit 3).
    Rpc(Status),
    /// `watch`: the job ended in this status, not SUCCEEDED (exit 5).
    NotSucceeded { job_id: String, status: String },
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => exit::INVALID_ARGUMENTS,
            Failure::Connect(_) => exit::CONNECTION_FAILED,
            Failure::Rpc(_) => exit::RPC_FAILED,
            Failure::NotSucceeded { .. } => exit::JOB_NOT_SUCCEEDED,
        }
    }

    /// Prints the failure on stderr (as text, or as `{"error": {...}}` with
    /// `--output json`) and returns the exit code.
    pub fn report(self, output: Output) -> ExitCode {
        let code = self.exit_code();
        let text = match output {
            Output::Json => {
                let mut error = match &self {
                    Failure::Rpc(status) => status_json(status),
                    Failure::NotSucceeded { job_id, status } => {
                        json!({"job_id": job_id, "status": status})
                    }
                    _ => json!({}),
                };
                error["message"] = Value::String(self.message());
                error["exit_code"] = json!(code);
                json!({ "error": error }).to_string()
            }
            Output::Table => match &self {
                Failure::Rpc(status) => status_text(status),
                _ => format!("error: {}", self.message()),
            },
        };
        let _ = writeln!(std::io::stderr(), "{text}");
        ExitCode::from(code)
    }

    fn message(&self) -> String {
        match self {
            Failure::Usage(m) | Failure::Connect(m) => m.clone(),
            Failure::Rpc(s) => s.message().to_owned(),
            Failure::NotSucceeded { job_id, status } => {
                format!("job {job_id} ended {status}, not SUCCEEDED")
            }
        }
    }
}

impl From<Status> for Failure {
    /// A status tonic made from a transport error (it has a source; the server's own
    /// statuses have none) means the call never reached the server: a connection
    /// failure, e.g. a TLS handshake the server refused after connect.
    fn from(status: Status) -> Failure {
        match (status.code(), std::error::Error::source(&status)) {
            (Code::Unavailable | Code::Unknown | Code::Cancelled, Some(source)) => {
                Failure::Connect(format!(
                    "the connection to the server failed: {}: {}",
                    status.message(),
                    chain(source)
                ))
            }
            _ => Failure::Rpc(status),
        }
    }
}

/// `error: CODE: message`, then the details a person acts on: the bad fields, the
/// failed preconditions, the ErrorInfo reason and metadata, when to retry.
fn status_text(status: &Status) -> String {
    let mut text = format!(
        "error: {}: {}",
        code_name(status.code()),
        clean(status.message())
    );
    let details = status.get_error_details();
    if let Some(bad) = details.bad_request() {
        for v in &bad.field_violations {
            text.push_str(&format!(
                "\n  field {}: {}",
                clean(&v.field),
                clean(&v.description)
            ));
        }
    }
    if let Some(failure) = details.precondition_failure() {
        for v in &failure.violations {
            text.push_str(&format!(
                "\n  precondition {} {}: {}",
                clean(&v.r#type),
                clean(&v.subject),
                clean(&v.description)
            ));
        }
    }
    if let Some(info) = details.error_info() {
        text.push_str(&format!("\n  reason: {}", clean(&info.reason)));
        let mut metadata: Vec<_> = info.metadata.iter().collect();
        metadata.sort();
        if !metadata.is_empty() {
            let pairs: Vec<String> = metadata
                .iter()
                .map(|(k, v)| format!("{}={}", clean(k), clean(v)))
                .collect();
            text.push_str(&format!(" ({})", pairs.join(", ")));
        }
    }
    if let Some(delay) = details.retry_info().and_then(|r| r.retry_delay) {
        text.push_str(&format!("\n  retry after {} ms", delay.as_millis()));
    }
    text
}

fn status_json(status: &Status) -> Value {
    let details = status.get_error_details();
    let mut error = json!({"code": code_name(status.code())});
    if let Some(info) = details.error_info() {
        error["reason"] = json!(info.reason);
        error["domain"] = json!(info.domain);
        error["metadata"] = json!(info.metadata);
    }
    if let Some(bad) = details.bad_request() {
        error["field_violations"] = bad
            .field_violations
            .iter()
            .map(|v| json!({"field": v.field, "description": v.description}))
            .collect();
    }
    if let Some(failure) = details.precondition_failure() {
        error["precondition_violations"] = failure
            .violations
            .iter()
            .map(|v| json!({"type": v.r#type, "subject": v.subject, "description": v.description}))
            .collect();
    }
    if let Some(delay) = details.retry_info().and_then(|r| r.retry_delay) {
        error["retry_delay_ms"] = json!(delay.as_millis() as u64);
    }
    error
}
