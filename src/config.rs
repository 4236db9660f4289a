//! Typed settings from flags and environment variables (a flag wins over its variable).

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use sqlx::postgres::PgConnectOptions;

use crate::ledger::Limits;

/// Used when neither `--database-url`/`DATABASE_URL` nor any `PG*` variable is set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@localhost:5432/jobledger";

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
    pub serve: ServeArgs,

    /// Log format: `json` (one object per line) or `pretty`. Default: pretty on a
    /// terminal, json otherwise. Filter with RUST_LOG (default `info`).
    #[arg(
        long,
        global = true,
        env = "JOBLEDGER_LOG_FORMAT",
        value_enum,
        help_heading = "Logging"
    )]
    pub log_format: Option<LogFormat>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the gRPC API (the default when no subcommand is given).
    Serve(ServeArgs),
    /// Create the database if needed, run the migrations, and exit.
    Migrate(MigrateArgs),
    /// Check a running server's health; exit 0 when SERVING (for container health checks).
    Health(crate::cli::HealthArgs),
    /// Create, read and move jobs on a running server.
    Job(crate::cli::JobArgs),
    /// Load a server over gRPC (`bench compare`: side by side with pgbench running the
    /// same SQL); see BENCHMARKS.md.
    Bench(crate::bench::BenchArgs),
    /// Verify the ledger's invariants over the whole database; exit 0 when all hold,
    /// 1 when any is violated, 2 when the database cannot be read.
    Check(crate::check::CheckArgs),
    /// Zero-setup development server: a private PostgreSQL cluster of its own (initdb,
    /// removed on exit) unless a database is configured; prints how to connect.
    Dev(crate::dev::DevArgs),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

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
        if let Some(url) = &self.database_url {
            return url
                .parse()
                .context("--database-url / DATABASE_URL is not a valid PostgreSQL URL");
        }
        let libpq_vars = ["PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"];
        if !libpq_vars.iter().any(|v| std::env::var_os(v).is_some()) {
            return Ok(DEFAULT_DATABASE_URL.parse()?);
        }
        // PgConnectOptions::new() reads the PG* variables; fill in what they leave out
        // with the defaults of DEFAULT_DATABASE_URL.
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
}

