//! The old REST API (the Python stack's FastAPI endpoints), so its HTTP clients work
//! unchanged: `POST /jobs` creates a `mock_process` job whose params are the JSON body,
//! `GET /jobs/{job_id}` reads one. Both answer in the old shape, `{"id", "status",
//! "stage", "progress", "result", "error", "created_at", "updated_at"}`, with the new
//! status names. They are CreateJob and GetJob underneath (same auth, limits,
//! validation); errors answer as the JSON API's do. docs/http.md has the mapping.

use axum::response::Response;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use prost::Message;
use serde_json::Value;
use tonic::Status;

use super::{call_unary, json, json_response, routes, with_trace_id, HttpApi};
use crate::proto::{self, json::json_to_struct, JobStatus};
use crate::server::status;

/// The job type of the old stack's jobs (its table had no types; the migration of its
/// rows uses the same).
pub(crate) const LEGACY_JOB_TYPE: &str = "mock_process";
/// The optional header that makes a `POST /jobs` idempotent.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

pub(crate) async fn create(api: &HttpApi, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    let answer = async {
        let (query, timeout) = json::query_and_timeout(&parts)?;
        let mut message = proto::CreateJobRequest {
            r#type: LEGACY_JOB_TYPE.to_owned(),
            ..Default::default()
        };
        for (key, value) in query {
            match key.as_str() {
                "org_id" | "orgId" => message.org_id = value,
                "idempotency_key" | "idempotencyKey" => message.idempotency_key = value,
                _ => return Err(unknown_parameter(&key, "POST /jobs")),
            }
        }
        if let Some(key) = parts.headers.get(IDEMPOTENCY_KEY) {
            message.idempotency_key = key
                .to_str()
                .map_err(|_| status::invalid_field("Idempotency-Key", "is not text"))?
                .to_owned();
        }
        let body = json::read_body(&parts.headers, body, api.max_body).await?;
        message.params = params(&body)?;
        let request = tonic_request(message.encode_to_vec(), &parts.headers);
        let response = call_unary(api, &method("CreateJob")?, request, timeout).await?;
        let created = proto::CreateJobResponse::decode(response.into_inner())
            .map_err(|e| status::http_bug(&e.to_string()))?;
        Ok(created.job.unwrap_or_default())
    };
    answer_with(answer.await)
}

pub(crate) async fn get(
    api: &HttpApi,
    fields: Vec<(&'static str, String)>,
    request: axum::extract::Request,
) -> Response {
    let (parts, _body) = request.into_parts();
    let answer = async {
        let (query, timeout) = json::query_and_timeout(&parts)?;
        let mut message = proto::GetJobRequest::default();
        for (key, value) in query {
            match key.as_str() {
                "org_id" | "orgId" => message.org_id = value,
                _ => return Err(unknown_parameter(&key, "GET /jobs/{job_id}")),
            }
        }
        message.job_id = fields
            .into_iter()
            .find(|(name, _)| *name == "job_id")
            .map(|(_, id)| id)
            .unwrap_or_default();
        let request = tonic_request(message.encode_to_vec(), &parts.headers);
        let response = call_unary(api, &method("GetJob")?, request, timeout).await?;
        let got = proto::GetJobResponse::decode(response.into_inner())
            .map_err(|e| status::http_bug(&e.to_string()))?;
        Ok(got.job.unwrap_or_default())
    };
    answer_with(answer.await)
}

fn answer_with(answer: Result<proto::Job, Status>) -> Response {
    match answer {
        Ok(job) => match serde_json::to_vec(&legacy_job(&job)) {
            Ok(json) => json_response(json),
            Err(e) => status::json::response(&status::http_bug(&e.to_string())),
        },
        Err(refusal) => with_trace_id(status::json::response(&refusal), &refusal),
    }
}

fn method(name: &str) -> Result<prost_reflect::MethodDescriptor, Status> {
    routes::rpc_method(name).ok_or_else(|| status::http_bug(&format!("no RPC {name}")))
}

fn tonic_request(bytes: Vec<u8>, headers: &http::HeaderMap) -> tonic::Request<Bytes> {
    let mut request = tonic::Request::new(Bytes::from(bytes));
    *request.metadata_mut() = json::metadata(headers);
    request
}

fn unknown_parameter(key: &str, route: &str) -> Status {
    status::invalid_field(key, format!("no such query parameter of {route}"))
}

/// The body: empty (no params) or a JSON object, the job's params.
fn params(body: &[u8]) -> Result<Option<prost_types::Struct>, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        if e.to_string().starts_with("recursion limit exceeded") {
            status::invalid_field("params", "nests too deeply")
        } else {
            status::malformed_json(&e.to_string())
        }
    })?;
    match value {
        Value::Object(_) => Ok(Some(json_to_struct(&value))),
        _ => Err(status::invalid_field(
            "params",
            "the body of POST /jobs is the job's params: a JSON object",
        )),
    }
}

/// A job in the old REST API's shape, its keys in the old order. `stage`, `result` and
/// `error` are null when the job has none (the old columns were NULL then); `error` is
/// `CODE: message` from the last failure, or whichever of the two is set.
#[derive(serde::Serialize)]
pub(crate) struct LegacyJob {
    id: String,
    status: String,
    stage: Option<String>,
    progress: i32,
    result: Option<Value>,
    error: Option<String>,
    created_at: Option<String>,
    updated_at: Option<String>,
}

pub(crate) fn legacy_job(job: &proto::Job) -> LegacyJob {
    let status = JobStatus::try_from(job.status)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("JOB_STATUS_")
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let error = match (
        job.last_error_code.as_str(),
        job.last_error_message.as_str(),
    ) {
        ("", "") => None,
        (code, "") => Some(code.to_owned()),
        ("", message) => Some(message.to_owned()),
        (code, message) => Some(format!("{code}: {message}")),
    };
    LegacyJob {
        id: job.id.clone(),
        status,
        stage: (!job.stage.is_empty()).then(|| job.stage.clone()),
        progress: job.progress,
        result: job
            .result
            .as_ref()
            .map(|r| proto::json::struct_to_json(r, "result", &mut |_, _| {})),
        error,
        created_at: job.created_at.as_ref().map(timestamp),
        updated_at: job.updated_at.as_ref().map(timestamp),
    }
}

/// RFC 3339 in UTC with microseconds, as the old stack's datetimes printed.
fn timestamp(t: &prost_types::Timestamp) -> String {
    DateTime::<Utc>::from_timestamp(t.seconds, t.nanos.max(0) as u32)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_old_shape_has_exactly_the_old_keys() {
        let job = proto::Job {
            id: "j".into(),
            status: JobStatus::DeadLetter as i32,
            last_error_code: "E".into(),
            last_error_message: "boom".into(),
            progress: 40,
            created_at: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: 123_456_000,
            }),
            ..Default::default()
        };
        let text = serde_json::to_string(&legacy_job(&job)).unwrap();
        assert!(
            text.starts_with(r#"{"id":"j","status":"dead_letter","stage":null,"#),
            "{text}"
        );
        let json: Value = serde_json::from_str(&text).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(
            keys.len(),
            8,
            "id, status, stage, progress, result, error, created_at, updated_at: {keys:?}"
        );
        assert_eq!(json["status"], "dead_letter");
        assert_eq!(json["error"], "E: boom");
        assert_eq!(json["stage"], Value::Null);
        assert_eq!(json["created_at"], "2027-01-15T08:00:00.123456Z");
        assert!(params(b"[1]").is_err());
        assert!(params(b" ").unwrap().is_none());
    }
}
