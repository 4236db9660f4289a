//! `jobledger serve` (also the default without a subcommand): the server's flags and
//! environment variables (a flag wins over its variable), turned into the server's typed
//! [`Config`] in one conversion, [`ServeArgs::into_config`]. docs/configuration.md lists
//! them all.

use std::{future::Future, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use clap::{ArgAction, Args};
use jobledger::{
    dispatch::DispatchSettings,
    feed::FeedSettings,
    ledger::Limits,
    server::{
        config::{
            AuthConfig, ConnectionConfig, GroupCommitConfig, HttpAddr, HttpConfig, MetricsAddr,
            MetricsConfig, Secret, TlsConfig,
        },
        Application, Config,
    },
};

use crate::DatabaseArgs;

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
    /// statement and one commit per batch; as many for TransitionJob and for ClaimJobs
    /// (concurrent claims of the same queues in one transaction). 0 turns it off.
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
    pub dispatch: DispatchArgs,

    #[command(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub tls: TlsArgs,

    #[command(flatten)]
    pub connections: ConnectionArgs,

    #[command(flatten)]
    pub metrics: MetricsArgs,

    #[command(flatten)]
    pub http: HttpArgs,
}

/// Work dispatch (docs/dispatch.md).
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Dispatch")]
pub struct DispatchArgs {
    /// Most ClaimJobs calls waiting for work at once in this process; more are refused
    /// with RESOURCE_EXHAUSTED (TOO_MANY_WAITING_CLAIMS).
    #[arg(long, env = "JOBLEDGER_MAX_WAITING_CLAIMS", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_waiting_claims: u32,
    /// How often a waiting claim looks again without an announcement (a safety net for
    /// jobs written by another program), in ms.
    #[arg(long, env = "JOBLEDGER_CLAIM_RECHECK_INTERVAL_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub claim_recheck_interval_ms: u64,
    /// How often the rescuer looks for RUNNING jobs whose lease expired, in ms.
    #[arg(long, env = "JOBLEDGER_RESCUE_INTERVAL_MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub rescue_interval_ms: u64,
}

impl DispatchArgs {
    fn settings(&self) -> DispatchSettings {
        DispatchSettings {
            max_waiting_claims: self.max_waiting_claims as usize,
            recheck_interval: Duration::from_millis(self.claim_recheck_interval_ms),
            rescue_interval: Duration::from_millis(self.rescue_interval_ms),
        }
    }
}

/// Field limits (spec §3). Those of columns with a fixed width cannot exceed it.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Limits")]
pub struct LimitArgs {
    /// Longest `type`, in characters (column: varchar(100)).
    #[arg(long, env = "JOBLEDGER_MAX_TYPE_CHARS", default_value_t = Limits::DEFAULT.type_chars,
          value_parser = chars_up_to(Limits::MAX.type_chars))]
    pub max_type_chars: usize,
    /// Longest idempotency_key, requested_by, actor and request_id, in characters
    /// (columns: varchar(255)).
    #[arg(long, env = "JOBLEDGER_MAX_KEY_CHARS", default_value_t = Limits::DEFAULT.key_chars,
          value_parser = chars_up_to(Limits::MAX.key_chars))]
    pub max_key_chars: usize,
    /// Longest `stage`, in characters.
    #[arg(long, env = "JOBLEDGER_MAX_STAGE_CHARS", default_value_t = Limits::DEFAULT.stage_chars)]
    pub max_stage_chars: usize,
    /// Longest `error_code`, in characters (column: varchar(100)).
    #[arg(long, env = "JOBLEDGER_MAX_ERROR_CODE_CHARS",
          default_value_t = Limits::DEFAULT.error_code_chars,
          value_parser = chars_up_to(Limits::MAX.error_code_chars))]
    pub max_error_code_chars: usize,
    /// Longest `error_message`, in bytes.
    #[arg(long, env = "JOBLEDGER_MAX_ERROR_MESSAGE_BYTES",
          default_value_t = Limits::DEFAULT.error_message_bytes)]
    pub max_error_message_bytes: usize,
    /// Largest params / result / detail, in bytes of JSON.
    #[arg(long, env = "JOBLEDGER_MAX_JSON_BYTES", default_value_t = Limits::DEFAULT.json_bytes)]
    pub max_json_bytes: usize,
    /// Deepest nesting of params / result / detail (objects and arrays). At most 32:
    /// deeper Structs exceed the protobuf decoder's recursion limit.
    #[arg(long, env = "JOBLEDGER_MAX_JSON_DEPTH", default_value_t = Limits::DEFAULT.json_depth,
          value_parser = chars_up_to(Limits::MAX.json_depth))]
    pub max_json_depth: usize,
    /// Highest max_attempts a job may ask for.
    #[arg(long, env = "JOBLEDGER_MAX_ATTEMPTS_LIMIT", default_value_t = Limits::DEFAULT.max_attempts,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub max_attempts_limit: i32,
}

