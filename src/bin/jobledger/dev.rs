//! `jobledger dev`: flags of the zero-setup development server (the library's
//! `tools::dev`).

use std::{future::Future, net::SocketAddr, path::PathBuf};

use clap::{Args, Parser};
use jobledger::{
    server::config::{HttpAddr, MetricsAddr},
    tools::dev,
};

use crate::{Cli, DatabaseArgs};

const LIBPQ_VARS: [&str; 5] = ["PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"];

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

/// The server's other settings come from their variables, as for `serve`.
pub async fn run(args: DevArgs, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    let configured =
        args.database_url.is_some() || LIBPQ_VARS.iter().any(|v| std::env::var_os(v).is_some());
    let mut config = Cli::parse_from(["jobledger"]).serve.into_config()?;
    config.database = DatabaseArgs {
        database_url: args.database_url.clone(),
    }
    .connect_options()?;
    config.listen_addr = args.listen_addr;
    // Metrics on a free loopback port, so that a dev server next to another server does
    // not contend for the default port.
    config.metrics.addr = MetricsAddr::At(([127, 0, 0, 1], 0).into());
    // The HTTP API on loopback: 8080 when it is free, else any free port (the banner
    // says which); JOBLEDGER_HTTP_ADDR still decides when set.
    if config.http.addr == HttpAddr::Default {
        config.http.addr = HttpAddr::Preferred(([127, 0, 0, 1], 8080).into());
    }
    let cluster = (!configured).then_some(dev::DevCluster {
        keep: args.keep,
        pg_bin_dir: args.pg_bin_dir,
    });
    dev::run(config, cluster, shutdown).await
}