#[derive(Args, Clone, Debug)]
pub struct MigrateArgs {
    #[command(subcommand)]
    pub action: Option<MigrateAction>,

    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// The ways between the Python stack's `jobs` table and the ledger
/// (docs/migrating-from-python.md). Without one, `migrate` only migrates (which imports
/// a `jobs` table the first time).
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
    pub fn connect_options(&self) -> anyhow::Result<PgConnectOptions> {
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

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Address the gRPC server listens on.
    #[arg(long, env = "JOBLEDGER_LISTEN_ADDR", default_value = "0.0.0.0:50051")]
    pub listen_addr: SocketAddr,

    /// Connections in the request pool (the old stack's 5 + 10 overflow).
    #[arg(long, env = "JOBLEDGER_POOL_SIZE", default_value_t = 15,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub pool_size: u32,

    /// How often the health probe runs `SELECT 1`, in milliseconds.
    #[arg(long, env = "JOBLEDGER_PROBE_INTERVAL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub probe_interval_ms: u64,

    /// How long one probe may take before it counts as failed, in milliseconds.
    #[arg(long, env = "JOBLEDGER_PROBE_TIMEOUT_MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub probe_timeout_ms: u64,

    /// How long a request waits for a database connection before UNAVAILABLE, in ms.
    #[arg(long, env = "JOBLEDGER_DB_ACQUIRE_TIMEOUT_MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub db_acquire_timeout_ms: u64,

    /// PostgreSQL statement_timeout of request connections, in ms (then UNAVAILABLE).
    #[arg(long, env = "JOBLEDGER_STATEMENT_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub statement_timeout_ms: u64,

    /// On SIGTERM/SIGINT, how long in-flight calls may take to finish, in ms.
    #[arg(long, env = "JOBLEDGER_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,

    /// How long start-up waits for the database (create + migrate) before giving up, in ms.
    #[arg(long, env = "JOBLEDGER_STARTUP_TIMEOUT_MS", default_value_t = 60_000)]
    pub startup_timeout_ms: u64,

    /// Serve gRPC server reflection (grpcurl then needs no .proto).
    #[arg(long, env = "JOBLEDGER_REFLECTION", default_value_t = true, action = ArgAction::Set)]
    pub reflection: bool,

    /// Largest request message accepted, in bytes (larger: RESOURCE_EXHAUSTED).
    #[arg(long, env = "JOBLEDGER_MAX_REQUEST_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_request_bytes: usize,

    /// Group commit: writer tasks that write concurrent CreateJob calls together, one
    /// statement and one commit per batch (0 turns it off).
    #[arg(long, env = "JOBLEDGER_GROUP_COMMIT_WRITERS", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(0..=256))]
    pub group_commit_writers: u16,

    /// Most CreateJob calls written in one group commit.
    #[arg(long, env = "JOBLEDGER_GROUP_COMMIT_MAX_BATCH", default_value_t = 256,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub group_commit_max_batch: u16,

    /// Most open StreamEvents streams per process (more: RESOURCE_EXHAUSTED).
    #[arg(long, env = "JOBLEDGER_MAX_STREAMS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams: u32,

    /// How often an idle stream re-reads the database without a notification, in ms.
    #[arg(long, env = "JOBLEDGER_STREAM_POLL_INTERVAL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub stream_poll_interval_ms: u64,

    #[command(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub tls: TlsArgs,

    #[command(flatten)]
    pub protection: ProtectionArgs,

    #[command(flatten)]
    pub metrics: crate::metrics::MetricsArgs,
}

/// Field limits (spec §3). Those of columns with a fixed width cannot exceed it.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Limits")]
pub struct LimitArgs {
    /// Longest `type`, in characters (column: varchar(100)).
    #[arg(long, env = "JOBLEDGER_MAX_TYPE_CHARS", default_value_t = 100,
          value_parser = clap::value_parser!(u16).range(1..=100))]
    pub max_type_chars: u16,
    /// Longest idempotency_key, requested_by, actor and request_id, in characters
    /// (columns: varchar(255)).
    #[arg(long, env = "JOBLEDGER_MAX_KEY_CHARS", default_value_t = 255,
          value_parser = clap::value_parser!(u16).range(1..=255))]
    pub max_key_chars: u16,
    /// Longest `stage`, in characters.
    #[arg(long, env = "JOBLEDGER_MAX_STAGE_CHARS", default_value_t = 100)]
    pub max_stage_chars: usize,
    /// Longest `error_code`, in characters (column: varchar(100)).
    #[arg(long, env = "JOBLEDGER_MAX_ERROR_CODE_CHARS", default_value_t = 100,
          value_parser = clap::value_parser!(u16).range(1..=100))]
    pub max_error_code_chars: u16,
    /// Longest `error_message`, in bytes.
    #[arg(long, env = "JOBLEDGER_MAX_ERROR_MESSAGE_BYTES", default_value_t = 8 * 1024)]
    pub max_error_message_bytes: usize,
    /// Largest params / result / detail, in bytes of JSON.
    #[arg(long, env = "JOBLEDGER_MAX_JSON_BYTES", default_value_t = 64 * 1024)]
    pub max_json_bytes: usize,
    /// Deepest nesting of params / result / detail (objects and arrays). At most 32:
    /// deeper Structs exceed the protobuf decoder's recursion limit.
    #[arg(long, env = "JOBLEDGER_MAX_JSON_DEPTH", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..=32))]
    pub max_json_depth: u16,
    /// Highest max_attempts a job may ask for.
    #[arg(long, env = "JOBLEDGER_MAX_ATTEMPTS_LIMIT", default_value_t = 1000,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub max_attempts_limit: i32,
}

