//! Servers for tests and benchmarks: one on a task of this process, or the `jobledger`
//! binary as a child process. Both are on a free port of 127.0.0.1 and go away when
//! dropped.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use crate::server::{Application, Config};

/// A server running on a task of this process; aborted when dropped.
pub struct InProcessServer {
    /// `http://127.0.0.1:PORT`.
    pub addr: String,
    pub port: u16,
    /// Where `GET /metrics` is served, if it is.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the HTTP/JSON API is served, if it is.
    pub http_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl InProcessServer {
    /// Builds (creating and migrating the database) and serves `config`.
    pub async fn start(config: Config) -> anyhow::Result<InProcessServer> {
        let app = Application::build(config).await?;
        let port = app.port();
        let metrics_addr = app.metrics_addr();
        let http_addr = app.http_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            rx.await.ok();
        }));
        Ok(InProcessServer {
            addr: format!("http://127.0.0.1:{port}"),
            port,
            metrics_addr,
            http_addr,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// A new connection to the server.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(Channel::from_shared(self.addr.clone())?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?)
    }

    /// Stops the server as SIGTERM would (drain, then exit) and waits for it.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.context("the server task panicked")?,
            None => Ok(()),
        }
    }
}

impl Drop for InProcessServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// `jobledger serve` in a child process, killed when dropped.
pub struct ServerProcess {
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub addr: String,
    pub port: u16,
    /// The lines the server wrote on stdout (its logs), when captured.
    pub stdout: Arc<Mutex<Vec<String>>>,
}

/// How to start a [`ServerProcess`].
pub struct ServerCommand {
    bin: PathBuf,
    database_url: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    env_remove_prefix: Vec<String>,
    show_logs: bool,
    capture_stdout: bool,
}

impl ServerCommand {
    /// A flag and its value; a default of `start` that it names is not added.
    pub fn arg(mut self, flag: &str, value: impl ToString) -> Self {
        self.args.push(flag.to_owned());
        self.args.push(value.to_string());
        self
    }

    /// Flags as they are (`["--x", "1", "--flag"]`).
    pub fn args<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.args.extend(args.iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Leaves out of the server's environment the variables of this process whose names
    /// start with `prefix` (`OTEL_`).
    pub fn env_remove_prefix(mut self, prefix: &str) -> Self {
        self.env_remove_prefix.push(prefix.to_owned());
        self
    }

    /// Collects the server's stdout (its logs) line by line in `ServerProcess::stdout`.
    pub fn capture_stdout(mut self) -> Self {
        self.capture_stdout = true;
        self
    }

    /// The server's logs on this process's stderr (default: with `TEST_LOG` set).
    pub fn show_logs(mut self, show: bool) -> Self {
        self.show_logs = show;
        self
    }

    /// Starts the server on a free port and waits (up to 60 s) until it reports
    /// SERVING. Unless given: a probe every 100 ms, a drain timeout of 3 s, no HTTP API
    /// (servers side by side would contend for its default port), RUST_LOG=warn.
    pub async fn start(self) -> anyhow::Result<ServerProcess> {
        let port = crate::testkit::cluster::free_port()?;
        let mut command = self.command(port);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            let sink = stdout.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            });
        }
        let mut server = ServerProcess {
            child,
            addr: format!("http://127.0.0.1:{port}"),
            port,
            stdout,
        };
        if let Err(e) = server.wait_until_serving(Duration::from_secs(60)).await {
            let output = server
                .stdout
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .join("\n");
            return Err(e.context(format!("its output:\n{output}")));
        }
        Ok(server)
    }
}

impl ServerCommand {
    /// The command line and environment of a server on `port`.
    fn command(&self, port: u16) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .args(["serve", "--database-url", &self.database_url])
            .args(["--listen-addr", &format!("127.0.0.1:{port}")]);
        for (flag, value) in [
            ("--probe-interval-ms", "100"),
            ("--drain-timeout-ms", "3000"),
            ("--http-addr", "off"),
        ] {
            if !self.args.iter().any(|a| a == flag) {
                command.args([flag, value]);
            }
        }
        for (name, _) in std::env::vars() {
            if self.env_remove_prefix.iter().any(|p| name.starts_with(p)) {
                command.env_remove(name);
            }
        }
        command
            .args(&self.args)
            .env("RUST_LOG", if self.show_logs { "info" } else { "warn" })
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(if self.capture_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(if self.show_logs {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        command
    }
}

impl ServerProcess {
    /// `bin serve` on `database_url` (which it creates and migrates).
    pub fn command(bin: impl AsRef<Path>, database_url: &str) -> ServerCommand {
        ServerCommand {
            bin: bin.as_ref().to_owned(),
            database_url: database_url.to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            env_remove_prefix: Vec::new(),
            show_logs: std::env::var_os("TEST_LOG").is_some(),
            capture_stdout: false,
        }
    }

    /// `bin serve` on `database_url` with `extra` flags, for tests: panics if it does
    /// not come up.
    pub async fn start(bin: impl AsRef<Path>, database_url: &str, extra: &[&str]) -> Self {
        ServerProcess::command(bin, database_url)
            .args(extra)
            .start()
            .await
            .unwrap_or_else(|e| panic!("jobledger serve: {e:#}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn wait_until_serving(&mut self, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the server exited at start-up with {status} (TEST_LOG=1 shows its log)");
            }
            if let Ok(channel) = Channel::from_shared(self.addr.clone())?.connect().await {
                let serving = HealthClient::new(channel)
                    .check(HealthCheckRequest::default())
                    .await
                    .is_ok_and(|r| r.into_inner().status == 1);
                if serving {
                    return Ok(());
                }
            }
            if started.elapsed() > limit {
                bail!("the server did not become SERVING within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a signal (`TERM`, `INT`, `STOP`, `CONT`, ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name} {}", self.child.id());
    }

    /// Waits up to `limit` for the process to exit; its exit code.
    pub async fn wait(&mut self, limit: Duration) -> Option<i32> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if started.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
