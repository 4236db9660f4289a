//! The OpenAPI 3 document of the HTTP API (`GET /openapi.json`), made from the route
//! table and the descriptors, so it describes exactly what is served: a route added to
//! the table is documented with its request and response schemas (proto3 JSON mapping).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::LazyLock,
};

use axum::response::Response;
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor};
use serde_json::{json, Map, Value};

use super::{
    json::TIMEOUT_PARAM,
    json_response,
    routes::{Route, Target, Verb, ROUTES},
    sse::END_EVENT,
};
use crate::proto::reflect;

static DOCUMENT: LazyLock<Vec<u8>> =
    LazyLock::new(|| serde_json::to_vec_pretty(&document()).unwrap_or_default());

pub(crate) fn response() -> Response {
    json_response(DOCUMENT.clone())
}

const STATUS: &str = "google.rpc.Status";

/// The whole document.
pub(crate) fn document() -> Value {
    let mut schemas = Schemas::default();
    schemas.add(STATUS);
    let mut paths: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for route in ROUTES {
        let mut operation = operation(route, &mut schemas);
        let mut id = operation_id(route);
        while !ids.insert(id.clone()) {
            id.push('_');
        }
        operation.insert("operationId".into(), id.into());
        paths.entry(route.path).or_default().insert(
            route.verb.as_str().to_ascii_lowercase(),
            Value::Object(operation),
        );
    }
    // The error details a status carries in `details` (`@type` names them).
    for detail in [
        "ErrorInfo",
        "BadRequest",
        "PreconditionFailure",
        "RetryInfo",
    ] {
        schemas.add(&format!("google.rpc.{detail}"));
    }
    let mut components = schemas.0;
    components.insert("LegacyJob".into(), legacy_job_schema());
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "jobledger HTTP/JSON API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The JobLedger RPCs over HTTP (proto3 JSON mapping: responses \
                lowerCamelCase, requests in either spelling), StreamEvents as Server-Sent \
                Events, and the old REST API. Errors are google.rpc.Status documents with \
                the HTTP status of their gRPC code. docs/http.md has the details.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
        // Bearer tokens when authentication is on; none when it is off.
        "security": [{"bearer": []}, {}],
    })
}

fn operation_id(route: &Route) -> String {
    match route.target {
        Target::Rpc(name) => name.to_owned(),
        Target::LegacyCreate => "LegacyCreateJob".to_owned(),
        Target::LegacyGet => "LegacyGetJob".to_owned(),
        Target::OpenApi => "OpenApiDocument".to_owned(),
    }
}

/// One route's operation: parameters, body, responses.
fn operation(route: &Route, schemas: &mut Schemas) -> Map<String, Value> {
    let mut parameters: Vec<Value> = route
        .path_fields()
        .into_iter()
        .map(|name| parameter(name, "path", json!({"type": "string"}), true, ""))
        .collect();
    let mut op = Map::new();
    let ok = match (route.target, route.method()) {
        (Target::Rpc(name), Some(method)) => {
            op.insert(
                "summary".into(),
                format!("{name} (jobledger.v1.JobLedger)").into(),
            );
            rpc_operation(route, &method, schemas, &mut op, &mut parameters)
        }
        (Target::LegacyCreate | Target::LegacyGet, _) => {
            legacy_operation(route.target, &mut op, &mut parameters)
        }
        _ => {
            op.insert("summary".into(), "This document".into());
            json!({"description": "OpenAPI 3", "content": {"application/json": {"schema": {"type": "object"}}}})
        }
    };
    if route.target != Target::OpenApi {
        parameters.push(parameter(
            TIMEOUT_PARAM,
            "query",
            json!({"type": "string", "example": "2s"}),
            false,
            "the call's deadline (250ms, 2s, 1m); also the grpc-timeout header",
        ));
    }
    op.insert("parameters".into(), parameters.into());
    op.insert(
        "responses".into(),
        json!({
            "200": ok,
            "default": {
                "description": "google.rpc.Status, with the HTTP status of its code",
                "content": {"application/json": {"schema": schemas.reference_name(STATUS)}},
            },
        }),
    );
    op
}

/// The old REST API's two routes.
fn legacy_operation(
    target: Target,
    op: &mut Map<String, Value>,
    parameters: &mut Vec<Value>,
) -> Value {
    match target {
        Target::LegacyCreate => {
            op.insert(
                "summary".into(),
                "The old REST API: create a mock_process job".into(),
            );
            parameters.push(parameter(
                "org_id",
                "query",
                json!({"type": "string"}),
                false,
                "",
            ));
            parameters.push(parameter(
                "Idempotency-Key",
                "header",
                json!({"type": "string"}),
                false,
                "",
            ));
            op.insert(
                "requestBody".into(),
                json!({
                    "required": false,
                    "content": {"application/json": {"schema": {
                        "type": "object", "additionalProperties": true,
                        "description": "the job's params",
                    }}},
                }),
            );
            legacy_ok()
        }
        _ => {
            op.insert("summary".into(), "The old REST API: read a job".into());
            parameters.push(parameter(
                "org_id",
                "query",
                json!({"type": "string"}),
                false,
                "",
            ));
            legacy_ok()
        }
    }
}

