//! `jobledger dev`: the server on a private PostgreSQL cluster that it creates (initdb
//! from the installed PostgreSQL), owns and removes on exit — zero setup for trying the
//! API on a laptop. With a configured database (`--database-url`, DATABASE_URL or a
//! PG* variable) it uses that instead and creates nothing.
//!
//! Each run gets a directory of its own, `$TMPDIR/jobledger-dev-<pid>-<random>`, so a
//! run killed hard (SIGKILL, power loss) leaves nothing a later run could trip over;
//! the next run stops such a run's orphaned PostgreSQL and removes its directory.

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{bail, Context};
use clap::Args;

use crate::{config::ServeArgs, startup::Application};

const DIR_PREFIX: &str = "jobledger-dev-";
/// Left in a run's directory by `--keep`: a later run must not clean it up.
const KEPT_MARKER: &str = "KEPT";

#[derive(Args, Debug, Clone)]
#[command(
    after_long_help = "Without a configured database, `dev` runs initdb into a new \
    directory under $TMPDIR, starts PostgreSQL there on a free port of 127.0.0.1 (socket in \
    that directory), serves on --listen-addr and prints how to connect. Ctrl-C or SIGTERM \
    drains the server, stops PostgreSQL (pg_ctl stop -m fast) and removes the directory \
    (unless --keep). As root, PostgreSQL runs as the `postgres` user (initdb refuses root).\n\n\
    Other server settings come from their JOBLEDGER_* variables (see `jobledger --help`).\n\n\
    Examples:\n  \
    jobledger dev\n  \
    jobledger dev --listen-addr 127.0.0.1:50052 --keep\n  \
    jobledger dev --database-url postgres://postgres@localhost:5432/jobledger_dev"
)]
pub struct DevArgs {
    /// Address the gRPC server listens on (port 0: any free port, printed at start).
    #[arg(
        long,
        env = "JOBLEDGER_DEV_LISTEN_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub listen_addr: SocketAddr,
    /// Use this PostgreSQL instead of a private cluster. Also taken from DATABASE_URL, or
    /// from PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE (as `serve` does) when one is set.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Keep the private cluster's directory on exit (PostgreSQL stopped) and print how to
    /// start it again; later runs leave it alone.
    #[arg(long)]
    pub keep: bool,
    /// Directory of PostgreSQL's server programs (initdb, pg_ctl, postgres). Default:
    /// `pg_config --bindir`, then PATH, then the newest /usr/lib/postgresql/*/bin.
    #[arg(long, env = "JOBLEDGER_PG_BIN_DIR")]
    pub pg_bin_dir: Option<PathBuf>,
}

const LIBPQ_VARS: [&str; 5] = ["PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"];

/// Serves until `shutdown` resolves, then drains and cleans up. Ok(()) after a clean
/// stop, also when `shutdown` comes while the cluster is still being set up.
pub async fn run(args: DevArgs, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    let configured =
        args.database_url.is_some() || LIBPQ_VARS.iter().any(|v| std::env::var_os(v).is_some());
    if configured {
        let mut serve = ServeArgs::for_database("");
        serve.database.database_url = args.database_url.clone();
        serve.listen_addr = args.listen_addr;
        let app = Application::build(serve.clone()).await?;
        let options = serve.database.connect_options()?;
        let database = format!(
            "the configured database {} on {}:{} (DATABASE_URL / --database-url / PG*); \
             nothing to clean up on exit",
            options.get_database().unwrap_or("jobledger"),
            options.get_host(),
            options.get_port()
        );
        print_banner(app.local_addr(), &database, None, &serve);
        return app.run_until_stopped(shutdown).await;
    }

    let keep = args.keep;
    let bin_dir = args.pg_bin_dir.clone();
    let mut setup = tokio::task::spawn_blocking(move || PrivateCluster::create(bin_dir, keep));
    let cluster = tokio::select! {
        created = &mut setup => created.context("setting up the private cluster")??,
        _ = &mut shutdown => {
            eprintln!("jobledger dev: stopping while the private cluster is being set up");
            // Its Drop stops and removes what was created so far.
            let _ = setup.await;
            return Ok(());
        }
    };
    let mut serve = ServeArgs::for_database(&cluster.database_url());
    serve.listen_addr = args.listen_addr;
    // On failure `cluster` is dropped here: PostgreSQL stopped, directory removed.
    let app = Application::build(serve.clone()).await?;
    let database = format!(
        "a private PostgreSQL cluster: {}\n  cluster directory: {} ({})",
        cluster.database_url(),
        cluster.dir.display(),
        if keep {
            "kept on exit (--keep)"
        } else {
            "removed on exit; --keep keeps it"
        }
    );
    print_banner(app.local_addr(), &database, Some(&cluster), &serve);
    let served = app.run_until_stopped(shutdown.as_mut()).await;
    let stopped = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        cluster.stop_and_remove()
    })
    .await
    .context("stopping the private cluster")?;
    served?;
    stopped?;
    Ok(())
}

