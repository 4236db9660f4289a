//! Client commands for a person at a terminal (and for container health checks).

use std::{io::Write, process::ExitCode};

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};

use crate::api::convert::{json_to_struct, status_to_proto};
use crate::ledger::{JobStatus, Limits, Violations};
use crate::proto::{self, job_ledger_client::JobLedgerClient};

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// The server's address.
    #[arg(long, env = "JOBLEDGER_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Give up on a call after this many milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
}

impl ServerArgs {
    async fn channel(&self) -> Result<Channel, String> {
        let timeout = std::time::Duration::from_millis(self.timeout_ms);
        Channel::from_shared(self.addr.clone())
            .map_err(|e| format!("--addr {:?} is not a URI: {e}", self.addr))?
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.addr))
    }
}

/// Exit codes as grpc-health-probe uses them.
pub mod exit {
    pub const SERVING: u8 = 0;
    pub const CONNECTION_FAILED: u8 = 2;
    pub const RPC_FAILED: u8 = 3;
    pub const NOT_SERVING: u8 = 4;
}

#[derive(Args, Debug)]
pub struct HealthArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The health service to check: "" (the server), `jobledger.v1.JobLedger`, or `liveness`.
    #[arg(long, default_value = "")]
    pub service: String,
}

/// Exit 0 when SERVING; 2 when the server cannot be reached; 3 when the call fails;
/// 4 when the service is not serving.
pub async fn health(args: HealthArgs) -> ExitCode {
    let channel = match args.server.channel().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(exit::CONNECTION_FAILED);
        }
    };
    let request = tonic_health::pb::HealthCheckRequest {
        service: args.service.clone(),
    };
    match HealthClient::new(channel).check(request).await {
        Ok(response) => {
            let status = response.into_inner().status();
            let _ = writeln!(std::io::stdout(), "{}", status.as_str_name());
            if status == ServingStatus::Serving {
                ExitCode::from(exit::SERVING)
            } else {
                ExitCode::from(exit::NOT_SERVING)
            }
        }
        Err(status) => {
            eprintln!(
                "health check failed: {}: {}",
                status.code(),
                status.message()
            );
            ExitCode::from(exit::RPC_FAILED)
        }
    }
}

#[derive(Args, Debug)]
pub struct JobArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The org (UUID); empty means the default org.
    #[arg(long, env = "JOBLEDGER_ORG", default_value = "")]
    pub org: String,
    #[command(subcommand)]
    pub command: JobCommand,
}

#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Create a job (prints it as JSON).
    Create {
        /// The job's type.
        #[arg(long = "type")]
        job_type: String,
        /// Input as a JSON object.
        #[arg(long)]
        params: Option<String>,
        #[arg(long, default_value_t = 0)]
        priority: i32,
        #[arg(long, default_value = "")]
        idempotency_key: String,
        #[arg(long, default_value = "")]
        requested_by: String,
        /// 0 = the default (5).
        #[arg(long, default_value_t = 0)]
        max_attempts: i32,
    },
    /// Show a job (as JSON).
    Get { job_id: String },
    /// Move a job to another status (prints the job and the events written).
    Transition {
        job_id: String,
        /// The status to move to.
        #[arg(long, value_enum)]
        to: StatusArg,
        /// Only if the job is in this status now.
        #[arg(long, value_enum)]
        expected: Option<StatusArg>,
        /// Only if the job is on this attempt (fencing token).
        #[arg(long)]
        attempt: Option<i32>,
        #[arg(long, default_value = "")]
        stage: String,
        #[arg(long)]
        progress: Option<i32>,
        /// A JSON object (only with --to succeeded).
        #[arg(long)]
        result: Option<String>,
        #[arg(long, default_value = "")]
        error_code: String,
        #[arg(long, default_value = "")]
        error_message: String,
        #[arg(long, default_value = "")]
        actor: String,
        #[arg(long, default_value = "")]
        request_id: String,
    },
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum StatusArg {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
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

fn parse_object(flag: &str, text: Option<String>) -> Result<Option<prost_types::Struct>, String> {
    let Some(text) = text else { return Ok(None) };
    let value: Value =
        serde_json::from_str(&text).map_err(|e| format!("--{flag} is not JSON: {e}"))?;
    if !value.is_object() {
        return Err(format!("--{flag} must be a JSON object"));
    }
    Ok(Some(json_to_struct(&value)))
}

/// Runs a `job` subcommand; prints JSON on success and `code: message` on failure.
pub async fn job(args: JobArgs) -> ExitCode {
    match run_job(args).await {
        Ok(value) => {
            // A closed pipe (`| head`) is not an error worth a panic.
            let text = serde_json::to_string_pretty(&value).unwrap_or_default();
            let _ = writeln!(std::io::stdout(), "{text}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn run_job(args: JobArgs) -> Result<Value, String> {
    let channel = args.server.channel().await?;
    let mut client = JobLedgerClient::new(channel);
    let failed = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
    match args.command {
        JobCommand::Create {
            job_type,
            params,
            priority,
            idempotency_key,
            requested_by,
            max_attempts,
        } => {
            let response = client
                .create_job(proto::CreateJobRequest {
                    org_id: args.org,
                    r#type: job_type,
                    priority,
                    idempotency_key,
                    requested_by,
                    max_attempts,
                    params: parse_object("params", params)?,
                })
                .await
                .map_err(failed)?
                .into_inner();
            Ok(json!({"created": response.created, "job": response.job.as_ref().map(job_json)}))
        }
        JobCommand::Get { job_id } => {
            let response = client
                .get_job(proto::GetJobRequest {
                    org_id: args.org,
                    job_id,
                })
                .await
                .map_err(failed)?
                .into_inner();
            Ok(response.job.as_ref().map(job_json).unwrap_or(Value::Null))
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
            actor,
            request_id,
        } => {
            let response = client
                .transition_job(proto::TransitionJobRequest {
                    org_id: args.org,
                    job_id,
                    to_status: status_number(to),
                    expected_status: expected.map(status_number),
                    attempt,
                    stage,
                    progress,
                    result: parse_object("result", result)?,
                    error_code,
                    error_message,
                    detail: None,
                    actor,
                    request_id,
                })
                .await
                .map_err(failed)?
                .into_inner();
            Ok(json!({
                "job": response.job.as_ref().map(job_json),
                "events": response.events.iter().map(event_json).collect::<Vec<_>>(),
            }))
        }
    }
}

fn struct_json(s: &Option<prost_types::Struct>) -> Value {
    let Some(s) = s else { return Value::Null };
    let mut v = Violations::default();
    crate::api::convert::struct_to_json(&mut v, "value", s, &Limits::default())
}

fn time_json(t: &Option<prost_types::Timestamp>) -> Value {
    t.as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32))
        .map(|t| Value::String(t.to_rfc3339()))
        .unwrap_or(Value::Null)
}

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
        "id": e.id, "job_id": e.job_id, "ts": time_json(&e.ts),
        "prev_status": status_name(e.prev_status), "next_status": status_name(e.next_status),
        "attempt": e.attempt, "detail": struct_json(&e.detail), "cursor": e.cursor,
    })
}
