//! `jobledger bench` keeps working: a short run of every workload against a test server.

use std::process::Command;

use crate::helpers::{spawn_app, BIN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_runs_every_workload_and_reports() {
    let app = spawn_app().await;
    let addr = app.addr.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["bench", "--addr", &addr])
            .args([
                "--workloads",
                "create,get,transition,mixed,create-batch,work",
            ])
            .args(["--concurrency", "2", "--connections", "2"])
            .args(["--duration", "0.4", "--warmup", "0.1", "--batch-size", "20"])
            .args(["--claim-batch", "5"])
            .args(["--output", "json"])
            .output()
            .expect("runs jobledger bench")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("the report is JSON");
    let measurements = report["measurements"].as_array().expect("measurements");
    assert_eq!(measurements.len(), 6);
    for m in measurements {
        assert!(m["requests"].as_u64().unwrap() > 0, "{m}");
        assert_eq!(m["errors"], 0, "{m}");
        assert!(m["throughput"].as_f64().unwrap() > 0.0, "{m}");
        let l = &m["latency_ms"];
        let q = |k: &str| l[k].as_f64().unwrap();
        assert!(
            0.0 < q("p50") && q("p50") <= q("p90") && q("p90") <= q("p99") && q("p99") <= q("max"),
            "{m}"
        );
        assert!(q("max") < 60_000.0, "{m}");
    }
    assert_eq!(report["measurements"][4]["workload"], "create-batch");
    // Workload work: every job it counted was claimed and succeeded, none left running.
    let work = &report["measurements"][5];
    assert_eq!(work["workload"], "work");
    let (running, succeeded): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'running'),
                count(*) FILTER (WHERE status = 'succeeded')
         FROM job WHERE type LIKE 'bench-work-%'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(running, 0, "{work}");
    assert!(
        succeeded as u64 >= work["requests"].as_u64().unwrap(),
        "{work}"
    );
}