/// A JSON route's query parameters (a GET's every request field; a POST's `org_id`),
/// header parameters and body; its 200 response.
fn rpc_operation(
    route: &Route,
    method: &MethodDescriptor,
    schemas: &mut Schemas,
    op: &mut Map<String, Value>,
    parameters: &mut Vec<Value>,
) -> Value {
    let input = method.input();
    let path_fields = route.path_fields();
    let query_fields = input.fields().filter(|f| {
        !path_fields.contains(&f.name()) && (route.verb == Verb::Get || f.name() == "org_id")
    });
    for field in query_fields {
        let schema = schemas.field(&field);
        parameters.push(parameter(field.json_name(), "query", schema, false, ""));
    }
    for (header, field) in route.header_fields {
        let about = format!("sets {field}, winning over the query (EventSource resume)");
        parameters.push(parameter(
            header,
            "header",
            json!({"type": "string"}),
            false,
            &about,
        ));
    }
    if route.verb == Verb::Post {
        op.insert(
            "requestBody".into(),
            json!({
                "required": false,
                "content": {"application/json": {"schema": schemas.reference(&input)}},
            }),
        );
    }
    if method.is_server_streaming() {
        json!({
            "description": format!(
                "Server-Sent Events: each event's data is a {} (id: its cursor); \
                 an `{END_EVENT}` event carries the final google.rpc.Status",
                method.output().full_name()
            ),
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        })
    } else {
        json!({
            "description": "the RPC's response",
            "content": {"application/json": {"schema": schemas.reference(&method.output())}},
        })
    }
}

fn legacy_ok() -> Value {
    json!({
        "description": "the job in the old REST shape",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/LegacyJob"}}},
    })
}

fn parameter(name: &str, place: &str, schema: Value, required: bool, about: &str) -> Value {
    let mut p = json!({"name": name, "in": place, "required": required, "schema": schema});
    if !about.is_empty() {
        p["description"] = about.into();
    }
    p
}

fn legacy_job_schema() -> Value {
    let nullable_string = json!({"type": "string", "nullable": true});
    json!({
        "type": "object",
        "required": ["id", "status", "stage", "progress", "result", "error", "created_at", "updated_at"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "status": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "canceled", "dead_letter"]},
            "stage": nullable_string,
            "progress": {"type": "integer"},
            "result": {"type": "object", "nullable": true, "additionalProperties": true},
            "error": nullable_string,
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
        },
    })
}

/// The schemas of the messages the routes use, by full name.
#[derive(Default)]
struct Schemas(Map<String, Value>);

impl Schemas {
    fn reference(&mut self, message: &MessageDescriptor) -> Value {
        self.reference_name(message.full_name())
    }

    fn reference_name(&mut self, full_name: &str) -> Value {
        self.add(full_name);
        json!({"$ref": format!("#/components/schemas/{full_name}")})
    }

    /// Adds the schema of `full_name` and of the messages it holds.
    fn add(&mut self, full_name: &str) {
        if self.0.contains_key(full_name) {
            return;
        }
        let Some(message) = reflect::message(full_name) else {
            return;
        };
        // Placed first: a message that holds itself refers to its own entry.
        self.0.insert(full_name.to_owned(), Value::Null);
        let mut properties = Map::new();
        for field in message.fields() {
            properties.insert(field.json_name().to_owned(), self.field(&field));
        }
        self.0.insert(
            full_name.to_owned(),
            json!({"type": "object", "properties": properties}),
        );
    }

    /// A field's schema in the proto3 JSON mapping.
    fn field(&mut self, field: &FieldDescriptor) -> Value {
        let one = self.kind(&field.kind());
        if field.is_map() {
            let value = field
                .kind()
                .as_message()
                .map(|entry| self.kind(&entry.map_entry_value_field().kind()))
                .unwrap_or_default();
            json!({"type": "object", "additionalProperties": value})
        } else if field.is_list() {
            json!({"type": "array", "items": one})
        } else {
            one
        }
    }

    fn kind(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Double | Kind::Float => json!({"type": "number"}),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({"type": "integer", "format": "int32"})
            }
            Kind::Uint32 | Kind::Fixed32 => {
                json!({"type": "integer", "format": "int32", "minimum": 0})
            }
            // 64-bit integers are strings in the mapping (numbers are accepted too).
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => {
                json!({"type": "string", "format": "int64"})
            }
            Kind::Bool => json!({"type": "boolean"}),
            Kind::String => json!({"type": "string"}),
            Kind::Bytes => json!({"type": "string", "format": "byte"}),
            Kind::Enum(e) => {
                let names: Vec<String> = e.values().map(|v| v.name().to_owned()).collect();
                json!({"type": "string", "enum": names})
            }
            Kind::Message(m) => self.message_kind(m),
        }
    }

    /// Well-known types have JSON forms of their own; others are references.
    fn message_kind(&mut self, message: &MessageDescriptor) -> Value {
        match message.full_name() {
            "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
            "google.protobuf.Duration" => json!({"type": "string", "example": "1.5s"}),
            "google.protobuf.Struct" => json!({"type": "object", "additionalProperties": true}),
            "google.protobuf.Value" => json!({}),
            "google.protobuf.ListValue" => json!({"type": "array", "items": {}}),
            "google.protobuf.Any" => json!({
                "type": "object",
                "properties": {"@type": {"type": "string"}},
                "additionalProperties": true,
            }),
            _ => self.reference(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_with_its_schemas() {
        let doc = document();
        for route in ROUTES {
            let verb = route.verb.as_str().to_ascii_lowercase();
            assert!(
                doc["paths"][route.path][&verb].is_object(),
                "{verb} {}",
                route.path
            );
        }
        let schemas = &doc["components"]["schemas"];
        for name in [
            "jobledger.v1.Job",
            "jobledger.v1.CreateJobRequest",
            STATUS,
            "google.rpc.BadRequest",
        ] {
            assert!(schemas[name].is_object(), "{name}");
        }
        assert_eq!(
            schemas["jobledger.v1.Job"]["properties"]["createdAt"]["format"],
            "date-time"
        );
    }
}
