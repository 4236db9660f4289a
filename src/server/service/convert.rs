//! Wire types <-> ledger types. Requests are validated while they are converted, so a
//! ledger value is always a valid one.

use prost_types::{Struct, Timestamp};
use serde_json::{Map, Value};

use crate::feed::Subscribe;
use chrono::{DateTime, Utc};

use crate::ledger::{
    Cursor, Job, JobEvent, JobStatus, LedgerError, Limits, NewJob, RetryPolicy, Transition,
    Violations,
};
use crate::proto::{self, json::json_to_struct};
use crate::store::FeedScope;

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
    let max_attempts = v.max_attempts(req.max_attempts, limits);
    let params = req
        .params
        .as_ref()
        .map(|s| struct_to_json(&mut v, "params", s, limits));
    let run_after = req
        .run_after
        .as_ref()
        .and_then(|t| timestamp_from_proto(&mut v, "run_after", t));
    let retry = retry_policy(&mut v, req.retry_policy.as_ref());
    v.finish()?;
    Ok(NewJob {
        org_id,
        job_type,
        priority: req.priority,
        idempotency_key,
        requested_by,
        max_attempts,
        params,
        run_after,
        retry,
    })
}

/// A create's retry policy: each backoff 0 (the server's default) .. 30 days.
fn retry_policy(v: &mut Violations, policy: Option<&proto::RetryPolicy>) -> RetryPolicy {
    let Some(policy) = policy else {
        return RetryPolicy::default();
    };
    let mut backoff = |field: &str, d: Option<&prost_types::Duration>| {
        duration_ms(v, field, d)
            .filter(|ms| *ms > 0)
            .and_then(|ms| v.delay(field, ms))
    };
    RetryPolicy {
        initial_backoff_ms: backoff(
            "retry_policy.initial_backoff",
            policy.initial_backoff.as_ref(),
        ),
        max_backoff_ms: backoff("retry_policy.max_backoff", policy.max_backoff.as_ref()),
    }
}

/// A Duration a client sent, in whole milliseconds (rounded up, so 1 ns is not 0): not
/// negative, nanos within 0..1e9. None when unset or refused.
pub(super) fn duration_ms(
    v: &mut Violations,
    field: &str,
    d: Option<&prost_types::Duration>,
) -> Option<i64> {
    let d = d?;
    if d.seconds < 0 || !(0..1_000_000_000).contains(&d.nanos) {
        v.add(
            field,
            format!(
                "must be a duration of 0 or more (seconds {}, nanos {})",
                d.seconds, d.nanos
            ),
        );
        return None;
    }
    let ms = d
        .seconds
        .saturating_mul(1000)
        .saturating_add((i64::from(d.nanos) + 999_999) / 1_000_000);
    Some(ms)
}

/// A Timestamp a client sent: nanos within 0..1e9 and a time from year 1 to 9999
/// (the range google.protobuf.Timestamp allows).
pub(super) fn timestamp_from_proto(
    v: &mut Violations,
    field: &str,
    t: &Timestamp,
) -> Option<DateTime<Utc>> {
    // 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
    const MIN_SECONDS: i64 = -62_135_596_800;
    const MAX_SECONDS: i64 = 253_402_300_799;
    if !(0..1_000_000_000).contains(&t.nanos) {
        v.add(
            field,
            format!("nanos must be 0..999999999, got {}", t.nanos),
        );
        return None;
    }
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&t.seconds) {
        v.add(
            field,
            format!(
                "must be from 0001-01-01 to 9999-12-31, got {} seconds",
                t.seconds
            ),
        );
        return None;
    }
    DateTime::from_timestamp(t.seconds, t.nanos as u32)
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
    v.progress(req.progress);
    let result = req
        .result
        .as_ref()
        .map(|s| struct_to_json(&mut v, "result", s, limits));
    v.result_needs_success(result.is_some(), to);
    let error_code = v.text("error_code", &req.error_code, limits.error_code_chars);
    let error_message = v.text_bytes(
        "error_message",
        &req.error_message,
        limits.error_message_bytes,
    );
    let detail = client_detail(&mut v, req.detail.as_ref(), limits);
    let (lease_ms, retry_after_ms) = lease_and_retry_after(&mut v, &req, to);
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
        lease_ms,
        retry_after_ms,
    })
}

/// A transition's `lease` (only into RUNNING; 1 s .. 1 h) and `retry_after` (only into
/// FAILED; up to 30 days), in ms.
fn lease_and_retry_after(
    v: &mut Violations,
    req: &proto::TransitionJobRequest,
    to: Option<JobStatus>,
) -> (Option<i32>, Option<i64>) {
    let lease_ms = duration_ms(v, "lease", req.lease.as_ref()).and_then(|ms| v.lease("lease", ms));
    v.needs_status("lease", req.lease.is_some(), to, JobStatus::Running);
    let retry_after_ms = duration_ms(v, "retry_after", req.retry_after.as_ref())
        .and_then(|ms| v.delay("retry_after", ms));
    v.needs_status(
        "retry_after",
        req.retry_after.is_some(),
        to,
        JobStatus::Failed,
    );
    (lease_ms, retry_after_ms)
}

/// A transition's free-form detail, checked (it may not use the server's keys).
fn client_detail(
    v: &mut Violations,
    detail: Option<&Struct>,
    limits: &Limits,
) -> Map<String, Value> {
    let detail = match detail.map(|s| struct_to_json(v, "detail", s, limits)) {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    v.client_detail(&detail);
    detail
}

/// A `Struct` a client sent, as JSON, checked: a number JSON cannot hold (NaN,
/// infinities, magnitudes past 1e308), a NUL character, too deep, too large are
/// violations naming the path.
pub fn struct_to_json(v: &mut Violations, field: &str, s: &Struct, limits: &Limits) -> Value {
    let before = v.len();
    let value = proto::json::struct_to_json(s, field, &mut |path, n| {
        v.add(
            path,
            format!("{n} cannot be stored: JSON has no NaN or Infinity, and magnitudes above 1e308 are refused"),
        )
    });
    if v.len() == before {
        v.json(field, &value, limits);
    }
    value
}

pub(super) fn timestamp(t: DateTime<Utc>) -> Timestamp {
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
        run_after: job.run_after.map(timestamp),
        lease_expires_at: job.lease.as_ref().map(|l| timestamp(l.expires_at)),
        lease_holder: job
            .lease
            .as_ref()
            .and_then(|l| l.holder.clone())
            .unwrap_or_default(),
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
    use prost_types::value::Kind;

    #[test]
    fn nan_is_a_violation_naming_the_path() {
        let s = Struct {
            fields: [(
                "a".to_owned(),
                prost_types::Value {
                    kind: Some(Kind::NumberValue(f64::NAN)),
                },
            )]
            .into(),
        };
        let mut v = Violations::default();
        struct_to_json(&mut v, "params", &s, &Limits::default());
        match v.finish() {
            Err(LedgerError::InvalidArgument(list)) => assert_eq!(list[0].field, "params.a"),
            other => panic!("{other:?}"),
        }
    }
}
