//! Input rules: lengths, required fields, and values PostgreSQL cannot store.
//!
//! Violations are collected, not returned one at a time, so a client learns every
//! bad field of a request at once (one INVALID_ARGUMENT with a BadRequest listing them).

use serde_json::{Map, Value};
use uuid::Uuid;

use super::{machine::RESERVED_DETAIL_KEYS, FieldViolation, JobStatus, LedgerError, DEFAULT_ORG};

/// A job's `max_attempts` when its create leaves it 0.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 5;

/// Most jobs one CreateJobs call (or transitions one TransitionJobs call) may carry.
pub const MAX_JOBS_PER_BATCH: usize = 1000;

/// A claim's lease when it asks for none (spec §7), and the bounds of every lease.
pub const DEFAULT_LEASE_MS: i32 = 30_000;
pub const MIN_LEASE_MS: i64 = 1_000;
pub const MAX_LEASE_MS: i64 = 3_600_000;
/// The longest a claim may wait for work.
pub const MAX_WAIT_MS: i64 = 60_000;
/// Most jobs one claim may take, and job types it may name.
pub const MAX_CLAIM_JOBS: i32 = 100;
pub const MAX_CLAIM_TYPES: usize = 32;
/// The longest delay a retry_after or a retry policy may set: 30 days.
pub const MAX_DELAY_MS: i64 = 30 * 24 * 3_600_000;

/// Configurable limits (spec §3). Lengths of strings are in characters, as
/// `varchar(n)` counts them; `error_message` and JSON sizes are in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub type_chars: usize,
    pub key_chars: usize,
    pub stage_chars: usize,
    pub error_code_chars: usize,
    pub error_message_bytes: usize,
    pub json_bytes: usize,
    pub json_depth: usize,
    pub max_attempts: i32,
}

impl Limits {
    /// The spec's defaults (§3).
    pub const DEFAULT: Limits = Limits {
        type_chars: 100,
        key_chars: 255,
        stage_chars: 100,
        error_code_chars: 100,
        error_message_bytes: 8 * 1024,
        json_bytes: 64 * 1024,
        json_depth: 32,
        max_attempts: 1000,
    };

    /// The most each limit may be set to: the columns' widths (`type varchar(100)`,
    /// `idempotency_key varchar(255)`, `last_error_code varchar(100)`) and the protobuf
    /// decoder's recursion limit (a Struct deeper than 32 levels does not decode).
    pub const MAX: Limits = Limits {
        type_chars: 100,
        key_chars: 255,
        stage_chars: usize::MAX,
        error_code_chars: 100,
        error_message_bytes: usize::MAX,
        json_bytes: usize::MAX,
        json_depth: 32,
        max_attempts: i32::MAX,
    };

