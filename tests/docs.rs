//! The OpenAPI document describes every contract route with its schemas, and
//! `/docs` renders it from assets served by Herald itself.

mod common;

use common::spawn_app;
use serde_json::Value;

#[tokio::test]
async fn openapi_json_is_a_valid_document_with_every_contract_route() {
    let app = spawn_app().await;
    let response = app.get("/openapi.json").await;
    assert_eq!(response.status(), 200);
    let document: Value = response.json().await.unwrap();

    // Structural validity: it parses as an OpenAPI 3.1 document.
    let parsed = oas3::from_json(document.to_string()).expect("valid OpenAPI 3.1");
    assert!(
        parsed.openapi.starts_with("3.1"),
        "version {}",
        parsed.openapi
    );

    let routes = [
        ("/v1/requests", "post", "201"),
        ("/v1/requests/{id}/process", "post", "202"),
        ("/v1/requests/{id}", "get", "200"),
        ("/v1/requests/{id}/events", "get", "200"),
        ("/api/v1/notifications", "post", "202"),
        ("/api/v1/notifications/{id}", "get", "200"),
        ("/health", "get", "200"),
        ("/ready", "get", "200"),
        ("/metrics", "get", "200"),
    ];
    for (path, method, success) in routes {
        let operation = &document["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is missing");
        assert!(
            operation["responses"][success].is_object(),
            "{method} {path} has no {success}"
        );
    }
    for path in [
        "/v1/requests/{id}",
        "/v1/requests/{id}/process",
        "/v1/requests/{id}/events",
        "/api/v1/notifications/{id}",
    ] {
        let method = if path.ends_with("process") {
            "post"
        } else {
            "get"
        };
        let not_found = &document["paths"][path][method]["responses"]["404"]["content"]["application/json"]
            ["schema"];
        assert_eq!(
            not_found["$ref"], "#/components/schemas/ErrorBody",
            "{path}"
        );
    }

    let schemas = &document["components"]["schemas"];
    let create_body = &document["paths"]["/v1/requests"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"];
    assert_eq!(create_body["$ref"], "#/components/schemas/NewRequest");
    let mut required: Vec<&str> = schemas["NewRequest"]["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    required.sort();
    assert_eq!(required, ["message", "to", "type"]);
    assert_eq!(
        schemas["Channel"]["enum"],
        serde_json::json!(["email", "sms", "push"])
    );
    assert_eq!(
        schemas["Status"]["enum"],
        serde_json::json!(["queued", "processing", "sent", "failed"])
    );
    assert_eq!(
        schemas["Priority"]["enum"],
        serde_json::json!(["high", "normal", "low"])
    );
    assert!(schemas["Created"]["properties"]["id"].is_object());
    for view in ["StatusView", "RequestView"] {
        let mut required: Vec<&str> = schemas[view]["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        required.retain(|field| ["id", "status"].contains(field));
        assert_eq!(required.len(), 2, "{view} requires id and status");
    }
    assert_eq!(
        schemas["NotificationStatus"]["enum"],
        serde_json::json!(["QUEUED", "PROCESSING", "DELIVERED", "FAILED"])
    );
    let notification = &schemas["NotificationView"]["required"];
    assert_eq!(
        notification,
        &serde_json::json!(["notification_id", "status"])
    );
    assert!(schemas["ErrorBody"]["properties"]["error"].is_object());
    app.stop().await;
}

#[tokio::test]
async fn the_docs_page_loads_only_assets_herald_serves() {
    let app = spawn_app().await;
    let page = app.get("/docs").await;
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external assets: {html}"
    );
    assert!(html.contains("/openapi.json"));

    for (asset, content_type) in [
        ("/docs/swagger-ui-bundle.js", "text/javascript"),
        ("/docs/swagger-ui.css", "text/css"),
    ] {
        assert!(html.contains(asset), "the page loads {asset}");
        let response = app.get(asset).await;
        assert_eq!(response.status(), 200, "{asset}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(content_type)
        );
        assert!(
            response.bytes().await.unwrap().len() > 10_000,
            "{asset} is the real bundle"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn openapi_json_states_the_rules_the_server_enforces() {
    let app = spawn_app().await;
    let document: Value = app.get("/openapi.json").await.json().await.unwrap();
    for schema in ["NewRequest", "NewNotification"] {
        let properties = &document["components"]["schemas"][schema]["properties"];
        for (field, max) in [("to", 512), ("message", 10_000)] {
            assert_eq!(properties[field]["minLength"], 1, "{schema}.{field}");
            assert_eq!(properties[field]["maxLength"], max, "{schema}.{field}");
            let pattern = properties[field]["pattern"].as_str().unwrap();
            assert!(
                pattern.starts_with("[^\\u0009"),
                "{schema}.{field}: not all whitespace: {pattern}"
            );
        }
        let invisible = properties["to"]["not"]["pattern"].as_str().unwrap();
        for (what, escaped) in [
            ("control", "\\u0000-\\u001F"),
            ("bidi override", "\\u202A-\\u202E"),
            ("zero-width", "\\u200B-\\u200F"),
        ] {
            assert!(
                invisible.contains(escaped),
                "{schema}: `to` refuses {what}: {invisible}"
            );
        }
    }
    for path in ["/v1/requests", "/api/v1/notifications"] {
        let parameters = document["paths"][path]["post"]["parameters"]
            .as_array()
            .unwrap();
        let key = parameters
            .iter()
            .find(|p| p["name"] == "Idempotency-Key")
            .unwrap();
        assert_eq!(key["schema"]["maxLength"], 255, "{path}");
        assert_eq!(
            key["schema"]["not"]["pattern"], "[^!-~]",
            "{path}: visible ASCII only"
        );
    }
    // A notification names its channel once, by either name, and may be `critical`.
    let notification = &document["components"]["schemas"]["NewNotification"];
    let branches: Vec<&Value> = notification["oneOf"].as_array().unwrap().iter().collect();
    assert_eq!(branches.len(), 2, "channel or type");
    for (branch, field) in branches.into_iter().zip(["channel", "type"]) {
        assert_eq!(branch["required"], serde_json::json!([field]));
        assert_eq!(
            branch["properties"][field]["$ref"],
            "#/components/schemas/Channel"
        );
    }
    for field in ["channel", "type"] {
        assert_eq!(
            notification["properties"][field]["$ref"], "#/components/schemas/Channel",
            "{field}"
        );
    }
    assert_eq!(
        notification["properties"]["priority"]["enum"],
        serde_json::json!(["high", "normal", "low", "critical", null])
    );
    assert!(
        document["components"]["securitySchemes"].is_null(),
        "no keys, no security"
    );
    app.stop().await;
}

#[tokio::test]
async fn with_client_keys_the_document_declares_them() {
    let dir = tempfile::TempDir::new().unwrap();
    let clients = dir.path().join("clients");
    std::fs::write(&clients, "billing billing-key-0123456789\n").unwrap();
    let app = common::spawn_app_with(common::fast_provider(), |config| {
        config.client_keys_file = Some(clients);
    })
    .await;
    let document: Value = app.get("/openapi.json").await.json().await.unwrap();
    assert_eq!(
        document["components"]["securitySchemes"]["client_key"]["scheme"],
        "bearer"
    );
    for (path, method) in [
        ("/v1/requests", "post"),
        ("/api/v1/notifications", "post"),
        ("/api/v1/notifications/{id}", "get"),
    ] {
        let operation = &document["paths"][path][method];
        assert_eq!(
            operation["security"][0]["client_key"],
            serde_json::json!([]),
            "{method} {path}"
        );
        assert!(operation["responses"]["401"].is_object(), "{method} {path}");
    }
    assert!(document["paths"]["/health"]["get"]["security"].is_null());
    assert!(
        document["paths"]["/metrics"]["get"]["security"].is_null(),
        "no metrics key"
    );
    app.stop().await;
}
