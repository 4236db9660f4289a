//! The `jobledger` binary: the command tree. Each subcommand's module owns its flags
//! and a `run`; the server, the store and the operator tools are the library's.
//!
//! | command | module |
//! |---|---|
//! | `serve` (the default) | [`serve`]: flags → `server::Config` |
//! | `migrate` | [`migrate`] |
//! | `dev` | [`dev`]: the server on a private PostgreSQL cluster |
//! | `check` | [`check`]: the invariant checker |
//! | `job`, `queue`, `health` | [`client`]: the CLI client |
//! | `bench` | [`client::bench`]: the load generator |

mod check;
mod client;
mod dev;
mod migrate;
mod serve;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use jobledger::server::telemetry::{self, LogFormat};
use sqlx::postgres::PgConnectOptions;

#[derive(Parser, Debug)]
#[command(
    name = "jobledger",
    version,
    about = "The durable ledger of asynchronous jobs: a gRPC service on PostgreSQL.",
    long_about = "The durable ledger of asynchronous jobs: a gRPC service on PostgreSQL.\n\n\
        Without a subcommand, `jobledger` serves (same as `jobledger serve`).",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub serve: serve::ServeArgs,

    /// Log format: `json` (one object per line) or `pretty`. Default: pretty on a
    /// terminal, json otherwise. Filter with RUST_LOG (default `info`).
    #[arg(
        long,
        global = true,
        env = "JOBLEDGER_LOG_FORMAT",
        value_enum,
        help_heading = "Logging"
    )]
    pub log_format: Option<LogFormatArg>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the gRPC API (the default when no subcommand is given).
    Serve(serve::ServeArgs),
    /// Create the database if needed, run the migrations, and exit.
    Migrate(migrate::MigrateArgs),
    /// Check a running server's health; exit 0 when SERVING (for container health checks).
    Health(client::health::HealthArgs),
    /// Create, read and move jobs on a running server.
    Job(client::job::JobArgs),
    /// See an org's queues (jobs by type, as dispatch sees them); pause, resume, limit.
    Queue(client::queue::QueueArgs),
    /// Load a server over gRPC (`bench compare`: side by side with pgbench running the
    /// same SQL); see BENCHMARKS.md.
    Bench(client::bench::BenchArgs),
    /// Verify the ledger's invariants over the whole database; exit 0 when all hold,
    /// 1 when any is violated, 2 when the database cannot be read.
    Check(check::CheckArgs),
    /// Zero-setup development server: a private PostgreSQL cluster of its own (initdb,
    /// removed on exit) unless a database is configured; prints how to connect.
    Dev(dev::DevArgs),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    Json,
    Pretty,
}

impl From<LogFormatArg> for LogFormat {
    fn from(f: LogFormatArg) -> LogFormat {
        match f {
            LogFormatArg::Json => LogFormat::Json,
            LogFormatArg::Pretty => LogFormat::Pretty,
        }
    }
}

