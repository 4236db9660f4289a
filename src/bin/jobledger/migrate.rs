//! `jobledger migrate`: create the database if needed and run the migrations (which
//! import the Python stack's `jobs` table the first time), or move data between the
//! ledger and the old stack's table (docs/migrating-from-python.md).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use jobledger::tools::legacy;
use sqlx::postgres::PgConnectOptions;

use crate::DatabaseArgs;

#[derive(Args, Clone, Debug)]
pub struct MigrateArgs {
    #[command(subcommand)]
    pub action: Option<MigrateAction>,

    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// The ways between the Python stack's `jobs` table and the ledger. Without one,
/// `migrate` only migrates (which imports a `jobs` table the first time).
#[derive(Subcommand, Clone, Debug)]
pub enum MigrateAction {
    /// Migrate, then import a `jobs` table that appeared after the first migration (the
    /// old stack ran again after export-legacy). Prints what was imported, as JSON.
    ImportLegacy(LegacyArgs),
    /// Write every job into a new table `jobs` in the old stack's shape, so the old stack
    /// can restart on this database. `job` and `job_event` stay as they are. Prints what
    /// was written and what the old shape cannot hold, as JSON.
    ExportLegacy(LegacyArgs),
}

#[derive(Args, Clone, Debug)]
pub struct LegacyArgs {
    /// PostgreSQL URL; wins over `jobledger migrate --database-url` and DATABASE_URL.
    #[arg(long)]
    pub database_url: Option<String>,
}

impl MigrateArgs {
    /// Where the ledger's database is: the subcommand's `--database-url`, else
    /// `migrate`'s (flag, DATABASE_URL, PG* variables, default).
    fn connect_options(&self) -> anyhow::Result<PgConnectOptions> {
        let url = match &self.action {
            Some(MigrateAction::ImportLegacy(a) | MigrateAction::ExportLegacy(a)) => {
                a.database_url.clone()
            }
            None => None,
        };
        match url {
            Some(url) => DatabaseArgs {
                database_url: Some(url),
            }
            .connect_options(),
            None => self.database.connect_options(),
        }
    }
}

/// Plain `migrate`: logs what it did.
pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let options = args.connect_options()?;
    for import in legacy::migrate(&options).await? {
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
pub async fn run_legacy(args: MigrateArgs) -> ExitCode {
    let report = async {
        let options = args.connect_options()?;
        Ok::<_, anyhow::Error>(match args.action {
            Some(MigrateAction::ImportLegacy(_)) => {
                serde_json::to_value(legacy::import(&options).await?)?
            }
            Some(MigrateAction::ExportLegacy(_)) => {
                serde_json::to_value(legacy::export(&options).await?)?
            }
            None => anyhow::bail!("plain `migrate` reports through its logs"),
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
