//! `jobledger queue list|pause|resume|limit`: an org's queues (its jobs of one type) as
//! dispatch sees them, and their pause and running limit.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use jobledger::proto;
use serde_json::{json, Value};

use super::{
    print, print_json,
    session::{ClientArgs, Session},
    table, Failure, Output,
};

#[derive(Args, Debug)]
#[command(
    after_long_help = "Exit codes: 0 done, 1 invalid arguments, 2 connection failed, \
    3 RPC failed.\n\n\
    Examples:\n  \
    jobledger queue list\n  \
    jobledger queue pause report\n  \
    jobledger queue limit report 4\n  \
    jobledger queue resume report"
)]
pub struct QueueArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: QueueCommand,
}

#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    /// Per type: jobs ready to claim, scheduled for later, running; the age of the
    /// oldest ready job (the queue's lag); whether it is paused and its running limit.
    #[command(after_long_help = "Examples:\n  \
        jobledger queue list\n  \
        jobledger queue list --type report --output json")]
    List {
        /// Only this type.
        #[arg(long = "type", value_name = "TYPE", default_value = "")]
        job_type: String,
    },
    /// Stop claims from handing out this type's jobs (they stay QUEUED; nothing is lost).
    #[command(after_long_help = "Examples:\n  jobledger queue pause report")]
    Pause {
        /// The job type.
        job_type: String,
    },
    /// Let claims hand out this type's jobs again.
    #[command(after_long_help = "Examples:\n  jobledger queue resume report")]
    Resume {
        /// The job type.
        job_type: String,
    },
    /// Claims leave at most this many of the type's jobs RUNNING (0: no limit).
    #[command(after_long_help = "Examples:\n  \
        jobledger queue limit report 4\n  \
        jobledger queue limit report 0")]
    Limit {
        /// The job type.
        job_type: String,
        /// Most RUNNING jobs; 0 = no limit.
        max_running: i32,
    },
}

/// Runs a `queue` subcommand: its output on stdout, a failure on stderr.
pub async fn run(args: QueueArgs) -> ExitCode {
    let output = args.client.output;
    let result = async {
        let mut session = Session::connect(args.client, true).await?;
        match args.command {
            QueueCommand::List { job_type } => session.list_queues(job_type).await,
            QueueCommand::Pause { job_type } => {
                session.update_queue(job_type, Some(true), None).await
            }
            QueueCommand::Resume { job_type } => {
                session.update_queue(job_type, Some(false), None).await
            }
            QueueCommand::Limit {
                job_type,
                max_running,
            } => {
                session
                    .update_queue(job_type, None, Some(max_running))
                    .await
            }
        }
    };
    match result.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(output),
    }
}

impl Session {
    async fn list_queues(&mut self, job_type: String) -> Result<(), Failure> {
        let request = self.request(proto::ListQueuesRequest {
            org_id: self.org.clone(),
            r#type: job_type,
        });
        let queues = self.client.list_queues(request).await?.into_inner().queues;
        match self.output {
            Output::Json => print_json(&json!({
                "queues": queues.iter().map(queue_json).collect::<Vec<_>>(),
            })),
            Output::Table if queues.is_empty() => print("No queues: the org has no jobs to run."),
            Output::Table => print(&queues_table(&queues)),
        }
        Ok(())
    }

    async fn update_queue(
        &mut self,
        job_type: String,
        paused: Option<bool>,
        max_running: Option<i32>,
    ) -> Result<(), Failure> {
        let request = self.request(proto::UpdateQueueRequest {
            org_id: self.org.clone(),
            r#type: job_type,
            paused,
            max_running,
        });
        let queue = self
            .client
            .update_queue(request)
            .await?
            .into_inner()
            .queue
            .unwrap_or_default();
        match self.output {
            Output::Json => print_json(&json!({"queue": queue_json(&queue)})),
            Output::Table => print(&queues_table(&[queue])),
        }
        Ok(())
    }
}

fn age_secs(q: &proto::Queue) -> f64 {
    q.oldest_ready_age
        .as_ref()
        .map_or(0.0, |d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
}

fn queue_json(q: &proto::Queue) -> Value {
    json!({
        "type": q.r#type, "paused": q.paused, "max_running": q.max_running,
        "ready": q.ready, "scheduled": q.scheduled, "running": q.running,
        "oldest_ready_age_seconds": age_secs(q),
    })
}

fn queues_table(queues: &[proto::Queue]) -> String {
    let rows: Vec<Vec<String>> = queues
        .iter()
        .map(|q| {
            vec![
                q.r#type.clone(),
                q.ready.to_string(),
                q.scheduled.to_string(),
                q.running.to_string(),
                if q.paused { "paused" } else { "running" }.to_owned(),
                match q.max_running {
                    0 => "-".to_owned(),
                    n => n.to_string(),
                },
                format!("{:.1}s", age_secs(q)),
            ]
        })
        .collect();
    table(
        &[
            "TYPE",
            "READY",
            "SCHEDULED",
            "RUNNING",
            "STATE",
            "LIMIT",
            "OLDEST READY",
        ],
        &rows,
    )
}
