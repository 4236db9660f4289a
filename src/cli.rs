//! Client commands for a person at a terminal, for scripts and for container health
//! checks: `jobledger job create|get|list|count|transition|cancel|watch` and
//! `jobledger health`. Aligned tables by default; `--output json` prints the RPC's
//! response as JSON (the proto's field names). Exit codes are grpc-health-probe's
//! (docs/cli.md): 0 done, 1 invalid arguments, 2 connection failed, 3 RPC failed,
//! 4 not serving; `watch` exits 5 when the job ends without succeeding.

use std::{
    ffi::OsString,
    io::{IsTerminal, Write},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Map, Value};
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
    Code, Request, Status,
};
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};
use tonic_types::StatusExt;

use crate::api::convert::{json_to_struct, status_to_proto};
use crate::config::Secret;
use crate::ledger::{JobStatus, Limits, Violations};
use crate::proto::{self, job_ledger_client::JobLedgerClient};

/// Exit codes: grpc-health-probe's, plus `JOB_NOT_SUCCEEDED` for `job watch`.
pub mod exit {
    pub const SERVING: u8 = 0;
    /// Invalid command line: an unknown flag, a bad value, an unreadable file.
    pub const INVALID_ARGUMENTS: u8 = 1;
    pub const CONNECTION_FAILED: u8 = 2;
    pub const RPC_FAILED: u8 = 3;
    pub const NOT_SERVING: u8 = 4;
    /// `job watch`: the job ended CANCELED or DEAD_LETTER.
    pub const JOB_NOT_SUCCEEDED: u8 = 5;
}

/// clap exits 2 on a usage error, but for `health` and `job` 2 means "connection
/// failed": there a usage error exits 1 (grpc-health-probe's "invalid arguments").
/// Other subcommands keep clap's behaviour. Help and version still exit 0.
pub fn exit_on_parse_error(error: clap::Error) -> ! {
    if error.use_stderr() && is_client_command(std::env::args_os()) {
        let _ = error.print();
        std::process::exit(exit::INVALID_ARGUMENTS.into());
    }
    error.exit()
}

/// Whether the first subcommand of a command line is `job` or `health`.
fn is_client_command(args: impl IntoIterator<Item = OsString>) -> bool {
    let mut args = args.into_iter().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy();
        if arg == "--log-format" {
            args.next();
        } else if !arg.starts_with('-') {
            return arg == "job" || arg == "health";
        }
    }
    false
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned tables and `key  value` lines, for people.
    Table,
    /// The RPC's response as JSON (the proto's field names; statuses without the
    /// `JOB_STATUS_` prefix); `watch` prints one event per line.
    Json,
}

/// Where the server is and how to reach it. Shared by `health` and `job`.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// The server's address: http://HOST:PORT, or https://HOST:PORT for TLS.
    #[arg(
        id = "client_addr",
        long = "addr",
        value_name = "URL",
        env = "JOBLEDGER_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub addr: String,
    /// Give up on connecting, and on each call, after this many milliseconds (`watch`:
    /// connecting only; the stream runs until the job ends).
    #[arg(id = "client_timeout_ms", long = "timeout-ms", value_name = "MS", env = "JOBLEDGER_TIMEOUT_MS", default_value_t = 5000, global = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
    /// PEM file of the CA certificate(s) that signed the server's certificate. Required
    /// with an https:// --addr (this build does not read the system's trust store).
    #[arg(
        id = "client_tls_ca_file",
        long = "tls-ca-file",
        value_name = "PEM_FILE",
        env = "JOBLEDGER_CLIENT_TLS_CA_FILE",
        global = true,
        help_heading = "TLS"
    )]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM file of a client certificate, for servers that require one (mutual TLS).
    /// Needs --tls-key-file.
    #[arg(
        id = "client_tls_cert_file",
        long = "tls-cert-file",
        value_name = "PEM_FILE",
        env = "JOBLEDGER_CLIENT_TLS_CERT_FILE",
        requires = "client_tls_key_file",
        global = true,
        help_heading = "TLS"
    )]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM file of the private key of --tls-cert-file.
    #[arg(
        id = "client_tls_key_file",
        long = "tls-key-file",
        value_name = "PEM_FILE",
        env = "JOBLEDGER_CLIENT_TLS_KEY_FILE",
        requires = "client_tls_cert_file",
        global = true,
        help_heading = "TLS"
    )]
    pub tls_key_file: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not --addr's host
    /// (e.g. connecting to an IP address).
    #[arg(
        id = "client_tls_server_name",
        long = "tls-server-name",
        value_name = "NAME",
        env = "JOBLEDGER_CLIENT_TLS_SERVER_NAME",
        global = true,
        help_heading = "TLS"
    )]
    pub tls_server_name: Option<String>,
}

