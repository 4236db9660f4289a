//! The `jobledger` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use jobledger::{
    cli,
    config::{Cli, Command},
    startup::Application,
    telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|e| cli::exit_on_parse_error(e));
    match cli.command {
        Some(Command::Health(args)) => return cli::health(args).await,
        Some(Command::Job(args)) => return cli::job(args).await,
        Some(Command::Bench(args)) => return jobledger::bench::main(args).await,
        Some(Command::Check(args)) => return jobledger::check::main(args).await,
        // Their output is a JSON report on stdout, where the logs would go: no logs.
        Some(Command::Migrate(args)) if args.action.is_some() => return migrate_legacy(args).await,
        _ => {}
    }
    let telemetry = match telemetry::init_from_env(cli.log_format) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Some(Command::Migrate(args)) => migrate(args).await,
        Some(Command::Serve(args)) => serve(args).await,
        Some(Command::Dev(args)) => jobledger::dev::run(args, shutdown_signal()).await,
        None => serve(cli.serve).await,
        Some(Command::Health(_) | Command::Job(_) | Command::Bench(_) | Command::Check(_)) => {
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

async fn serve(args: jobledger::config::ServeArgs) -> anyhow::Result<()> {
    let app = Application::build(args).await?;
    app.run_until_stopped(shutdown_signal()).await
}

async fn migrate(args: jobledger::config::MigrateArgs) -> anyhow::Result<()> {
    let options = args.connect_options()?;
    for import in jobledger::legacy::migrate(&options).await? {
        tracing::info!(
            imported = import.imported,
            updated = import.updated,
            unchanged = import.unchanged,
            archived_as = %import.archived_as,
            "imported the legacy jobs table"
        );
    }
    tracing::info!("migrations applied");
    Ok(())
}

/// `migrate import-legacy` / `migrate export-legacy`: the report as JSON on stdout, or
/// the error on stderr and exit code 1.
async fn migrate_legacy(args: jobledger::config::MigrateArgs) -> ExitCode {
    use jobledger::{config::MigrateAction, legacy};
    let report = async {
        let options = args.connect_options()?;
        Ok::<_, anyhow::Error>(match args.action {
            Some(MigrateAction::ImportLegacy(_)) => {
                serde_json::to_value(legacy::import(&options).await?)?
            }
            Some(MigrateAction::ExportLegacy(_)) => {
                serde_json::to_value(legacy::export(&options).await?)?
            }
            None => unreachable!("plain `migrate` is handled by migrate()"),
        })
    };
    match report.await {
        Ok(report) => {
            println!("{report:#}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = async {
        tokio::signal::ctrl_c().await.ok();
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
}