/// `--database-url`, shared by the commands that open the database themselves.
#[derive(Args, Clone, Debug, Default)]
pub struct DatabaseArgs {
    /// PostgreSQL URL. Without it, libpq's PGHOST, PGPORT, PGUSER, PGPASSWORD and
    /// PGDATABASE are used; without those, postgres://postgres@localhost:5432/jobledger.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

impl DatabaseArgs {
    /// Where the ledger's database is.
    pub fn connect_options(&self) -> anyhow::Result<PgConnectOptions> {
        jobledger::store::connect_options(self.database_url.as_deref())
            .context("--database-url / DATABASE_URL is not a valid PostgreSQL URL")
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|e| client::exit_on_parse_error(e));
    // Commands whose output is for people or scripts, without the server's logs.
    match cli.command {
        Some(Command::Health(args)) => return client::health::run(args).await,
        Some(Command::Job(args)) => return client::job::run(args).await,
        Some(Command::Queue(args)) => return client::queue::run(args).await,
        Some(Command::Bench(args)) => return client::bench::run(args).await,
        Some(Command::Check(args)) => return check::run(args).await,
        // Their output is a JSON report on stdout, where the logs would go: no logs.
        Some(Command::Migrate(args)) if args.action.is_some() => {
            return migrate::run_legacy(args).await
        }
        _ => {}
    }
    let telemetry = match telemetry::init_from_env(cli.log_format.map(Into::into)) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Some(Command::Migrate(args)) => migrate::run(args).await,
        Some(Command::Serve(args)) => serve::run(args, shutdown_signal()).await,
        Some(Command::Dev(args)) => dev::run(args, shutdown_signal()).await,
        None => serve::run(cli.serve, shutdown_signal()).await,
        Some(
            Command::Health(_)
            | Command::Job(_)
            | Command::Queue(_)
            | Command::Bench(_)
            | Command::Check(_),
        ) => {
            unreachable!("handled above")
        }
    };
    // The spans of the last calls are still queued: send them before exiting.
    telemetry.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "jobledger failed");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = async {
        tokio::signal::ctrl_c().await.ok();
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::Cli;

    /// What `jobledger <args>` prints for `--help` / `-h`.
    fn help(args: &[&str]) -> String {
        let argv = std::iter::once("jobledger").chain(args.iter().copied());
        let error = Cli::try_parse_from(argv).expect_err("help is printed, not parsed");
        assert_eq!(
            error.kind(),
            clap::error::ErrorKind::DisplayHelp,
            "{args:?}"
        );
        error.to_string()
    }

    #[test]
    fn help_of_every_client_command_names_its_flags_and_shows_examples() {
        let cli = Cli::command();
        let job = cli.find_subcommand("job").expect("job");
        let globals: Vec<String> = job
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_owned))
            .collect();
        assert!(globals.contains(&"token".to_owned()), "{globals:?}");
        let mut checked = 0;
        for sub in job.get_subcommands() {
            let name = sub.get_name();
            if name == "help" {
                continue;
            }
            let text = help(&["job", name, "--help"]);
            let longs = sub
                .get_arguments()
                .filter_map(|a| a.get_long().map(str::to_owned))
                .chain(globals.iter().cloned());
            for long in longs {
                assert!(
                    text.contains(&format!("--{long}")),
                    "`job {name} --help` does not mention --{long}:\n{text}"
                );
            }
            assert!(
                text.contains("Examples:\n  jobledger job "),
                "`job {name} --help` has no example:\n{text}"
            );
            // -h is the short form: flags, no long text.
            assert!(!help(&["job", name, "-h"]).contains("Examples:"));
            checked += 1;
        }
        assert_eq!(
            checked, 9,
            "create, get, list, count, transition, cancel, watch, claim, heartbeat"
        );
        for path in [
            &["job"][..],
            &["health"],
            &["dev"],
            &["queue"],
            &["queue", "list"],
            &["queue", "limit"],
        ] {
            let sub = path
                .iter()
                .fold(cli.clone(), |c, p| c.find_subcommand(p).unwrap().clone());
            let mut args = path.to_vec();
            args.push("--help");
            let text = help(&args);
            for long in sub.get_arguments().filter_map(|a| a.get_long()) {
                assert!(
                    text.contains(&format!("--{long}")),
                    "{path:?} --help lacks --{long}"
                );
            }
            assert!(text.contains("Examples:"), "{path:?}: {text}");
        }
        assert!(help(&["--help"]).contains("  dev "));
    }

    #[test]
    fn the_server_settings_never_show_a_secret() {
        let secret = "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t";
        let cli = Cli::try_parse_from(["jobledger", "--auth-hs256-secret", secret]).unwrap();
        assert!(!format!("{:?}", cli.serve).contains(secret));
        let config = cli.serve.into_config().unwrap();
        assert!(!format!("{config:?}").contains(secret));
    }
}
