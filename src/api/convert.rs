//! Wire types <-> ledger types. Requests are validated while they are converted, so a
//! ledger value is always a valid one.

use prost_types::{value::Kind, ListValue, Struct, Timestamp};
use serde_json::{Map, Number, Value};

use crate::feed::Subscribe;
use crate::ledger::{
    machine::RESERVED_DETAIL_KEYS, Cursor, Job, JobEvent, JobStatus, LedgerError, Limits, NewJob,
    Transition, Violations,
};
use crate::proto;
use crate::store::FeedScope;

/// Default `max_attempts` when a request leaves it 0.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 5;

/// Most jobs one CreateJobs call may carry.
pub const MAX_JOBS_PER_BATCH: usize = 1000;

pub fn status_to_proto(s: JobStatus) -> proto::JobStatus {
    match s {
        JobStatus::Queued => proto::JobStatus::Queued,
        JobStatus::Running => proto::JobStatus::Running,
        JobStatus::Succeeded => proto::JobStatus::Succeeded,
        JobStatus::Failed => proto::JobStatus::Failed,
        JobStatus::Canceled => proto::JobStatus::Canceled,
        JobStatus::DeadLetter => proto::JobStatus::DeadLetter,
    }
}

/// A status a client sent: UNSPECIFIED and unknown numbers are violations.
pub(super) fn status_from_proto(v: &mut Violations, field: &str, value: i32) -> Option<JobStatus> {
    match proto::JobStatus::try_from(value) {
        Ok(proto::JobStatus::Queued) => Some(JobStatus::Queued),
        Ok(proto::JobStatus::Running) => Some(JobStatus::Running),
        Ok(proto::JobStatus::Succeeded) => Some(JobStatus::Succeeded),
        Ok(proto::JobStatus::Failed) => Some(JobStatus::Failed),
        Ok(proto::JobStatus::Canceled) => Some(JobStatus::Canceled),
        Ok(proto::JobStatus::DeadLetter) => Some(JobStatus::DeadLetter),
        Ok(proto::JobStatus::Unspecified) => {
            v.add(field, "must be a job status, not JOB_STATUS_UNSPECIFIED");
            None
        }
        Err(_) => {
            v.add(field, format!("{value} is not a JobStatus"));
            None
        }
    }
}