/// A count from 1 to `max`.
fn chars_up_to(max: usize) -> impl clap::builder::TypedValueParser<Value = usize> {
    use clap::builder::TypedValueParser;
    clap::value_parser!(u64)
        .range(1..=max as u64)
        .map(|n| n as usize)
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            type_chars: self.max_type_chars,
            key_chars: self.max_key_chars,
            stage_chars: self.max_stage_chars,
            error_code_chars: self.max_error_code_chars,
            error_message_bytes: self.max_error_message_bytes,
            json_bytes: self.max_json_bytes,
            json_depth: self.max_json_depth,
            max_attempts: self.max_attempts_limit,
        }
    }
}

/// Authentication (docs/security.md): off unless a key is given. Then every JobLedger
/// call needs `authorization: Bearer <JWT>`; health and reflection stay open.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Authentication")]
pub struct AuthArgs {
    /// Shared secret verifying HS256 tokens (at least 32 bytes). Prefer the variable:
    /// a flag shows in the process list.
    #[arg(long, env = "JOBLEDGER_AUTH_HS256_SECRET", hide_env_values = true)]
    pub auth_hs256_secret: Option<Secret>,
    /// PEM file of a public key verifying RS256 (RSA) or ES256 (P-256) tokens.
    #[arg(long, env = "JOBLEDGER_AUTH_PUBLIC_KEY_FILE")]
    pub auth_public_key_file: Option<PathBuf>,
    /// JWKS file (`{"keys": [...]}`) of RS256/ES256 public keys, chosen by the token's `kid`.
    #[arg(long, env = "JOBLEDGER_AUTH_JWKS_FILE")]
    pub auth_jwks_file: Option<PathBuf>,
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
    /// The scope (in a token's `scope` or `scp` claim) of workers' tokens: they may act in
    /// every org and claim from all of them (ClaimJobs all_orgs), and need no org claim.
    #[arg(
        long,
        env = "JOBLEDGER_AUTH_WORKER_SCOPE",
        default_value = "jobledger.worker"
    )]
    pub auth_worker_scope: String,
    /// Clock skew allowed when checking `exp` and `nbf`, in seconds.
    #[arg(long, env = "JOBLEDGER_AUTH_LEEWAY_SECS", default_value_t = 60)]
    pub auth_leeway_secs: u64,
}