impl ServerArgs {
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The endpoint, TLS configured from the flags. Bad flags or files: `Usage`.
    fn endpoint(&self) -> Result<Endpoint, Failure> {
        let endpoint = Endpoint::from_shared(self.addr.clone()).map_err(|e| {
            Failure::Usage(format!(
                "--addr {:?} is not a URI like http://127.0.0.1:50051: {e}",
                self.addr
            ))
        })?;
        let scheme = endpoint.uri().scheme_str().unwrap_or("");
        if scheme != "http" && scheme != "https" {
            return Err(Failure::Usage(format!(
                "--addr {:?} must start with http:// or https://",
                self.addr
            )));
        }
        let tls_flag = [
            (self.tls_ca_file.is_some(), "--tls-ca-file"),
            (self.tls_cert_file.is_some(), "--tls-cert-file"),
            (self.tls_server_name.is_some(), "--tls-server-name"),
        ]
        .into_iter()
        .find_map(|(set, name)| set.then_some(name));
        if scheme == "http" {
            if let Some(flag) = tls_flag {
                return Err(Failure::Usage(format!(
                    "{flag} needs an https:// --addr (got {})",
                    self.addr
                )));
            }
            return Ok(endpoint);
        }
        let Some(ca_file) = &self.tls_ca_file else {
            return Err(Failure::Usage(format!(
                "--addr {} uses TLS: give the CA that signed the server's certificate with \
                 --tls-ca-file (this build does not read the system's trust store)",
                self.addr
            )));
        };
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read_file("--tls-ca-file", ca_file)?));
        if let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) {
            tls = tls.identity(Identity::from_pem(
                read_file("--tls-cert-file", cert)?,
                read_file("--tls-key-file", key)?,
            ));
        }
        if let Some(name) = &self.tls_server_name {
            tls = tls.domain_name(name.clone());
        }
        endpoint
            .tls_config(tls)
            .map_err(|e| Failure::Usage(format!("the TLS settings are not usable: {}", chain(&e))))
    }

    /// A connected channel. `per_call_timeout`: also bound each call (not for streams).
    async fn channel(&self, per_call_timeout: bool) -> Result<Channel, Failure> {
        let mut endpoint = self.endpoint()?.connect_timeout(self.timeout());
        if per_call_timeout {
            endpoint = endpoint.timeout(self.timeout());
        }
        endpoint.connect().await.map_err(|e| {
            Failure::Connect(format!("cannot connect to {}: {}", self.addr, chain(&e)))
        })
    }
}

fn read_file(flag: &str, path: &std::path::Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path)
        .map_err(|e| Failure::Usage(format!("cannot read {flag} {}: {e}", path.display())))
}

/// An error and its sources, `outer: inner: innermost` (tonic's own Display is only
/// "transport error").
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

/// Why a command failed; decides the exit code.
#[derive(Debug)]
enum Failure {
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
    fn report(self, output: Output) -> ExitCode {
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

/// The canonical name of a gRPC code, as in the README's error table.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
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

/// Writes a line to stdout; a closed pipe (`| head`) is not worth a panic.
fn print(text: &str) {
    let _ = writeln!(std::io::stdout(), "{text}");
}

// ---------------------------------------------------------------------------------
// health

#[derive(Args, Debug)]
#[command(
    after_long_help = "Exit codes: 0 SERVING, 1 invalid arguments, 2 connection failed, \
    3 RPC failed (e.g. unknown service), 4 not serving.\n\n\
    Examples:\n  \
    jobledger health\n  \
    jobledger health --service liveness --addr http://jobledger:50051\n  \
    jobledger health --addr https://jobledger.internal:50051 --tls-ca-file ca.pem"
)]
pub struct HealthArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The health service to check: "" (the server), `jobledger.v1.JobLedger`, or `liveness`.
    #[arg(long, default_value = "")]
    pub service: String,
    /// `table` prints the status name; `json` prints {"status": "SERVING"}.
    #[arg(long, short = 'o', value_enum, env = "JOBLEDGER_OUTPUT", default_value_t = Output::Table)]
    pub output: Output,
}

/// Exit 0 when SERVING; 2 when the server cannot be reached; 3 when the call fails;
/// 4 when the service is not serving.
pub async fn health(args: HealthArgs) -> ExitCode {
    let output = args.output;
    let check = async {
        let channel = args.server.channel(true).await?;
        let request = tonic_health::pb::HealthCheckRequest {
            service: args.service.clone(),
        };
        let status = HealthClient::new(channel)
            .check(request)
            .await?
            .into_inner()
            .status();
        Ok::<_, Failure>(status)
    };
    match check.await {
        Ok(status) => {
            match output {
                Output::Table => print(status.as_str_name()),
                Output::Json => print(&json!({"status": status.as_str_name()}).to_string()),
            }
            if status == ServingStatus::Serving {
                ExitCode::from(exit::SERVING)
            } else {
                ExitCode::from(exit::NOT_SERVING)
            }
        }
        Err(failure) => failure.report(output),
    }
}

// ---------------------------------------------------------------------------------
// job

