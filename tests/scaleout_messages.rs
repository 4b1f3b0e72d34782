//! What `--dispatch external` hands a sender (issue 26): each work message is
//! the whole notification, in the shape `docs/asyncapi.yaml` documents, with
//! its AMQP properties; the document's own examples are what a node
//! publishes and accepts; and the README's Python sender (`pika`, an AMQP
//! client independent of Herald's) delivers from the message alone, end to
//! end, while a stale report changes nothing and a damaged message is set
//! aside, never dropped.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::{Json, Router, routing::post};
use lapin::types::AMQPValue;
use serde_json::{Value, json};
use yaml_rust2::{Yaml, YamlLoader};

use common::nodes::{all_final, final_record, ready_external_node, services};
use common::sender::TestSender;

/// The document the nodes' messages are checked against.
fn asyncapi() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/asyncapi.yaml"))
        .expect("docs/asyncapi.yaml");
    let docs = YamlLoader::load_from_str(&text).expect("docs/asyncapi.yaml is YAML");
    let doc = json_of(&docs[0]);
    assert_eq!(doc["asyncapi"], "2.6.0", "an AsyncAPI 2.6 document");
    doc
}

fn json_of(yaml: &Yaml) -> Value {
    match yaml {
        Yaml::Hash(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.as_str().expect("string keys").to_string(), json_of(v)))
                .collect(),
        ),
        Yaml::Array(items) => Value::Array(items.iter().map(json_of).collect()),
        Yaml::String(s) | Yaml::Real(s) => json!(s),
        Yaml::Integer(i) => json!(i),
        Yaml::Boolean(b) => json!(b),
        _ => Value::Null,
    }
}