impl LimitArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            type_chars: self.max_type_chars.into(),
            key_chars: self.max_key_chars.into(),
            stage_chars: self.max_stage_chars,
            error_code_chars: self.max_error_code_chars.into(),
            error_message_bytes: self.max_error_message_bytes,
            json_bytes: self.max_json_bytes,
            json_depth: self.max_json_depth.into(),
            max_attempts: self.max_attempts_limit,
        }
    }
}

/// Authentication (README "Authentication"): off unless a key is given. Then every
/// JobLedger call needs `authorization: Bearer <JWT>`; health and reflection stay open.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Authentication")]
pub struct AuthArgs {
    /// Shared secret verifying HS256 tokens (at least 32 bytes). Prefer the variable:
    /// a flag shows in the process list.
    #[arg(long, env = "JOBLEDGER_AUTH_HS256_SECRET", hide_env_values = true)]
    pub auth_hs256_secret: Option<Secret>,
    /// PEM file of a public key verifying RS256 (RSA) or ES256 (P-256) tokens.
    #[arg(long, env = "JOBLEDGER_AUTH_PUBLIC_KEY_FILE")]
    pub auth_public_key_file: Option<std::path::PathBuf>,
    /// JWKS file (`{"keys": [...]}`) of RS256/ES256 public keys, chosen by the token's `kid`.
    #[arg(long, env = "JOBLEDGER_AUTH_JWKS_FILE")]
    pub auth_jwks_file: Option<std::path::PathBuf>,
    /// Required `iss` of tokens (not checked when unset).
    #[arg(long, env = "JOBLEDGER_AUTH_ISSUER")]
    pub auth_issuer: Option<String>,
    /// Required `aud` of tokens (not checked when unset).
    #[arg(long, env = "JOBLEDGER_AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,
    /// Claim holding the caller's org id; a dotted path reaches into objects
    /// (`app_metadata.org_id`).
    #[arg(long, env = "JOBLEDGER_AUTH_ORG_CLAIM", default_value = "org_id")]
    pub auth_org_claim: String,
    /// Clock skew allowed when checking `exp` and `nbf`, in seconds.
    #[arg(long, env = "JOBLEDGER_AUTH_LEEWAY_SECS", default_value_t = 60)]
    pub auth_leeway_secs: u64,
}

/// TLS on the gRPC port (docs/security.md): on when a certificate and its key are given;
/// with a client CA, clients must present a certificate it signed (mutual TLS). Health
/// and reflection are served on the same TLS port. Files are read at start-up.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "TLS")]
pub struct TlsArgs {
    /// PEM certificate chain of the server, its own certificate first. Turns TLS on
    /// (with --tls-key-file).
    #[arg(long, env = "JOBLEDGER_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert-file (PKCS#8, PKCS#1 RSA or SEC1 EC).
    #[arg(long, env = "JOBLEDGER_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// PEM CA certificate(s): clients must present a certificate signed by one of them
    /// (mutual TLS); without one the handshake fails.
    #[arg(long, env = "JOBLEDGER_TLS_CLIENT_CA_FILE", requires = "tls_cert_file")]
    pub tls_client_ca_file: Option<std::path::PathBuf>,
    /// How long a client may take to complete the TLS handshake, in ms.
    #[arg(long, env = "JOBLEDGER_TLS_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub tls_handshake_timeout_ms: u64,
}

