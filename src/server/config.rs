//! The server's settings, typed: durations are `Duration`, optional features are
//! `Option`s, and [`Config::validate`] refuses the combinations no type can rule out.
//! The binary builds a `Config` from its flags and environment in one conversion
//! (`src/bin/jobledger/serve.rs`); tests and embedders build one with
//! [`Config::for_database`] and change what they need.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use sqlx::postgres::PgConnectOptions;

use crate::dispatch::DispatchSettings;
use crate::feed::FeedSettings;
use crate::ledger::Limits;

/// Everything `Application::build` needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the ledger's database is (created and migrated at start-up).
    pub database: PgConnectOptions,
    pub listen_addr: SocketAddr,
    /// Connections in the request pool.
    pub pool_size: u32,
    /// How often the health probe runs `SELECT 1`, and how long one may take.
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    /// How long a request waits for a pool connection before UNAVAILABLE.
    pub db_acquire_timeout: Duration,
    /// PostgreSQL's statement_timeout on request connections (then UNAVAILABLE).
    pub statement_timeout: Duration,
    /// On shutdown, how long in-flight calls may take to finish.
    pub drain_timeout: Duration,
    /// How long start-up waits for the database (create + migrate).
    pub startup_timeout: Duration,
    /// Serve gRPC server reflection.
    pub reflection: bool,
    /// Largest request message accepted, in bytes.
    pub max_request_bytes: usize,
    /// Group commit of concurrent CreateJob / TransitionJob calls; None: off.
    pub group_commit: Option<GroupCommitConfig>,
    pub feed: FeedSettings,
    pub dispatch: DispatchSettings,
    pub limits: Limits,
    /// Bearer-token authentication; None: off.
    pub auth: Option<AuthConfig>,
    /// TLS on the gRPC port; None: plaintext.
    pub tls: Option<TlsConfig>,
    pub connections: ConnectionConfig,
    pub metrics: MetricsConfig,
    /// The HTTP/JSON API (spec §8, docs/http.md).
    pub http: HttpConfig,
}

/// Group commit: `writers` tasks each write whatever concurrent calls queued, at most
/// `max_batch` per transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupCommitConfig {
    pub writers: usize,
    pub max_batch: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        GroupCommitConfig {
            writers: 4,
            max_batch: 256,
        }
    }
}

/// How bearer tokens are verified (docs/security.md). At least one key source is set.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// Shared secret of HS256 tokens (at least 32 bytes).
    pub hs256_secret: Option<Secret>,
    /// PEM public key of RS256 / ES256 tokens.
    pub public_key_file: Option<PathBuf>,
    /// JWKS file of RS256 / ES256 keys, chosen by the token's `kid`.
    pub jwks_file: Option<PathBuf>,
    /// Required `iss` and `aud` (not checked when None).
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// The claim naming the caller's org; a dotted path reaches into objects.
    pub org_claim: String,
    /// The scope (in the token's `scope` or `scp`) of a worker's token: it may act in
    /// every org and claim from all of them.
    pub worker_scope: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

impl AuthConfig {
    /// No key yet; `org_id` claim, 60 s leeway.
    pub fn new() -> AuthConfig {
        AuthConfig {
            hs256_secret: None,
            public_key_file: None,
            jwks_file: None,
            issuer: None,
            audience: None,
            org_claim: "org_id".to_owned(),
            worker_scope: "jobledger.worker".to_owned(),
            leeway: Duration::from_secs(60),
        }
    }

    /// HS256 tokens signed with `secret`.
    pub fn hs256(secret: impl Into<String>) -> AuthConfig {
        AuthConfig {
            hs256_secret: Some(Secret::new(secret)),
            ..AuthConfig::new()
        }
    }

    pub fn has_key(&self) -> bool {
        self.hs256_secret.is_some() || self.public_key_file.is_some() || self.jwks_file.is_some()
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig::new()
    }
}

/// TLS on the gRPC port: a certificate chain and its key; with a client CA, mutual TLS.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
    /// How long a client may take to complete the handshake.
    pub handshake_timeout: Duration,
}

impl TlsConfig {
    pub fn new(cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> TlsConfig {
        TlsConfig {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            client_ca_file: None,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Protection of the server from its clients (docs/security.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// Most unary JobLedger calls in progress at once; None: no cap.
    pub max_inflight_requests: Option<u32>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS of each HTTP/2 connection.
    pub max_concurrent_streams_per_connection: u32,
    /// PING interval; None: no PINGs.
    pub http2_keepalive_interval: Option<Duration>,
    /// How long a PING may go unanswered before the connection is closed.
    pub http2_keepalive_timeout: Duration,
    /// Age at which a connection gets a GOAWAY; None: never.
    pub max_connection_age: Option<Duration>,
    /// How long calls may go on past the maximum age before the connection is cut;
    /// None: for ever. Needs `max_connection_age`.
    pub max_connection_age_grace: Option<Duration>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            max_inflight_requests: Some(1000),
            max_concurrent_streams_per_connection: 1000,
            http2_keepalive_interval: Some(Duration::from_secs(60)),
            http2_keepalive_timeout: Duration::from_secs(20),
            max_connection_age: None,
            max_connection_age_grace: None,
        }
    }
}

impl ConnectionConfig {
    /// How long after it was accepted a connection is cut, open calls or not.
    pub fn connection_deadline(&self) -> Option<Duration> {
        Some(self.max_connection_age? + self.max_connection_age_grace?)
    }
}

/// Where `GET /metrics` is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsAddr {
    Off,
    /// This address: start-up fails if it cannot be bound.
    At(SocketAddr),
    /// The default address, best effort: taken, it only logs a warning.
    Default,
}

/// The address `MetricsAddr::Default` stands for.
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:9090";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    pub addr: MetricsAddr,
    /// Most job types with a `type` label of their own.
    pub max_job_types: usize,
    /// Shortest time between two counts of all jobs by status.
    pub job_count_interval: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            addr: MetricsAddr::Default,
            max_job_types: 50,
            job_count_interval: Duration::from_secs(5),
        }
    }
}