#[derive(Args, Debug)]
#[command(
    after_long_help = "Exit codes: 0 done, 1 invalid arguments, 2 connection failed, \
    3 RPC failed (the error's code, message and details go to stderr), 5 `watch`: the job \
    ended CANCELED or DEAD_LETTER.\n\n\
    Examples:\n  \
    jobledger job create --type report --params '{\"month\": \"2026-05\"}'\n  \
    jobledger job list --status failed --status dead-letter\n  \
    jobledger job watch 0f8e4c1e-2b7a-4d52-9a51-1c3f7d2b9e10\n  \
    JOBLEDGER_TOKEN=$(cat token) jobledger job get 0f8e4c1e-2b7a-4d52-9a51-1c3f7d2b9e10 -o json"
)]
pub struct JobArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The org (UUID). Empty: the default org, or the token's org when the server has
    /// authentication on.
    #[arg(
        id = "client_org",
        long = "org",
        value_name = "UUID",
        env = "JOBLEDGER_ORG",
        default_value = "",
        global = true
    )]
    pub org: String,
    /// Bearer token (JWT) for a server with authentication on, sent as `authorization:
    /// Bearer <token>`. Prefer the variable: flags show in the process list.
    #[arg(
        id = "client_token",
        long = "token",
        value_name = "JWT",
        env = "JOBLEDGER_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<Secret>,
    /// `table` for people, `json` for scripts (the RPC's response; errors as JSON on stderr).
    #[arg(id = "client_output", long = "output", short = 'o', value_enum, value_name = "FORMAT",
          env = "JOBLEDGER_OUTPUT", default_value_t = Output::Table, global = true)]
    pub output: Output,
    #[command(subcommand)]
    pub command: JobCommand,
}

#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Create a job in QUEUED (or get the existing one for the same idempotency key).
    #[command(after_long_help = "Examples:\n  \
        jobledger job create --type report --params '{\"month\": \"2026-05\"}'\n  \
        jobledger job create --type mock_process --idempotency-key upload-42 --max-attempts 3")]
    Create {
        /// The job's type (what a worker does with it).
        #[arg(long = "type", value_name = "TYPE")]
        job_type: String,
        /// The job's input, a JSON object.
        #[arg(long, value_name = "JSON", value_parser = json_object)]
        params: Option<Map<String, Value>>,
        /// Higher is more urgent.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
        /// Makes the create idempotent: the same key with the same type and params
        /// returns the existing job; with other input it is ALREADY_EXISTS.
        #[arg(long, default_value = "")]
        idempotency_key: String,
        /// Who asked for the job (recorded as the creation event's actor).
        #[arg(long, default_value = "")]
        requested_by: String,
        /// How many times the job may enter RUNNING; 0 = the server's default (5).
        #[arg(long, default_value_t = 0)]
        max_attempts: i32,
    },
    /// Show a job.
    #[command(after_long_help = "Examples:\n  \
        jobledger job get 0f8e4c1e-2b7a-4d52-9a51-1c3f7d2b9e10\n  \
        jobledger job get 0f8e4c1e-2b7a-4d52-9a51-1c3f7d2b9e10 --output json | jq .job.status")]
    Get {
        /// The job's id (UUID).
        job_id: String,
    },
    /// List jobs, newest first, a page at a time (or every page with --all).
    #[command(
        after_long_help = "Filters combine with AND; --status may be repeated (any of \
        them). Without --all, a further page is announced on stderr with its --page-token.\n\n\
        Examples:\n  \
        jobledger job list\n  \
        jobledger job list --status failed --status dead-letter --type report\n  \
        jobledger job list --created-after 2026-05-01 --created-before 2026-06-01T00:00:00Z --all\n  \
        jobledger job list --page-size 20 --page-token <next_page_token>"
    )]
    List {
        /// Only jobs in this status (repeat, or separate with commas, for any of several).
        #[arg(long = "status", value_enum, value_delimiter = ',', ignore_case = true)]
        statuses: Vec<StatusArg>,
        /// Only jobs of this type.
        #[arg(long = "type", value_name = "TYPE", default_value = "")]
        job_type: String,
        /// Only jobs created at or after this time (RFC 3339, or a date: midnight UTC).
        #[arg(long, value_name = "TIME", value_parser = timestamp)]
        created_after: Option<prost_types::Timestamp>,
        /// Only jobs created before this time (RFC 3339, or a date: midnight UTC).
        #[arg(long, value_name = "TIME", value_parser = timestamp)]
        created_before: Option<prost_types::Timestamp>,
        /// Only the job with this idempotency key.
        #[arg(long, default_value = "")]
        idempotency_key: String,
        /// Jobs per page: default 50 (1,000 with --all); the server lowers more than 1,000.
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
        page_size: Option<i32>,
        /// Continue a listing: the next_page_token of the page before (same filters).
        #[arg(long, default_value = "")]
        page_token: String,
        /// Follow next_page_token to the last page and print every job.
        #[arg(long)]
        all: bool,
    },
    /// Count an org's jobs by type and status.
    #[command(after_long_help = "Examples:\n  \
        jobledger job count\n  \
        jobledger job count --type report --output json")]
    Count {
        /// Only jobs of this type.
        #[arg(long = "type", value_name = "TYPE", default_value = "")]
        job_type: String,
    },
    /// Move a job to another status (as a worker reports); prints the job and the
    /// events written.
    #[command(after_long_help = "Examples:\n  \
        jobledger job transition <id> --to running --expected queued --actor worker-1\n  \
        jobledger job transition <id> --to running --attempt 1 --stage parse --progress 40\n  \
        jobledger job transition <id> --to succeeded --attempt 1 --result '{\"rows\": 1200}'\n  \
        jobledger job transition <id> --to failed --attempt 1 --error-code TIMEOUT --error-message 'upstream timed out'")]
    Transition {
        /// The job's id (UUID).
        job_id: String,
        /// The status to move to.
        #[arg(long, value_enum, ignore_case = true)]
        to: StatusArg,
        /// Only if the job is in this status now (a claim sends --expected queued).
        #[arg(long, value_enum, ignore_case = true)]
        expected: Option<StatusArg>,
        /// Only if the job is on this attempt (the worker's fencing token).
        #[arg(long, allow_negative_numbers = true)]
        attempt: Option<i32>,
        /// The stage the work is in.
        #[arg(long, default_value = "")]
        stage: String,
        /// Progress, 0..100.
        #[arg(long, allow_negative_numbers = true)]
        progress: Option<i32>,
        /// The job's result, a JSON object (only with --to succeeded).
        #[arg(long, value_name = "JSON", value_parser = json_object)]
        result: Option<Map<String, Value>>,
        /// Error code of a failure.
        #[arg(long, default_value = "")]
        error_code: String,
        /// Error message of a failure.
        #[arg(long, default_value = "")]
        error_message: String,
        /// More for the event's detail, a JSON object (not the reserved keys stage,
        /// progress, result, error_code, error_message, actor, request_id, reason).
        #[arg(long, value_name = "JSON", value_parser = json_object)]
        detail: Option<Map<String, Value>>,
        /// Who reports (a worker id).
        #[arg(long, default_value = "")]
        actor: String,
        /// Idempotency key of this transition: a repeat returns the recorded outcome.
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Cancel a job (QUEUED, RUNNING or FAILED; SUCCEEDED and CANCELED are final).
    #[command(after_long_help = "Examples:\n  \
        jobledger job cancel <id>\n  \
        jobledger job cancel <id> --reason 'superseded by upload-43' --actor alice")]
    Cancel {
        /// The job's id (UUID).
        job_id: String,
        /// Why, stored as the cancel event's error_message.
        #[arg(long, visible_alias = "error-message", default_value = "")]
        reason: String,
        /// Only if the job is in this status now.
        #[arg(long, value_enum, ignore_case = true)]
        expected: Option<StatusArg>,
        /// Who cancels.
        #[arg(long, default_value = "")]
        actor: String,
        /// Idempotency key of the cancel: a repeat returns the recorded outcome.
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Follow a job's events live until it ends: one line per event, and a progress bar
    /// on a terminal. Exit 0 when the job SUCCEEDED, 5 when it ended CANCELED or
    /// DEAD_LETTER.
    #[command(
        after_long_help = "The job's stored events come first, then live ones. \
        FAILED is not the end (the job may be retried): the watch goes on until SUCCEEDED, \
        CANCELED or DEAD_LETTER. With --output json each event is one JSON line. If the \
        stream breaks, the last event's cursor is printed: resume with --after-cursor.\n\n\
        Examples:\n  \
        jobledger job watch 0f8e4c1e-2b7a-4d52-9a51-1c3f7d2b9e10\n  \
        jobledger job watch <id> --output json | jq -c '{next_status, detail}'\n  \
        jobledger job watch <id> --after-cursor c1.2f4.1a"
    )]
    Watch {
        /// The job's id (UUID).
        job_id: String,
        /// Start after this event (its `cursor`) instead of from the job's first event.
        #[arg(long, default_value = "")]
        after_cursor: String,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
    #[value(alias = "dead_letter")]
    DeadLetter,
}