pub fn new_job(req: proto::CreateJobRequest, limits: &Limits) -> Result<NewJob, LedgerError> {
    let mut v = Violations::default();
    let org_id = v.org_id(&req.org_id);
    let job_type = v.required_text("type", &req.r#type, limits.type_chars);
    let idempotency_key = v.text("idempotency_key", &req.idempotency_key, limits.key_chars);
    let requested_by = v.text("requested_by", &req.requested_by, limits.key_chars);
    let max_attempts = match req.max_attempts {
        0 => DEFAULT_MAX_ATTEMPTS,
        n if (1..=limits.max_attempts).contains(&n) => n,
        n => {
            v.add(
                "max_attempts",
                format!(
                    "must be 1..{} (0 for the default {DEFAULT_MAX_ATTEMPTS}), got {n}",
                    limits.max_attempts
                ),
            );
            DEFAULT_MAX_ATTEMPTS
        }
    };
    let params = req
        .params
        .as_ref()
        .map(|s| struct_to_json(&mut v, "params", s, limits));
    v.finish()?;
    Ok(NewJob {
        org_id,
        job_type,
        priority: req.priority,
        idempotency_key,
        requested_by,
        max_attempts,
        params,
    })
}

pub fn get_job(req: &proto::GetJobRequest) -> Result<(uuid::Uuid, uuid::Uuid), LedgerError> {
    let mut v = Violations::default();
    let org_id = v.org_id(&req.org_id);
    let job_id = v.uuid("job_id", &req.job_id);
    v.finish()?;
    Ok((org_id, job_id.unwrap_or_default()))
}

pub fn transition(
    req: proto::TransitionJobRequest,
    limits: &Limits,
) -> Result<Transition, LedgerError> {
    let mut v = Violations::default();
    let org_id = v.org_id(&req.org_id);
    let job_id = v.uuid("job_id", &req.job_id);
    let to = status_from_proto(&mut v, "to_status", req.to_status);
    let expected_status = req
        .expected_status
        .and_then(|s| status_from_proto(&mut v, "expected_status", s));
    if let Some(a) = req.attempt {
        if a < 0 {
            v.add("attempt", format!("must be 0 or more, got {a}"));
        }
    }
    let stage = v.text("stage", &req.stage, limits.stage_chars);
    if let Some(p) = req.progress {
        if !(0..=100).contains(&p) {
            v.add("progress", format!("must be 0..100, got {p}"));
        }
    }
    let result = req
        .result
        .as_ref()
        .map(|s| struct_to_json(&mut v, "result", s, limits));
    if result.is_some() && to.is_some_and(|to| to != JobStatus::Succeeded) {
        v.add(
            "result",
            "is accepted only with to_status JOB_STATUS_SUCCEEDED",
        );
    }
    let error_code = v.text("error_code", &req.error_code, limits.error_code_chars);
    let error_message = v.text_bytes(
        "error_message",
        &req.error_message,
        limits.error_message_bytes,
    );
    let detail = match req
        .detail
        .as_ref()
        .map(|s| struct_to_json(&mut v, "detail", s, limits))
    {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    for key in RESERVED_DETAIL_KEYS {
        if detail.contains_key(*key) {
            v.add(
                format!("detail.{key}"),
                "is reserved for the server; use the request field of that name",
            );
        }
    }
    let actor = v.text("actor", &req.actor, limits.key_chars);
    let request_id = v.text("request_id", &req.request_id, limits.key_chars);
    v.finish()?;
    let (Some(job_id), Some(to)) = (job_id, to) else {
        return Err(LedgerError::Internal {
            cause: "transition validated without job_id or to_status".into(),
        });
    };
    Ok(Transition {
        org_id,
        job_id,
        to,
        expected_status,
        attempt: req.attempt,
        stage,
        progress: req.progress,
        result,
        error_code,
        error_message,
        detail,
        actor,
        request_id,
    })
}

/// A `Struct` as JSON. Integral numbers become JSON integers (what a Python or JS
/// client sent as `5` stays `5` in the database); NaN and infinities, which JSON and
/// jsonb cannot hold, are violations, as are NUL characters, excessive depth and size.
pub fn struct_to_json(v: &mut Violations, field: &str, s: &Struct, limits: &Limits) -> Value {
    let before = v.len();
    let value = fields_to_json(v, field, &s.fields);
    if v.len() == before {
        v.json(field, &value, limits);
    }
    value
}

// Recursion here is bounded by prost's decoding recursion limit; the depth rule itself
// is applied to the JSON by `Violations::json`.
fn fields_to_json(
    v: &mut Violations,
    path: &str,
    fields: &std::collections::BTreeMap<String, prost_types::Value>,
) -> Value {
    let mut map = Map::new();
    for (key, value) in fields {
        let child = format!("{path}.{key}");
        map.insert(key.clone(), value_to_json(v, &child, value));
    }
    Value::Object(map)
}

fn value_to_json(v: &mut Violations, path: &str, value: &prost_types::Value) -> Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::NumberValue(n)) => number_to_json(*n).unwrap_or_else(|| {
            v.add(
                path,
                format!("{n} cannot be stored: JSON has no NaN or Infinity, and magnitudes above 1e308 are refused"),
            );
            Value::Null
        }),
        Some(Kind::StructValue(s)) => fields_to_json(v, path, &s.fields),
        Some(Kind::ListValue(list)) => Value::Array(
            list.values
                .iter()
                .enumerate()
                .map(|(i, item)| value_to_json(v, &format!("{path}[{i}]"), item))
                .collect(),
        ),
    }
}

/// 2^53: beyond it an f64 no longer holds every integer.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_992.0;
/// jsonb keeps numbers as exact decimals and prints the largest doubles as 309-digit
/// integers; refusing magnitudes past 1e308 keeps every stored number readable as an f64.
const MAX_STORABLE: f64 = 1e308;

fn number_to_json(n: f64) -> Option<Value> {
    if !n.is_finite() || n.abs() > MAX_STORABLE {
        return None;
    }
    if n.fract() == 0.0 && n.abs() <= MAX_SAFE_INTEGER {
        return Some(Value::Number(Number::from(n as i64)));
    }
    Number::from_f64(n).map(Value::Number)
}

/// A JSON object as a `Struct`; any other JSON (old rows may hold a bare list or
/// string) is wrapped as `{"value": ...}` so nothing is dropped.
pub fn json_to_struct(value: &Value) -> Struct {
    match value {
        Value::Object(map) => Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        },
        other => Struct {
            fields: [("value".to_owned(), json_to_value(other))].into(),
        },
    }
}

