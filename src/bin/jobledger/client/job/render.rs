//! What `job` commands print: JSON with the proto's field names, and aligned tables.

use jobledger::proto::{self, json::struct_to_json};
use serde_json::{json, Value};

use crate::client::{clean, table};

// ---------------------------------------------------------------------------------
// JSON: the proto's field names; every field present (null when unset).

pub(super) fn struct_json(s: &Option<prost_types::Struct>) -> Value {
    let Some(s) = s else { return Value::Null };
    // What the server sent it could store: every number is one JSON holds.
    struct_to_json(s, "value", &mut |_, _| {})
}

fn time_text(t: &Option<prost_types::Timestamp>, format: chrono::SecondsFormat) -> Option<String> {
    t.as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|t| t.to_rfc3339_opts(format, true))
}

fn time_json(t: &Option<prost_types::Timestamp>) -> Value {
    time_text(t, chrono::SecondsFormat::AutoSi)
        .map(Value::String)
        .unwrap_or(Value::Null)
}

/// `QUEUED`, ..., `DEAD_LETTER`; `UNSPECIFIED` (the creation event's previous status).
pub(super) fn status_name(n: i32) -> String {
    proto::JobStatus::try_from(n)
        .map(|s| s.as_str_name().trim_start_matches("JOB_STATUS_").to_owned())
        .unwrap_or_else(|_| n.to_string())
}

pub(super) fn job_json(j: &proto::Job) -> Value {
    json!({
        "id": j.id, "org_id": j.org_id, "type": j.r#type, "status": status_name(j.status),
        "attempt": j.attempt, "max_attempts": j.max_attempts, "priority": j.priority,
        "idempotency_key": j.idempotency_key, "requested_by": j.requested_by,
        "params": struct_json(&j.params), "created_at": time_json(&j.created_at),
        "updated_at": time_json(&j.updated_at), "started_at": time_json(&j.started_at),
        "finished_at": time_json(&j.finished_at), "last_error_code": j.last_error_code,
        "last_error_message": j.last_error_message, "stage": j.stage, "progress": j.progress,
        "result": struct_json(&j.result), "run_after": time_json(&j.run_after),
        "lease_expires_at": time_json(&j.lease_expires_at), "lease_holder": j.lease_holder,
    })
}

pub(super) fn event_json(e: &proto::JobEvent) -> Value {
    json!({
        "id": e.id, "job_id": e.job_id, "org_id": e.org_id, "ts": time_json(&e.ts),
        "prev_status": status_name(e.prev_status), "next_status": status_name(e.next_status),
        "attempt": e.attempt, "detail": struct_json(&e.detail), "cursor": e.cursor,
    })
}

pub(super) fn counts_json(c: &proto::CountJobsResponse) -> Value {
    json!({
        "counts": c.counts.iter().map(|n| json!({
            "type": n.r#type, "status": status_name(n.status), "count": n.count,
        })).collect::<Vec<_>>(),
        "by_status": c.by_status.iter().map(|n| json!({
            "status": status_name(n.status), "count": n.count,
        })).collect::<Vec<_>>(),
        "total": c.total,
    })
}

// ---------------------------------------------------------------------------------
// Tables

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

fn compact(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn short_time(t: &Option<prost_types::Timestamp>) -> String {
    time_text(t, chrono::SecondsFormat::Secs).unwrap_or_else(|| "-".to_owned())
}

/// One job as `field  value` lines, the JSON output's field names in its order.
pub(super) fn job_view(j: &proto::Job) -> String {
    let full_time = |t| time_text(t, chrono::SecondsFormat::Millis).unwrap_or("-".to_owned());
    let rows = [
        ("id", j.id.clone()),
        ("org_id", j.org_id.clone()),
        ("type", j.r#type.clone()),
        ("status", status_name(j.status)),
        ("attempt", format!("{} of {}", j.attempt, j.max_attempts)),
        ("priority", j.priority.to_string()),
        ("idempotency_key", or_dash(&j.idempotency_key)),
        ("requested_by", or_dash(&j.requested_by)),
        ("params", compact(&struct_json(&j.params))),
        ("created_at", full_time(&j.created_at)),
        ("updated_at", full_time(&j.updated_at)),
        ("started_at", full_time(&j.started_at)),
        ("finished_at", full_time(&j.finished_at)),
        ("last_error_code", or_dash(&j.last_error_code)),
        ("last_error_message", or_dash(&j.last_error_message)),
        ("stage", or_dash(&j.stage)),
        ("progress", format!("{}%", j.progress)),
        ("result", compact(&struct_json(&j.result))),
        ("run_after", full_time(&j.run_after)),
        ("lease_expires_at", full_time(&j.lease_expires_at)),
        ("lease_holder", or_dash(&j.lease_holder)),
    ];
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(k, v)| vec![k.to_owned(), v])
        .collect();
    // A two-column table without a header line.
    let text = table(&["", ""], &rows);
    text.lines().skip(1).collect::<Vec<_>>().join("\n")
}

pub(super) fn jobs_table(jobs: &[proto::Job]) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.clone(),
                j.r#type.clone(),
                status_name(j.status),
                format!("{}/{}", j.attempt, j.max_attempts),
                or_dash(&j.stage),
                format!("{}%", j.progress),
                short_time(&j.created_at),
                short_time(&j.updated_at),
            ]
        })
        .collect();
    table(
        &[
            "ID", "TYPE", "STATUS", "ATTEMPT", "STAGE", "PROGRESS", "CREATED", "UPDATED",
        ],
        &rows,
    )
}

