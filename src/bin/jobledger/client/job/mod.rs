//! `jobledger job create|get|list|count|transition|cancel|watch`: one RPC per command
//! (every page for `list --all`, a stream for `watch`), its answer printed by `render`.

mod render;
mod watch;
mod work;

use std::{io::Write, process::ExitCode};

use clap::{Args, Subcommand, ValueEnum};
use jobledger::proto::{self, json::json_to_struct};
use serde_json::{json, Map, Value};

use render::{counts_json, counts_table, event_json, events_table, job_json, job_view, jobs_table};

use super::{
    print, print_json,
    session::{ClientArgs, Session},
    Failure, Output,
};

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
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: JobCommand,
}

#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Create a job in QUEUED (or get the existing one for the same idempotency key).
    #[command(after_long_help = "Examples:\n  \
        jobledger job create --type report --params '{\"month\": \"2026-05\"}'\n  \
        jobledger job create --type mock_process --idempotency-key upload-42 --max-attempts 3")]
    Create(CreateArgs),
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
    List(ListArgs),
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
    Transition(TransitionArgs),
    /// Cancel a job (QUEUED, RUNNING or FAILED; SUCCEEDED and CANCELED are final).
    #[command(after_long_help = "Examples:\n  \
        jobledger job cancel <id>\n  \
        jobledger job cancel <id> --reason 'superseded by upload-43' --actor alice")]
    Cancel(CancelArgs),
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
    Watch(WatchArgs),
    /// Claim jobs as a worker would: each is started (attempt + 1) under a lease held by
    /// --worker. Waits up to --wait-ms for one when none is claimable.
    #[command(after_long_help = "Examples:\n  \
        jobledger job claim --type report --worker laptop-1\n  \
        jobledger job claim --type report --type export --worker w1 --max-jobs 10 --wait-ms 20000\n  \
        jobledger job claim --type report --worker w1 --all-orgs --output json")]
    Claim(ClaimArgs),
    /// Extend the lease of a RUNNING job you hold (no event is written).
    #[command(after_long_help = "Examples:\n  \
        jobledger job heartbeat <id> --attempt 1\n  \
        jobledger job heartbeat <id> --attempt 1 --lease-ms 60000")]
    Heartbeat(HeartbeatArgs),
}

#[derive(Args, Debug)]
pub struct ClaimArgs {
    /// A job type to claim (repeat for several, up to 32).
    #[arg(long = "type", value_name = "TYPE", required = true)]
    pub types: Vec<String>,
    /// Who claims: the actor of the start events and the lease holder.
    #[arg(long)]
    pub worker: String,
    /// Most jobs to claim (1..100).
    #[arg(long, default_value_t = 1)]
    pub max_jobs: i32,
    /// The lease, in ms (1 s .. 1 h); 0 = the server's default (30 s).
    #[arg(long, default_value_t = 0)]
    pub lease_ms: u64,
    /// How long to wait for a claimable job, in ms (at most 60 s); 0 = answer at once.
    #[arg(long, default_value_t = 0)]
    pub wait_ms: u64,
    /// Claim from every org, round-robin (with authentication on: a worker's token).
    #[arg(long)]
    pub all_orgs: bool,
}

#[derive(Args, Debug)]
pub struct HeartbeatArgs {
    /// The job's id (UUID).
    pub job_id: String,
    /// The attempt you hold (the claimed job's `attempt`).
    #[arg(long)]
    pub attempt: i32,
    /// The new lease, in ms; 0 = the length of the current one.
    #[arg(long, default_value_t = 0)]
    pub lease_ms: u64,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The job's type (what a worker does with it).
    #[arg(long = "type", value_name = "TYPE")]
    pub job_type: String,
    /// The job's input, a JSON object.
    #[arg(long, value_name = "JSON", value_parser = json_object)]
    pub params: Option<Map<String, Value>>,
    /// Higher is more urgent.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// Makes the create idempotent: the same key with the same type and params
    /// returns the existing job; with other input it is ALREADY_EXISTS.
    #[arg(long, default_value = "")]
    pub idempotency_key: String,
    /// Who asked for the job (recorded as the creation event's actor).
    #[arg(long, default_value = "")]
    pub requested_by: String,
    /// How many times the job may enter RUNNING; 0 = the server's default (5).
    #[arg(long, default_value_t = 0)]
    pub max_attempts: i32,
    /// Not claimable before this time (RFC 3339, or a date: midnight UTC).
    #[arg(long, value_name = "TIME", value_parser = timestamp)]
    pub run_after: Option<prost_types::Timestamp>,
    /// The first retry's backoff in ms (doubling up to --max-backoff-ms); 0 = the
    /// server's default (1 s).
    #[arg(long, default_value_t = 0)]
    pub initial_backoff_ms: u64,
    /// The longest backoff between retries in ms; 0 = the server's default (1 h).
    #[arg(long, default_value_t = 0)]
    pub max_backoff_ms: u64,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only jobs in this status (repeat, or separate with commas, for any of several).
    #[arg(long = "status", value_enum, value_delimiter = ',', ignore_case = true)]
    pub statuses: Vec<StatusArg>,
    /// Only jobs of this type.
    #[arg(long = "type", value_name = "TYPE", default_value = "")]
    pub job_type: String,
    /// Only jobs created at or after this time (RFC 3339, or a date: midnight UTC).
    #[arg(long, value_name = "TIME", value_parser = timestamp)]
    pub created_after: Option<prost_types::Timestamp>,
    /// Only jobs created before this time (RFC 3339, or a date: midnight UTC).
    #[arg(long, value_name = "TIME", value_parser = timestamp)]
    pub created_before: Option<prost_types::Timestamp>,
    /// Only the job with this idempotency key.
    #[arg(long, default_value = "")]
    pub idempotency_key: String,
    /// Jobs per page: default 50 (1,000 with --all); the server lowers more than 1,000.
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    pub page_size: Option<i32>,
    /// Continue a listing: the next_page_token of the page before (same filters).
    #[arg(long, default_value = "")]
    pub page_token: String,
    /// Follow next_page_token to the last page and print every job.
    #[arg(long)]
    pub all: bool,
}