/// How to reach the server, on stdout (the logs may be JSON lines around it).
fn print_banner(
    addr: SocketAddr,
    database: &str,
    cluster: Option<&PrivateCluster>,
    serve: &ServeArgs,
) {
    let client_addr = match addr.ip() {
        ip if ip.is_unspecified() => format!("http://127.0.0.1:{}", addr.port()),
        _ => format!("http://{addr}"),
    };
    let grpc_addr = client_addr.trim_start_matches("http://");
    let mut text = format!(
        "\njobledger dev: serving on {addr}; Ctrl-C stops it{}.\n\n\
         \x20 JOBLEDGER_ADDR={client_addr}\n\
         \x20 database:          {database}\n",
        if cluster.is_some() {
            " and removes the private cluster"
        } else {
            ""
        }
    );
    if let Some(cluster) = cluster {
        text.push_str(&format!(
            "  psql:              psql {}\n",
            cluster.database_url()
        ));
    }
    let auth = &serve.auth;
    if auth.auth_hs256_secret.is_some()
        || auth.auth_public_key_file.is_some()
        || auth.auth_jwks_file.is_some()
    {
        text.push_str(
            "  authentication is on (JOBLEDGER_AUTH_*): pass --token or JOBLEDGER_TOKEN\n",
        );
    }
    text.push_str(&format!(
        "\nTry:\n\
         \x20 export JOBLEDGER_ADDR={client_addr}\n\
         \x20 jobledger job create --type report --params '{{\"month\": \"2026-05\"}}'\n\
         \x20 jobledger job list\n\
         \x20 jobledger job watch <id>\n\
         \x20 grpcurl -plaintext {grpc_addr} list\n\
         \x20 grpcurl -plaintext -d '{{\"type\": \"report\"}}' {grpc_addr} jobledger.v1.JobLedger/CreateJob\n"
    ));
    println!("{text}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// A PostgreSQL cluster in a directory of this run. Dropping it stops PostgreSQL and
/// removes the directory (unless kept), so every error path cleans up.
struct PrivateCluster {
    dir: PathBuf,
    port: u16,
    tools: Tools,
    keep: bool,
    /// Set once stopped and removed (or kept): Drop has nothing left to do.
    done: bool,
}

impl PrivateCluster {
    fn create(bin_dir: Option<PathBuf>, keep: bool) -> anyhow::Result<PrivateCluster> {
        let tools = Tools::find(bin_dir)?;
        remove_leftovers(&tools);
        let dir = std::env::temp_dir().join(format!(
            "{DIR_PREFIX}{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir(&dir)
            .with_context(|| format!("creating the cluster directory {}", dir.display()))?;
        let mut cluster = PrivateCluster {
            dir,
            port: 0,
            tools,
            keep,
            done: false,
        };
        cluster.init()?;
        cluster.start()?;
        Ok(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn database_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/jobledger", self.port)
    }

    fn init(&mut self) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        if self.tools.as_postgres {
            let out = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&self.dir)
                .output()
                .context("running chown")?;
            if !out.status.success() {
                bail!(
                    "cannot give {} to the postgres user: {}",
                    self.dir.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        let data = self.data();
        let out = self.tools.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--no-sync".as_ref(),
            ],
        )?;
        if !out.status.success() {
            let mut message = format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            if self.tools.as_postgres {
                message.push_str(&format!(
                    "\n(it ran as the postgres user, which must be able to reach {}; set \
                     TMPDIR to a directory it can, or use --database-url)",
                    self.dir.display()
                ));
            }
            bail!(message);
        }
        Ok(())
    }

    /// Starts PostgreSQL on a free port (another free one if that was taken meanwhile).
    fn start(&mut self) -> anyhow::Result<()> {
        let log = self.dir.join("postgres.log");
        let mut last_error = String::new();
        for _ in 0..3 {
            self.port = free_port()?;
            // Nothing here is worth an fsync unless the user keeps it.
            let fsync = if self.keep { "on" } else { "off" };
            let options = format!(
                "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync={fsync}",
                self.port,
                self.dir.display()
            );
            let data = self.data();
            let out = self.tools.run(
                "pg_ctl",
                &[
                    "-D".as_ref(),
                    data.as_os_str(),
                    "-o".as_ref(),
                    options.as_ref(),
                    "-l".as_ref(),
                    log.as_os_str(),
                    "-w".as_ref(),
                    "-t".as_ref(),
                    "60".as_ref(),
                    "start".as_ref(),
                ],
            )?;
            if out.status.success() {
                return Ok(());
            }
            let server_log = std::fs::read_to_string(&log).unwrap_or_default();
            last_error = format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                server_log.trim()
            );
            if !server_log.contains("already in use") {
                break;
            }
        }
        bail!("PostgreSQL did not start (pg_ctl start): {last_error}")
    }

    fn stop_and_remove(&mut self) -> anyhow::Result<()> {
        self.done = true;
        let out = stop(&self.tools, &self.data(), "fast")?;
        if !out.status.success() && self.data().join("postmaster.pid").exists() {
            bail!(
                "pg_ctl stop failed: {}; the cluster is in {}",
                String::from_utf8_lossy(&out.stderr).trim(),
                self.dir.display()
            );
        }
        if self.keep {
            std::fs::write(self.dir.join(KEPT_MARKER), "kept by jobledger dev --keep\n")?;
            println!(
                "jobledger dev: stopped; the cluster is kept in {}. Start it again with:\n  \
                 {}pg_ctl -D {} -o '-p {} -k {}' -l {} start",
                self.dir.display(),
                if self.tools.as_postgres {
                    "runuser -u postgres -- "
                } else {
                    ""
                },
                self.data().display(),
                self.port,
                self.dir.display(),
                self.dir.join("postgres.log").display()
            );
        } else {
            std::fs::remove_dir_all(&self.dir)
                .with_context(|| format!("removing {}", self.dir.display()))?;
            println!(
                "jobledger dev: stopped; removed the private cluster {}",
                self.dir.display()
            );
        }
        Ok(())
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let _ = stop(&self.tools, &self.data(), "immediate");
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `pg_ctl stop` (waits until PostgreSQL is gone).
fn stop(tools: &Tools, data: &Path, mode: &str) -> anyhow::Result<Output> {
    tools.run(
        "pg_ctl",
        &[
            "-D".as_ref(),
            data.as_os_str(),
            "-m".as_ref(),
            mode.as_ref(),
            "-w".as_ref(),
            "-t".as_ref(),
            "60".as_ref(),
            "stop".as_ref(),
        ],
    )
}

/// Directories of earlier runs whose process is gone (killed hard): stop their
/// PostgreSQL if it still runs, and remove them. Kept ones (`--keep`) stay.
fn remove_leftovers(tools: &Tools) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(DIR_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        if running(pid) || dir.join(KEPT_MARKER).exists() {
            continue;
        }
        let data = dir.join("data");
        // Only a postmaster that still runs: pg_ctl would signal whatever process now
        // has the pid of a stale postmaster.pid.
        let postmaster = std::fs::read_to_string(data.join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next().map(|l| l.trim().to_owned()));
        if let Some(pid) = postmaster {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "postgres" {
                let _ = stop(tools, &data, "immediate");
            }
        }
        if std::fs::remove_dir_all(&dir).is_ok() {
            eprintln!(
                "jobledger dev: removed the leftovers of an earlier run (pid {pid}) that did \
                 not exit cleanly: {}",
                dir.display()
            );
        }
    }
}

/// Whether process `pid` runs. A zombie (killed, not yet reaped by its parent) does
/// not; a pid reused by another process counts as running, which only skips a cleanup.
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) state ...": comm may hold spaces and parentheses.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .context("finding a free port")?
        .local_addr()?
        .port())
}

/// PostgreSQL's server programs, and whether they must run as `postgres` (we are root).
struct Tools {
    bin_dir: PathBuf,
    as_postgres: bool,
}

impl Tools {
    fn find(flag: Option<PathBuf>) -> anyhow::Result<Tools> {
        let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
        let bin_dir = match flag {
            Some(dir) if has_tools(&dir) => dir,
            Some(dir) => bail!("--pg-bin-dir {} holds no initdb and pg_ctl", dir.display()),
            None => candidate_bin_dirs()
                .into_iter()
                .find(|d| has_tools(d))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "PostgreSQL's server programs (initdb, pg_ctl) were not found: looked in \
                         `pg_config --bindir`, PATH and /usr/lib/postgresql/*/bin. Install the \
                         PostgreSQL server (e.g. `apt-get install postgresql`), name their \
                         directory with --pg-bin-dir, or use an existing server with \
                         --database-url"
                    )
                })?,
        };
        let as_postgres = is_root();
        if as_postgres {
            let probe = Command::new("runuser")
                .args(["-u", "postgres", "--", "true"])
                .output();
            let why = match probe {
                Ok(out) if out.status.success() => None,
                Ok(out) => Some(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
                Err(e) => Some(format!("runuser: {e}")),
            };
            if let Some(why) = why {
                bail!(
                    "initdb refuses to run as root, and running it as the `postgres` user \
                     failed ({why}). Run `jobledger dev` as an ordinary user, create a \
                     `postgres` user (useradd --system postgres), or use an existing server \
                     with --database-url"
                );
            }
        }
        Ok(Tools {
            bin_dir,
            as_postgres,
        })
    }

    /// Runs a PostgreSQL program, as `postgres` when we are root.
    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<Output> {
        let path = self.bin_dir.join(program);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        command
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("running {}", path.display()))
    }
}

/// Where initdb may be: `pg_config --bindir`, PATH, then /usr/lib/postgresql/*/bin,
/// newest version first.
fn candidate_bin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            dirs.push(PathBuf::from(
                String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            ));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    let mut installed: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                    Some((version, e.path().join("bin")))
                })
                .collect()
        })
        .unwrap_or_default();
    installed.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    dirs.extend(installed.into_iter().map(|(_, dir)| dir));
    dirs
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    match std::fs::metadata("/proc/self") {
        Ok(meta) => meta.uid() == 0,
        Err(_) => Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false),
    }
}