    /// Refuses limits past [`Limits::MAX`] or below 1, naming the flag that sets them.
    pub fn check(&self) -> Result<(), String> {
        let bounds = [
            ("--max-type-chars", self.type_chars, Limits::MAX.type_chars),
            ("--max-key-chars", self.key_chars, Limits::MAX.key_chars),
            (
                "--max-error-code-chars",
                self.error_code_chars,
                Limits::MAX.error_code_chars,
            ),
            ("--max-json-depth", self.json_depth, Limits::MAX.json_depth),
        ];
        for (flag, value, max) in bounds {
            if !(1..=max).contains(&value) {
                return Err(format!("{flag} must be 1..{max}, got {value}"));
            }
        }
        if self.max_attempts < 1 {
            return Err(format!(
                "--max-attempts-limit must be at least 1, got {}",
                self.max_attempts
            ));
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Collects the violations of one request.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` if nothing was violated, else one `InvalidArgument` with all of them.
    pub fn finish(self) -> Result<(), LedgerError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(LedgerError::InvalidArgument(self.0))
        }
    }

    /// An optional text field: `""` is absent; otherwise at most `max_chars`, no NUL.
    pub fn text(&mut self, field: &str, value: &str, max_chars: usize) -> Option<String> {
        if value.is_empty() {
            return None;
        }
        self.check_text(field, value, max_chars);
        Some(value.to_owned())
    }

    /// A required text field.
    pub fn required_text(&mut self, field: &str, value: &str, max_chars: usize) -> String {
        if value.trim().is_empty() {
            self.add(field, "is required");
        } else {
            self.check_text(field, value, max_chars);
        }
        value.to_owned()
    }

    /// An optional text field bounded in bytes rather than characters.
    pub fn text_bytes(&mut self, field: &str, value: &str, max_bytes: usize) -> Option<String> {
        if value.is_empty() {
            return None;
        }
        if value.len() > max_bytes {
            self.add(
                field,
                format!("must be at most {max_bytes} bytes, got {}", value.len()),
            );
        }
        self.check_nul(field, value);
        Some(value.to_owned())
    }

    fn check_text(&mut self, field: &str, value: &str, max_chars: usize) {
        let chars = value.chars().count();
        if chars > max_chars {
            self.add(
                field,
                format!("must be at most {max_chars} characters, got {chars}"),
            );
        }
        self.check_nul(field, value);
    }

    fn check_nul(&mut self, field: &str, value: &str) {
        if value.contains('\0') {
            self.add(field, "must not contain NUL (\\u0000) characters");
        }
    }

    /// The org of a request: `""` is the default org.
    pub fn org_id(&mut self, value: &str) -> Uuid {
        if value.is_empty() {
            return DEFAULT_ORG;
        }
        self.uuid("org_id", value).unwrap_or(DEFAULT_ORG)
    }

    /// A required UUID field.
    pub fn uuid(&mut self, field: &str, value: &str) -> Option<Uuid> {
        if value.is_empty() {
            self.add(field, "is required (a UUID)");
            return None;
        }
        match Uuid::try_parse(value) {
            Ok(id) => Some(id),
            Err(_) => {
                self.add(field, "must be a UUID");
                None
            }
        }
    }

    /// A create's `max_attempts`: 0 is the default, else 1..the limit.
    pub fn max_attempts(&mut self, requested: i32, limits: &Limits) -> i32 {
        match requested {
            0 => DEFAULT_MAX_ATTEMPTS,
            n if (1..=limits.max_attempts).contains(&n) => n,
            n => {
                self.add(
                    "max_attempts",
                    format!(
                        "must be 1..{} (0 for the default {DEFAULT_MAX_ATTEMPTS}), got {n}",
                        limits.max_attempts
                    ),
                );
                DEFAULT_MAX_ATTEMPTS
            }
        }
    }

    /// A lease of `ms` milliseconds: 1 s .. 1 h.
    pub fn lease(&mut self, field: &str, ms: i64) -> Option<i32> {
        if (MIN_LEASE_MS..=MAX_LEASE_MS).contains(&ms) {
            return i32::try_from(ms).ok();
        }
        self.add(field, format!("must be 1s..1h, got {ms} ms"));
        None
    }

    /// A delay (a retry_after, a backoff): 0 .. 30 days.
    pub fn delay(&mut self, field: &str, ms: i64) -> Option<i64> {
        if (0..=MAX_DELAY_MS).contains(&ms) {
            return Some(ms);
        }
        self.add(field, format!("must be at most 30 days, got {ms} ms"));
        None
    }

    /// A lease is for a job left RUNNING; a retry_after for one moved to FAILED.
    pub fn needs_status(
        &mut self,
        field: &str,
        given: bool,
        to: Option<JobStatus>,
        needs: JobStatus,
    ) {
        if given && to.is_some_and(|to| to != needs) {
            self.add(
                field,
                format!(
                    "is accepted only with to_status JOB_STATUS_{}",
                    needs.api_name()
                ),
            );
        }
    }

    /// A reported progress is a percentage.
    pub fn progress(&mut self, progress: Option<i32>) {
        if let Some(p) = progress {
            if !(0..=100).contains(&p) {
                self.add("progress", format!("must be 0..100, got {p}"));
            }
        }
    }

    /// A result comes only with success.
    pub fn result_needs_success(&mut self, has_result: bool, to: Option<JobStatus>) {
        if has_result && to.is_some_and(|to| to != JobStatus::Succeeded) {
            self.add(
                "result",
                "is accepted only with to_status JOB_STATUS_SUCCEEDED",
            );
        }
    }

    /// A client's event detail may not use the keys the server writes.
    pub fn client_detail(&mut self, detail: &Map<String, Value>) {
        for key in RESERVED_DETAIL_KEYS {
            if detail.contains_key(*key) {
                self.add(
                    format!("detail.{key}"),
                    "is reserved for the server; use the request field of that name",
                );
            }
        }
    }

    /// A JSON document: at most `json_bytes` when serialized, at most `json_depth`
    /// levels of nested objects/arrays (`{"a": 1}` is 1 deep, `{"a": [1]}` 2, as a
    /// bracket counter sees it), no NUL in any key or string (jsonb cannot store `\u0000`).
    pub fn json(&mut self, field: &str, value: &Value, limits: &Limits) {
        let before = self.0.len();
        self.json_node(field, value, 0, limits.json_depth);
        if self.0.len() > before {
            return;
        }
        let size = serde_json::to_vec(value)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > limits.json_bytes {
            self.add(
                field,
                format!(
                    "must be at most {} bytes as JSON, got {size}",
                    limits.json_bytes
                ),
            );
        }
    }

    /// `depth` is the number of containers enclosing `value`.
    fn json_node(&mut self, path: &str, value: &Value, depth: usize, max_depth: usize) {
        match value {
            Value::String(s) => self.check_nul(path, s),
            Value::Array(items) => {
                if depth + 1 > max_depth {
                    self.add(path, format!("nests deeper than {max_depth} levels"));
                    return;
                }
                for (i, item) in items.iter().enumerate() {
                    self.json_node(&format!("{path}[{i}]"), item, depth + 1, max_depth);
                }
            }
            Value::Object(map) => {
                if depth + 1 > max_depth {
                    self.add(path, format!("nests deeper than {max_depth} levels"));
                    return;
                }
                for (key, item) in map {
                    if key.contains('\0') {
                        self.add(path, "keys must not contain NUL (\\u0000) characters");
                    }
                    self.json_node(&format!("{path}.{key}"), item, depth + 1, max_depth);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Violations) -> Vec<String> {
        match v.finish() {
            Ok(()) => vec![],
            Err(LedgerError::InvalidArgument(list)) => list.into_iter().map(|f| f.field).collect(),
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn lengths_count_characters_not_bytes() {
        let mut v = Violations::default();
        let hundred_snowmen = "☃".repeat(100);
        v.required_text("type", &hundred_snowmen, 100);
        assert!(v.is_empty());
        v.required_text("type", &"☃".repeat(101), 100);
        assert_eq!(fields(v), ["type"]);
    }

    #[test]
    fn required_and_nul() {
        let mut v = Violations::default();
        v.required_text("type", "", 100);
        v.required_text("type2", "  ", 100);
        v.text("stage", "a\0b", 100);
        assert_eq!(v.text("empty", "", 100), None);
        assert_eq!(fields(v), ["type", "type2", "stage"]);
    }

    #[test]
    fn error_message_is_bounded_in_bytes() {
        let mut v = Violations::default();
        v.text_bytes("error_message", &"é".repeat(4096), 8192);
        assert!(v.is_empty());
        v.text_bytes("error_message", &"é".repeat(4097), 8192);
        assert_eq!(fields(v), ["error_message"]);
    }

    #[test]
    fn uuids() {
        let mut v = Violations::default();
        assert_eq!(v.org_id(""), DEFAULT_ORG);
        assert!(v
            .uuid("job_id", "6b1e2f5c-4a51-4b0e-9d55-2f0e3c6a7b80")
            .is_some());
        v.uuid("job_id", "nope");
        v.uuid("job_id2", "");
        v.org_id("123");
        assert_eq!(fields(v), ["job_id", "job_id2", "org_id"]);
    }

    #[test]
    fn json_rules() {
        let limits = Limits {
            json_bytes: 20,
            json_depth: 3,
            ..Limits::default()
        };
        let mut v = Violations::default();
        v.json("params", &json!({"a": {"b": [1]}}), &limits);
        assert!(v.is_empty(), "3 levels of containers are allowed");
        v.json("params", &json!({"a": {"b": {"c": {}}}}), &limits);
        v.json("result", &json!({"s": "x\u{0}y"}), &limits);
        v.json("detail", &json!({"long": "0123456789012345"}), &limits);
        assert_eq!(fields(v), ["params.a.b.c", "result.s", "detail"]);
    }
}
