//! An HTTP request as the RPC's request message, and what goes along with it. The
//! message is the JSON body (proto3 JSON mapping, either field spelling), plus the query
//! parameters (each names a request field: `org_id`, `statuses` repeated, ...), plus the
//! path's fields (`{job_id}`), plus the fields set by headers (`Last-Event-ID`). A field
//! given in two of these places must have one value. The metadata is what the gRPC
//! interceptors read: `authorization`, the trace context, and the deadline
//! (`grpc-timeout`, or `?timeout=`).

use std::time::Duration;

use bytes::Bytes;
use http::{request::Parts, HeaderMap};
use http_body_util::{BodyExt, Limited};
use prost_reflect::{DynamicMessage, EnumDescriptor, Kind, MessageDescriptor, ReflectMessage};
use serde_json::{Map, Value};
use tonic::{metadata::MetadataMap, Status};

use super::routes::Route;
use crate::proto::reflect::{self, JsonError};
use crate::server::{service::deadline, status};

/// The query parameter that sets the call's deadline (not a request field).
pub(crate) const TIMEOUT_PARAM: &str = "timeout";

/// Request headers handed to the gRPC stack as metadata: the credentials and the W3C
/// trace context. Nothing else of the HTTP request reaches the service.
const FORWARDED: [&str; 3] = ["authorization", "traceparent", "tracestate"];

/// An RPC call made of an HTTP request.
pub(crate) struct Call {
    pub(crate) message: DynamicMessage,
    pub(crate) metadata: MetadataMap,
    pub(crate) timeout: Option<Duration>,
}

impl Call {
    /// The tonic request: the encoded message, the metadata, the deadline as
    /// `grpc-timeout` (which the service hands to the database).
    pub(crate) fn into_request(self) -> tonic::Request<Bytes> {
        let bytes = Bytes::from(prost::Message::encode_to_vec(&self.message));
        let mut request = tonic::Request::new(bytes);
        *request.metadata_mut() = self.metadata;
        if let Some(timeout) = self.timeout {
            request.set_timeout(timeout);
        }
        request
    }
}

/// Reads a body of at most `limit` bytes: over it, 413 (also when `Content-Length`
/// says so before anything is read).
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: axum::body::Body,
    limit: usize,
) -> Result<Bytes, Status> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(status::body_too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(status::body_too_large(limit)),
        // The client stopped sending mid-body.
        Err(e) => Err(status::invalid_field(
            "body",
            format!("the body could not be read: {e}"),
        )),
    }
}

/// The call a JSON route makes of `parts` (method, URI, headers) and `body`.
pub(crate) fn call(
    route: &Route,
    desc: &MessageDescriptor,
    path_fields: Vec<(&'static str, String)>,
    parts: &Parts,
    body: &[u8],
) -> Result<Call, Status> {
    let (query, timeout) = query_and_timeout(parts)?;
    let mut message = message_from_json(desc, body)?;
    if !query.is_empty() {
        let given = query_message(desc, &query)?;
        merge(&mut message, &given, "query")?;
    }
    for (name, value) in path_fields {
        set_string(&mut message, name, value, Some("path"))?;
    }
    for (header, field) in route.header_fields {
        if let Some(value) = parts.headers.get(*header) {
            let value = value
                .to_str()
                .map_err(|_| status::invalid_field(header, "is not text"))?;
            set_string(&mut message, field, value.to_owned(), None)?;
        }
    }
    Ok(Call {
        message,
        metadata: metadata(&parts.headers),
        timeout,
    })
}

/// The metadata of the gRPC call: the forwarded headers.
pub(crate) fn metadata(headers: &HeaderMap) -> MetadataMap {
    let mut forwarded = HeaderMap::new();
    for name in FORWARDED {
        if let Some(value) = headers.get(name) {
            forwarded.insert(name, value.clone());
        }
    }
    MetadataMap::from_headers(forwarded)
}

/// A query's parameters other than `timeout`, in order, as given.
pub(crate) type Query = Vec<(String, String)>;

/// The query's fields, and the deadline: `?timeout=` (`250ms`, `2s`, `1m`) or the
/// `grpc-timeout` header (gRPC's `250m`, `2S`); a malformed one is refused by name.
pub(crate) fn query_and_timeout(parts: &Parts) -> Result<(Query, Option<Duration>), Status> {
    let mut query = Vec::new();
    let mut timeout = None;
    let pairs = form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes());
    for (key, value) in pairs {
        if key == TIMEOUT_PARAM {
            timeout = Some(parse_timeout(&value).ok_or_else(|| {
                status::invalid_field(
                    TIMEOUT_PARAM,
                    format!("{value:?} is not a duration like 250ms, 2s or 1m"),
                )
            })?);
        } else {
            query.push((key.into_owned(), value.into_owned()));
        }
    }
    if timeout.is_none() {
        if let Some(value) = parts.headers.get("grpc-timeout") {
            let parsed = value.to_str().ok().and_then(deadline::parse_timeout);
            timeout = Some(parsed.ok_or_else(|| {
                status::invalid_field(
                    "grpc-timeout",
                    "is not a gRPC timeout like 250m or 2S (1-8 digits and a unit)",
                )
            })?);
        }
    }
    Ok((query, timeout))
}