impl From<StatusArg> for JobStatus {
    fn from(s: StatusArg) -> JobStatus {
        match s {
            StatusArg::Queued => JobStatus::Queued,
            StatusArg::Running => JobStatus::Running,
            StatusArg::Succeeded => JobStatus::Succeeded,
            StatusArg::Failed => JobStatus::Failed,
            StatusArg::Canceled => JobStatus::Canceled,
            StatusArg::DeadLetter => JobStatus::DeadLetter,
        }
    }
}

fn status_number(s: StatusArg) -> i32 {
    status_to_proto(s.into()) as i32
}

/// `--params`, `--result`, `--detail`: a JSON object.
fn json_object(text: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("must be a JSON object, like {\"n\": 5}".to_owned()),
        Err(e) => Err(format!("is not JSON: {e}")),
    }
}

/// `--created-after` / `--created-before`: RFC 3339, or a date (midnight UTC).
fn timestamp(text: &str) -> Result<prost_types::Timestamp, String> {
    let time = match chrono::DateTime::parse_from_rfc3339(text) {
        Ok(t) => t.with_timezone(&chrono::Utc),
        Err(e) => match chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            Ok(date) => date.and_time(chrono::NaiveTime::MIN).and_utc(),
            Err(_) => {
                return Err(format!(
                    "is not an RFC 3339 time like 2026-05-01T12:00:00Z or a date like \
                     2026-05-01: {e}"
                ))
            }
        },
    };
    Ok(prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    })
}

/// Adds `authorization: Bearer <token>` to every call when a token is given.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

fn bearer(token: Option<&Secret>) -> Result<Bearer, Failure> {
    let Some(token) = token else {
        return Ok(Bearer(None));
    };
    let token = token.expose().trim();
    let token = token.strip_prefix("Bearer ").unwrap_or(token);
    // Never echo the token: it is a credential.
    let mut value: MetadataValue<Ascii> = format!("Bearer {token}").parse().map_err(|_| {
        Failure::Usage(
            "--token / JOBLEDGER_TOKEN is not usable as a header value (a JWT is ASCII)".to_owned(),
        )
    })?;
    value.set_sensitive(true);
    Ok(Bearer(Some(value)))
}

