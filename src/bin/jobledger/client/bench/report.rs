//! Printing measurements: aligned columns, a Markdown table row per comparison, or JSON.

use super::{Comparison, ComparisonRow, Output, Report};

pub fn print_report(report: &Report, output: Output) {
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).unwrap_or_default()
        );
        return;
    }
    println!(
        "{:<13} {:>5} {:>10} {:>8} {:>7} {:>7} {:>7} {:>8} {:>9} {:>9} {:>8}",
        "workload",
        "conc",
        "per s",
        "errors",
        "p50 ms",
        "p90",
        "p99",
        "p99.9",
        "srv cpu s",
        "peak MiB",
        "cli cpu"
    );
    for m in &report.measurements {
        println!(
            "{:<13} {:>5} {:>10.0} {:>8} {:>7.2} {:>7.2} {:>7.2} {:>8.2} {:>9} {:>9} {:>8.1}",
            m.workload.name(),
            m.concurrency,
            m.throughput,
            m.errors,
            m.latency_ms.p50,
            m.latency_ms.p90,
            m.latency_ms.p99,
            m.latency_ms.p999,
            m.server
                .as_ref()
                .map_or("-".into(), |s| format!("{:.1}", s.cpu_seconds)),
            m.server
                .as_ref()
                .map_or("-".into(), |s| format!("{:.1}", s.peak_rss_mib)),
            m.client_cpu_seconds,
        );
        if let Some(e) = &m.first_error {
            println!("    first error: {e}");
        }
    }
    if let Some(rss) = report.idle_rss_mib {
        println!(
            "server idle RSS {rss:.1} MiB (pool size {:?})",
            report.pool_size
        );
    }
}

pub fn print_comparison_row(row: &ComparisonRow, header: bool) {
    if header {
        println!(
            "| {:<10} | {:>4} | {:>10} | {:>10} | {:>5} | {:>7} | {:>7} | {:>8} | {:>9} | {:>8} |",
            "workload",
            "conc",
            "pgbench/s",
            "gRPC/s",
            "ratio",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "srv cpu s",
            "peak MiB"
        );
        println!(
            "|{:-<12}|{:->6}|{:->12}|{:->12}|{:->7}|{:->9}|{:->9}|{:->10}|{:->11}|{:->10}|",
            "", "", "", "", "", "", "", "", "", ""
        );
    }
    let g = &row.grpc;
    println!(
        "| {:<10} | {:>4} | {:>10.0} | {:>10.0} | {:>5.2} | {:>7.2} | {:>7.2} | {:>8.2} | {:>9} | {:>8} |",
        row.workload.name(),
        row.concurrency,
        row.pgbench_tps,
        g.throughput,
        row.ratio,
        g.latency_ms.p50,
        g.latency_ms.p99,
        g.latency_ms.p999,
        g.server
            .as_ref()
            .map_or("-".into(), |s| format!("{:.1}", s.cpu_seconds)),
        g.server
            .as_ref()
            .map_or("-".into(), |s| format!("{:.1}", s.peak_rss_mib)),
    );
    if g.errors > 0 {
        println!(
            "    {} errors; first: {}",
            g.errors,
            g.first_error.as_deref().unwrap_or("")
        );
    }
}

/// The end of `bench compare`: the whole comparison as JSON, or the table's footer.
pub fn print_comparison(comparison: &Comparison, output: Output) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(comparison).unwrap_or_default()
        ),
        Output::Table => println!(
            "\nserver idle RSS {:.1} MiB; pool sizes {:?}",
            comparison.idle_rss_mib.unwrap_or(f64::NAN),
            comparison.pool_sizes
        ),
    }
}
