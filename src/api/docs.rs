//! The API's own description: the OpenAPI 3 document generated from the
//! handlers' annotations (`/openapi.json`), and a `/docs` page that renders it
//! with Swagger UI. The page's assets are compiled into the binary
//! (`assets/swagger-ui/`), so it works with no internet access.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use serde_json::Value;
use utoipa::OpenApi;

use super::{AppState, error, health, notifications, observe, requests};
use crate::keys::Keys;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "A durable notification gateway: requests are stored before they are acknowledged, \
                       delivered to the provider under a rate limit, retried on transient failures."
    ),
    paths(
        requests::create,
        requests::process,
        requests::status,
        requests::events,
        notifications::create,
        notifications::status,
        health::health,
        health::ready,
        observe::metrics,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail)),
    tags(
        (name = "requests", description = "Notification requests: the client contract"),
        (name = "notifications", description = "The founding document's API: create and queue in one call; \
            the same records as /v1/requests"),
        (name = "operations", description = "Probes and metrics"),
    )
)]
pub struct ApiDoc;

const SWAGGER_UI_JS: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js");
const SWAGGER_UI_CSS: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui.css");

const DOCS_PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Herald API</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui" });
  </script>
</body>
</html>
"##;

/// `GET /openapi.json`: the document [`document`] gives for this server's keys.
pub async fn openapi_json(State(state): State<AppState>) -> Json<Value> {
    Json(document(&state.keys))
}

/// The OpenAPI document as served: the one generated from the annotations,
/// with what they cannot state added (see [`super::openapi_rules`]).
pub fn document(keys: &Keys) -> Value {
    let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    super::openapi_rules::state_text_rules(&mut document);
    super::openapi_rules::state_notification_rules(&mut document);
    super::openapi_rules::state_security(&mut document, keys);
    document
}

/// `GET /docs`.
pub async fn docs_page() -> Html<&'static str> {
    Html(DOCS_PAGE)
}

pub async fn swagger_ui_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SWAGGER_UI_JS,
    )
}

pub async fn swagger_ui_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        SWAGGER_UI_CSS,
    )
}