/// Checks `value` against `schema` (the JSON Schema subset the document
/// uses: `$ref`, `type`, `required`, `properties`, `additionalProperties:
/// false`, `enum`, `minimum`); the first mismatch, by path.
fn conforms(doc: &Value, value: &Value, schema: &Value, path: &str) -> Result<(), String> {
    if let Some(target) = schema["$ref"].as_str() {
        let resolved = doc.pointer(target.trim_start_matches('#'));
        let resolved = resolved.ok_or(format!("{path}: {target} is missing"))?;
        return conforms(doc, value, resolved, path);
    }
    let kind_fits = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_u64() || value.is_i64(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !kind_fits {
        return Err(format!("{path}: {value} is not of type {}", schema["type"]));
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        return Err(format!("{path}: {value} is not one of {allowed:?}"));
    }
    if let Some(min) = schema["minimum"].as_i64()
        && value.as_i64().is_some_and(|v| v < min)
    {
        return Err(format!("{path}: {value} is below {min}"));
    }
    for name in schema["required"].as_array().into_iter().flatten() {
        let name = name.as_str().unwrap_or_default();
        if value.get(name).is_none() {
            return Err(format!("{path}: {name} is required"));
        }
    }
    let properties = schema["properties"].as_object();
    for (name, field) in value.as_object().into_iter().flatten() {
        match properties.and_then(|p| p.get(name)) {
            Some(field_schema) => conforms(doc, field, field_schema, &format!("{path}.{name}"))?,
            None if schema["additionalProperties"] == false => {
                return Err(format!("{path}: {name} is not in the schema"));
            }
            None => {}
        }
    }
    Ok(())
}

/// A schema of the document's components by name.
fn schema(doc: &Value, name: &str) -> Value {
    let schema = doc["components"]["schemas"][name].clone();
    assert!(schema.is_object(), "the document has a schema {name}");
    schema
}

#[test]
fn the_documents_examples_fit_its_schemas() {
    let doc = asyncapi();
    let messages = doc["components"]["messages"].as_object().expect("messages");
    assert!(
        messages.len() >= 3,
        "work notification, pointer and status report"
    );
    for (name, message) in messages {
        let examples = message["examples"]
            .as_array()
            .expect("each message has examples");
        for example in examples {
            conforms(&doc, &example["payload"], &message["payload"], name)
                .unwrap_or_else(|why| panic!("an example of {name}: {why}"));
        }
    }
    // The checker itself catches what it must.
    let work = schema(&doc, "WorkNotification");
    let mut example = messages["WorkNotification"]["examples"][0]["payload"].clone();
    example["priority"] = json!("urgent");
    assert!(conforms(&doc, &example, &work, "x").is_err());
    example.as_object_mut().unwrap().remove("priority");
    assert!(conforms(&doc, &example, &work, "x").is_err());
}

#[tokio::test]
async fn a_work_message_is_the_whole_notification_the_document_describes() {
    let Some((redis, vhost)) = services() else {
        return;
    };
    let doc = asyncapi();
    let (client, _dir, herald) = ready_external_node(&redis, &vhost, &[]).await;
    let body = json!({"to": "+15550001111", "message": "Your code is 9876", "type": "sms", "priority": "high"});
    let created = client
        .post(format!("{}/v1/requests", herald.address))
        .header("Idempotency-Key", "order-8812")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(herald.process(&client, &id).await, 202);

    let mut sender = TestSender::consume(&vhost, "herald.work.sms").await;
    let delivery = sender.next_message().await;
    let work: Value = serde_json::from_slice(&delivery.data).unwrap();
    conforms(&doc, &work, &schema(&doc, "WorkNotification"), "work")
        .unwrap_or_else(|why| panic!("{why}: {work}"));
    assert_eq!(work["id"], id.as_str());
    assert_eq!(
        (
            &work["to"],
            &work["message"],
            &work["type"],
            &work["priority"]
        ),
        (
            &body["to"],
            &body["message"],
            &body["type"],
            &body["priority"]
        )
    );
    assert_eq!(
        (work["attempt"].as_u64(), work["seq"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(work["idempotency_key"], "order-8812");
    let record = herald.request(&client, &id).await;
    assert_eq!(work["created_at_ms"], record["created_at_ms"]);

    let properties = &delivery.properties;
    let text = |value: Option<&lapin::types::ShortString>| value.map(|s| s.to_string());
    assert_eq!(
        text(properties.content_type().as_ref()).as_deref(),
        Some("application/json")
    );
    assert_eq!(
        text(properties.kind().as_ref()).as_deref(),
        Some("herald.work.notification")
    );
    assert_eq!(
        text(properties.message_id().as_ref()),
        Some(format!("{id}.1"))
    );
    assert_eq!(*properties.priority(), Some(3), "high");
    assert_eq!(*properties.delivery_mode(), Some(2), "persistent");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let stamped = properties.timestamp().expect("a timestamp");
    assert!(
        stamped.abs_diff(now.as_secs()) < 600,
        "Unix seconds: {stamped}"
    );
    let documented = &doc["components"]["messages"]["WorkNotification"]["bindings"]["amqp"];
    assert_eq!(documented["messageType"], "herald.work.notification");

    // The document's own report example, on this message, is applied.
    let mut report =
        doc["components"]["messages"]["StatusReport"]["examples"][0]["payload"].clone();
    report["id"] = work["id"].clone();
    report["seq"] = work["seq"].clone();
    sender.report(&report).await;
    let record = final_record(&herald, &client, &id).await;
    assert_eq!(record["status"], "sent", "{record}");
    assert_eq!(record["provider_id"], report["provider_id"]);
    sender.close().await;
    assert!(herald.terminate().await.success());
}

/// A provider stub that keeps what it was sent: the body and the
/// `Idempotency-Key` of each call.
async fn recording_provider() -> (String, Arc<Mutex<Vec<(Value, String)>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let kept = calls.clone();
    let notify = move |headers: HeaderMap, Json(body): Json<Value>| {
        let kept = kept.clone();
        async move {
            let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok());
            let mut calls = kept.lock().unwrap();
            calls.push((body, key.unwrap_or_default().to_string()));
            Json(json!({"status": "delivered", "provider_id": format!("stub-{}", calls.len())}))
        }
    };
    let app = Router::new().route("/v1/notify", post(notify));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, calls)
}

/// `python3` with `pika`, or `None` (said by [`common::missing`]).
fn python_with_pika() -> Option<()> {
    let found = std::process::Command::new("python3")
        .args(["-c", "import pika"])
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        common::missing("python3 with pika", "python3 -m pip install pika");
    }
    found.then_some(())
}

#[tokio::test]
async fn the_readmes_python_sender_delivers_from_the_message_alone() {
    let Some((redis, vhost)) = services() else {
        return;
    };
    let Some(()) = python_with_pika() else {
        return;
    };
    let (client, _dir, herald) = ready_external_node(&redis, &vhost, &[]).await;
    let (provider, calls) = recording_provider().await;
    let mut ids = Vec::new();
    for n in 0..2 {
        let body = json!({"to": format!("user{n}@example.com"), "message": format!("code {n}"), "channel": "email"});
        let answer = client
            .post(format!("{}/api/v1/notifications", herald.address))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 202);
        let answer: Value = answer.json().await.unwrap();
        ids.push(answer["notification_id"].as_str().unwrap().to_string());
    }
    // The queue is declared by now (the node's session is up); a damaged
    // message goes in first.
    let dead = TestSender::consume(&vhost, "herald.dead").await;
    dead.publish(
        "herald.work",
        "email",
        b"{\"form\": \"notification\", \"id\": ",
    )
    .await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/external_sender.py");
    let mut sender = tokio::process::Command::new("python3")
        .arg(script)
        .env("AMQP_URL", vhost.amqp_url())
        .env("PROVIDER_URL", &provider)
        .env("MAX_MESSAGES", "3")
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs the sender");
    let exited = tokio::time::timeout(Duration::from_secs(60), sender.wait()).await;
    let status = exited
        .expect("the sender handled three messages within 60 s")
        .unwrap();
    assert!(status.success(), "the sender exited {status}");

    all_final(&herald, &client, &ids, Duration::from_secs(15)).await;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls.len(),
        2,
        "each notification reached the provider once: {calls:?}"
    );
    for (n, id) in ids.iter().enumerate() {
        let url = format!("{}/api/v1/notifications/{id}", herald.address);
        let answer: Value = client.get(url).send().await.unwrap().json().await.unwrap();
        assert_eq!(answer["status"], "DELIVERED", "{answer}");
        let call = calls
            .iter()
            .find(|(_, key)| key == id)
            .expect("called with its id");
        let expected = json!({"to": format!("user{n}@example.com"), "message": format!("code {n}"), "type": "email"});
        assert_eq!(
            call.0, expected,
            "what the sender read from the message alone"
        );
    }

    // The damaged message was set aside by the sender, as it came.
    let mut dead = dead;
    let set_aside = dead.next_message().await;
    assert_eq!(
        &set_aside.data[..],
        b"{\"form\": \"notification\", \"id\": "
    );
    let headers = set_aside.properties.headers().clone().unwrap_or_default();
    assert!(matches!(
        headers.inner().get("x-herald-reason"),
        Some(AMQPValue::LongString(_))
    ));

    // A report on an older schedule changes nothing: a retry is published
    // again as seq 2, then a report on seq 1 comes late.
    let third = client
        .post(format!("{}/api/v1/notifications", herald.address))
        .json(&json!({"to": "+15550002222", "message": "code 3", "channel": "sms"}))
        .send()
        .await
        .unwrap();
    let third: Value = third.json().await.unwrap();
    let third = third["notification_id"].as_str().unwrap().to_string();
    let mut sms = TestSender::consume(&vhost, "herald.work.sms").await;
    let first = sms.next().await;
    let retry = json!({"id": third, "seq": first["seq"], "outcome": "retry", "error": "HTTP 500"});
    sms.report(&retry).await;
    let second = sms.next().await;
    assert_eq!(
        (second["seq"].as_u64(), second["attempt"].as_u64()),
        (Some(2), Some(2)),
        "{second}"
    );
    assert_eq!(
        second["to"], "+15550002222",
        "a retry carries the whole notification too"
    );
    let stale = json!({"id": third, "seq": first["seq"], "outcome": "failed", "error": "stale"});
    sms.report(&stale).await;
    sms.report(
        &json!({"id": third, "seq": second["seq"], "outcome": "sent", "provider_id": "ext-2"}),
    )
    .await;
    let record = final_record(&herald, &client, &third).await;
    assert_eq!(
        (&record["status"], &record["provider_id"]),
        (&json!("sent"), &json!("ext-2"))
    );
    let events = herald.events(&client, &third).await;
    assert!(
        !events.to_string().contains("stale"),
        "the stale report changed nothing: {events}"
    );
    sms.close().await;
    dead.close().await;
    assert!(herald.terminate().await.success());
}

#[test]
fn the_readme_shows_the_sender_this_suite_runs() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let sender = std::fs::read_to_string(format!("{root}/examples/external_sender.py")).unwrap();
    let indented: Vec<String> = sender
        .lines()
        .map(|line| match line {
            "" => String::new(),
            line => format!("  {line}"),
        })
        .collect();
    assert!(
        readme.contains(&format!("```python\n{}\n  ```", indented.join("\n"))),
        "README.md shows examples/external_sender.py as it is"
    );
}