pub(super) fn counts_table(c: &proto::CountJobsResponse) -> String {
    let statuses: Vec<i32> = c.by_status.iter().map(|s| s.status).collect();
    let mut types: Vec<&str> = c.counts.iter().map(|n| n.r#type.as_str()).collect();
    types.dedup();
    let mut rows: Vec<Vec<String>> = types
        .iter()
        .map(|t| {
            let of = |status: i32| {
                c.counts
                    .iter()
                    .filter(|n| n.r#type == *t && n.status == status)
                    .map(|n| n.count)
                    .sum::<i64>()
            };
            let total: i64 = c
                .counts
                .iter()
                .filter(|n| n.r#type == *t)
                .map(|n| n.count)
                .sum();
            std::iter::once(t.to_string())
                .chain(statuses.iter().map(|s| of(*s).to_string()))
                .chain(std::iter::once(total.to_string()))
                .collect()
        })
        .collect();
    rows.push(
        std::iter::once("(all)".to_owned())
            .chain(c.by_status.iter().map(|s| s.count.to_string()))
            .chain(std::iter::once(c.total.to_string()))
            .collect(),
    );
    let names: Vec<String> = statuses.iter().map(|s| status_name(*s)).collect();
    let header: Vec<&str> = std::iter::once("TYPE")
        .chain(names.iter().map(String::as_str))
        .chain(std::iter::once("TOTAL"))
        .collect();
    table(&header, &rows)
}

/// `QUEUED -> RUNNING`; the creation event is `(new) -> QUEUED`.
fn transition_text(e: &proto::JobEvent) -> String {
    let from = if e.prev_status == proto::JobStatus::Unspecified as i32 {
        "(new)".to_owned()
    } else {
        status_name(e.prev_status)
    };
    format!("{from} -> {}", status_name(e.next_status))
}

/// An event's detail as `key=value` pairs: the reported fields first, then the rest.
fn detail_text(e: &proto::JobEvent) -> String {
    let Value::Object(mut detail) = struct_json(&e.detail) else {
        return String::new();
    };
    let mut parts = Vec::new();
    for key in [
        "stage",
        "progress",
        "error_code",
        "error_message",
        "actor",
        "request_id",
        "result",
    ] {
        if let Some(value) = detail.remove(key) {
            parts.push(match (key, value) {
                ("progress", Value::Number(n)) => format!("progress={n}%"),
                (key, Value::String(s)) if !s.contains(' ') && !s.is_empty() => {
                    format!("{key}={s}")
                }
                (key, value) => format!("{key}={value}"),
            });
        }
    }
    parts.extend(detail.into_iter().map(|(k, v)| match v {
        Value::String(s) if !s.contains(' ') && !s.is_empty() => format!("{k}={s}"),
        v => format!("{k}={v}"),
    }));
    parts.join(" ")
}

pub(super) fn events_table(events: &[proto::JobEvent]) -> String {
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                time_text(&e.ts, chrono::SecondsFormat::Millis).unwrap_or_default(),
                transition_text(e),
                e.attempt.to_string(),
                or_dash(&detail_text(e)),
            ]
        })
        .collect();
    table(&["TIME", "TRANSITION", "ATTEMPT", "DETAIL"], &rows)
}

/// One `watch` line: time, transition, attempt, detail (fixed widths: a stream cannot
/// be measured ahead).
pub(super) fn event_line(e: &proto::JobEvent) -> String {
    let line = format!(
        "{:<24}  {:<26}  attempt {:<3}  {}",
        time_text(&e.ts, chrono::SecondsFormat::Millis).unwrap_or_default(),
        transition_text(e),
        e.attempt,
        detail_text(e),
    );
    clean(line.trim_end())
}

#[cfg(test)]
mod tests {
    use jobledger::proto::json::json_to_struct;

    use super::*;

    #[test]
    fn event_detail_puts_reported_fields_first() {
        let event = proto::JobEvent {
            prev_status: proto::JobStatus::Queued as i32,
            next_status: proto::JobStatus::Running as i32,
            detail: Some(json_to_struct(&json!({
                "zone": "eu", "progress": 40, "stage": "parse", "error_message": "two words",
            }))),
            ..Default::default()
        };
        assert_eq!(transition_text(&event), "QUEUED -> RUNNING");
        assert_eq!(
            detail_text(&event),
            r#"stage=parse progress=40% error_message="two words" zone=eu"#
        );
        let created = proto::JobEvent {
            next_status: proto::JobStatus::Queued as i32,
            ..Default::default()
        };
        assert_eq!(transition_text(&created), "(new) -> QUEUED");
    }
}
