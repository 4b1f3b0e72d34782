//! What the OpenAPI document states beyond what the handlers' annotations
//! can: the character rules of `to` and `message` (from [`super::text`], the
//! validator's own tables), the `Idempotency-Key` format, a notification's
//! channel named once (`channel` or `type`) and its `critical` priority,
//! and, when keys are on, the bearer keys each operation needs and its `401`. Generated clients
//! and contract testers (schemathesis, `scripts/contract-test.sh`) then agree
//! with the server on what it refuses.

use serde_json::{Value, json};

use super::body::{CRITICAL, MAX_IDEMPOTENCY_KEY_LEN, MAX_MESSAGE_CHARS, MAX_TO_CHARS};
use super::text;
use crate::domain::Priority;
use crate::keys::Keys;

/// The create bodies' schemas, whose `to` and `message` follow one set of rules.
const CREATE_SCHEMAS: [&str; 2] = ["NewRequest", "NewNotification"];
/// The create operations, which take an `Idempotency-Key`.
const CREATE_OPERATIONS: [&str; 2] = [
    "/paths/~1v1~1requests/post",
    "/paths/~1api~1v1~1notifications/post",
];

/// `to` and `message` hold a non-whitespace character; `to` no control or
/// format character; the `Idempotency-Key` is 1 to 255 visible ASCII characters.
pub fn state_text_rules(document: &mut Value) {
    for schema in CREATE_SCHEMAS {
        let properties = format!("/components/schemas/{schema}/properties");
        state_to_and_message_rules(document, &properties);
    }
    for operation in CREATE_OPERATIONS {
        let parameters = document.pointer_mut(&format!("{operation}/parameters"));
        let key = parameters
            .and_then(Value::as_array_mut)
            .and_then(|parameters| {
                parameters
                    .iter_mut()
                    .find(|p| p["name"] == "Idempotency-Key")
            });
        if let Some(key) = key {
            key["schema"] = json!({
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_IDEMPOTENCY_KEY_LEN,
                "not": { "pattern": "[^!-~]" },
            });
            key["description"] = json!(
                "1 to 255 visible ASCII characters, sent once. Same key and body: the original \
                 id again (`Idempotent-Replayed: true`). Same key, other body: 409. Keys are per \
                 client when client keys are on."
            );
        }
    }
}

fn state_to_and_message_rules(document: &mut Value, properties: &str) {
    if let Some(to) = document.pointer_mut(&format!("{properties}/to")) {
        to["minLength"] = json!(1);
        to["maxLength"] = json!(MAX_TO_CHARS);
        to["pattern"] = json!(text::not_blank_pattern());
        to["not"] = json!({ "pattern": text::invisible_pattern() });
        to["description"] = json!(
            "Recipient: an e-mail address, a phone number or a device token: 1 to 512 \
             characters, not all whitespace, with no control (Cc) or format (Cf: bidi \
             overrides, zero-width) characters."
        );
    }
    if let Some(message) = document.pointer_mut(&format!("{properties}/message")) {
        message["minLength"] = json!(1);
        message["maxLength"] = json!(MAX_MESSAGE_CHARS);
        message["pattern"] = json!(text::not_blank_pattern());
        message["description"] =
            json!("The text to deliver: 1 to 10,000 characters, not all whitespace.");
    }
}

/// A notification names its channel exactly once, as `channel` or `type`
/// (either, not both: `null` counts as sent); its priority is one of
/// Herald's, or `critical` (`high`), or `null` (`normal`).
pub fn state_notification_rules(document: &mut Value) {
    let Some(schema) = document.pointer_mut("/components/schemas/NewNotification") else {
        return;
    };
    // Each branch spelled out as an object with its field: with bare
    // `{"required": [...]}` branches, schemathesis 4.32's coverage phase
    // failed now and then inside Hypothesis (with two workers), never on
    // the server's answers.
    let channel = json!({ "$ref": "#/components/schemas/Channel" });
    schema["oneOf"] = json!(["channel", "type"].map(|field| json!({
        "type": "object",
        "required": [field],
        "properties": { field: channel },
    })));
    let mut names: Vec<Value> = Priority::ALL.iter().map(|p| json!(p.as_str())).collect();
    names.push(json!(CRITICAL));
    schema["properties"]["priority"] = json!({
        "type": ["string", "null"],
        "enum": names.into_iter().chain([Value::Null]).collect::<Vec<_>>(),
        "description": "Dispatch order: `high` (or `critical`, its other name) before `normal` \
                        before `low`; `normal` when absent or null.",
    });
}

/// With client keys on, every `/v1` and `/api/v1` operation needs `Authorization: Bearer
/// KEY` and may answer `401`; with a metrics key, so does `/metrics`.
pub fn state_security(document: &mut Value, keys: &Keys) {
    let mut schemes = serde_json::Map::new();
    let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, operations) in paths.iter_mut() {
        let client_api = path.starts_with("/v1/") || path.starts_with("/api/v1/");
        let scheme = if client_api && keys.clients_required() {
            "client_key"
        } else if path == "/metrics" && keys.metrics_key_required() {
            "metrics_key"
        } else {
            continue;
        };
        schemes.insert(scheme.into(), json!({ "type": "http", "scheme": "bearer" }));
        for operation in operations
            .as_object_mut()
            .into_iter()
            .flat_map(|o| o.values_mut())
        {
            operation["security"] = json!([{ scheme: [] }]);
            operation["responses"]["401"] = json!({
                "description": "No key, or not one this server knows",
                "headers": { "WWW-Authenticate": { "schema": { "type": "string" } } },
                "content": { "application/json": {
                    "schema": { "$ref": "#/components/schemas/ErrorBody" } } },
            });
        }
    }
    if !schemes.is_empty() {
        document["components"]["securitySchemes"] = Value::Object(schemes);
    }
}