#[derive(Args, Debug)]
pub struct TransitionArgs {
    /// The job's id (UUID).
    pub job_id: String,
    /// The status to move to.
    #[arg(long, value_enum, ignore_case = true)]
    pub to: StatusArg,
    /// Only if the job is in this status now (a claim sends --expected queued).
    #[arg(long, value_enum, ignore_case = true)]
    pub expected: Option<StatusArg>,
    /// Only if the job is on this attempt (the worker's fencing token).
    #[arg(long, allow_negative_numbers = true)]
    pub attempt: Option<i32>,
    /// The stage the work is in.
    #[arg(long, default_value = "")]
    pub stage: String,
    /// Progress, 0..100.
    #[arg(long, allow_negative_numbers = true)]
    pub progress: Option<i32>,
    /// The job's result, a JSON object (only with --to succeeded).
    #[arg(long, value_name = "JSON", value_parser = json_object)]
    pub result: Option<Map<String, Value>>,
    /// Error code of a failure.
    #[arg(long, default_value = "")]
    pub error_code: String,
    /// Error message of a failure.
    #[arg(long, default_value = "")]
    pub error_message: String,
    /// More for the event's detail, a JSON object (not the reserved keys stage,
    /// progress, result, error_code, error_message, actor, request_id, reason).
    #[arg(long, value_name = "JSON", value_parser = json_object)]
    pub detail: Option<Map<String, Value>>,
    /// Who reports (a worker id).
    #[arg(long, default_value = "")]
    pub actor: String,
    /// Idempotency key of this transition: a repeat returns the recorded outcome.
    #[arg(long, default_value = "")]
    pub request_id: String,
    /// With --to running: hold the job under a lease of this many ms (held by --actor).
    #[arg(long)]
    pub lease_ms: Option<u64>,
    /// With --to failed: claimable again after this many ms (instead of the backoff).
    #[arg(long)]
    pub retry_after_ms: Option<u64>,
}