impl AuthArgs {
    /// None when no key is given and nothing else is set (authentication off); an issuer
    /// or audience without a key is kept, for `Config::validate` to refuse.
    fn config(&self) -> Option<AuthConfig> {
        let auth = AuthConfig {
            hs256_secret: self.auth_hs256_secret.clone(),
            public_key_file: self.auth_public_key_file.clone(),
            jwks_file: self.auth_jwks_file.clone(),
            issuer: self.auth_issuer.clone(),
            audience: self.auth_audience.clone(),
            org_claim: self.auth_org_claim.clone(),
            worker_scope: self.auth_worker_scope.clone(),
            leeway: Duration::from_secs(self.auth_leeway_secs),
        };
        (auth.has_key() || auth.issuer.is_some() || auth.audience.is_some()).then_some(auth)
    }
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
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file (PKCS#8, PKCS#1 RSA or SEC1 EC).
    #[arg(long, env = "JOBLEDGER_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificate(s): clients must present a certificate signed by one of them
    /// (mutual TLS); without one the handshake fails.
    #[arg(long, env = "JOBLEDGER_TLS_CLIENT_CA_FILE", requires = "tls_cert_file")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// How long a client may take to complete the TLS handshake, in ms.
    #[arg(long, env = "JOBLEDGER_TLS_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub tls_handshake_timeout_ms: u64,
}

impl TlsArgs {
    fn config(&self) -> Option<TlsConfig> {
        // clap's `requires` makes the two come together.
        let (cert, key) = (self.tls_cert_file.clone()?, self.tls_key_file.clone()?);
        Some(TlsConfig {
            client_ca_file: self.tls_client_ca_file.clone(),
            handshake_timeout: Duration::from_millis(self.tls_handshake_timeout_ms),
            ..TlsConfig::new(cert, key)
        })
    }
}

/// Protection of the server from its clients (docs/security.md).
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Connections and load")]
pub struct ConnectionArgs {
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

impl ConnectionArgs {
    fn config(&self) -> ConnectionConfig {
        let positive = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        ConnectionConfig {
            max_inflight_requests: (self.max_inflight_requests > 0)
                .then_some(self.max_inflight_requests),
            max_concurrent_streams_per_connection: self.max_concurrent_streams_per_connection,
            http2_keepalive_interval: positive(self.http2_keepalive_interval_ms),
            http2_keepalive_timeout: Duration::from_millis(self.http2_keepalive_timeout_ms),
            max_connection_age: positive(self.max_connection_age_ms),
            max_connection_age_grace: self.max_connection_age_grace_ms.map(Duration::from_millis),
        }
    }
}

/// Metrics settings.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Metrics")]
pub struct MetricsArgs {
    /// Address of the Prometheus endpoint (`GET /metrics`), or `off`. Default
    /// 0.0.0.0:9090: left at the default, a port in use only logs a warning; an address
    /// given here must bind, or start-up fails.
    #[arg(
        long = "metrics-addr",
        env = "JOBLEDGER_METRICS_ADDR",
        value_name = "ADDR|off"
    )]
    pub addr: Option<MetricsAddrArg>,

    /// Most job types with a `type` label of their own on jobledger_transitions_total
    /// (the first ones seen); transitions of later types count as `(other)`.
    #[arg(long = "metrics-max-job-types", env = "JOBLEDGER_METRICS_MAX_JOB_TYPES",
          default_value_t = 50, value_parser = clap::value_parser!(u16).range(0..=1000))]
    pub max_job_types: u16,

    /// Shortest time between two counts of all jobs by status for jobledger_jobs (one
    /// query over the whole `job` table), in ms; scrapes in between get the last count.
    #[arg(long = "metrics-job-count-interval-ms", env = "JOBLEDGER_METRICS_JOB_COUNT_INTERVAL_MS",
          default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..))]
    pub job_count_interval_ms: u64,
}

/// `--metrics-addr`: an address, or `off` (also an empty value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsAddrArg(MetricsAddr);

impl FromStr for MetricsAddrArg {
    type Err = String;
    fn from_str(s: &str) -> Result<MetricsAddrArg, String> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("off") {
            return Ok(MetricsAddrArg(MetricsAddr::Off));
        }
        s.parse()
            .map(|addr| MetricsAddrArg(MetricsAddr::At(addr)))
            .map_err(|_| {
                format!("{s:?} is not an address like 0.0.0.0:9090 (or `off` to serve no metrics)")
            })
    }
}

impl MetricsArgs {
    fn config(&self) -> MetricsConfig {
        MetricsConfig {
            addr: self.addr.map_or(MetricsAddr::Default, |a| a.0),
            max_job_types: self.max_job_types.into(),
            job_count_interval: Duration::from_millis(self.job_count_interval_ms),
        }
    }
}

/// The HTTP/JSON API (docs/http.md).
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "HTTP/JSON API")]
pub struct HttpArgs {
    /// Address of the HTTP/JSON API (HTTP/1.1 and HTTP/2), or `off`. Default
    /// 0.0.0.0:8080: left at the default, a port in use only logs a warning; an address
    /// given here must bind, or start-up fails.
    #[arg(
        long = "http-addr",
        env = "JOBLEDGER_HTTP_ADDR",
        value_name = "ADDR|off"
    )]
    pub http_addr: Option<HttpAddrArg>,

    /// How often an idle Server-Sent Events stream gets a heartbeat comment, in ms (so
    /// proxies that cut silent connections keep it open).
    #[arg(long = "http-sse-heartbeat-ms", env = "JOBLEDGER_HTTP_SSE_HEARTBEAT_MS",
          default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub http_sse_heartbeat_ms: u64,
}