/// Protection of the server from its clients (docs/security.md).
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Connections and load")]
pub struct ProtectionArgs {
    /// Most unary JobLedger calls in progress at once in this process; more are refused
    /// at once with RESOURCE_EXHAUSTED (TOO_MANY_REQUESTS). StreamEvents (see
    /// --max-streams), health and reflection do not count. 0 = no cap.
    #[arg(long, env = "JOBLEDGER_MAX_INFLIGHT_REQUESTS", default_value_t = 1000)]
    pub max_inflight_requests: u32,
    /// Most concurrent calls (streams included) on one HTTP/2 connection
    /// (SETTINGS_MAX_CONCURRENT_STREAMS); a client's further calls wait for a free slot.
    #[arg(long, env = "JOBLEDGER_MAX_CONCURRENT_STREAMS_PER_CONNECTION", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams_per_connection: u32,
    /// The server PINGs each connection this often and closes it when the PING is not
    /// answered within --http2-keepalive-timeout-ms (dead peers, half-open connections),
    /// in ms. 0 = no PINGs.
    #[arg(
        long,
        env = "JOBLEDGER_HTTP2_KEEPALIVE_INTERVAL_MS",
        default_value_t = 60_000
    )]
    pub http2_keepalive_interval_ms: u64,
    /// How long a keepalive PING may go unanswered before the connection is closed, in ms.
    #[arg(long, env = "JOBLEDGER_HTTP2_KEEPALIVE_TIMEOUT_MS", default_value_t = 20_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub http2_keepalive_timeout_ms: u64,
    /// A connection this old gets an HTTP/2 GOAWAY: its open calls finish, new calls go
    /// over a new connection, so clients spread over replicas again. In ms; 0 = never.
    /// (tonic clients fail a call that meets the GOAWAY with CANCELLED; it did not run.)
    #[arg(long, env = "JOBLEDGER_MAX_CONNECTION_AGE_MS", default_value_t = 0)]
    pub max_connection_age_ms: u64,
    /// How long calls still open on a connection past its maximum age may go on before
    /// the connection is closed under them (they fail with UNAVAILABLE; streams resume
    /// from their last cursor), in ms. Unset: they may go on for ever.
    #[arg(long, env = "JOBLEDGER_MAX_CONNECTION_AGE_GRACE_MS")]
    pub max_connection_age_grace_ms: Option<u64>,
}

/// A secret setting: its `Debug` never shows the value.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

impl ServeArgs {
    pub fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.probe_interval_ms)
    }
    pub fn probe_timeout(&self) -> Duration {
        Duration::from_millis(self.probe_timeout_ms)
    }
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
    pub fn startup_timeout(&self) -> Duration {
        Duration::from_millis(self.startup_timeout_ms)
    }
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.db_acquire_timeout_ms)
    }
    pub fn statement_timeout(&self) -> Duration {
        Duration::from_millis(self.statement_timeout_ms)
    }
    pub fn feed_settings(&self) -> crate::feed::FeedSettings {
        crate::feed::FeedSettings {
            max_streams: self.max_streams as usize,
            poll_interval: Duration::from_millis(self.stream_poll_interval_ms),
            ..Default::default()
        }
    }

    /// Settings for a server on `database_url` (tests and embedding), everything else
    /// at its default, environment ignored.
    pub fn for_database(database_url: &str) -> ServeArgs {
        let mut args = Cli::parse_from(["jobledger"]).serve;
        args.database.database_url = Some(database_url.to_owned());
        // Metrics on loopback at a free port (`Application::metrics_addr`), so that
        // servers side by side do not contend for the default port.
        args.metrics.addr = Some(crate::metrics::MetricsAddr::At(([127, 0, 0, 1], 0).into()));
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_spec() {
        let cli = Cli::try_parse_from(["jobledger"]).unwrap();
        assert!(cli.command.is_none());
        let s = cli.serve;
        assert_eq!(s.pool_size, 15);
        assert_eq!(s.probe_interval_ms, 1000);
        assert_eq!(s.limits.limits(), Limits::default());
    }

    #[test]
    fn a_flag_wins_and_limits_are_bounded_by_columns() {
        let cli = Cli::try_parse_from(["jobledger", "serve", "--pool-size", "3"]).unwrap();
        match cli.command {
            Some(Command::Serve(s)) => assert_eq!(s.pool_size, 3),
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["jobledger", "--max-type-chars", "101"]).is_err());
        // Deeper Structs than 32 JSON levels exceed the protobuf decoder's limit.
        assert!(Cli::try_parse_from(["jobledger", "--max-json-depth", "33"]).is_err());
        assert!(Cli::try_parse_from(["jobledger", "--max-json-depth", "32"]).is_ok());
        assert!(Cli::try_parse_from(["jobledger", "--pool-size", "0"]).is_err());
    }
}
