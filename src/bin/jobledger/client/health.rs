//! `jobledger health`: a server's health, for people and container health checks.

use std::process::ExitCode;

use clap::Args;
use serde_json::json;
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};

use super::{exit, print, Failure, Output, ServerArgs};

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
pub async fn run(args: HealthArgs) -> ExitCode {
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
