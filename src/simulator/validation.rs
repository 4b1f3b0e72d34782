//! The notify endpoint's input checks, reported the way the reference provider
//! (FastAPI + pydantic) reports them: every error at once, each as
//! `{"loc": [...], "msg": ..., "type": ...}`.

use serde_json::{Map, Value, json};

use crate::domain::{Channel, Priority};

/// Every validation error in the call's query and body; empty when it is valid.
pub(super) fn validation_errors(
    priority: Option<&str>,
    body: &[u8],
    accepted_types: &[Channel],
) -> Vec<Value> {
    let mut errors: Vec<Value> = priority_error(priority).into_iter().collect();
    errors.extend(body_errors(body, accepted_types));
    errors
}

fn priority_error(priority: Option<&str>) -> Option<Value> {
    let priority = priority?;
    let known = Priority::ALL.iter().any(|p| p.as_str() == priority);
    (!known).then(|| {
        enum_error(
            json!(["query", "priority"]),
            Priority::ALL.iter().map(Priority::as_str),
        )
    })
}

fn body_errors(body: &[u8], accepted_types: &[Channel]) -> Vec<Value> {
    if body.trim_ascii().is_empty() {
        return vec![missing(json!(["body"]))];
    }
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(parsed) => parsed,
        Err(error) => {
            return vec![error_at(
                json!(["body", error.column()]),
                "json_invalid",
                "JSON decode error",
            )];
        }
    };
    let Some(fields) = parsed.as_object() else {
        return vec![error_at(
            json!(["body"]),
            "model_attributes_type",
            "Input should be a valid dictionary or object to extract fields from",
        )];
    };
    ["to", "message"]
        .into_iter()
        .filter_map(|name| text_error(fields, name))
        .chain(type_error(fields, accepted_types))
        .collect()
}

/// `to` and `message`: required, non-empty strings.
fn text_error(fields: &Map<String, Value>, name: &str) -> Option<Value> {
    let loc = json!(["body", name]);
    match fields.get(name) {
        None => Some(missing(loc)),
        Some(Value::String(text)) if text.is_empty() => Some(error_at(
            loc,
            "string_too_short",
            "String should have at least 1 character",
        )),
        Some(Value::String(_)) => None,
        Some(_) => Some(error_at(
            loc,
            "string_type",
            "Input should be a valid string",
        )),
    }
}

/// `type`: required, one of the types this provider accepts.
fn type_error(fields: &Map<String, Value>, accepted_types: &[Channel]) -> Option<Value> {
    let loc = json!(["body", "type"]);
    let Some(value) = fields.get("type") else {
        return Some(missing(loc));
    };
    let accepted = value
        .as_str()
        .and_then(|text| text.parse::<Channel>().ok())
        .is_some_and(|channel| accepted_types.contains(&channel));
    (!accepted).then(|| enum_error(loc, accepted_types.iter().map(Channel::as_str)))
}

fn missing(loc: Value) -> Value {
    error_at(loc, "missing", "Field required")
}

/// pydantic's enum error: "Input should be 'a', 'b' or 'c'".
fn enum_error<'a>(loc: Value, expected: impl Iterator<Item = &'a str>) -> Value {
    let quoted: Vec<String> = expected.map(|name| format!("'{name}'")).collect();
    let listed = match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    error_at(loc, "enum", &format!("Input should be {listed}"))
}

fn error_at(loc: Value, kind: &str, msg: &str) -> Value {
    json!({"loc": loc, "msg": msg, "type": kind})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_error_types(body: &str, accepted: &[Channel]) -> Vec<String> {
        validation_errors(None, body.as_bytes(), accepted)
            .iter()
            .map(|error| error["type"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn a_valid_call_has_no_errors() {
        let body = r#"{"to": "a@b.c", "message": "hi", "type": "push"}"#;
        assert!(validation_errors(Some("high"), body.as_bytes(), Channel::ALL).is_empty());
    }

    #[test]
    fn every_field_error_is_reported_at_once() {
        let body = r#"{"to": "", "message": 3}"#;
        assert_eq!(
            body_error_types(body, Channel::ALL),
            ["string_too_short", "string_type", "missing"]
        );
    }

    #[test]
    fn malformed_bodies_are_refused() {
        assert_eq!(body_error_types("", Channel::ALL), ["missing"]);
        assert_eq!(
            body_error_types("{not json", Channel::ALL),
            ["json_invalid"]
        );
        assert_eq!(
            body_error_types("[1]", Channel::ALL),
            ["model_attributes_type"]
        );
    }

    #[test]
    fn types_outside_the_accepted_set_name_the_accepted_ones() {
        let body = r#"{"to": "a", "message": "b", "type": "push"}"#;
        let errors = validation_errors(None, body.as_bytes(), &[Channel::Email, Channel::Sms]);
        assert_eq!(errors[0]["loc"], json!(["body", "type"]));
        assert_eq!(errors[0]["msg"], "Input should be 'email' or 'sms'");
    }

    #[test]
    fn unknown_priorities_are_refused() {
        let body = r#"{"to": "a", "message": "b", "type": "sms"}"#;
        let errors = validation_errors(Some("urgent"), body.as_bytes(), Channel::ALL);
        assert_eq!(errors[0]["loc"], json!(["query", "priority"]));
        assert_eq!(
            errors[0]["msg"],
            "Input should be 'high', 'normal' or 'low'"
        );
    }
}
