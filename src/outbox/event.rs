//! An incoming usage event, parsed from JSON with every problem named by its field.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::domain::{CustomerId, EventId, FieldError, MetricCode, Subject, SubscriptionId, Target};
use crate::judgement::RuleTally;

#[derive(Debug, Clone, PartialEq)]
pub struct IncomingEvent {
    pub event_id: EventId,
    pub target: Target,
    pub code: MetricCode,
    /// Finite: JSON cannot carry NaN or infinity, and BillaBear rejects a string.
    pub value: f64,
    pub properties: Map<String, Value>,
    /// Who inside the customer the usage is for (usage-gate's per-subject rules); stored with
    /// the event, not sent to BillaBear.
    pub subject: Option<Subject>,
    /// What the event adds to usage-gate's rules' counters, stored with it (set by admission,
    /// not read from the request).
    pub tallies: Vec<RuleTally>,
}

impl IncomingEvent {
    /// Parses one event; on failure every invalid field is reported (`prefix` goes before each
    /// field name, e.g. `events[3].`).
    pub fn parse(body: &Value, prefix: &str) -> Result<Self, Vec<FieldError>> {
        let at = |field: &str| format!("{prefix}{field}");
        let Some(object) = body.as_object() else {
            let whole =
                if prefix.is_empty() { "body".to_owned() } else { prefix.trim_end_matches('.').to_owned() };
            return Err(vec![FieldError::new(whole, "must be a JSON object")]);
        };
        let mut errors = Vec::new();
        let mut fail = |field: &str, message: String| errors.push(FieldError::new(at(field), message));

        let event_id = match object.get("event_id") {
            Some(Value::String(s)) => EventId::parse(s).map_err(|e| fail("event_id", e.to_string())).ok(),
            _ => {
                fail("event_id", "required: a string of 1 to 255 characters".into());
                None
            }
        };
        let code = match object.get("code") {
            Some(Value::String(s)) => MetricCode::parse(s).map_err(|e| fail("code", e.to_string())).ok(),
            _ => {
                fail("code", "required: the metric code, a string".into());
                None
            }
        };
        let value = match object.get("value") {
            Some(Value::Number(n)) => n.as_f64().filter(|v| v.is_finite()),
            _ => None,
        };
        if value.is_none() {
            fail("value", "required: a finite number (not a string)".into());
        }
        let properties = match object.get("properties") {
            None | Some(Value::Null) => Some(Map::new()),
            Some(Value::Object(map)) if has_nul(map) => {
                fail(
                    "properties",
                    "must not contain the NUL character (\\u0000), which Postgres cannot store".into(),
                );
                None
            }
            Some(Value::Object(map)) => Some(map.clone()),
            Some(_) => {
                fail("properties", "must be an object".into());
                None
            }
        };
        // Absent, or a string: `null` is refused as the OpenAPI document says (a string when
        // present), so generated clients' types and the service agree.
        let id = |field: &str| match object.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(()),
        };
        let target = match (id("subscription"), id("customer")) {
            (Ok(Some(s)), Ok(None)) => match SubscriptionId::parse(&s) {
                Ok(s) => Some(Target::Subscription(s)),
                Err(e) => {
                    fail("subscription", e.to_string());
                    None
                }
            },
            (Ok(None), Ok(Some(c))) => match CustomerId::parse(&c) {
                Ok(c) => Some(Target::Customer(c)),
                Err(e) => {
                    fail("customer", e.to_string());
                    None
                }
            },
            (Ok(Some(_)), Ok(Some(_))) => {
                fail("subscription", "give either subscription or customer, not both".into());
                None
            }
            (Err(()), _) => {
                fail(
                    "subscription",
                    "must be a subscription id (UUID string); leave it out to send by customer".into(),
                );
                None
            }
            (_, Err(())) => {
                fail(
                    "customer",
                    "must be a customer id (UUID string); leave it out to send by subscription".into(),
                );
                None
            }
            (Ok(None), Ok(None)) => {
                fail("subscription", "required: a subscription id, or a customer id in customer".into());
                None
            }
        };
        let subject = match object.get("subject") {
            None => None,
            Some(Value::String(s)) => Subject::parse(s).map_err(|e| fail("subject", e.to_string())).ok(),
            Some(_) => {
                fail("subject", "must be a string: who inside the customer the usage is for".into());
                None
            }
        };
        match (event_id, target, code, value, properties) {
            (Some(event_id), Some(target), Some(code), Some(value), Some(properties))
                if errors.is_empty() =>
            {
                Ok(Self { event_id, target, code, value, properties, subject, tallies: vec![] })
            }
            _ => Err(errors),
        }
    }

    /// A digest of everything but the id: the same `event_id` with another fingerprint is a
    /// conflict, with the same one a duplicate. Object keys are sorted, and 5 and 5.0 are one
    /// value, so a client that re-serializes its retry differently is still a duplicate.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        match self.target {
            Target::Subscription(s) => {
                hash.update(b"s");
                hash.update(s.as_uuid().as_bytes());
            }
            Target::Customer(c) => {
                hash.update(b"c");
                hash.update(c.as_uuid().as_bytes());
            }
        }
        hash.update(self.code.as_str().as_bytes());
        hash.update(b"\0");
        // -0.0 and 0.0 are the same usage.
        hash.update((self.value + 0.0).to_bits().to_le_bytes());
        let mut canonical = Vec::new();
        write_canonical_object(&self.properties, &mut canonical);
        hash.update(&canonical);
        // After the rest, so an event without a subject keeps the fingerprint it had before
        // subjects existed.
        if let Some(subject) = &self.subject {
            hash.update(b"\0subject\0");
            hash.update(subject.as_str().as_bytes());
        }
        hash.finalize().into()
    }
}