type Client = JobLedgerClient<InterceptedService<Channel, Bearer>>;

/// Runs a `job` subcommand: its output on stdout, a failure on stderr.
pub async fn job(args: JobArgs) -> ExitCode {
    let output = args.output;
    match run_job(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(output),
    }
}

async fn run_job(args: JobArgs) -> Result<(), Failure> {
    let auth = bearer(args.token.as_ref())?;
    let is_watch = matches!(args.command, JobCommand::Watch { .. });
    let channel = args.server.channel(!is_watch).await?;
    let client = JobLedgerClient::with_interceptor(channel, auth);
    let call = Call {
        client,
        org: args.org,
        output: args.output,
        timeout: args.server.timeout(),
    };
    call.run(args.command).await
}

struct Call {
    client: Client,
    org: String,
    output: Output,
    timeout: Duration,
}

impl Call {
    /// A unary request carrying the deadline (`grpc-timeout`), so the server stops too.
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.timeout);
        request
    }

    async fn run(mut self, command: JobCommand) -> Result<(), Failure> {
        match command {
            JobCommand::Create {
                job_type,
                params,
                priority,
                idempotency_key,
                requested_by,
                max_attempts,
            } => {
                let request = self.request(proto::CreateJobRequest {
                    org_id: self.org.clone(),
                    r#type: job_type,
                    priority,
                    idempotency_key,
                    requested_by,
                    max_attempts,
                    params: params.map(|p| json_to_struct(&Value::Object(p))),
                });
                let response = self.client.create_job(request).await?.into_inner();
                let job = response.job.unwrap_or_default();
                match self.output {
                    Output::Json => print_json(&json!({
                        "job": job_json(&job), "created": response.created,
                    })),
                    Output::Table => {
                        if response.created {
                            print(&format!("Created job {}.", job.id));
                        } else {
                            print(&format!(
                                "Job {} already exists with this idempotency key, type and \
                                 params; nothing was created.",
                                job.id
                            ));
                        }
                        print(&job_view(&job));
                    }
                }
            }
            JobCommand::Get { job_id } => {
                let request = self.request(proto::GetJobRequest {
                    org_id: self.org.clone(),
                    job_id,
                });
                let job = self
                    .client
                    .get_job(request)
                    .await?
                    .into_inner()
                    .job
                    .unwrap_or_default();
                match self.output {
                    Output::Json => print_json(&json!({"job": job_json(&job)})),
                    Output::Table => print(&job_view(&job)),
                }
            }
            JobCommand::List {
                statuses,
                job_type,
                created_after,
                created_before,
                idempotency_key,
                page_size,
                page_token,
                all,
            } => {
                let mut request = proto::ListJobsRequest {
                    org_id: self.org.clone(),
                    statuses: statuses.into_iter().map(status_number).collect(),
                    r#type: job_type,
                    created_after,
                    created_before,
                    idempotency_key,
                    page_size: page_size.unwrap_or(if all { 1000 } else { 0 }),
                    page_token,
                };
                let mut jobs = Vec::new();
                let next_page_token = loop {
                    let page = self
                        .client
                        .list_jobs(self.request(request.clone()))
                        .await?
                        .into_inner();
                    jobs.extend(page.jobs);
                    if !all || page.next_page_token.is_empty() {
                        break page.next_page_token;
                    }
                    request.page_token = page.next_page_token;
                };
                match self.output {
                    Output::Json => print_json(&json!({
                        "jobs": jobs.iter().map(job_json).collect::<Vec<_>>(),
                        "next_page_token": next_page_token,
                    })),
                    Output::Table => {
                        if jobs.is_empty() {
                            print("No jobs found.");
                        } else {
                            print(&jobs_table(&jobs));
                        }
                        if !next_page_token.is_empty() {
                            let _ = writeln!(
                                std::io::stderr(),
                                "More jobs: add --page-token {next_page_token} (or list them \
                                 all with --all)."
                            );
                        }
                    }
                }
            }
            JobCommand::Count { job_type } => {
                let request = self.request(proto::CountJobsRequest {
                    org_id: self.org.clone(),
                    r#type: job_type,
                });
                let counts = self.client.count_jobs(request).await?.into_inner();
                match self.output {
                    Output::Json => print_json(&counts_json(&counts)),
                    Output::Table => print(&counts_table(&counts)),
                }
            }
            JobCommand::Transition {
                job_id,
                to,
                expected,
                attempt,
                stage,
                progress,
                result,
                error_code,
                error_message,
                detail,
                actor,
                request_id,
            } => {
                let request = proto::TransitionJobRequest {
                    org_id: self.org.clone(),
                    job_id,
                    to_status: status_number(to),
                    expected_status: expected.map(status_number),
                    attempt,
                    stage,
                    progress,
                    result: result.map(|r| json_to_struct(&Value::Object(r))),
                    error_code,
                    error_message,
                    detail: detail.map(|d| json_to_struct(&Value::Object(d))),
                    actor,
                    request_id,
                };
                self.transition(request).await?;
            }
            JobCommand::Cancel {
                job_id,
                reason,
                expected,
                actor,
                request_id,
            } => {
                let request = proto::TransitionJobRequest {
                    org_id: self.org.clone(),
                    job_id,
                    to_status: proto::JobStatus::Canceled as i32,
                    expected_status: expected.map(status_number),
                    error_message: reason,
                    actor,
                    request_id,
                    ..Default::default()
                };
                self.transition(request).await?;
            }
            JobCommand::Watch {
                job_id,
                after_cursor,
            } => self.watch(job_id, after_cursor).await?,
        }
        Ok(())
    }

    async fn transition(&mut self, request: proto::TransitionJobRequest) -> Result<(), Failure> {
        let request = self.request(request);
        let response = self.client.transition_job(request).await?.into_inner();
        let job = response.job.unwrap_or_default();
        match self.output {
            Output::Json => print_json(&json!({
                "job": job_json(&job),
                "events": response.events.iter().map(event_json).collect::<Vec<_>>(),
            })),
            Output::Table => {
                print(&job_view(&job));
                print("");
                print(&events_table(&response.events));
            }
        }
        Ok(())
    }

    /// StreamEvents for one job until the server ends the stream (the job reached
    /// SUCCEEDED, CANCELED or DEAD_LETTER).
    async fn watch(&mut self, job_id: String, after_cursor: String) -> Result<(), Failure> {
        let request = proto::StreamEventsRequest {
            org_id: self.org.clone(),
            job_id: job_id.clone(),
            after_cursor,
            history_only: false,
        };
        let mut stream = self.client.stream_events(request).await?.into_inner();
        let bar =
            (self.output == Output::Table && std::io::stdout().is_terminal()).then(progress_bar);
        let mut last: Option<proto::JobEvent> = None;
        loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    let line = match self.output {
                        Output::Json => event_json(&event).to_string(),
                        Output::Table => event_line(&event),
                    };
                    match &bar {
                        Some(bar) => {
                            bar.println(line);
                            update_bar(bar, &event);
                        }
                        None => print(&line),
                    }
                    last = Some(event);
                }
                Ok(None) => break,
                Err(status) => {
                    if let Some(bar) = &bar {
                        bar.abandon();
                    }
                    if let Some(last) = &last {
                        let _ = writeln!(
                            std::io::stderr(),
                            "The stream broke; resume with: jobledger job watch {job_id} \
                             --after-cursor {}",
                            last.cursor
                        );
                    }
                    return Err(status.into());
                }
            }
        }
        // The stream ended: the job is final. With --after-cursor past its last event
        // nothing was sent, so ask for the status.
        let status = match &last {
            Some(event) => event.next_status,
            None => {
                let request = self.request(proto::GetJobRequest {
                    org_id: self.org.clone(),
                    job_id: job_id.clone(),
                });
                self.client
                    .get_job(request)
                    .await?
                    .into_inner()
                    .job
                    .unwrap_or_default()
                    .status
            }
        };
        let status = status_name(status);
        if let Some(bar) = &bar {
            bar.finish_with_message(status.clone());
        }
        if status == "SUCCEEDED" {
            Ok(())
        } else {
            Err(Failure::NotSucceeded { job_id, status })
        }
    }
}

fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(100),
        indicatif::ProgressDrawTarget::stdout(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{bar:40}] {pos:>3}%  {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn update_bar(bar: &indicatif::ProgressBar, event: &proto::JobEvent) {
    let detail = struct_json(&event.detail);
    if let Some(p) = detail.get("progress").and_then(Value::as_u64) {
        bar.set_position(p.min(100));
    }
    let status = status_name(event.next_status);
    if status == "SUCCEEDED" {
        bar.set_position(100);
    }
    let stage = detail.get("stage").and_then(Value::as_str).unwrap_or("");
    bar.set_message(clean(format!("{status} {stage}").trim()));
}

fn print_json(value: &Value) {
    print(&serde_json::to_string_pretty(value).unwrap_or_default());
}

// ---------------------------------------------------------------------------------
// JSON: the proto's field names; every field present (null when unset).

fn struct_json(s: &Option<prost_types::Struct>) -> Value {
    let Some(s) = s else { return Value::Null };
    let mut v = Violations::default();
    crate::api::convert::struct_to_json(&mut v, "value", s, &Limits::default())
}

fn time_text(t: &Option<prost_types::Timestamp>, format: chrono::SecondsFormat) -> Option<String> {
    t.as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| t.to_rfc3339_opts(format, true))
}

fn time_json(t: &Option<prost_types::Timestamp>) -> Value {
    time_text(t, chrono::SecondsFormat::AutoSi)
        .map(Value::String)
        .unwrap_or(Value::Null)
}

/// `QUEUED`, ..., `DEAD_LETTER`; `UNSPECIFIED` (the creation event's previous status).
fn status_name(n: i32) -> String {
    proto::JobStatus::try_from(n)
        .map(|s| s.as_str_name().trim_start_matches("JOB_STATUS_").to_owned())
        .unwrap_or_else(|_| n.to_string())
}

