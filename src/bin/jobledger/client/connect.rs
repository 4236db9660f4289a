//! Reaching the server: address, TLS, deadline and bearer token.

use std::{path::PathBuf, time::Duration};

use clap::Args;
use jobledger::server::config::Secret;
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::Interceptor,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
    Request, Status,
};

use super::Failure;

/// Where the server is and how to reach it. Shared by `health` and `job`.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// The server's address: http://HOST:PORT, or https://HOST:PORT for TLS.
    #[arg(
        id = "client_addr",
        long = "addr",
        value_name = "URL",
        env = "JOBLEDGER_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub addr: String,
    /// Give up on connecting, and on each call, after this many milliseconds (`watch`:
    /// connecting only; the stream runs until the job ends).
    #[arg(id = "client_timeout_ms", long = "timeout-ms", value_name = "MS", env = "JOBLEDGER_TIMEOUT_MS", default_value_t = 5000, global = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
    /// PEM file of the CA certificate(s) that signed the server's certificate. Required
    /// with an https:// --addr (this build does not read the system's trust store).
    #[arg(
        id = "client_tls_ca_file",
        long = "tls-ca-file",
        value_name = "PEM_FILE",
        env = "JOBLEDGER_CLIENT_TLS_CA_FILE",
        global = true,
        help_heading = "TLS"
    )]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM file of a client certificate, for servers that require one (mutual TLS).
    /// Needs --tls-key-file.
    #[arg(
        id = "client_tls_cert_file",
        long = "tls-cert-file",
        value_name = "PEM_FILE",
        env = "JOBLEDGER_CLIENT_TLS_CERT_FILE",
        requires = "client_tls_key_file",
        global = true,
        help_heading = "TLS"
    )]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM file of the private key of --tls-cert-file.
    #[arg(
        id = "client_tls_key_file",
        long = "tls-key-file",
        value_name = "PEM_FILE",
        env = "JOBLEDGER_CLIENT_TLS_KEY_FILE",
        requires = "client_tls_cert_file",
        global = true,
        help_heading = "TLS"
    )]
    pub tls_key_file: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not --addr's host
    /// (e.g. connecting to an IP address).
    #[arg(
        id = "client_tls_server_name",
        long = "tls-server-name",
        value_name = "NAME",
        env = "JOBLEDGER_CLIENT_TLS_SERVER_NAME",
        global = true,
        help_heading = "TLS"
    )]
    pub tls_server_name: Option<String>,
}

impl ServerArgs {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The endpoint, TLS configured from the flags. Bad flags or files: `Usage`.
    fn endpoint(&self) -> Result<Endpoint, Failure> {
        let endpoint = Endpoint::from_shared(self.addr.clone()).map_err(|e| {
            Failure::Usage(format!(
                "--addr {:?} is not a URI like http://127.0.0.1:50051: {e}",
                self.addr
            ))
        })?;
        let scheme = endpoint.uri().scheme_str().unwrap_or("");
        if scheme != "http" && scheme != "https" {
            return Err(Failure::Usage(format!(
                "--addr {:?} must start with http:// or https://",
                self.addr
            )));
        }
        let tls_flag = [
            (self.tls_ca_file.is_some(), "--tls-ca-file"),
            (self.tls_cert_file.is_some(), "--tls-cert-file"),
            (self.tls_server_name.is_some(), "--tls-server-name"),
        ]
        .into_iter()
        .find_map(|(set, name)| set.then_some(name));
        if scheme == "http" {
            if let Some(flag) = tls_flag {
                return Err(Failure::Usage(format!(
                    "{flag} needs an https:// --addr (got {})",
                    self.addr
                )));
            }
            return Ok(endpoint);
        }
        let Some(ca_file) = &self.tls_ca_file else {
            return Err(Failure::Usage(format!(
                "--addr {} uses TLS: give the CA that signed the server's certificate with \
                 --tls-ca-file (this build does not read the system's trust store)",
                self.addr
            )));
        };
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read_file("--tls-ca-file", ca_file)?));
        if let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) {
            tls = tls.identity(Identity::from_pem(
                read_file("--tls-cert-file", cert)?,
                read_file("--tls-key-file", key)?,
            ));
        }
        if let Some(name) = &self.tls_server_name {
            tls = tls.domain_name(name.clone());
        }
        endpoint
            .tls_config(tls)
            .map_err(|e| Failure::Usage(format!("the TLS settings are not usable: {}", chain(&e))))
    }

    /// A connected channel. `per_call_timeout`: also bound each call (not for streams).
    pub async fn channel(&self, per_call_timeout: bool) -> Result<Channel, Failure> {
        let mut endpoint = self.endpoint()?.connect_timeout(self.timeout());
        if per_call_timeout {
            endpoint = endpoint.timeout(self.timeout());
        }
        endpoint.connect().await.map_err(|e| {
            Failure::Connect(format!("cannot connect to {}: {}", self.addr, chain(&e)))
        })
    }
}

fn read_file(flag: &str, path: &std::path::Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path)
        .map_err(|e| Failure::Usage(format!("cannot read {flag} {}: {e}", path.display())))
}

/// An error and its sources, `outer: inner: innermost` (tonic's own Display is only
/// "transport error").
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

/// Adds `authorization: Bearer <token>` to every call when a token is given.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub fn bearer(token: Option<&Secret>) -> Result<Bearer, Failure> {
    let Some(token) = token else {
        return Ok(Bearer(None));
    };
    let token = token.expose().trim();
    let token = token.strip_prefix("Bearer ").unwrap_or(token);
    // Never echo the token: it is a credential.
    let mut value: MetadataValue<Ascii> = format!("Bearer {token}").parse().map_err(|_| {
        Failure::Usage(
            "--token / JOBLEDGER_TOKEN is not usable as a header value (a JWT is ASCII)".to_owned(),
        )
    })?;
    value.set_sensitive(true);
    Ok(Bearer(Some(value)))
}
