//! Fuzz target: request decoding and validation, the code every request runs before it
//! reaches the database.
//!
//! Input: byte 0 picks the request type, byte 1 the limits (the defaults, or tight ones
//! so that small inputs reach every limit), the rest is the protobuf body as a client
//! would send it. The body is decoded with prost (what tonic's codec does) and, when it
//! decodes, converted with `jobledger::server::service::convert` / `list` exactly as the
//! handler converts it.
//!
//! Properties (a failure panics, which libFuzzer reports as a crash):
//! - nothing panics, whatever the bytes;
//! - a refused request is INVALID_ARGUMENT and nothing else (never INTERNAL), with a
//!   non-empty violation list whose every field names a field of that request, and the
//!   gRPC status built from it carries the same fields in its BadRequest and an ErrorInfo
//!   (domain `jobledger`, reason `INVALID_ARGUMENT`);
//! - every rule that can be judged from the request alone (lengths, NUL, UUIDs, enums,
//!   ranges, `result` only with SUCCEEDED, reserved detail keys) is judged here again,
//!   independently: a request breaking one is refused with that field named, and an
//!   accepted request breaks none;
//! - accepted JSON (params, result, detail) is within the size and depth limits and
//!   reads back unchanged after a round trip through `Struct` (what GetJob returns).

#![no_main]

use std::collections::BTreeSet;

use jobledger::{
    ledger::{LedgerError, Limits, Violations, DEFAULT_MAX_ATTEMPTS, MAX_JOBS_PER_BATCH},
    proto,
    server::service::{convert, list},
};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use serde_json::Value;
use tonic_types::StatusExt;

/// Keys of an event's `detail` that belong to the server (docs/api.md, "Events").
const RESERVED_DETAIL_KEYS: [&str; 7] = [
    "stage",
    "progress",
    "result",
    "error_code",
    "error_message",
    "actor",
    "request_id",
];

/// Limits small enough for short fuzz inputs to cross every one of them.
fn tight_limits() -> Limits {
    Limits {
        type_chars: 8,
        key_chars: 8,
        stage_chars: 8,
        error_code_chars: 8,
        error_message_bytes: 16,
        json_bytes: 64,
        json_depth: 3,
        max_attempts: 10,
    }
}

/// The rules judged here independently of the server: `must` are fields that have to be
/// reported; a reported field must be in `must` or start with one of `may` (rules whose
/// outcome depends on a conversion this harness does not repeat: JSON size, opaque tokens).
#[derive(Default)]
struct Expect {
    must: BTreeSet<String>,
    may: Vec<String>,
}

impl Expect {
    fn text(&mut self, field: &str, value: &str, max_chars: usize) {
        if value.chars().count() > max_chars || value.contains('\0') {
            self.must.insert(field.to_owned());
        }
    }

    fn required_text(&mut self, field: &str, value: &str, max_chars: usize) {
        if value.trim().is_empty() {
            self.must.insert(field.to_owned());
        } else {
            self.text(field, value, max_chars);
        }
    }

    fn org_id(&mut self, value: &str) {
        if !value.is_empty() && uuid::Uuid::try_parse(value).is_err() {
            self.must.insert("org_id".to_owned());
        }
    }

    fn uuid(&mut self, field: &str, value: &str) {
        if uuid::Uuid::try_parse(value).is_err() {
            self.must.insert(field.to_owned());
        }
    }

    /// A status a client names: UNSPECIFIED (0) and numbers outside the enum are refused.
    fn status(&mut self, field: &str, value: i32) -> bool {
        let ok = (1..=6).contains(&value);
        if !ok {
            self.must.insert(field.to_owned());
        }
        ok
    }

    /// JSON a client sends: anything the harness can judge without converting numbers
    /// (NaN, infinities, NUL, depth) must be reported under `field`; its size may be.
    fn json(&mut self, field: &str, s: &prost_types::Struct, limits: &Limits) {
        if !struct_storable(s) || struct_depth(s) > limits.json_depth {
            self.must.insert(field.to_owned());
        }
        self.may.push(field.to_owned());
    }