/// `--http-addr`: an address, or `off` (also an empty value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpAddrArg(HttpAddr);

impl FromStr for HttpAddrArg {
    type Err = String;
    fn from_str(s: &str) -> Result<HttpAddrArg, String> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("off") {
            return Ok(HttpAddrArg(HttpAddr::Off));
        }
        s.parse()
            .map(|addr| HttpAddrArg(HttpAddr::At(addr)))
            .map_err(|_| {
                format!("{s:?} is not an address like 0.0.0.0:8080 (or `off` to serve no HTTP API)")
            })
    }
}

impl HttpArgs {
    fn config(&self) -> HttpConfig {
        HttpConfig {
            addr: self.http_addr.map_or(HttpAddr::Default, |a| a.0),
            sse_heartbeat: Duration::from_millis(self.http_sse_heartbeat_ms),
        }
    }
}

impl ServeArgs {
    /// The server's configuration: the one place flags become settings.
    pub fn into_config(self) -> anyhow::Result<Config> {
        let ms = Duration::from_millis;
        Ok(Config {
            database: self.database.connect_options()?,
            listen_addr: self.listen_addr,
            pool_size: self.pool_size,
            probe_interval: ms(self.probe_interval_ms),
            probe_timeout: ms(self.probe_timeout_ms),
            db_acquire_timeout: ms(self.db_acquire_timeout_ms),
            statement_timeout: ms(self.statement_timeout_ms),
            drain_timeout: ms(self.drain_timeout_ms),
            startup_timeout: ms(self.startup_timeout_ms),
            reflection: self.reflection,
            max_request_bytes: self.max_request_bytes,
            group_commit: (self.group_commit_writers > 0).then(|| GroupCommitConfig {
                writers: self.group_commit_writers.into(),
                max_batch: self.group_commit_max_batch.into(),
            }),
            feed: FeedSettings {
                max_streams: self.max_streams as usize,
                poll_interval: ms(self.stream_poll_interval_ms),
                ..FeedSettings::default()
            },
            dispatch: self.dispatch.settings(),
            limits: self.limits.limits(),
            auth: self.auth.config(),
            tls: self.tls.config(),
            connections: self.connections.config(),
            metrics: self.metrics.config(),
            http: self.http.config(),
        })
    }
}

