//! PostgreSQL: connecting, creating the database, migrations, and the ledger's queries.
//! Every statement the server runs is in `store/queries/*.sql` (ListJobs builds its
//! WHERE clause from the filter in use, in `list.rs`); SQLSTATEs become ledger errors
//! in `error.rs` and nowhere else.

mod dispatch;
mod error;
mod events;
mod group;
mod jobs;
mod list;
mod transitions;

pub(crate) use dispatch::{Claim, ClaimRequest, ClaimScope, QueueStats};
pub(crate) use events::notify_events;
pub use events::FeedScope;
pub(crate) use group::{GroupClaims, GroupCommit};
pub(crate) use list::{JobPage, TypeStatusCount};
pub(crate) use transitions::{TransitionOutcome, TransitionResult};

use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::{
    postgres::{PgArguments, PgConnectOptions, PgPoolOptions, PgRow},
    query::QueryAs,
    ConnectOptions, Connection, Executor, FromRow, PgConnection, PgPool, Postgres, Transaction,
};

use crate::ledger::LedgerError;

/// Used when neither a URL nor any `PG*` variable says where the database is.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@localhost:5432/jobledger";

/// Where the ledger's database is: `url`, else libpq's PGHOST, PGPORT, PGUSER,
/// PGPASSWORD and PGDATABASE, else [`DEFAULT_DATABASE_URL`] (whose parts also fill in
/// what the variables leave out).
pub fn connect_options(url: Option<&str>) -> anyhow::Result<PgConnectOptions> {
    if let Some(url) = url {
        return url
            .parse()
            .with_context(|| "not a valid PostgreSQL URL".to_owned());
    }
    let libpq_vars = ["PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"];
    if !libpq_vars.iter().any(|v| std::env::var_os(v).is_some()) {
        return Ok(DEFAULT_DATABASE_URL.parse()?);
    }
    // PgConnectOptions::new() reads the PG* variables.
    let mut options = PgConnectOptions::new();
    if std::env::var_os("PGHOST").is_none() {
        options = options.host("localhost");
    }
    if std::env::var_os("PGUSER").is_none() {
        options = options.username("postgres");
    }
    if std::env::var_os("PGDATABASE").is_none() {
        options = options.database("jobledger");
    }
    Ok(options)
}

/// The migrations, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The ledger's storage: a connection pool on the ledger database.
#[derive(Clone, Debug)]
pub(crate) struct Store {
    pool: PgPool,
    /// The session's statement timeout; a call's deadline only ever shortens it.
    statement_timeout: Duration,
}

/// How the request pool behaves.
#[derive(Clone, Debug)]
pub(crate) struct PoolSettings {
    pub size: u32,
    /// How long a request waits for a connection before it gets UNAVAILABLE.
    pub acquire_timeout: Duration,
    /// The statement timeout the connections were opened with (`tune_options`).
    pub statement_timeout: Duration,
}

impl Store {
    /// A pool that connects on demand: requests made while the database is away fail
    /// with UNAVAILABLE and succeed again once it is back, without a restart.
    pub(crate) fn connect_lazy(options: PgConnectOptions, settings: &PoolSettings) -> Store {
        let pool = PgPoolOptions::new()
            .max_connections(settings.size)
            .min_connections(0)
            .acquire_timeout(settings.acquire_timeout)
            .test_before_acquire(false)
            .connect_lazy_with(options);
        Store {
            pool,
            statement_timeout: settings.statement_timeout,
        }
    }

    /// A store on one connection of its own, named `name` in `pg_stat_activity`: for a
    /// background task, which then neither takes a request's connection nor waits for one.
    pub(crate) fn single(
        options: PgConnectOptions,
        name: &str,
        statement_timeout: Duration,
    ) -> Store {
        Store {
            pool: single_connection_pool(options, name),
            statement_timeout,
        }
    }