    fn check(&self, method: &str, fields: &[String]) {
        for f in &self.must {
            assert!(
                fields
                    .iter()
                    .any(|g| g == f || g.starts_with(&format!("{f}."))),
                "{method}: {f} breaks a rule but was not reported (reported: {fields:?})"
            );
        }
        for g in fields {
            let explained = self.must.contains(g)
                || self.must.iter().any(|f| is_under(g, f))
                || self.may.iter().any(|f| is_under(g, f));
            assert!(
                explained,
                "{method}: reported {g} (of {fields:?}), which breaks no rule"
            );
        }
    }
}

/// `g` is `f` or a path inside it (`params.a`, `params[0]`, `statuses[2]`).
fn is_under(g: &str, f: &str) -> bool {
    g == f
        || g.strip_prefix(f)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

fn value_storable(v: &prost_types::Value) -> bool {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) | Some(Kind::BoolValue(_)) => true,
        Some(Kind::NumberValue(n)) => n.is_finite() && n.abs() <= 1e308,
        Some(Kind::StringValue(s)) => !s.contains('\0'),
        Some(Kind::StructValue(s)) => struct_storable(s),
        Some(Kind::ListValue(l)) => l.values.iter().all(value_storable),
    }
}

fn struct_storable(s: &prost_types::Struct) -> bool {
    s.fields
        .iter()
        .all(|(k, v)| !k.contains('\0') && value_storable(v))
}

/// Containers enclosing the deepest value, the Struct itself being 1 (`{"a": [1]}` is 2).
fn struct_depth(s: &prost_types::Struct) -> usize {
    1 + s.fields.values().map(value_depth).max().unwrap_or(0)
}

