//! TLS and mutual TLS on the gRPC port (rustls, through tonic). The files are read and
//! checked once, at start-up, so a bad one stops the server with its flag and path named
//! instead of failing every handshake later. The whole port speaks TLS: JobLedger, health
//! and reflection alike (docs/security.md says what that means for probes).

use std::{path::Path, sync::Arc};

use anyhow::{bail, Context};
use rustls::{
    crypto::ring::default_provider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    sign::CertifiedKey,
    InconsistentKeys, RootCertStore,
};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use super::config::TlsConfig;

/// The server's TLS settings, checked.
#[derive(Clone, Debug)]
pub(super) struct ServerTls {
    config: ServerTlsConfig,
}

impl ServerTls {
    /// Reads and checks the files `tls` names.
    pub(super) fn new(tls: &TlsConfig) -> anyhow::Result<ServerTls> {
        let (cert_file, key_file) = (&tls.cert_file, &tls.key_file);
        let (cert_pem, key_pem) = read_identity(cert_file, key_file)?;
        let mut config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&cert_pem, &key_pem))
            .timeout(tls.handshake_timeout);
        if let Some(ca_file) = &tls.client_ca_file {
            config = config.client_ca_root(Certificate::from_pem(read_client_ca(ca_file)?));
        }
        // tonic builds its acceptor from the same PEM: anything it still refuses is
        // reported now, not at the first handshake.
        Server::builder().tls_config(config.clone()).map_err(|e| {
            anyhow::anyhow!(
                "--tls-cert-file {} / --tls-key-file {}: {e}",
                cert_file.display(),
                key_file.display()
            )
        })?;
        Ok(ServerTls { config })
    }

    /// `server` serving TLS.
    pub(super) fn apply<L>(&self, server: Server<L>) -> anyhow::Result<Server<L>> {
        server
            .tls_config(self.config.clone())
            .context("TLS settings (--tls-cert-file, --tls-key-file, --tls-client-ca-file)")
    }
}

/// The certificate chain and key PEM, checked: readable, parseable, a key that can sign
/// and that belongs to the first certificate.
fn read_identity(cert_file: &Path, key_file: &Path) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let provider = default_provider();

    let cert_pem = read("--tls-cert-file", cert_file)?;
    let chain = certificates("--tls-cert-file", cert_file, &cert_pem)?;
    let key_pem = read("--tls-key-file", key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        anyhow::anyhow!(
            "--tls-key-file {}: no PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) found: {e}",
            key_file.display()
        )
    })?;
    let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
        anyhow::anyhow!(
            "--tls-key-file {}: the key cannot sign TLS handshakes: {e}",
            key_file.display()
        )
    })?;
    match CertifiedKey::new(chain, signing_key).keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => bail!(
            "--tls-key-file {} is not the private key of the certificate in \
             --tls-cert-file {}",
            key_file.display(),
            cert_file.display()
        ),
        Err(e) => bail!(
            "--tls-cert-file {}: the first certificate is not a usable X.509 \
             certificate: {e}",
            cert_file.display()
        ),
    }
    Ok((cert_pem, key_pem))
}

/// The client CA PEM, checked: every certificate in it usable as a root.
fn read_client_ca(ca_file: &Path) -> anyhow::Result<Vec<u8>> {
    let ca_pem = read("--tls-client-ca-file", ca_file)?;
    let mut roots = RootCertStore::empty();
    for (i, ca) in certificates("--tls-client-ca-file", ca_file, &ca_pem)?
        .into_iter()
        .enumerate()
    {
        roots.add(ca).map_err(|e| {
            anyhow::anyhow!(
                "--tls-client-ca-file {}: certificate {} is not a usable CA \
                 certificate: {e}",
                ca_file.display(),
                i + 1
            )
        })?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::new(default_provider()))
        .build()
        .map_err(|e| anyhow::anyhow!("--tls-client-ca-file {}: {e}", ca_file.display()))?;
    Ok(ca_pem)
}

fn read(flag: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("{flag} {}: cannot read: {e}", path.display()))
}

/// The certificates of a PEM file: at least one, all well-formed.
fn certificates(
    flag: &str,
    path: &Path,
    pem: &[u8],
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{flag} {}: malformed PEM: {e}", path.display()))?;
    if certs.is_empty() {
        bail!(
            "{flag} {}: no PEM certificate (-----BEGIN CERTIFICATE-----) found",
            path.display()
        );
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_named_with_its_flag() {
        let tls = TlsConfig::new("/nonexistent/server.pem", "/nonexistent/server.key");
        let e = ServerTls::new(&tls).unwrap_err().to_string();
        assert!(
            e.starts_with("--tls-cert-file /nonexistent/server.pem: cannot read"),
            "{e}"
        );
    }
}