    /// Connections of the request pool now.
    pub(crate) fn pool_stats(&self) -> PoolStats {
        let open = self.pool.size() as usize;
        let idle = self.pool.num_idle().min(open);
        PoolStats {
            in_use: open - idle,
            idle,
            max: self.pool.options().get_max_connections(),
        }
    }

    /// Closes the pool, waiting for connections in use to come back.
    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }

    /// A transaction whose statements PostgreSQL cancels after `timeout` (`SET LOCAL
    /// statement_timeout`, sent with the BEGIN in one round trip).
    pub(crate) async fn begin_with_timeout(
        &self,
        timeout: Duration,
    ) -> Result<Transaction<'static, Postgres>, LedgerError> {
        self.begin_with(Some(timeout), "").await
    }

    /// A transaction; with a deadline, its statements are cancelled by PostgreSQL when
    /// the deadline passes.
    pub(crate) async fn begin(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Transaction<'static, Postgres>, LedgerError> {
        self.begin_with(self.timeout_for(deadline)?, "").await
    }

    /// A claim's transaction (as `begin`): sorting is disabled in it, so that the planner
    /// walks `idx_job_claim` in claim order rather than sorting a queue's whole backlog —
    /// which it would otherwise choose whenever its statistics think a queue is small (a
    /// new job type, a table grown since the last ANALYZE), locking rows as it goes.
    pub(crate) async fn begin_claim(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Transaction<'static, Postgres>, LedgerError> {
        let timeout = self.timeout_for(deadline)?;
        self.begin_with(timeout, "; SET LOCAL enable_sort = off")
            .await
    }

    /// BEGIN, a statement timeout when there is one, and `settings` (more `; SET LOCAL`
    /// statements), in one round trip.
    async fn begin_with(
        &self,
        timeout: Option<Duration>,
        settings: &str,
    ) -> Result<Transaction<'static, Postgres>, LedgerError> {
        if timeout.is_none() && settings.is_empty() {
            return Ok(self.pool.begin().await?);
        }
        // statement_timeout is in whole milliseconds; 0 would mean "no timeout". Rounded
        // up: rounded down, PostgreSQL could cancel a statement just before the caller's
        // deadline, and the call would report UNAVAILABLE instead of DEADLINE_EXCEEDED.
        let timeout = timeout
            .map(|t| {
                let ms = t.as_nanos().div_ceil(1_000_000).max(1);
                format!("; SET LOCAL statement_timeout = {ms}")
            })
            .unwrap_or_default();
        Ok(self
            .pool
            .begin_with(format!("BEGIN{timeout}{settings}"))
            .await?)
    }

    /// The statement timeout a caller's deadline asks for: None when there is no
    /// deadline or it is later than the configured statement timeout (which then applies
    /// as always).
    fn timeout_for(&self, deadline: Option<Instant>) -> Result<Option<Duration>, LedgerError> {
        let Some(deadline) = deadline else {
            return Ok(None);
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(LedgerError::DeadlineExceeded);
        }
        Ok((left < self.statement_timeout).then_some(left))
    }

    /// A transaction whose statements PostgreSQL cancels when the caller's deadline
    /// passes, so the database stops working for a caller that is gone — a lock wait
    /// included. None when `timeout_for` finds no timeout to set: run without a
    /// transaction of its own.
    pub(crate) async fn deadline_transaction(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Option<Transaction<'static, Postgres>>, LedgerError> {
        match self.timeout_for(deadline)? {
            Some(timeout) => self.begin_with_timeout(timeout).await.map(Some),
            None => Ok(None),
        }
    }
}

/// The request pool's connections (for the metrics).
pub(crate) struct PoolStats {
    pub in_use: usize,
    pub idle: usize,
    pub max: u32,
}

