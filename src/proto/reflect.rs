//! The proto3 JSON mapping of the contract's messages, for the HTTP API: JSON ⇄
//! prost-reflect's `DynamicMessage` ⇄ protobuf bytes. The generated prost types stay as
//! they are (prost_types::Struct and all); the bytes are what the gRPC service takes and
//! gives. The pool also holds `google.rpc`'s error details, so a status's `Any` details
//! (ErrorInfo, BadRequest, ...) print with their `@type`.

use std::sync::LazyLock;

use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions,
};

/// The contract and `google/rpc/error_details.proto`, encoded (see build.rs).
const JSON_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/jobledger_json_descriptor.bin"));

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(JSON_DESCRIPTOR_SET).expect("build.rs wrote a valid descriptor set")
});

/// Every message, enum and service of the contract and of the error details.
pub(crate) fn pool() -> &'static DescriptorPool {
    &POOL
}

/// The message type named `full_name` (`jobledger.v1.Job`, `google.rpc.Status`).
pub(crate) fn message(full_name: &str) -> Option<MessageDescriptor> {
    POOL.get_message_by_name(full_name)
}

/// Why a JSON document is not a message of the expected type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JsonError {
    /// Not JSON at all (or truncated): no field to name.
    Syntax(String),
    /// A field's value (or an unknown field): the field's path as the client wrote it
    /// (`jobs[0].params`), and what is wrong with it.
    Field { field: String, description: String },
}

/// Responses print every field without presence, defaults included (`"progress": 0`,
/// `"stage": ""`), so a client sees one shape whatever the values; fields with presence
/// (timestamps, Structs, `optional`) appear only when set. This is the mapping's
/// "emit default values" option; the rest is the standard mapping (lowerCamelCase names,
/// enum names, 64-bit integers as strings).
fn serialize_options() -> SerializeOptions {
    SerializeOptions::new().skip_default_fields(false)
}

/// Reads a JSON document as a message of type `desc`. Field names may be the proto
/// names or their lowerCamelCase JSON names; unknown fields are refused, naming them.
pub(crate) fn from_json(
    desc: &MessageDescriptor,
    json: &[u8],
) -> Result<DynamicMessage, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let mut track = serde_path_to_error::Track::new();
    let read = DynamicMessage::deserialize_with_options(
        desc.clone(),
        serde_path_to_error::Deserializer::new(&mut de, &mut track),
        &DeserializeOptions::new(),
    );
    match read {
        Ok(message) => {
            de.end().map_err(|e| JsonError::Syntax(e.to_string()))?;
            Ok(message)
        }
        Err(e) => Err(json_error(&track.path(), e)),
    }
}

/// Names the field of a decoding error: serde's path, plus the name of an unknown field
/// (prost-reflect reports it in the message, at its parent's path).
fn json_error(path: &serde_path_to_error::Path, error: serde_json::Error) -> JsonError {
    let path = match path.iter().len() {
        0 => String::new(),
        _ => path.to_string(),
    };
    let message = error.to_string();
    if message.starts_with("recursion limit exceeded") {
        // Name the outermost field: the inner path is a hundred levels of the same key.
        let field = path.split(['.', '[']).next().unwrap_or_default().to_owned();
        return JsonError::Field {
            field,
            description: "nests too deeply".to_owned(),
        };
    }
    if error.is_syntax() || error.is_eof() {
        return JsonError::Syntax(message);
    }
    if let Some(name) = unknown_field(&message) {
        let field = match path.as_str() {
            "" => name.to_owned(),
            parent => format!("{parent}.{name}"),
        };
        return JsonError::Field {
            field,
            description: "no such field".to_owned(),
        };
    }
    JsonError::Field {
        field: path,
        // The field is named: where it was in the body adds nothing.
        description: without_position(&message).to_owned(),
    }
}

/// serde_json's message without its " at line 1 column 40".
fn without_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(at) if message[at..].contains(" column ") => &message[..at],
        _ => message,
    }
}

/// The name in prost-reflect's "unrecognized field name 'x'".
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unrecognized field name '")?;
    Some(&rest[..rest.rfind('\'')?])
}