fn job_json(j: &proto::Job) -> Value {
    json!({
        "id": j.id, "org_id": j.org_id, "type": j.r#type, "status": status_name(j.status),
        "attempt": j.attempt, "max_attempts": j.max_attempts, "priority": j.priority,
        "idempotency_key": j.idempotency_key, "requested_by": j.requested_by,
        "params": struct_json(&j.params), "created_at": time_json(&j.created_at),
        "updated_at": time_json(&j.updated_at), "started_at": time_json(&j.started_at),
        "finished_at": time_json(&j.finished_at), "last_error_code": j.last_error_code,
        "last_error_message": j.last_error_message, "stage": j.stage, "progress": j.progress,
        "result": struct_json(&j.result),
    })
}

fn event_json(e: &proto::JobEvent) -> Value {
    json!({
        "id": e.id, "job_id": e.job_id, "org_id": e.org_id, "ts": time_json(&e.ts),
        "prev_status": status_name(e.prev_status), "next_status": status_name(e.next_status),
        "attempt": e.attempt, "detail": struct_json(&e.detail), "cursor": e.cursor,
    })
}

fn counts_json(c: &proto::CountJobsResponse) -> Value {
    json!({
        "counts": c.counts.iter().map(|n| json!({
            "type": n.r#type, "status": status_name(n.status), "count": n.count,
        })).collect::<Vec<_>>(),
        "by_status": c.by_status.iter().map(|n| json!({
            "status": status_name(n.status), "count": n.count,
        })).collect::<Vec<_>>(),
        "total": c.total,
    })
}

// ---------------------------------------------------------------------------------
// Tables

/// Text safe for a terminal: control characters (newlines, escape sequences in a job's
/// data) are shown escaped instead of acting on the screen.
fn clean(text: impl AsRef<str>) -> String {
    let text = text.as_ref();
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Columns padded to their widest cell, two spaces apart; no trailing spaces.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cells: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| h.to_string()).collect())
        .chain(rows.iter().map(|r| r.iter().map(clean).collect()))
        .collect();
    let mut widths = vec![0; header.len()];
    for row in &cells {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let lines: Vec<String> = cells
        .iter()
        .map(|row| {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                if i + 1 < row.len() {
                    line.push_str(&" ".repeat(widths[i] - cell.chars().count()));
                }
            }
            line.trim_end().to_owned()
        })
        .collect();
    lines.join("\n")
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

fn compact(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn short_time(t: &Option<prost_types::Timestamp>) -> String {
    time_text(t, chrono::SecondsFormat::Secs).unwrap_or_else(|| "-".to_owned())
}

/// One job as `field  value` lines, the JSON output's field names in its order.
fn job_view(j: &proto::Job) -> String {
    let full_time = |t| time_text(t, chrono::SecondsFormat::Millis).unwrap_or("-".to_owned());
    let rows = [
        ("id", j.id.clone()),
        ("org_id", j.org_id.clone()),
        ("type", j.r#type.clone()),
        ("status", status_name(j.status)),
        ("attempt", format!("{} of {}", j.attempt, j.max_attempts)),
        ("priority", j.priority.to_string()),
        ("idempotency_key", or_dash(&j.idempotency_key)),
        ("requested_by", or_dash(&j.requested_by)),
        ("params", compact(&struct_json(&j.params))),
        ("created_at", full_time(&j.created_at)),
        ("updated_at", full_time(&j.updated_at)),
        ("started_at", full_time(&j.started_at)),
        ("finished_at", full_time(&j.finished_at)),
        ("last_error_code", or_dash(&j.last_error_code)),
        ("last_error_message", or_dash(&j.last_error_message)),
        ("stage", or_dash(&j.stage)),
        ("progress", format!("{}%", j.progress)),
        ("result", compact(&struct_json(&j.result))),
    ];
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(k, v)| vec![k.to_owned(), v])
        .collect();
    // A two-column table without a header line.
    let text = table(&["", ""], &rows);
    text.lines().skip(1).collect::<Vec<_>>().join("\n")
}

fn jobs_table(jobs: &[proto::Job]) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.clone(),
                j.r#type.clone(),
                status_name(j.status),
                format!("{}/{}", j.attempt, j.max_attempts),
                or_dash(&j.stage),
                format!("{}%", j.progress),
                short_time(&j.created_at),
                short_time(&j.updated_at),
            ]
        })
        .collect();
    table(
        &[
            "ID", "TYPE", "STATUS", "ATTEMPT", "STAGE", "PROGRESS", "CREATED", "UPDATED",
        ],
        &rows,
    )
}

