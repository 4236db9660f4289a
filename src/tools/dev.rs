//! `jobledger dev`: the server on a private PostgreSQL cluster that it creates (initdb
//! from the installed PostgreSQL), owns and removes on exit — zero setup for trying the
//! API on a laptop. With a configured database it uses that instead and creates nothing.

use std::{future::Future, path::PathBuf};

use anyhow::Context;

use crate::server::{Application, Config};
use crate::testkit::cluster::{ClusterOptions, PrivateCluster, Stopped};

/// The private cluster `dev` makes when no database is configured.
#[derive(Clone, Debug, Default)]
pub struct DevCluster {
    /// Keep the cluster's directory on exit (PostgreSQL stopped).
    pub keep: bool,
    /// Directory of PostgreSQL's server programs; None: found.
    pub pg_bin_dir: Option<PathBuf>,
}

/// Serves `config` until `shutdown` resolves, then drains and cleans up. With a
/// `cluster`, the server's database is a private cluster made first (and removed after);
/// without, `config.database` is used as it is. Ok(()) after a clean stop, also when
/// `shutdown` comes while the cluster is still being set up.
pub async fn run(
    config: Config,
    cluster: Option<DevCluster>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let Some(settings) = cluster else {
        let app = Application::build(config.clone()).await?;
        let database = format!(
            "the configured database {} on {}:{} (DATABASE_URL / --database-url / PG*); \
             nothing to clean up on exit",
            config.database.get_database().unwrap_or("jobledger"),
            config.database.get_host(),
            config.database.get_port()
        );
        print_banner(&app, &database, None, &config);
        return app.run_until_stopped(shutdown).await;
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let options = ClusterOptions {
        bin_dir: settings.pg_bin_dir,
        prefix: "jobledger-dev-".to_owned(),
        keep: settings.keep,
    };
    let mut setup = tokio::task::spawn_blocking(move || PrivateCluster::create(options));
    let cluster = tokio::select! {
        created = &mut setup => created.context("setting up the private cluster")??,
        _ = &mut shutdown => {
            eprintln!("jobledger dev: stopping while the private cluster is being set up");
            // Its Drop stops and removes what was created so far.
            let _ = setup.await;
            return Ok(());
        }
    };
    let served = serve_on_cluster(config, &cluster, settings.keep, shutdown).await;
    let dir = cluster.dir().to_owned();
    let stopped = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        cluster.stop_and_remove()
    })
    .await
    .context("stopping the private cluster")?;
    served?;
    match stopped? {
        Stopped::Removed => println!(
            "jobledger dev: stopped; removed the private cluster {}",
            dir.display()
        ),
        Stopped::Kept { restart } => println!(
            "jobledger dev: stopped; the cluster is kept in {}. Start it again with:\n  {restart}",
            dir.display()
        ),
    }
    Ok(())
}

/// Serves `config` on the private cluster's database until `shutdown`.
async fn serve_on_cluster(
    mut config: Config,
    cluster: &PrivateCluster,
    keep: bool,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let url = cluster.database_url("jobledger");
    config.database = crate::store::connect_options(Some(&url))?;
    // On failure the caller drops `cluster`: PostgreSQL stopped, directory removed.
    let app = Application::build(config.clone()).await?;
    let database = format!(
        "a private PostgreSQL cluster: {url}\n  cluster directory: {} ({})",
        cluster.dir().display(),
        if keep {
            "kept on exit (--keep)"
        } else {
            "removed on exit; --keep keeps it"
        }
    );
    print_banner(&app, &database, Some(&url), &config);
    app.run_until_stopped(shutdown).await
}

/// How to reach the server, on stdout (the logs may be JSON lines around it).
fn print_banner(app: &Application, database: &str, psql_url: Option<&str>, config: &Config) {
    let addr = app.local_addr();
    let client_addr = match addr.ip() {
        ip if ip.is_unspecified() => format!("http://127.0.0.1:{}", addr.port()),
        _ => format!("http://{addr}"),
    };
    let grpc_addr = client_addr.trim_start_matches("http://");
    let mut text = format!(
        "\njobledger dev: serving on {addr}; Ctrl-C stops it{}.\n\n\
         \x20 JOBLEDGER_ADDR={client_addr}\n\
         \x20 database:          {database}\n",
        if psql_url.is_some() {
            " and removes the private cluster"
        } else {
            ""
        }
    );
    if let Some(url) = psql_url {
        text.push_str(&format!("  psql:              psql {url}\n"));
    }
    if let Some(http) = app.http_addr() {
        text.push_str(&format!(
            "  HTTP/JSON API:     http://{http} (curl http://{http}/v1/jobs; docs/http.md)\n"
        ));
    }
    if config.auth.is_some() {
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