/// `250ms`, `2s`, `1.5s`, `1m`, `1h` (also the proto Duration's `2.5s`).
fn parse_timeout(value: &str) -> Option<Duration> {
    let split = value.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = value.split_at(split);
    let n: f64 = number.parse().ok()?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

/// The body as the request message; an empty body is the empty message.
pub(crate) fn message_from_json(
    desc: &MessageDescriptor,
    body: &[u8],
) -> Result<DynamicMessage, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DynamicMessage::new(desc.clone()));
    }
    reflect::from_json(desc, body).map_err(|e| json_status(e, ""))
}

/// A JSON error as a status; `prefix` names where the JSON came from (`query: `).
fn json_status(error: JsonError, prefix: &str) -> Status {
    match error {
        JsonError::Syntax(description) => status::malformed_json(&description),
        JsonError::Field { field, description } => {
            status::invalid_field(&field, format!("{prefix}{description}"))
        }
    }
}

/// The query parameters as a message of type `desc`: each parameter names a field (by
/// its proto or JSON name); a repeated field takes the parameter repeatedly.
fn query_message(
    desc: &MessageDescriptor,
    query: &[(String, String)],
) -> Result<DynamicMessage, Status> {
    let mut object = Map::new();
    for (key, value) in query {
        let field = desc
            .get_field_by_name(key)
            .or_else(|| desc.get_field_by_json_name(key))
            .ok_or_else(|| {
                status::invalid_field(key, format!("no such query parameter of {}", desc.name()))
            })?;
        let json = query_value(&field.kind(), value);
        if field.is_list() {
            let list = object
                .entry(field.name())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(items) = list {
                items.push(json);
            }
        } else if object.insert(field.name().to_owned(), json).is_some() {
            return Err(status::invalid_field(key, "is given more than once"));
        }
    }
    let bytes =
        serde_json::to_vec(&Value::Object(object)).map_err(|e| status::http_bug(&e.to_string()))?;
    reflect::from_json(desc, &bytes).map_err(|e| json_status(e, "query parameter: "))
}

/// A query parameter's text as the JSON the mapping reads for its field: numbers may be
/// strings in proto3 JSON, booleans are `true`/`false` (a bare `?history_only` is true),
/// enums take the full name, the name without the enum's prefix in any case
/// (`queued`), or the number.
fn query_value(kind: &Kind, value: &str) -> Value {
    match kind {
        Kind::Bool => match value {
            "" | "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            other => Value::String(other.to_owned()),
        },
        Kind::Enum(e) => enum_value(e, value),
        _ => Value::String(value.to_owned()),
    }
}

fn enum_value(desc: &EnumDescriptor, value: &str) -> Value {
    if let Ok(n) = value.parse::<i32>() {
        return Value::from(n);
    }
    if desc.get_value_by_name(value).is_some() {
        return Value::String(value.to_owned());
    }
    let full = format!(
        "{}_{}",
        upper_snake(desc.name()),
        value.to_ascii_uppercase()
    );
    match desc.get_value_by_name(&full) {
        Some(_) => Value::String(full),
        // Left as given: the mapping refuses it, naming the field.
        None => Value::String(value.to_owned()),
    }
}

/// `JobStatus` → `JOB_STATUS`.
fn upper_snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Sets the fields of `from` on `into`; a field `into` already has with another value
/// is a conflict, named.
fn merge(into: &mut DynamicMessage, from: &DynamicMessage, source: &str) -> Result<(), Status> {
    for (field, value) in from.fields() {
        if into.has_field(&field) && into.get_field(&field).as_ref() != value {
            return Err(status::invalid_field(
                field.name(),
                format!("is given in the {source} and in the body, with different values"),
            ));
        }
        into.set_field(&field, value.clone());
    }
    Ok(())
}

/// Sets string field `name` to `value`. With `source`, a different value already there
/// is a conflict; without, `value` wins (a header over the query).
fn set_string(
    message: &mut DynamicMessage,
    name: &str,
    value: String,
    source: Option<&str>,
) -> Result<(), Status> {
    let field = message
        .descriptor()
        .get_field_by_name(name)
        .ok_or_else(|| status::http_bug(&format!("the route names no field {name}")))?;
    let value = prost_reflect::Value::String(value);
    if let Some(source) = source {
        if message.has_field(&field) && message.get_field(&field).as_ref() != &value {
            return Err(status::invalid_field(
                name,
                format!("is given in the {source} and in the body, with different values"),
            ));
        }
    }
    message.set_field(&field, value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_read_as_people_write_them() {
        assert_eq!(parse_timeout("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_timeout("1h"), Some(Duration::from_secs(3600)));
        for bad in ["", "5", "s", "-1s", "1d", "1..2s", "1e400s"] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn query_parameters_fill_fields_with_short_enum_names() {
        let desc = reflect::message("jobledger.v1.ListJobsRequest").unwrap();
        let query = [
            ("statuses".to_owned(), "queued".to_owned()),
            ("statuses".to_owned(), "JOB_STATUS_FAILED".to_owned()),
            ("statuses".to_owned(), "6".to_owned()),
            ("pageSize".to_owned(), "10".to_owned()),
        ];
        let message = query_message(&desc, &query).unwrap();
        let list: crate::proto::ListJobsRequest = message.transcode_to().unwrap();
        assert_eq!(list.statuses, vec![1, 4, 6]);
        assert_eq!(list.page_size, 10);
        let unknown = query_message(&desc, &[("nope".to_owned(), "1".to_owned())]).unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::InvalidArgument);
        assert!(unknown.message().contains("nope"), "{unknown:?}");
        let twice = [
            ("type".to_owned(), "a".to_owned()),
            ("type".to_owned(), "b".to_owned()),
        ];
        assert!(query_message(&desc, &twice).is_err());
    }
}