fn counts_table(c: &proto::CountJobsResponse) -> String {
    let statuses: Vec<i32> = c.by_status.iter().map(|s| s.status).collect();
    let mut types: Vec<&str> = c.counts.iter().map(|n| n.r#type.as_str()).collect();
    types.dedup();
    let mut rows: Vec<Vec<String>> = types
        .iter()
        .map(|t| {
            let of = |status: i32| {
                c.counts
                    .iter()
                    .filter(|n| n.r#type == *t && n.status == status)
                    .map(|n| n.count)
                    .sum::<i64>()
            };
            let total: i64 = c
                .counts
                .iter()
                .filter(|n| n.r#type == *t)
                .map(|n| n.count)
                .sum();
            std::iter::once(t.to_string())
                .chain(statuses.iter().map(|s| of(*s).to_string()))
                .chain(std::iter::once(total.to_string()))
                .collect()
        })
        .collect();
    rows.push(
        std::iter::once("(all)".to_owned())
            .chain(c.by_status.iter().map(|s| s.count.to_string()))
            .chain(std::iter::once(c.total.to_string()))
            .collect(),
    );
    let names: Vec<String> = statuses.iter().map(|s| status_name(*s)).collect();
    let header: Vec<&str> = std::iter::once("TYPE")
        .chain(names.iter().map(String::as_str))
        .chain(std::iter::once("TOTAL"))
        .collect();
    table(&header, &rows)
}

/// `QUEUED -> RUNNING`; the creation event is `(new) -> QUEUED`.
fn transition_text(e: &proto::JobEvent) -> String {
    let from = if e.prev_status == proto::JobStatus::Unspecified as i32 {
        "(new)".to_owned()
    } else {
        status_name(e.prev_status)
    };
    format!("{from} -> {}", status_name(e.next_status))
}

/// An event's detail as `key=value` pairs: the reported fields first, then the rest.
fn detail_text(e: &proto::JobEvent) -> String {
    let Value::Object(mut detail) = struct_json(&e.detail) else {
        return String::new();
    };
    let mut parts = Vec::new();
    for key in [
        "stage",
        "progress",
        "error_code",
        "error_message",
        "actor",
        "request_id",
        "result",
    ] {
        if let Some(value) = detail.remove(key) {
            parts.push(match (key, value) {
                ("progress", Value::Number(n)) => format!("progress={n}%"),
                (key, Value::String(s)) if !s.contains(' ') && !s.is_empty() => {
                    format!("{key}={s}")
                }
                (key, value) => format!("{key}={value}"),
            });
        }
    }
    parts.extend(detail.into_iter().map(|(k, v)| match v {
        Value::String(s) if !s.contains(' ') && !s.is_empty() => format!("{k}={s}"),
        v => format!("{k}={v}"),
    }));
    parts.join(" ")
}

fn events_table(events: &[proto::JobEvent]) -> String {
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                time_text(&e.ts, chrono::SecondsFormat::Millis).unwrap_or_default(),
                transition_text(e),
                e.attempt.to_string(),
                or_dash(&detail_text(e)),
            ]
        })
        .collect();
    table(&["TIME", "TRANSITION", "ATTEMPT", "DETAIL"], &rows)
}

/// One `watch` line: time, transition, attempt, detail (fixed widths: a stream cannot
/// be measured ahead).
fn event_line(e: &proto::JobEvent) -> String {
    let line = format!(
        "{:<24}  {:<26}  attempt {:<3}  {}",
        time_text(&e.ts, chrono::SecondsFormat::Millis).unwrap_or_default(),
        transition_text(e),
        e.attempt,
        detail_text(e),
    );
    clean(line.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn client_commands_are_recognised_past_global_options() {
        assert!(is_client_command(args(&["jobledger", "job", "list"])));
        assert!(is_client_command(args(&["jobledger", "health"])));
        assert!(is_client_command(args(&[
            "jobledger",
            "--log-format",
            "json",
            "job"
        ])));
        assert!(!is_client_command(args(&["jobledger", "serve", "--x"])));
        assert!(!is_client_command(args(&["jobledger", "--pool-size=3"])));
        assert!(!is_client_command(args(&["jobledger"])));
    }

    #[test]
    fn tables_align_columns_and_escape_control_characters() {
        let text = table(
            &["A", "LONGER"],
            &[
                vec!["wide cell".into(), "x".into()],
                vec!["b".into(), "line\nbreak\u{1b}[31m".into()],
            ],
        );
        assert_eq!(
            text,
            "A          LONGER\nwide cell  x\nb          line\\nbreak\\u{1b}[31m"
        );
    }

    #[test]
    fn times_and_json_values_parse_with_the_flag_named_by_clap() {
        let t = timestamp("2026-05-01T12:00:00.5+02:00").unwrap();
        assert_eq!(t.seconds, 1_777_629_600);
        assert_eq!(t.nanos, 500_000_000);
        assert_eq!(timestamp("2026-05-01").unwrap().seconds, 1_777_593_600);
        assert!(timestamp("yesterday").unwrap_err().contains("RFC 3339"));
        assert!(json_object("[1]").unwrap_err().contains("JSON object"));
        assert!(json_object("{").unwrap_err().contains("not JSON"));
        assert_eq!(json_object(r#"{"n": 5}"#).unwrap()["n"], 5);
    }

    #[test]
    fn event_detail_puts_reported_fields_first() {
        let event = proto::JobEvent {
            prev_status: proto::JobStatus::Queued as i32,
            next_status: proto::JobStatus::Running as i32,
            detail: Some(json_to_struct(&json!({
                "zone": "eu", "progress": 40, "stage": "parse", "error_message": "two words",
            }))),
            ..Default::default()
        };
        assert_eq!(transition_text(&event), "QUEUED -> RUNNING");
        assert_eq!(
            detail_text(&event),
            r#"stage=parse progress=40% error_message="two words" zone=eu"#
        );
        let created = proto::JobEvent {
            next_status: proto::JobStatus::Queued as i32,
            ..Default::default()
        };
        assert_eq!(transition_text(&created), "(new) -> QUEUED");
    }
}
