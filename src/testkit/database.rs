//! A database of its own on a shared PostgreSQL, dropped when it goes away, so tests and
//! benchmarks run side by side and leave nothing behind.

use anyhow::Context;
use sqlx::{postgres::PgConnectOptions, ConnectOptions, Connection, Executor, PgConnection};

/// The PostgreSQL server tests create their databases on: `TEST_DATABASE_URL`, else the
/// local one (`postgres://postgres@127.0.0.1:5432`).
pub fn base_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// A fresh database name on the server at `base` (created by whoever uses it first, or
/// by [`ScratchDb::create`]); the database is dropped (`WITH (FORCE)`) on drop.
pub struct ScratchDb {
    base: String,
    pub name: String,
}

impl ScratchDb {
    /// A name `<prefix><random>` on [`base_url`].
    pub fn new() -> ScratchDb {
        ScratchDb::on(&base_url(), "jl_test_")
    }

    /// A name `<prefix><random>` on the server at `base`.
    pub fn on(base: &str, prefix: &str) -> ScratchDb {
        ScratchDb {
            base: base.trim_end_matches('/').to_owned(),
            name: format!("{prefix}{}", uuid::Uuid::new_v4().simple()),
        }
    }

    pub fn url(&self) -> String {
        format!("{}/{}", self.base, self.name)
    }

    pub fn options(&self) -> anyhow::Result<PgConnectOptions> {
        self.url()
            .parse()
            .with_context(|| format!("{:?} is not a PostgreSQL URL", self.base))
    }

    /// Creates the database now (a server would create it at start-up anyway).
    pub async fn create(&self) -> anyhow::Result<()> {
        let mut admin = self.admin().await.context("connecting to PostgreSQL")?;
        admin
            .execute(format!("CREATE DATABASE \"{}\"", self.name).as_str())
            .await
            .with_context(|| format!("creating database {}", self.name))?;
        admin.close().await.ok();
        Ok(())
    }

    async fn admin(&self) -> anyhow::Result<PgConnection> {
        admin(&self.base).await
    }
}

async fn admin(base: &str) -> anyhow::Result<PgConnection> {
    let options: PgConnectOptions = base
        .parse()
        .with_context(|| format!("{base:?} is not a PostgreSQL URL"))?;
    let options = options.database("postgres").disable_statement_logging();
    Ok(PgConnection::connect_with(&options).await?)
}

async fn drop_database(base: &str, name: &str) {
    if let Ok(mut admin) = admin(base).await {
        let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        let _ = admin.execute(sql.as_str()).await;
        let _ = admin.close().await;
    }
}

impl Default for ScratchDb {
    fn default() -> Self {
        ScratchDb::new()
    }
}

impl Drop for ScratchDb {
    /// From a thread of its own: Drop cannot await, and the caller's runtime may already
    /// be shutting down.
    fn drop(&mut self) {
        let (base, name) = (self.base.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(drop_database(&base, &name));
            }
        })
        .join();
    }
}