fn json_to_value(value: &Value) -> prost_types::Value {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        Value::Object(_) => Kind::StructValue(json_to_struct(value)),
    };
    prost_types::Value { kind: Some(kind) }
}

fn timestamp(t: chrono::DateTime<chrono::Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn job_to_proto(job: &Job) -> proto::Job {
    proto::Job {
        id: job.id.to_string(),
        org_id: job.org_id.to_string(),
        r#type: job.job_type.clone(),
        status: status_to_proto(job.status) as i32,
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        priority: job.priority,
        idempotency_key: job.idempotency_key.clone().unwrap_or_default(),
        requested_by: job.requested_by.clone().unwrap_or_default(),
        params: job.params.as_ref().map(json_to_struct),
        created_at: Some(timestamp(job.created_at)),
        updated_at: Some(timestamp(job.updated_at)),
        started_at: job.started_at.map(timestamp),
        finished_at: job.finished_at.map(timestamp),
        last_error_code: job.last_error_code.clone().unwrap_or_default(),
        last_error_message: job.last_error_message.clone().unwrap_or_default(),
        stage: job.stage.clone().unwrap_or_default(),
        progress: job.progress.unwrap_or_default(),
        result: job.result.as_ref().map(json_to_struct),
    }
}

pub fn subscribe(req: &proto::StreamEventsRequest) -> Result<Subscribe, LedgerError> {
    let mut v = Violations::default();
    let org_id = v.org_id(&req.org_id);
    let scope = if req.job_id.is_empty() {
        FeedScope::Org { org_id }
    } else {
        let job_id = v.uuid("job_id", &req.job_id).unwrap_or_default();
        FeedScope::Job { org_id, job_id }
    };
    let after = if req.after_cursor.is_empty() {
        None
    } else {
        let cursor = Cursor::decode(&req.after_cursor);
        if cursor.is_none() {
            v.add(
                "after_cursor",
                "is not a cursor of this ledger (use an event's `cursor`)",
            );
        }
        cursor
    };
    v.finish()?;
    Ok(Subscribe {
        scope,
        after,
        history_only: req.history_only,
    })
}

pub fn event_to_proto(e: &JobEvent) -> proto::JobEvent {
    proto::JobEvent {
        id: e.id.to_string(),
        job_id: e.job_id.to_string(),
        org_id: e.org_id.to_string(),
        ts: Some(timestamp(e.ts)),
        prev_status: e
            .prev_status
            .map(|s| status_to_proto(s) as i32)
            .unwrap_or_default(),
        next_status: status_to_proto(e.next_status) as i32,
        attempt: e.attempt,
        detail: e.detail.as_ref().map(json_to_struct),
        cursor: Cursor::of(e).encode(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(n: f64) -> prost_types::Value {
        prost_types::Value {
            kind: Some(Kind::NumberValue(n)),
        }
    }

    #[test]
    fn integral_numbers_stay_integers_and_fractions_stay_fractions() {
        assert_eq!(number_to_json(5.0), Some(serde_json::json!(5)));
        assert_eq!(number_to_json(-0.5), Some(serde_json::json!(-0.5)));
        assert_eq!(number_to_json(1e300), Some(serde_json::json!(1e300)));
        assert_eq!(number_to_json(f64::NAN), None);
        assert_eq!(number_to_json(f64::INFINITY), None);
        assert_eq!(number_to_json(f64::MAX), None);
        assert_eq!(number_to_json(-1e308), Some(serde_json::json!(-1e308)));
    }

    #[test]
    fn nan_is_a_violation_naming_the_path() {
        let s = Struct {
            fields: [("a".to_owned(), num(f64::NAN))].into(),
        };
        let mut v = Violations::default();
        struct_to_json(&mut v, "params", &s, &Limits::default());
        match v.finish() {
            Err(LedgerError::InvalidArgument(list)) => assert_eq!(list[0].field, "params.a"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn json_struct_round_trip() {
        let json = serde_json::json!({"a": [1, "x", null, true, {"b": 2.5}]});
        let s = json_to_struct(&json);
        let mut v = Violations::default();
        assert_eq!(struct_to_json(&mut v, "p", &s, &Limits::default()), json);
        assert!(v.is_empty());
        let bare = json_to_struct(&serde_json::json!([1, 2]));
        assert!(bare.fields.contains_key("value"));
    }
}