fn value_depth(v: &prost_types::Value) -> usize {
    use prost_types::value::Kind;
    match &v.kind {
        Some(Kind::StructValue(s)) => struct_depth(s),
        Some(Kind::ListValue(l)) => 1 + l.values.iter().map(value_depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn json_depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(json_depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Accepted JSON is within the limits and survives the trip to the client and back.
fn check_accepted_json(field: &str, json: &Value, limits: &Limits) {
    let size = serde_json::to_vec(json)
        .expect("accepted JSON serializes")
        .len();
    assert!(
        size <= limits.json_bytes,
        "{field}: accepted {size} bytes over {}",
        limits.json_bytes
    );
    assert!(
        json_depth(json) <= limits.json_depth,
        "{field}: accepted depth {} over {}",
        json_depth(json),
        limits.json_depth
    );
    let back = proto::json::json_to_struct(json);
    let mut v = Violations::default();
    let again = convert::struct_to_json(&mut v, field, &back, limits);
    assert!(
        v.is_empty(),
        "{field}: stored JSON is refused on the way back: {v:?}"
    );
    assert_eq!(&again, json, "{field}: JSON changes on a round trip");
}

/// A refusal: INVALID_ARGUMENT with fields, and the status a client would get.
fn refused(method: &str, err: LedgerError) -> Vec<String> {
    let fields: Vec<String> = match &err {
        LedgerError::InvalidArgument(list) => list.iter().map(|f| f.field.clone()).collect(),
        other => panic!("{method}: validation failed with {other:?}, not INVALID_ARGUMENT"),
    };
    assert!(
        !fields.is_empty(),
        "{method}: INVALID_ARGUMENT naming no field"
    );
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{method}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("{method}: no ErrorInfo"));
    assert_eq!(info.domain, "jobledger");
    assert_eq!(info.reason, "INVALID_ARGUMENT");
    let bad = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("{method}: no BadRequest"));
    let named: Vec<String> = bad.field_violations.into_iter().map(|v| v.field).collect();
    assert_eq!(
        named, fields,
        "{method}: BadRequest differs from the violations"
    );
    fields
}

fn expect_create(req: &proto::CreateJobRequest, limits: &Limits) -> Expect {
    let mut e = Expect::default();
    e.org_id(&req.org_id);
    e.required_text("type", &req.r#type, limits.type_chars);
    e.text("idempotency_key", &req.idempotency_key, limits.key_chars);
    e.text("requested_by", &req.requested_by, limits.key_chars);
    if req.max_attempts != 0 && !(1..=limits.max_attempts).contains(&req.max_attempts) {
        e.must.insert("max_attempts".to_owned());
    }
    if let Some(p) = &req.params {
        e.json("params", p, limits);
    }
    e
}

fn create(method: &str, req: proto::CreateJobRequest, limits: &Limits) {
    let expect = expect_create(&req, limits);
    let sent = req.clone();
    match convert::new_job(req, limits) {
        Err(err) => expect.check(method, &refused(method, err)),
        Ok(job) => {
            expect.check(method, &[]);
            assert_eq!(job.job_type, sent.r#type);
            let wanted = if sent.max_attempts == 0 {
                DEFAULT_MAX_ATTEMPTS
            } else {
                sent.max_attempts
            };
            assert_eq!(job.max_attempts, wanted);
            assert_eq!(
                job.idempotency_key.unwrap_or_default(),
                sent.idempotency_key
            );
            assert_eq!(job.params.is_some(), sent.params.is_some());
            if let Some(p) = &job.params {
                check_accepted_json("params", p, limits);
            }
        }
    }
}

fn transition(req: proto::TransitionJobRequest, limits: &Limits) {
    let method = "TransitionJob";
    let mut e = Expect::default();
    e.org_id(&req.org_id);
    e.uuid("job_id", &req.job_id);
    let to_ok = e.status("to_status", req.to_status);
    if let Some(s) = req.expected_status {
        e.status("expected_status", s);
    }
    if req.attempt.is_some_and(|a| a < 0) {
        e.must.insert("attempt".to_owned());
    }
    e.text("stage", &req.stage, limits.stage_chars);
    if req.progress.is_some_and(|p| !(0..=100).contains(&p)) {
        e.must.insert("progress".to_owned());
    }
    if let Some(r) = &req.result {
        e.json("result", r, limits);
        if to_ok && req.to_status != proto::JobStatus::Succeeded as i32 {
            e.must.insert("result".to_owned());
        }
    }
    e.text("error_code", &req.error_code, limits.error_code_chars);
    if req.error_message.len() > limits.error_message_bytes || req.error_message.contains('\0') {
        e.must.insert("error_message".to_owned());
    }
    if let Some(d) = &req.detail {
        e.json("detail", d, limits);
        for key in RESERVED_DETAIL_KEYS {
            if d.fields.contains_key(key) {
                e.must.insert(format!("detail.{key}"));
            }
        }
    }
    e.text("actor", &req.actor, limits.key_chars);
    e.text("request_id", &req.request_id, limits.key_chars);
    let sent = req.clone();
    match convert::transition(req, limits) {
        Err(err) => e.check(method, &refused(method, err)),
        Ok(t) => {
            e.check(method, &[]);
            assert_eq!(Some(t.job_id), uuid::Uuid::try_parse(&sent.job_id).ok());
            assert_eq!(
                convert::status_to_proto(t.to) as i32,
                sent.to_status,
                "to_status"
            );
            assert_eq!(t.attempt, sent.attempt);
            assert_eq!(t.progress, sent.progress);
            if let Some(r) = &t.result {
                check_accepted_json("result", r, limits);
            }
            let detail = Value::Object(t.detail.clone());
            if sent.detail.is_some() {
                check_accepted_json("detail", &detail, limits);
            }
            for key in RESERVED_DETAIL_KEYS {
                assert!(
                    !t.detail.contains_key(key),
                    "accepted reserved detail.{key}"
                );
            }
        }
    }
}

fn get(req: proto::GetJobRequest) {
    let method = "GetJob";
    let mut e = Expect::default();
    e.org_id(&req.org_id);
    e.uuid("job_id", &req.job_id);
    match convert::get_job(&req) {
        Err(err) => e.check(method, &refused(method, err)),
        Ok((_, job_id)) => {
            e.check(method, &[]);
            assert_eq!(Some(job_id), uuid::Uuid::try_parse(&req.job_id).ok());
        }
    }
}

fn stream(req: proto::StreamEventsRequest) {
    let method = "StreamEvents";
    let mut e = Expect::default();
    e.org_id(&req.org_id);
    if !req.job_id.is_empty() {
        e.uuid("job_id", &req.job_id);
    }
    // A cursor is opaque to clients: whether a string is one is the server's to say.
    e.may.push("after_cursor".to_owned());
    match convert::subscribe(&req) {
        Err(err) => e.check(method, &refused(method, err)),
        Ok(s) => {
            e.check(method, &[]);
            assert_eq!(s.history_only, req.history_only);
            assert_eq!(s.after.is_some(), !req.after_cursor.is_empty());
        }
    }
}

fn timestamp_ok(t: &prost_types::Timestamp) -> bool {
    (0..1_000_000_000).contains(&t.nanos)
        && (-62_135_596_800..=253_402_300_799).contains(&t.seconds)
}

fn list_jobs(req: proto::ListJobsRequest, limits: &Limits) {
    let method = "ListJobs";
    let mut e = Expect::default();
    e.org_id(&req.org_id);
    for (i, s) in req.statuses.iter().enumerate() {
        e.status(&format!("statuses[{i}]"), *s);
    }
    e.text("type", &req.r#type, limits.type_chars);
    for (field, t) in [
        ("created_after", &req.created_after),
        ("created_before", &req.created_before),
    ] {
        if t.as_ref().is_some_and(|t| !timestamp_ok(t)) {
            e.must.insert(field.to_owned());
        }
    }
    e.text("idempotency_key", &req.idempotency_key, limits.key_chars);
    if req.page_size < 0 {
        e.must.insert("page_size".to_owned());
    }
    // Page tokens are opaque, like cursors.
    e.may.push("page_token".to_owned());
    match list::list_jobs(&req, limits) {
        Err(err) => e.check(method, &refused(method, err)),
        Ok(l) => {
            e.check(method, &[]);
            let wanted = match req.page_size {
                0 => list::DEFAULT_PAGE_SIZE,
                n => (n as usize).min(list::MAX_PAGE_SIZE),
            };
            assert_eq!(l.page_size, wanted);
            assert_eq!(l.after.is_some(), !req.page_token.is_empty());
        }
    }
}

fn count_jobs(req: proto::CountJobsRequest, limits: &Limits) {
    let method = "CountJobs";
    let mut e = Expect::default();
    e.org_id(&req.org_id);
    e.text("type", &req.r#type, limits.type_chars);
    match list::count_jobs(&req, limits) {
        Err(err) => e.check(method, &refused(method, err)),
        Ok((_, job_type)) => {
            e.check(method, &[]);
            assert_eq!(job_type.unwrap_or_default(), req.r#type);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [method, limits, body @ ..] = data else {
        return;
    };
    let limits = if limits & 1 == 0 {
        Limits::default()
    } else {
        tight_limits()
    };
    // A body that does not decode is answered by tonic (INVALID_ARGUMENT,
    // MALFORMED_REQUEST) before a handler runs; only decoding must not panic.
    match method % 7 {
        0 => {
            if let Ok(req) = proto::CreateJobRequest::decode(body) {
                create("CreateJob", req, &limits);
            }
        }
        1 => {
            // CreateJobs converts each entry as CreateJob does (the handler refuses more
            // than 1,000 entries before converting any).
            if let Ok(req) = proto::CreateJobsRequest::decode(body) {
                for entry in req.jobs.into_iter().take(MAX_JOBS_PER_BATCH) {
                    create("CreateJobs entry", entry, &limits);
                }
            }
        }
        2 => {
            if let Ok(req) = proto::GetJobRequest::decode(body) {
                get(req);
            }
        }
        3 => {
            if let Ok(req) = proto::TransitionJobRequest::decode(body) {
                transition(req, &limits);
            }
        }
        4 => {
            if let Ok(req) = proto::StreamEventsRequest::decode(body) {
                stream(req);
            }
        }
        5 => {
            if let Ok(req) = proto::ListJobsRequest::decode(body) {
                list_jobs(req, &limits);
            }
        }
        _ => {
            if let Ok(req) = proto::CountJobsRequest::decode(body) {
                count_jobs(req, &limits);
            }
        }
    }
});
