//! A status as the HTTP API answers it (spec §8): the HTTP status its gRPC code maps to,
//! and a google.rpc.Status JSON body (`code`, `message`, `details` with `@type`) carrying
//! the same ErrorInfo, BadRequest, PreconditionFailure and RetryInfo the gRPC status has.
//! Headers a client can act on come along: `WWW-Authenticate` on 401, `Retry-After` from a
//! RetryInfo, `Allow` on 405.

use axum::{body::Body, response::Response};
use http::{header, HeaderValue, StatusCode};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::{METHOD_NOT_ALLOWED, REQUEST_TOO_LARGE};
use crate::proto::reflect;

/// The HTTP status of a gRPC status (Google's mapping, as spec §8 lists it). Two reasons
/// get a more precise one: a body over the limit (413, not 429) and a wrong method (405).
pub(crate) fn http_status(status: &Status) -> StatusCode {
    let reason = status.get_details_error_info().map(|info| info.reason);
    match status.code() {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::Aborted | Code::AlreadyExists => StatusCode::CONFLICT,
        Code::ResourceExhausted if reason.as_deref() == Some(REQUEST_TOO_LARGE) => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented if reason.as_deref() == Some(METHOD_NOT_ALLOWED) => {
            StatusCode::METHOD_NOT_ALLOWED
        }
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        // The client went away: nobody reads this (nginx's 499).
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The status as a google.rpc.Status JSON document.
pub(crate) fn body(status: &Status) -> Vec<u8> {
    // `Status::with_error_details` encodes the google.rpc.Status in the details; a status
    // built without details gets one from its code and message.
    let mut rpc: tonic_types::Status = prost::Message::decode(status.details()).unwrap_or_default();
    rpc.code = status.code() as i32;
    rpc.message = status.message().to_owned();
    let printed = reflect::message("google.rpc.Status")
        .ok_or_else(|| "google.rpc.Status is not in the pool".to_owned())
        .and_then(|desc| reflect::to_json(&desc, &prost::Message::encode_to_vec(&rpc)));
    printed.unwrap_or_else(|e| {
        tracing::error!(error = %e, "an error body did not print as JSON");
        serde_json::to_vec(&serde_json::json!({
            "code": rpc.code,
            "message": rpc.message,
            "details": [],
        }))
        .unwrap_or_default()
    })
}

/// The HTTP answer of a status: mapped status code, JSON body, and the headers above.
pub(crate) fn response(status: &Status) -> Response {
    let mut response = Response::new(Body::from(body(status)));
    *response.status_mut() = http_status(status);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status.code() == Code::Unauthenticated {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(delay) = status.get_details_retry_info().and_then(|r| r.retry_delay) {
        // Whole seconds, rounded up: `Retry-After: 0` would invite a hot loop.
        let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    if let Some(info) = status.get_details_error_info() {
        if info.reason == METHOD_NOT_ALLOWED {
            if let Some(allowed) = info
                .metadata
                .get("allowed")
                .and_then(|a| HeaderValue::from_str(a).ok())
            {
                headers.insert(header::ALLOW, allowed);
            }
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::LedgerError;

    #[test]
    fn every_code_has_its_http_status() {
        let cases = [
            (Code::InvalidArgument, 400),
            (Code::FailedPrecondition, 400),
            (Code::OutOfRange, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::Aborted, 409),
            (Code::AlreadyExists, 409),
            (Code::ResourceExhausted, 429),
            (Code::Unimplemented, 501),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Internal, 500),
        ];
        for (code, http) in cases {
            assert_eq!(
                http_status(&Status::new(code, "x")).as_u16(),
                http,
                "{code:?}"
            );
        }
        assert_eq!(http_status(&super::super::body_too_large(10)).as_u16(), 413);
        assert_eq!(
            http_status(&super::super::method_not_allowed(
                "PUT",
                "/v1/jobs",
                "GET, POST"
            ))
            .as_u16(),
            405
        );
    }

    #[test]
    fn bodies_carry_code_message_and_typed_details() {
        let status = Status::from(LedgerError::invalid("type", "is required"));
        let json: serde_json::Value = serde_json::from_slice(&body(&status)).unwrap();
        assert_eq!(json["code"], 3);
        assert!(json["message"].as_str().unwrap().contains("type"));
        let types: Vec<&str> = json["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["@type"].as_str().unwrap())
            .collect();
        assert!(
            types.contains(&"type.googleapis.com/google.rpc.ErrorInfo"),
            "{json}"
        );
        assert!(
            types.contains(&"type.googleapis.com/google.rpc.BadRequest"),
            "{json}"
        );
        let plain: serde_json::Value =
            serde_json::from_slice(&body(&Status::new(Code::NotFound, "gone"))).unwrap();
        assert_eq!(
            plain,
            serde_json::json!({"code": 5, "message": "gone", "details": []})
        );
    }
}