/// Whether a key or string anywhere in `map` holds NUL (Postgres refuses `\u0000` in jsonb).
fn has_nul(map: &Map<String, Value>) -> bool {
    fn value(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => items.iter().any(value),
            Value::Object(map) => has_nul(map),
            _ => false,
        }
    }
    map.iter().any(|(k, v)| k.contains('\0') || value(v))
}

fn write_canonical_object(map: &Map<String, Value>, out: &mut Vec<u8>) {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    out.push(b'{');
    for (i, key) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend(serde_json::to_vec(key).unwrap_or_default());
        out.push(b':');
        write_canonical(&map[key], out);
    }
    out.push(b'}');
}

/// JSON with object keys sorted at every level.
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => write_canonical_object(map, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        // As f64, so 2 and 2.0 are one value (integers past 2^53 lose their last digits here).
        Value::Number(n) => out.extend(format!("{:?}", n.as_f64().unwrap_or_default() + 0.0).as_bytes()),
        other => out.extend(serde_json::to_vec(other).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const SUB: &str = "0b0f1f7e-2f3c-4a53-8b8e-8f8f3c7a1d22";

    fn fields(body: Value) -> Vec<String> {
        IncomingEvent::parse(&body, "").unwrap_err().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_valid_event_parses_with_either_target() {
        let e = IncomingEvent::parse(
            &json!({"event_id": "e1", "subscription": SUB, "code": "api_calls", "value": 2}),
            "",
        )
        .unwrap();
        assert_eq!((e.event_id.as_str(), e.code.as_str(), e.value), ("e1", "api_calls", 2.0));
        assert_eq!(e.target, Target::Subscription(SubscriptionId::parse(SUB).unwrap()));
        let e = IncomingEvent::parse(
            &json!({"event_id": "e1", "customer": SUB, "code": "api_calls", "value": -1.5}),
            "",
        )
        .unwrap();
        assert_eq!(e.target, Target::Customer(CustomerId::parse(SUB).unwrap()));
    }

    #[test]
    fn every_invalid_field_is_named() {
        let cases = [
            (json!({"subscription": SUB, "code": "api_calls", "value": 1}), vec!["event_id"]),
            (
                json!({"event_id": "x".repeat(256), "subscription": SUB, "code": "api_calls", "value": 1}),
                vec!["event_id"],
            ),
            (json!({"event_id": 5, "subscription": SUB, "code": "api_calls", "value": 1}), vec!["event_id"]),
            (json!({"event_id": "e", "subscription": SUB, "code": "API", "value": 1}), vec!["code"]),
            (json!({"event_id": "e", "subscription": SUB, "code": "api_calls", "value": "5"}), vec!["value"]),
            (json!({"event_id": "e", "subscription": SUB, "code": "api_calls"}), vec!["value"]),
            // A null target is not "absent": the document says a string when present.
            (
                json!({"event_id": "e", "subscription": null, "customer": SUB, "code": "api_calls", "value": 1}),
                vec!["subscription"],
            ),
            (
                json!({"event_id": "e", "subscription": SUB, "customer": null, "code": "api_calls", "value": 1}),
                vec!["customer"],
            ),
            (
                json!({"event_id": "e", "subscription": SUB, "code": "api_calls", "value": 1, "properties": [1]}),
                vec!["properties"],
            ),
            (
                json!({"event_id": "e", "subscription": "nope", "code": "api_calls", "value": 1}),
                vec!["subscription"],
            ),
            (json!({"event_id": "e", "customer": 7, "code": "api_calls", "value": 1}), vec!["customer"]),
            (
                json!({"event_id": "e", "subscription": SUB, "customer": SUB, "code": "api_calls", "value": 1}),
                vec!["subscription"],
            ),
            (json!({"event_id": "e", "code": "api_calls", "value": 1}), vec!["subscription"]),
            (json!({}), vec!["event_id", "code", "value", "subscription"]),
            (
                json!({"event_id": "a\u{0}b", "subscription": SUB, "code": "api_calls", "value": 1}),
                vec!["event_id"],
            ),
            (json!({"event_id": "e", "subscription": SUB, "code": "api\u{0}", "value": 1}), vec!["code"]),
            (
                json!({"event_id": "e", "subscription": SUB, "code": "api_calls", "value": 1, "properties": {"k": ["x\u{0}"]}}),
                vec!["properties"],
            ),
            (
                json!({"event_id": "e", "subscription": SUB, "code": "api_calls", "value": 1, "properties": {"a\u{0}": 1}}),
                vec!["properties"],
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(fields(body.clone()), expected, "{body}");
        }
        assert_eq!(fields(json!([1])), vec!["body"]);
        let prefixed = IncomingEvent::parse(&json!({"code": 1}), "events[2].").unwrap_err();
        assert_eq!(prefixed[0].field, "events[2].event_id");
    }

    #[test]
    fn fingerprints_ignore_key_order_and_number_spelling_but_not_content() {
        let parse = |v: Value| IncomingEvent::parse(&v, "").unwrap().fingerprint();
        let base = parse(json!({"event_id": "e", "subscription": SUB, "code": "api_calls", "value": 5,
                                "properties": {"a": 1, "b": {"y": 2, "x": 1}}}));
        let reordered =
            parse(json!({"value": 5.0, "code": "api_calls", "subscription": SUB, "event_id": "other",
                                     "properties": {"b": {"x": 1, "y": 2.0}, "a": 1}}));
        assert_eq!(base, reordered, "same content, another spelling");
        for changed in [
            json!({"event_id": "e", "subscription": SUB, "code": "api_calls", "value": 6, "properties": {"a": 1, "b": {"y": 2, "x": 1}}}),
            json!({"event_id": "e", "customer": SUB, "code": "api_calls", "value": 5, "properties": {"a": 1, "b": {"y": 2, "x": 1}}}),
            json!({"event_id": "e", "subscription": SUB, "code": "storage", "value": 5, "properties": {"a": 1, "b": {"y": 2, "x": 1}}}),
            json!({"event_id": "e", "subscription": SUB, "code": "api_calls", "value": 5, "properties": {"a": "1", "b": {"y": 2, "x": 1}}}),
        ] {
            assert_ne!(parse(changed.clone()), base, "{changed}");
        }
    }
}
