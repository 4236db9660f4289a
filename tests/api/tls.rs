//! TLS and mutual TLS on the gRPC port, with a CA and certificates made by the test
//! (rcgen): what TLS clients, plaintext clients and clients trusting or presenting the
//! wrong certificates get, and how bad files stop start-up.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use jobledger::{
    proto::{self, job_ledger_client::JobLedgerClient},
    server::{config::TlsConfig, Application, Config},
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;
use tokio::{io::AsyncReadExt, sync::oneshot, task::JoinHandle};
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use sqlx::Connection;

use crate::helpers::{ScratchDb, BIN};

/// A certificate authority of the test's own.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn server(&self) -> Leaf {
        self.leaf(
            "jobledger",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client(&self, name: &str) -> Leaf {
        self.leaf(name, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(&self, name: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// The PEM files a server is started with.
struct Files {
    dir: TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

/// A TLS server of its own on a fresh database.
struct TlsServer {
    port: u16,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    db: ScratchDb,
}

impl TlsServer {
    async fn start(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
        configure: impl FnOnce(&mut Config),
    ) -> TlsServer {
        let db = ScratchDb::new();
        let mut args = args_for(&db);
        args.tls = Some(TlsConfig {
            client_ca_file: client_ca.map(Path::to_owned),
            ..TlsConfig::new(cert, key)
        });
        configure(&mut args);
        let app = Application::build(args).await.expect("TLS server builds");
        let port = app.port();
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async move {
            rx.await.ok();
        }));
        TlsServer {
            port,
            shutdown: Some(tx),
            server: Some(server),
            db,
        }
    }

    /// A channel to `https://127.0.0.1:port` (the certificate's IP SAN) with `tls`.
    async fn connect(&self, tls: ClientTlsConfig) -> Result<Channel, tonic::transport::Error> {
        Channel::from_shared(format!("https://127.0.0.1:{}", self.port))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
    }

    async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

fn args_for(db: &ScratchDb) -> Config {
    let mut args = Config::for_database(&db.url()).unwrap();
    args.listen_addr = "127.0.0.1:0".parse().unwrap();
    args.probe_interval = std::time::Duration::from_millis(100);
    args.pool_size = 4;
    args
}

fn trusting(ca: &Ca) -> ClientTlsConfig {
    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.pem()))
}

/// A health Check over `channel`; the status number (1 = SERVING) or the error.
async fn health(channel: Channel) -> Result<i32, tonic::Status> {
    let started = Instant::now();
    loop {
        let status = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner()
            .status;
        // The first database probe may not have run yet.
        if status == 1 || started.elapsed() > Duration::from_secs(5) {
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a client with `tls` gets no answer from `server`: the handshake fails at
/// connect, or (TLS 1.3 checks client certificates after the client's Finished) at the
/// first call.
async fn refused(server: &TlsServer, tls: ClientTlsConfig) -> bool {
    match server.connect(tls).await {
        Err(_) => true,
        Ok(channel) => health(channel).await.is_err(),
    }
}

async fn create(channel: Channel) -> proto::Job {
    JobLedgerClient::new(channel)
        .create_job(proto::CreateJobRequest {
            r#type: "over-tls".into(),
            ..Default::default()
        })
        .await
        .expect("CreateJob over TLS")
        .into_inner()
        .job
        .unwrap()
}

#[tokio::test]
async fn a_tls_client_is_served_ledger_health_and_reflection() {
    let ca = Ca::new("jobledger test CA");
    let server = ca.server();
    let files = Files::new();
    let mut app = TlsServer::start(
        &files.write("server.pem", &server.cert),
        &files.write("server.key", &server.key),
        None,
        |_| {},
    )
    .await;

    let channel = app.connect(trusting(&ca)).await.expect("TLS connect");
    assert_eq!(health(channel.clone()).await.unwrap(), 1);
    let job = create(channel.clone()).await;
    let read = JobLedgerClient::new(channel.clone())
        .get_job(proto::GetJobRequest {
            job_id: job.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(read.id, job.id);

    // By name as well as by IP: the certificate names localhost too.
    let by_name = Channel::from_shared(format!("https://localhost:{}", app.port))
        .unwrap()
        .tls_config(trusting(&ca))
        .unwrap()
        .connect()
        .await
        .expect("TLS connect to localhost");
    assert_eq!(health(by_name).await.unwrap(), 1);

    // Reflection is on the same TLS port.
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    assert!(list
        .service
        .iter()
        .any(|s| s.name == "jobledger.v1.JobLedger"));
    app.stop().await;
}

#[tokio::test]
async fn plaintext_and_clients_trusting_another_ca_are_refused() {
    let ca = Ca::new("jobledger test CA");
    let server = ca.server();
    let files = Files::new();
    let app = TlsServer::start(
        &files.write("server.pem", &server.cert),
        &files.write("server.key", &server.key),
        None,
        |_| {},
    )
    .await;

    // Plaintext HTTP/2 to the TLS port.
    let plaintext = Channel::from_shared(format!("http://127.0.0.1:{}", app.port))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        let status = health(channel).await.expect_err("plaintext was answered");
        // The client's own transport error: the server sent no gRPC status.
        assert!(
            matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown
            ),
            "{status:?}"
        );
    }

    // A client that trusts another CA does not accept the server's certificate.
    let other = Ca::new("some other CA");
    let error = app
        .connect(trusting(&other))
        .await
        .expect_err("TLS connect");
    let chain = format!("{:?}", error);
    assert!(
        chain.contains("UnknownIssuer") || chain.contains("invalid peer certificate"),
        "{chain}"
    );

    // A client expecting another name does not either.
    let wrong_name = trusting(&ca).domain_name("ledger.example.com");
    assert!(app.connect(wrong_name).await.is_err());

    // The right client still works.
    let channel = app.connect(trusting(&ca)).await.unwrap();
    create(channel).await;
}

#[tokio::test]
async fn mutual_tls_serves_only_clients_with_a_certificate_of_the_client_ca() {
    let server_ca = Ca::new("jobledger server CA");
    let client_ca = Ca::new("jobledger client CA");
    let stranger_ca = Ca::new("a stranger's CA");
    let server = server_ca.server();
    let worker = client_ca.client("worker-1");
    let stranger = stranger_ca.client("worker-1");
    let files = Files::new();
    let app = TlsServer::start(
        &files.write("server.pem", &server.cert),
        &files.write("server.key", &server.key),
        Some(&files.write("client-ca.pem", &client_ca.pem())),
        |_| {},
    )
    .await;

    // No client certificate.
    assert!(
        refused(&app, trusting(&server_ca)).await,
        "served without a certificate"
    );
    // A certificate of another CA (same subject name).
    let wrong = trusting(&server_ca).identity(Identity::from_pem(&stranger.cert, &stranger.key));
    assert!(
        refused(&app, wrong).await,
        "served a stranger's certificate"
    );
    // The server's own certificate is not a client certificate of the client CA.
    let own = trusting(&server_ca).identity(Identity::from_pem(&server.cert, &server.key));
    assert!(
        refused(&app, own).await,
        "served the server's own certificate"
    );

    // A certificate of the client CA.
    let right = trusting(&server_ca).identity(Identity::from_pem(&worker.cert, &worker.key));
    let channel = app.connect(right).await.expect("mTLS connect");
    assert_eq!(health(channel.clone()).await.unwrap(), 1);
    let job = create(channel).await;
    let stored: i64 = {
        let mut conn = sqlx::PgConnection::connect(&app.db.url()).await.unwrap();
        let n = sqlx::query_scalar("SELECT count(*) FROM job WHERE id = $1::uuid")
            .bind(&job.id)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        n
    };
    assert_eq!(stored, 1);
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_dropped() {
    let ca = Ca::new("jobledger test CA");
    let server = ca.server();
    let files = Files::new();
    let app = TlsServer::start(
        &files.write("server.pem", &server.cert),
        &files.write("server.key", &server.key),
        None,
        |a| a.tls.as_mut().unwrap().handshake_timeout = Duration::from_millis(300),
    )
    .await;
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("the server kept a silent connection open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "dropped after {took:?} with a 300 ms handshake timeout"
    );
    // Others are served meanwhile and after.
    assert_eq!(
        health(app.connect(trusting(&ca)).await.unwrap())
            .await
            .unwrap(),
        1
    );
}

/// The start-up error for these settings (nothing is served).
async fn startup_error(configure: impl FnOnce(&mut Config)) -> String {
    let db = ScratchDb::new();
    let mut args = args_for(&db);
    configure(&mut args);
    match Application::build(args).await {
        Ok(_) => panic!("the server started"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn bad_tls_files_stop_start_up_naming_the_flag_and_the_file() {
    let ca = Ca::new("jobledger test CA");
    let server = ca.server();
    let other = ca.server();
    let files = Files::new();
    let cert = files.write("server.pem", &server.cert);
    let key = files.write("server.key", &server.key);
    let other_key = files.write("other.key", &other.key);
    let garbage = files.write("garbage.pem", "this is not PEM\n");
    let truncated = files.write("truncated.pem", &server.cert[..server.cert.len() / 2]);
    let missing = files.dir.path().join("missing.pem");
    let (c, k) = (cert.clone(), key.clone());
    let with = move |cert: &Path, key: &Path, ca: Option<&Path>| {
        let (cert, key, ca) = (cert.to_owned(), key.to_owned(), ca.map(Path::to_owned));
        move |a: &mut Config| {
            a.tls = Some(TlsConfig {
                client_ca_file: ca,
                ..TlsConfig::new(cert, key)
            });
        }
    };

    let e = startup_error(with(&missing, &k, None)).await;
    assert!(
        e.contains(&format!(
            "--tls-cert-file {}: cannot read",
            missing.display()
        )),
        "{e}"
    );
    let e = startup_error(with(&garbage, &k, None)).await;
    assert!(
        e.contains(&format!("--tls-cert-file {}", garbage.display()))
            && e.contains("no PEM certificate"),
        "{e}"
    );
    let e = startup_error(with(&truncated, &k, None)).await;
    assert!(
        e.contains(&format!("--tls-cert-file {}", truncated.display())),
        "{e}"
    );
    // The certificate given as the key.
    let e = startup_error(with(&c, &c, None)).await;
    assert!(
        e.contains(&format!("--tls-key-file {}", c.display())) && e.contains("private key"),
        "{e}"
    );
    // A key of another certificate.
    let e = startup_error(with(&c, &other_key, None)).await;
    assert!(
        e.contains(&format!("--tls-key-file {}", other_key.display()))
            && e.contains("is not the private key of the certificate"),
        "{e}"
    );
    let e = startup_error(with(&c, &k, Some(&garbage))).await;
    assert!(
        e.contains(&format!("--tls-client-ca-file {}", garbage.display())),
        "{e}"
    );
    let e = startup_error(with(&c, &k, Some(&missing))).await;
    assert!(
        e.contains(&format!(
            "--tls-client-ca-file {}: cannot read",
            missing.display()
        )),
        "{e}"
    );
    // A certificate without its key: the configuration cannot even say it (TlsConfig
    // holds both), and the command line refuses it naming the missing flag.
    let output = Command::new(BIN)
        .args(["serve", "--tls-cert-file"])
        .arg(&c)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let e = String::from_utf8_lossy(&output.stderr);
    assert!(e.contains("--tls-key-file"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_with_the_flag_and_file_in_its_error() {
    let files = Files::new();
    let garbage = files.write("server.pem", "-----BEGIN CERTIFICATE-----\nnot base64!\n");
    let key = files.write("server.key", "");
    let db = ScratchDb::new();
    let started = Instant::now();
    let output = tokio::task::spawn_blocking({
        let (garbage, key, url) = (garbage.clone(), key.clone(), db.url());
        move || {
            Command::new(BIN)
                .args([
                    "serve",
                    "--database-url",
                    &url,
                    "--listen-addr",
                    "127.0.0.1:0",
                ])
                .arg("--tls-cert-file")
                .arg(&garbage)
                .arg("--tls-key-file")
                .arg(&key)
                .env("JOBLEDGER_LOG_FORMAT", "json")
                .stdin(Stdio::null())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(10));
    let log = String::from_utf8_lossy(&output.stdout);
    assert!(
        log.contains(&format!("--tls-cert-file {}", garbage.display())),
        "{log}"
    );

    // The client CA flag without a certificate is refused by the parser.
    let output = Command::new(BIN)
        .args(["serve", "--tls-client-ca-file", "/tmp/ca.pem"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("--tls-cert-file"), "{err}");
}