impl Store {
    /// Runs a read-only query; with a caller's deadline, inside `deadline_transaction`,
    /// so PostgreSQL stops it when the caller has gone.
    pub(crate) async fn fetch_all_within<'q, O>(
        &self,
        query: QueryAs<'q, Postgres, O, PgArguments>,
        deadline: Option<Instant>,
    ) -> Result<Vec<O>, LedgerError>
    where
        O: for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        let rows = match self.deadline_transaction(deadline).await? {
            Some(mut tx) => {
                let rows = query.fetch_all(&mut *tx).await;
                tx.commit().await.and(rows)
            }
            None => query.fetch_all(&self.pool).await,
        };
        past_deadline(rows.map_err(LedgerError::from), deadline)
    }
}

/// A database failure once the caller's deadline has passed is the deadline's doing (the
/// statement timeout it set cancelled the statement): the call failed with
/// `DeadlineExceeded`, nothing written.
pub(crate) fn past_deadline<T>(
    result: Result<T, LedgerError>,
    deadline: Option<Instant>,
) -> Result<T, LedgerError> {
    match result {
        Err(LedgerError::Unavailable { .. }) if deadline.is_some_and(|d| Instant::now() >= d) => {
            Err(LedgerError::DeadlineExceeded)
        }
        other => other,
    }
}

/// Creates the database named in `options` if it does not exist, then runs the
/// migrations. Safe when several replicas start at once: a lost creation race is
/// not an error, and sqlx serializes migrators with an advisory lock.
pub async fn prepare_database(options: &PgConnectOptions) -> anyhow::Result<()> {
    // Not bound by the requests' statement timeout (`tune_options`): creating the
    // database and migrating a large table take longer than a request may, and start-up
    // has its own bound (--startup-timeout-ms). A later `-c` wins over an earlier one.
    let options = &options.clone().options([("statement_timeout", "0")]);
    create_database_if_missing(options).await?;
    // A one-connection pool rather than a bare connection: `Migrator::run` on a pool
    // gives a `Send` future, so start-up can run on any task.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await
        .context("connecting to the ledger database")?;
    MIGRATOR.run(&pool).await.context("running migrations")?;
    pool.close().await;
    Ok(())
}

async fn create_database_if_missing(options: &PgConnectOptions) -> anyhow::Result<()> {
    match PgConnection::connect_with(options).await {
        Ok(conn) => {
            conn.close().await.ok();
            return Ok(());
        }
        // 3D000 invalid_catalog_name: the database does not exist (yet).
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {}
        Err(e) => return Err(e).context("connecting to the ledger database"),
    }
    let name = options
        .get_database()
        .context("the database URL names no database")?
        .to_owned();
    let mut admin = PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .context("connecting to the `postgres` database to create the ledger database")?;
    let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
    match admin.execute(sql.as_str()).await {
        Ok(_) => tracing::info!(database = %name, "created database"),
        // 42P04 duplicate_database, or 23505 when a concurrent CREATE won the race on
        // pg_database's unique index: either way the database now exists.
        Err(sqlx::Error::Database(e))
            if matches!(e.code().as_deref(), Some("42P04") | Some("23505")) => {}
        Err(e) => return Err(e).context("creating the ledger database"),
    }
    admin.close().await.ok();
    Ok(())
}

/// A pool of one connection, opened on demand, for a background task that must never
/// take a request connection (the feed's announcer and listener). `name` shows in
/// `pg_stat_activity`.
pub(crate) fn single_connection_pool(options: PgConnectOptions, name: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy_with(options.application_name(name))
}

/// The connect options with logging of every statement turned down (the ledger's
/// statements are logged by its own spans) and a name visible in `pg_stat_activity`.
pub(crate) fn tune_options(
    options: PgConnectOptions,
    statement_timeout: Duration,
) -> PgConnectOptions {
    options
        .application_name("jobledger")
        .options([(
            "statement_timeout",
            format!("{}", statement_timeout.as_millis()),
        )])
        .log_statements(log::LevelFilter::Debug)
        .log_slow_statements(log::LevelFilter::Warn, Duration::from_secs(1))
}