/// Where the HTTP/JSON API is served (`--http-addr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpAddr {
    Off,
    /// This address: start-up fails if it cannot be bound.
    At(SocketAddr),
    /// The default address, best effort like the metrics port's: taken (a second server
    /// on one machine), it only logs a warning.
    Default,
    /// This address if it is free, else any free port of its IP (`jobledger dev`, which
    /// prints the one it got).
    Preferred(SocketAddr),
}

/// The address `HttpAddr::Default` stands for (spec §8).
pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:8080";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    pub addr: HttpAddr,
    /// How often an idle Server-Sent Events stream gets a comment line, so proxies and
    /// load balancers that cut silent connections keep it open.
    pub sse_heartbeat: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: HttpAddr::Default,
            sse_heartbeat: Duration::from_secs(15),
        }
    }
}

/// The defaults of the spec (§6), for a database at `database`.
impl Config {
    pub fn new(database: PgConnectOptions) -> Config {
        Config {
            database,
            listen_addr: ([0, 0, 0, 0], 50051).into(),
            pool_size: 15,
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            db_acquire_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            startup_timeout: Duration::from_secs(60),
            reflection: true,
            max_request_bytes: 4 * 1024 * 1024,
            group_commit: Some(GroupCommitConfig::default()),
            feed: FeedSettings::default(),
            dispatch: DispatchSettings::default(),
            limits: Limits::default(),
            auth: None,
            tls: None,
            connections: ConnectionConfig::default(),
            metrics: MetricsConfig::default(),
            http: HttpConfig::default(),
        }
    }

    /// A server for tests and embedding: the database at `database_url`, listening on a
    /// free port of 127.0.0.1, metrics and the HTTP API each on a free port of 127.0.0.1
    /// (so that servers side by side do not contend for the default ports), everything
    /// else at its default.
    pub fn for_database(database_url: &str) -> anyhow::Result<Config> {
        let mut config = Config::new(crate::store::connect_options(Some(database_url))?);
        config.listen_addr = ([127, 0, 0, 1], 0).into();
        config.metrics.addr = MetricsAddr::At(([127, 0, 0, 1], 0).into());
        config.http.addr = HttpAddr::At(([127, 0, 0, 1], 0).into());
        Ok(config)
    }

    /// Refuses the settings that cannot work together; `Application::build` runs it
    /// first. Messages name the flags, which is how operators set these.
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::bail;
        if self.pool_size == 0 {
            bail!("--pool-size must be at least 1");
        }
        let c = &self.connections;
        if c.max_connection_age_grace.is_some() && c.max_connection_age.is_none() {
            bail!(
                "--max-connection-age-ms needs to be above 0 with --max-connection-age-grace-ms \
                 (the grace starts when a connection reaches its maximum age)"
            );
        }
        if let Some(auth) = &self.auth {
            if !auth.has_key() && (auth.issuer.is_some() || auth.audience.is_some()) {
                bail!(
                    "--auth-issuer / --auth-audience need a key: --auth-hs256-secret, \
                     --auth-public-key-file or --auth-jwks-file"
                );
            }
        }
        self.limits.check().map_err(anyhow::Error::msg)?;
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::for_database("postgres://postgres@localhost/x").unwrap()
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::new(PgConnectOptions::new());
        assert_eq!(c.pool_size, 15);
        assert_eq!(c.probe_interval, Duration::from_secs(1));
        assert_eq!(c.listen_addr, "0.0.0.0:50051".parse().unwrap());
        assert_eq!(c.limits, Limits::default());
        c.validate().unwrap();
    }

    #[test]
    fn a_grace_without_an_age_is_refused() {
        let mut c = config();
        c.connections.max_connection_age_grace = Some(Duration::from_secs(5));
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--max-connection-age-ms"), "{e}");
        c.connections.max_connection_age = Some(Duration::from_secs(60));
        c.validate().unwrap();
        assert_eq!(
            c.connections.connection_deadline(),
            Some(Duration::from_secs(65))
        );
    }

    #[test]
    fn secrets_do_not_show() {
        let auth = AuthConfig::hs256("a secret of thirty-two bytes or more!!");
        assert!(!format!("{auth:?}").contains("thirty-two"));
    }
}
