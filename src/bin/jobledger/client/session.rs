//! What every `job` and `queue` command shares: where the server is, the org, the token,
//! the output format, and a connected client that puts the deadline on each call.

use std::time::Duration;

use clap::Args;
use jobledger::{proto::job_ledger_client::JobLedgerClient, server::config::Secret};
use tonic::{service::interceptor::InterceptedService, transport::Channel, Request};

use super::{
    connect::{bearer, Bearer},
    Failure, Output, ServerArgs,
};

/// The flags of every `job` and `queue` command.
#[derive(Args, Debug)]
pub struct ClientArgs {
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
}

/// A connected client and what every call of a command shares.
pub struct Session {
    pub client: JobLedgerClient<InterceptedService<Channel, Bearer>>,
    pub org: String,
    pub output: Output,
    timeout: Duration,
}

impl Session {
    /// Connects; `per_call_timeout`: also bound each call (not for streams).
    pub async fn connect(args: ClientArgs, per_call_timeout: bool) -> Result<Session, Failure> {
        let auth = bearer(args.token.as_ref())?;
        let channel = args.server.channel(per_call_timeout).await?;
        Ok(Session {
            client: JobLedgerClient::with_interceptor(channel, auth),
            org: args.org,
            output: args.output,
            timeout: args.server.timeout(),
        })
    }

    /// Each call's deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A unary request carrying the deadline (`grpc-timeout`), so the server stops too.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.timeout);
        request
    }
}
