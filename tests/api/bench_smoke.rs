//! `jobledger bench` keeps working: a short run of every workload against a test server.

use clap::Parser;
use jobledger::{
    bench,
    config::{Cli, Command},
};

use crate::helpers::spawn_app;

#[tokio::test]
async fn the_load_generator_runs_every_workload_and_reports() {
    let app = spawn_app().await;
    let cli = Cli::try_parse_from([
        "jobledger",
        "bench",
        "--addr",
        &app.addr,
        "--workloads",
        "create,get,transition,mixed,create-batch",
        "--concurrency",
        "2",
        "--connections",
        "2",
        "--duration",
        "0.4",
        "--warmup",
        "0.1",
        "--batch-size",
        "20",
    ])
    .expect("bench arguments parse");
    let Some(Command::Bench(args)) = cli.command else {
        panic!("not the bench command");
    };
    let report = bench::run(args.run).await.expect("bench runs");
    assert_eq!(report.measurements.len(), 5);
    for m in &report.measurements {
        assert!(m.requests > 0, "{m:?}");
        assert_eq!(m.errors, 0, "{m:?}");
        assert!(m.throughput > 0.0, "{m:?}");
        let l = &m.latency_ms;
        assert!(
            0.0 < l.p50 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.max,
            "{m:?}"
        );
        assert!(l.max < 60_000.0, "{m:?}");
    }
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["measurements"][4]["workload"], "create-batch");
}
