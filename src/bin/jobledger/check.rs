//! `jobledger check`: the invariant checker of the library run over a database, its
//! report on stdout.

use std::{process::ExitCode, time::Duration};

use clap::{Args, ValueEnum};
use jobledger::tools::check::check_with;
use sqlx::postgres::PgPoolOptions;

use crate::DatabaseArgs;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum CheckOutput {
    Text,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// `text` (one line per invariant) or `json` (the report as one object).
    #[arg(long, value_enum, default_value = "text")]
    pub output: CheckOutput,
    /// Give up connecting after this many milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
    /// A RUNNING job whose lease expired longer ago than this (in ms) is a violation: the
    /// rescuer should have moved it (within ~2 s).
    #[arg(long, default_value_t = jobledger::tools::check::DEFAULT_RESCUE_WINDOW.as_millis() as u64)]
    pub rescue_window_ms: u64,
}

/// Exit codes of `jobledger check`.
pub mod exit {
    pub const ALL_HOLD: u8 = 0;
    pub const VIOLATED: u8 = 1;
    pub const CANNOT_CHECK: u8 = 2;
}

/// `jobledger check`: the report on stdout; exit 0 when every invariant holds, 1 when
/// any is violated, 2 when the database cannot be reached or read.
pub async fn run(args: CheckArgs) -> ExitCode {
    let options = match args.database.connect_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(exit::CANNOT_CHECK);
        }
    };
    let place = format!(
        "database {} on {}:{}",
        options.get_database().unwrap_or("(default)"),
        options.get_host(),
        options.get_port()
    );
    let pool = match PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(args.connect_timeout_ms))
        .connect_with(options)
        .await
    {
        Ok(pool) => pool,
        Err(e) => {
            eprintln!("error: cannot connect to {place}: {e}");
            return ExitCode::from(exit::CANNOT_CHECK);
        }
    };
    let window = Duration::from_millis(args.rescue_window_ms);
    let report = match check_with(&pool, window).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("error: cannot check {place}: {e}");
            return ExitCode::from(exit::CANNOT_CHECK);
        }
    };
    pool.close().await;
    match args.output {
        CheckOutput::Text => print!("{place}: {}", report.to_text()),
        CheckOutput::Json => match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(exit::CANNOT_CHECK);
            }
        },
    }
    ExitCode::from(if report.ok {
        exit::ALL_HOLD
    } else {
        exit::VIOLATED
    })
}