/// A message, as protobuf bytes of type `desc`, printed as JSON.
pub(crate) fn to_json(desc: &MessageDescriptor, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let message = DynamicMessage::decode(desc.clone(), bytes).map_err(|e| e.to_string())?;
    message_to_json(&message)
}

/// A message printed as JSON.
pub(crate) fn message_to_json(message: &DynamicMessage) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, IntegralDoubles);
    message
        .serialize_with_options(&mut serializer, &serialize_options())
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// serde_json's compact output, except that a Struct's numbers (doubles) print as
/// integers when they are integral: `3`, not `3.0`, as the gRPC side's JSON
/// (`proto::json`) and Go's and Java's printers do, so what a client sent as `3` comes
/// back as `3`.
struct IntegralDoubles;

impl serde_json::ser::Formatter for IntegralDoubles {
    fn write_f64<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        value: f64,
    ) -> std::io::Result<()> {
        // 2^53: past it an f64 no longer holds every integer.
        if value.fract() == 0.0 && value.abs() <= 9_007_199_254_740_992.0 {
            write!(writer, "{}", value as i64)
        } else {
            serde_json::ser::CompactFormatter.write_f64(writer, value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create() -> MessageDescriptor {
        message("jobledger.v1.CreateJobRequest").unwrap()
    }

    #[test]
    fn both_spellings_are_read_and_unknown_fields_named() {
        let a = from_json(&create(), br#"{"org_id": "x", "maxAttempts": 3}"#).unwrap();
        let b = from_json(&create(), br#"{"orgId": "x", "max_attempts": 3}"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            from_json(&create(), br#"{"tipe": "x"}"#),
            Err(JsonError::Field {
                field: "tipe".into(),
                description: "no such field".into()
            })
        );
        let batch = message("jobledger.v1.CreateJobsRequest").unwrap();
        match from_json(&batch, br#"{"jobs": [{}, {"priority": "high"}]}"#) {
            Err(JsonError::Field { field, description }) => {
                assert_eq!(field, "jobs[1].priority");
                assert!(!description.contains("line 1"), "{description}");
            }
            other => panic!("{other:?}"),
        }
        match from_json(&batch, br#"{"jobs": [{"nope": 1}]}"#) {
            Err(JsonError::Field { field, .. }) => assert_eq!(field, "jobs[0].nope"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn syntax_errors_and_deep_nesting_are_told_apart() {
        assert!(matches!(
            from_json(&create(), b"{\"type\": "),
            Err(JsonError::Syntax(_))
        ));
        assert!(matches!(
            from_json(&create(), b"{} x"),
            Err(JsonError::Syntax(_))
        ));
        let deep = format!(
            "{{\"params\": {}1{}}}",
            "{\"a\":".repeat(200),
            "}".repeat(200)
        );
        assert_eq!(
            from_json(&create(), deep.as_bytes()),
            Err(JsonError::Field {
                field: "params".into(),
                description: "nests too deeply".into()
            })
        );
    }

    #[test]
    fn responses_are_lower_camel_case_with_defaults() {
        let job = crate::proto::Job {
            id: "j".into(),
            last_error_code: String::new(),
            ..Default::default()
        };
        let bytes = prost::Message::encode_to_vec(&job);
        let json: serde_json::Value = serde_json::from_slice(
            &to_json(&message("jobledger.v1.Job").unwrap(), &bytes).unwrap(),
        )
        .unwrap();
        assert_eq!(json["id"], "j");
        assert_eq!(json["lastErrorCode"], "");
        assert_eq!(json["status"], "JOB_STATUS_UNSPECIFIED");
        assert_eq!(json["progress"], 0);
        assert!(json.get("startedAt").is_none(), "{json}");
        let with_params = crate::proto::Job {
            params: Some(crate::proto::json::json_to_struct(
                &serde_json::json!({"n": 3, "f": 2.5, "big": 1e300}),
            )),
            ..Default::default()
        };
        let printed = to_json(
            &message("jobledger.v1.Job").unwrap(),
            &prost::Message::encode_to_vec(&with_params),
        )
        .unwrap();
        let printed = String::from_utf8(printed).unwrap();
        assert!(
            printed.contains(r#""n":3,"#) || printed.contains(r#""n":3}"#),
            "{printed}"
        );
        assert!(printed.contains(r#""f":2.5"#), "{printed}");
    }
}