/// Serves until SIGTERM/SIGINT, then drains.
pub async fn run(args: ServeArgs, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    let app = Application::build(args.into_config()?).await?;
    app.run_until_stopped(shutdown).await
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::{Cli, Command};

    fn serve(args: &[&str]) -> Config {
        let cli = Cli::try_parse_from(args).unwrap();
        let serve = match cli.command {
            Some(Command::Serve(s)) => s,
            None => cli.serve,
            Some(other) => panic!("{other:?}"),
        };
        serve.into_config().unwrap()
    }

    #[test]
    fn defaults_are_the_configs_defaults() {
        let from_flags = serve(&["jobledger"]);
        let defaults = Config::new(from_flags.database.clone());
        assert_eq!(format!("{from_flags:?}"), format!("{defaults:?}"));
        assert_eq!(from_flags.pool_size, 15);
        assert_eq!(from_flags.limits, Limits::default());
    }

    #[test]
    fn a_flag_wins_and_limits_are_bounded_by_columns() {
        assert_eq!(
            serve(&["jobledger", "serve", "--pool-size", "3"]).pool_size,
            3
        );
        assert!(Cli::try_parse_from(["jobledger", "--max-type-chars", "101"]).is_err());
        // Deeper Structs than 32 JSON levels exceed the protobuf decoder's limit.
        assert!(Cli::try_parse_from(["jobledger", "--max-json-depth", "33"]).is_err());
        assert!(Cli::try_parse_from(["jobledger", "--max-json-depth", "32"]).is_ok());
        assert!(Cli::try_parse_from(["jobledger", "--pool-size", "0"]).is_err());
    }

    #[test]
    fn metrics_addr_is_an_address_or_off() {
        let parse = |s: &str| s.parse::<MetricsAddrArg>().map(|a| a.0);
        assert_eq!(parse("off"), Ok(MetricsAddr::Off));
        assert_eq!(parse("OFF"), Ok(MetricsAddr::Off));
        assert_eq!(parse(""), Ok(MetricsAddr::Off));
        assert_eq!(
            parse("127.0.0.1:9100"),
            Ok(MetricsAddr::At("127.0.0.1:9100".parse().unwrap()))
        );
        let err = parse("localhost").unwrap_err();
        assert!(err.contains("off"), "{err}");
        assert_eq!(
            serve(&["jobledger", "--metrics-addr", "off"]).metrics.addr,
            MetricsAddr::Off
        );
        assert!(Cli::try_parse_from(["jobledger", "--metrics-addr", "nowhere"]).is_err());
        let defaults = serve(&["jobledger"]).metrics;
        assert_eq!(defaults.addr, MetricsAddr::Default);
        assert_eq!(defaults.max_job_types, 50);
        assert_eq!(defaults.job_count_interval, Duration::from_secs(5));
    }

    #[test]
    fn http_addr_is_an_address_or_off() {
        let parse = |s: &str| s.parse::<HttpAddrArg>().map(|a| a.0);
        assert_eq!(parse("off"), Ok(HttpAddr::Off));
        assert_eq!(parse(" Off "), Ok(HttpAddr::Off));
        assert_eq!(parse(""), Ok(HttpAddr::Off));
        assert_eq!(
            parse("127.0.0.1:8081"),
            Ok(HttpAddr::At("127.0.0.1:8081".parse().unwrap()))
        );
        assert!(parse("localhost:8080").unwrap_err().contains("off"));
        let defaults = serve(&["jobledger"]).http;
        assert_eq!(defaults.addr, HttpAddr::Default);
        assert_eq!(defaults.sse_heartbeat, Duration::from_secs(15));
        let c = serve(&[
            "jobledger",
            "serve",
            "--http-addr",
            "off",
            "--http-sse-heartbeat-ms",
            "2500",
        ])
        .http;
        assert_eq!(c.addr, HttpAddr::Off);
        assert_eq!(c.sse_heartbeat, Duration::from_millis(2500));
        assert!(Cli::try_parse_from(["jobledger", "--http-addr", "nowhere"]).is_err());
        assert!(Cli::try_parse_from(["jobledger", "--http-sse-heartbeat-ms", "5"]).is_err());
        let command = Cli::command();
        for (id, variable) in [
            ("http_addr", "JOBLEDGER_HTTP_ADDR"),
            ("http_sse_heartbeat_ms", "JOBLEDGER_HTTP_SSE_HEARTBEAT_MS"),
        ] {
            let found = command.get_arguments().any(|a| {
                a.get_id() == id && a.get_env().and_then(|v| v.to_str()) == Some(variable)
            });
            assert!(found, "{id} should read {variable}");
        }
    }

    #[test]
    fn connection_defaults_and_variables_are_the_documented_ones() {
        let c = serve(&["jobledger"]).connections;
        assert_eq!(c.max_inflight_requests, Some(1000));
        assert_eq!(c.max_concurrent_streams_per_connection, 1000);
        assert_eq!(c.http2_keepalive_interval, Some(Duration::from_secs(60)));
        assert_eq!(c.http2_keepalive_timeout, Duration::from_secs(20));
        assert_eq!(c.max_connection_age, None);
        assert_eq!(c.connection_deadline(), None);
        let tls = Cli::try_parse_from(["jobledger"]).unwrap().serve.tls;
        assert_eq!(tls.tls_handshake_timeout_ms, 10_000);
        assert!(tls.tls_cert_file.is_none());

        let command = Cli::command();
        for (id, variable) in [
            ("max_inflight_requests", "JOBLEDGER_MAX_INFLIGHT_REQUESTS"),
            (
                "max_concurrent_streams_per_connection",
                "JOBLEDGER_MAX_CONCURRENT_STREAMS_PER_CONNECTION",
            ),
            (
                "http2_keepalive_interval_ms",
                "JOBLEDGER_HTTP2_KEEPALIVE_INTERVAL_MS",
            ),
            (
                "http2_keepalive_timeout_ms",
                "JOBLEDGER_HTTP2_KEEPALIVE_TIMEOUT_MS",
            ),
            ("max_connection_age_ms", "JOBLEDGER_MAX_CONNECTION_AGE_MS"),
            (
                "max_connection_age_grace_ms",
                "JOBLEDGER_MAX_CONNECTION_AGE_GRACE_MS",
            ),
            ("tls_cert_file", "JOBLEDGER_TLS_CERT_FILE"),
            ("tls_key_file", "JOBLEDGER_TLS_KEY_FILE"),
            ("tls_client_ca_file", "JOBLEDGER_TLS_CLIENT_CA_FILE"),
            (
                "tls_handshake_timeout_ms",
                "JOBLEDGER_TLS_HANDSHAKE_TIMEOUT_MS",
            ),
        ] {
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == id)
                .unwrap_or_else(|| panic!("no argument {id}"));
            assert_eq!(
                arg.get_env().and_then(|v| v.to_str()),
                Some(variable),
                "{id}"
            );
        }
    }

    #[test]
    fn flags_reach_the_settings_and_bad_values_are_refused() {
        let c = serve(&[
            "jobledger",
            "serve",
            "--max-inflight-requests",
            "7",
            "--max-concurrent-streams-per-connection",
            "9",
            "--http2-keepalive-interval-ms",
            "0",
            "--http2-keepalive-timeout-ms",
            "1500",
        ])
        .connections;
        assert_eq!(c.max_inflight_requests, Some(7));
        assert_eq!(c.max_concurrent_streams_per_connection, 9);
        assert_eq!(c.http2_keepalive_interval, None, "0 turns PINGs off");
        assert_eq!(c.http2_keepalive_timeout, Duration::from_millis(1500));
        let uncapped = serve(&["jobledger", "--max-inflight-requests", "0"]);
        assert_eq!(uncapped.connections.max_inflight_requests, None);
        for bad in [
            ["--max-concurrent-streams-per-connection", "0"],
            ["--http2-keepalive-timeout-ms", "0"],
            ["--max-inflight-requests", "many"],
            ["--tls-handshake-timeout-ms", "0"],
        ] {
            let e = Cli::try_parse_from(["jobledger", bad[0], bad[1]]).unwrap_err();
            assert!(e.to_string().contains(bad[0]), "{e}");
        }
        // A certificate without its key, and a client CA without a certificate.
        for half in [
            &["--tls-cert-file", "s.pem"][..],
            &["--tls-key-file", "s.key"][..],
            &["--tls-client-ca-file", "ca.pem"][..],
        ] {
            let e = Cli::try_parse_from(["jobledger"].iter().chain(half)).unwrap_err();
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::MissingRequiredArgument,
                "{e}"
            );
        }
    }

    #[test]
    fn a_grace_without_an_age_is_refused_at_start_up() {
        let c = serve(&[
            "jobledger",
            "--max-connection-age-ms",
            "0",
            "--max-connection-age-grace-ms",
            "5000",
        ]);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--max-connection-age-ms"), "{e}");
        let c = serve(&[
            "jobledger",
            "--max-connection-age-ms",
            "60000",
            "--max-connection-age-grace-ms",
            "5000",
        ]);
        c.validate().unwrap();
        assert_eq!(
            c.connections.connection_deadline(),
            Some(Duration::from_millis(65_000))
        );
    }

    #[test]
    fn authentication_is_off_without_a_key_and_tls_without_a_certificate() {
        let c = serve(&["jobledger"]);
        assert!(c.auth.is_none() && c.tls.is_none());
        let c = serve(&[
            "jobledger",
            "--auth-hs256-secret",
            "0123456789abcdef0123456789abcdef",
            "--auth-leeway-secs",
            "5",
            "--tls-cert-file",
            "s.pem",
            "--tls-key-file",
            "s.key",
        ]);
        let auth = c.auth.unwrap();
        assert_eq!(auth.leeway, Duration::from_secs(5));
        assert_eq!(auth.org_claim, "org_id");
        assert_eq!(c.tls.unwrap().cert_file, PathBuf::from("s.pem"));
        let c = serve(&["jobledger", "--auth-issuer", "me"]);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--auth-issuer"), "{e}");
    }
}
