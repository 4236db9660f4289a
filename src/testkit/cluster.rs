//! A private PostgreSQL cluster: initdb into a directory of its own, started on a free
//! port of 127.0.0.1, stopped and removed when dropped. `jobledger dev` serves on one;
//! tests that stop, kill or break the database use one instead of the shared server.
//!
//! initdb refuses to run as root, so as root every PostgreSQL program runs as the
//! `postgres` user (`runuser`). Each cluster's directory is
//! `$TMPDIR/<prefix><pid>-<random>`: a run killed hard leaves nothing a later run could
//! trip over, and the next cluster made with the same prefix stops such a run's orphaned
//! PostgreSQL and removes its directory.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use anyhow::{bail, Context};

/// Left in a cluster's directory when it is kept: later runs must not clean it up.
const KEPT_MARKER: &str = "KEPT";

/// How to make a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Directory of initdb, pg_ctl and postgres; None: found (see [`Tools::find`]).
    pub bin_dir: Option<PathBuf>,
    /// Prefix of the cluster's directory name under `$TMPDIR`.
    pub prefix: String,
    /// Keep the directory (PostgreSQL stopped) when dropped or stopped, and fsync its
    /// writes; a cluster that is not kept holds nothing worth an fsync.
    pub keep: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            bin_dir: None,
            prefix: "jobledger-pg-".to_owned(),
            keep: false,
        }
    }
}

/// A running (or stopped) private cluster. Dropping it stops PostgreSQL and removes the
/// directory (unless kept), so every error path cleans up.
pub struct PrivateCluster {
    dir: PathBuf,
    /// The port PostgreSQL listens on, on 127.0.0.1.
    pub port: u16,
    tools: Tools,
    keep: bool,
    /// Set once stopped and removed (or kept): Drop has nothing left to do.
    done: bool,
}

impl PrivateCluster {
    /// A cluster for a test, default options; panics when it cannot be made.
    pub fn start() -> PrivateCluster {
        PrivateCluster::create(ClusterOptions::default())
            .unwrap_or_else(|e| panic!("private PostgreSQL cluster: {e:#}"))
    }

    /// initdb, then start on a free port.
    pub fn create(options: ClusterOptions) -> anyhow::Result<PrivateCluster> {
        let tools = Tools::find(options.bin_dir)?;
        remove_leftovers(&tools, &options.prefix);
        let dir = std::env::temp_dir().join(format!(
            "{}{}-{}",
            options.prefix,
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir(&dir)
            .with_context(|| format!("creating the cluster directory {}", dir.display()))?;
        let mut cluster = PrivateCluster {
            dir,
            port: 0,
            tools,
            keep: options.keep,
            done: false,
        };
        cluster.init()?;
        cluster.first_start()?;
        Ok(cluster)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// `postgres://postgres@127.0.0.1:PORT`, without a database.
    pub fn base_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// The URL of database `name` on this cluster.
    pub fn database_url(&self, name: &str) -> String {
        format!("{}/{name}", self.base_url())
    }

    /// Whether PostgreSQL runs as `postgres` because we are root.
    pub fn runs_as_postgres(&self) -> bool {
        self.tools.as_postgres
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
    fn first_start(&mut self) -> anyhow::Result<()> {
        let mut last_error = String::new();
        for _ in 0..3 {
            self.port = free_port()?;
            match self.try_start_again() {
                Ok(()) => return Ok(()),
                Err(e) => last_error = format!("{e:#}"),
            }
            if !last_error.contains("already in use") {
                break;
            }
        }
        bail!("PostgreSQL did not start (pg_ctl start): {last_error}")
    }

    /// Starts the stopped cluster on its port and waits until it accepts connections.
    pub fn try_start_again(&self) -> anyhow::Result<()> {
        let fsync = if self.keep { "on" } else { "off" };
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync={fsync}",
            self.port,
            self.dir.display()
        );
        let (data, log) = (self.data(), self.log());
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
        if !out.status.success() {
            bail!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                std::fs::read_to_string(&log).unwrap_or_default().trim()
            );
        }
        Ok(())
    }

    /// Like `try_start_again`, for tests: panics on failure.
    pub fn start_again(&self) {
        self.try_start_again()
            .unwrap_or_else(|e| panic!("pg_ctl start: {e:#}"));
    }

    /// Stops PostgreSQL (`fast` or `immediate`) and waits until it is gone.
    pub fn try_stop(&self, mode: &str) -> anyhow::Result<()> {
        let out = pg_ctl_stop(&self.tools, &self.data(), mode)?;
        if !out.status.success() && self.data().join("postmaster.pid").exists() {
            bail!(
                "pg_ctl stop failed: {}; the cluster is in {}",
                String::from_utf8_lossy(&out.stderr).trim(),
                self.dir.display()
            );
        }
        Ok(())
    }

    /// Like `try_stop`, for tests: panics on failure.
    pub fn stop(&self, mode: &str) {
        self.try_stop(mode)
            .unwrap_or_else(|e| panic!("pg_ctl stop: {e:#}"));
    }

    /// Stops PostgreSQL (`fast`), then removes the directory, or when kept, marks it so
    /// and returns how to start it again.
    pub fn stop_and_remove(&mut self) -> anyhow::Result<Stopped> {
        self.done = true;
        self.try_stop("fast")?;
        if !self.keep {
            std::fs::remove_dir_all(&self.dir)
                .with_context(|| format!("removing {}", self.dir.display()))?;
            return Ok(Stopped::Removed);
        }
        std::fs::write(self.dir.join(KEPT_MARKER), "kept by jobledger\n")?;
        Ok(Stopped::Kept {
            restart: format!(
                "{}pg_ctl -D {} -o '-p {} -k {}' -l {} start",
                if self.tools.as_postgres {
                    "runuser -u postgres -- "
                } else {
                    ""
                },
                self.data().display(),
                self.port,
                self.dir.display(),
                self.log().display()
            ),
        })
    }
}

/// What `stop_and_remove` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    Removed,
    /// Kept: this command starts it again.
    Kept {
        restart: String,
    },
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let _ = pg_ctl_stop(&self.tools, &self.data(), "immediate");
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `pg_ctl stop` (waits until PostgreSQL is gone).
fn pg_ctl_stop(tools: &Tools, data: &Path, mode: &str) -> anyhow::Result<Output> {
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

/// Directories of earlier clusters with this prefix whose process is gone (killed hard):
/// stop their PostgreSQL if it still runs, and remove them. Kept ones stay.
fn remove_leftovers(tools: &Tools, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(prefix)
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
                let _ = pg_ctl_stop(tools, &data, "immediate");
            }
        }
        if std::fs::remove_dir_all(&dir).is_ok() {
            eprintln!(
                "removed the private PostgreSQL cluster of an earlier run (pid {pid}) that did \
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

/// A free port of 127.0.0.1 (free now; another process may take it before we bind).
pub fn free_port() -> anyhow::Result<u16> {
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
    /// `flag` if given, else `pg_config --bindir`, PATH, then the newest
    /// /usr/lib/postgresql/*/bin.
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
                     failed ({why}). Run as an ordinary user, create a `postgres` user \
                     (useradd --system postgres), or use an existing server with \
                     --database-url"
                );
            }
        }
        Ok(Tools {
            bin_dir,
            as_postgres,
        })
    }

    /// Runs a PostgreSQL program, as `postgres` when we are root.
    fn run(&self, program: &str, args: &[&OsStr]) -> anyhow::Result<Output> {
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
            .stdin(Stdio::null())
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
