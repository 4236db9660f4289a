//! JSON ⇄ `google.protobuf.Struct`, the way params, results and event details travel.

use prost_types::{value::Kind, ListValue, Struct};
use serde_json::{Map, Number, Value};

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

/// A `Struct` as JSON, its paths named from `field` (`params.a[2].b`). Integral numbers
/// become JSON integers (what a Python or JS client sent as `5` stays `5`); a number JSON
/// cannot hold (NaN, ±Infinity, magnitudes past 1e308) becomes null and is reported to
/// `unstorable` with its path.
pub fn struct_to_json(s: &Struct, field: &str, unstorable: &mut dyn FnMut(&str, f64)) -> Value {
    fields_to_json(field, &s.fields, unstorable)
}

// Recursion here is bounded by prost's decoding recursion limit.
fn fields_to_json(
    path: &str,
    fields: &std::collections::BTreeMap<String, prost_types::Value>,
    unstorable: &mut dyn FnMut(&str, f64),
) -> Value {
    let mut map = Map::new();
    for (key, value) in fields {
        let child = format!("{path}.{key}");
        map.insert(key.clone(), value_to_json(&child, value, unstorable));
    }
    Value::Object(map)
}

fn value_to_json(
    path: &str,
    value: &prost_types::Value,
    unstorable: &mut dyn FnMut(&str, f64),
) -> Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::NumberValue(n)) => number_to_json(*n).unwrap_or_else(|| {
            unstorable(path, *n);
            Value::Null
        }),
        Some(Kind::StructValue(s)) => fields_to_json(path, &s.fields, unstorable),
        Some(Kind::ListValue(list)) => Value::Array(
            list.values
                .iter()
                .enumerate()
                .map(|(i, item)| value_to_json(&format!("{path}[{i}]"), item, unstorable))
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn json_struct_round_trip() {
        let json = serde_json::json!({"a": [1, "x", null, true, {"b": 2.5}]});
        let s = json_to_struct(&json);
        let mut bad = Vec::new();
        let back = struct_to_json(&s, "p", &mut |path, n| bad.push((path.to_owned(), n)));
        assert_eq!(back, json);
        assert!(bad.is_empty());
        let bare = json_to_struct(&serde_json::json!([1, 2]));
        assert!(bare.fields.contains_key("value"));
    }

    #[test]
    fn unstorable_numbers_are_reported_with_their_path() {
        let s = Struct {
            fields: [(
                "a".to_owned(),
                prost_types::Value {
                    kind: Some(Kind::ListValue(ListValue {
                        values: vec![prost_types::Value {
                            kind: Some(Kind::NumberValue(f64::NAN)),
                        }],
                    })),
                },
            )]
            .into(),
        };
        let mut bad = Vec::new();
        let value = struct_to_json(&s, "params", &mut |path, _| bad.push(path.to_owned()));
        assert_eq!(bad, ["params.a[0]"]);
        assert_eq!(value, serde_json::json!({"a": [null]}));
    }
}