#[derive(Args, Debug)]
pub struct CancelArgs {
    /// The job's id (UUID).
    pub job_id: String,
    /// Why, stored as the cancel event's error_message.
    #[arg(long, visible_alias = "error-message", default_value = "")]
    pub reason: String,
    /// Only if the job is in this status now.
    #[arg(long, value_enum, ignore_case = true)]
    pub expected: Option<StatusArg>,
    /// Who cancels.
    #[arg(long, default_value = "")]
    pub actor: String,
    /// Idempotency key of the cancel: a repeat returns the recorded outcome.
    #[arg(long, default_value = "")]
    pub request_id: String,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// The job's id (UUID).
    pub job_id: String,
    /// Start after this event (its `cursor`) instead of from the job's first event.
    #[arg(long, default_value = "")]
    pub after_cursor: String,
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

/// The status's number on the wire.
fn status_number(s: StatusArg) -> i32 {
    let status = match s {
        StatusArg::Queued => proto::JobStatus::Queued,
        StatusArg::Running => proto::JobStatus::Running,
        StatusArg::Succeeded => proto::JobStatus::Succeeded,
        StatusArg::Failed => proto::JobStatus::Failed,
        StatusArg::Canceled => proto::JobStatus::Canceled,
        StatusArg::DeadLetter => proto::JobStatus::DeadLetter,
    };
    status as i32
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

/// Runs a `job` subcommand: its output on stdout, a failure on stderr.
pub async fn run(args: JobArgs) -> ExitCode {
    let output = args.client.output;
    match run_job(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(output),
    }
}

async fn run_job(args: JobArgs) -> Result<(), Failure> {
    // A stream runs until the job ends; a claim may wait for work (its request's
    // deadline gives it the wait on top of --timeout-ms).
    let open_ended = matches!(args.command, JobCommand::Watch(_) | JobCommand::Claim(_));
    let mut call = Session::connect(args.client, !open_ended).await?;
    match args.command {
        JobCommand::Create(a) => call.create(a).await,
        JobCommand::Get { job_id } => call.get(job_id).await,
        JobCommand::List(a) => call.list(a).await,
        JobCommand::Count { job_type } => call.count(job_type).await,
        JobCommand::Transition(a) => call.transition(a.request(call.org.clone())).await,
        JobCommand::Cancel(a) => call.transition(a.request(call.org.clone())).await,
        JobCommand::Watch(a) => call.watch(a.job_id, a.after_cursor).await,
        JobCommand::Claim(a) => call.claim(a).await,
        JobCommand::Heartbeat(a) => call.heartbeat(a).await,
    }
}

impl Session {
    async fn create(&mut self, a: CreateArgs) -> Result<(), Failure> {
        let request = self.request(proto::CreateJobRequest {
            org_id: self.org.clone(),
            r#type: a.job_type,
            priority: a.priority,
            idempotency_key: a.idempotency_key,
            requested_by: a.requested_by,
            max_attempts: a.max_attempts,
            params: a.params.map(|p| json_to_struct(&Value::Object(p))),
            run_after: a.run_after,
            retry_policy: (a.initial_backoff_ms > 0 || a.max_backoff_ms > 0).then(|| {
                proto::RetryPolicy {
                    initial_backoff: Some(millis(a.initial_backoff_ms)),
                    max_backoff: Some(millis(a.max_backoff_ms)),
                }
            }),
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
        Ok(())
    }

    async fn get(&mut self, job_id: String) -> Result<(), Failure> {
        let job = self.get_job(job_id).await?;
        match self.output {
            Output::Json => print_json(&json!({"job": job_json(&job)})),
            Output::Table => print(&job_view(&job)),
        }
        Ok(())
    }

    async fn get_job(&mut self, job_id: String) -> Result<proto::Job, Failure> {
        let request = self.request(proto::GetJobRequest {
            org_id: self.org.clone(),
            job_id,
        });
        let response = self.client.get_job(request).await?.into_inner();
        Ok(response.job.unwrap_or_default())
    }

    async fn list(&mut self, a: ListArgs) -> Result<(), Failure> {
        let mut request = proto::ListJobsRequest {
            org_id: self.org.clone(),
            statuses: a.statuses.into_iter().map(status_number).collect(),
            r#type: a.job_type,
            created_after: a.created_after,
            created_before: a.created_before,
            idempotency_key: a.idempotency_key,
            page_size: a.page_size.unwrap_or(if a.all { 1000 } else { 0 }),
            page_token: a.page_token,
        };
        let mut jobs = Vec::new();
        let next_page_token = loop {
            let page = self
                .client
                .list_jobs(self.request(request.clone()))
                .await?
                .into_inner();
            jobs.extend(page.jobs);
            if !a.all || page.next_page_token.is_empty() {
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
        Ok(())
    }

    async fn count(&mut self, job_type: String) -> Result<(), Failure> {
        let request = self.request(proto::CountJobsRequest {
            org_id: self.org.clone(),
            r#type: job_type,
        });
        let counts = self.client.count_jobs(request).await?.into_inner();
        match self.output {
            Output::Json => print_json(&counts_json(&counts)),
            Output::Table => print(&counts_table(&counts)),
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
}

impl TransitionArgs {
    fn request(self, org_id: String) -> proto::TransitionJobRequest {
        proto::TransitionJobRequest {
            org_id,
            job_id: self.job_id,
            to_status: status_number(self.to),
            expected_status: self.expected.map(status_number),
            attempt: self.attempt,
            stage: self.stage,
            progress: self.progress,
            result: self.result.map(|r| json_to_struct(&Value::Object(r))),
            error_code: self.error_code,
            error_message: self.error_message,
            detail: self.detail.map(|d| json_to_struct(&Value::Object(d))),
            actor: self.actor,
            request_id: self.request_id,
            lease: self.lease_ms.map(millis),
            retry_after: self.retry_after_ms.map(millis),
        }
    }
}

/// A duration flag given in ms, as the wire has it.
pub(crate) fn millis(ms: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

impl CancelArgs {
    fn request(self, org_id: String) -> proto::TransitionJobRequest {
        proto::TransitionJobRequest {
            org_id,
            job_id: self.job_id,
            to_status: proto::JobStatus::Canceled as i32,
            expected_status: self.expected.map(status_number),
            error_message: self.reason,
            actor: self.actor,
            request_id: self.request_id,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
