//! The no-op baseline for `BENCHMARKS.md` ("HTTP: durable create vs no-op").
//!
//! An axum server that answers `POST /v1/requests` the way Herald does on the
//! wire (parse the same JSON body, `201 {"id": <uuid v7>}` with a `Location`
//! header) but stores nothing and waits for no disk. Measured in the same run as
//! `herald serve`, it shows what the HTTP stack alone costs on the machine, so
//! Herald's durable create can be read as a ratio of it.
//!
//! ```text
//! cargo run --release --example noop_server -- --listen 127.0.0.1:5100
//! ```
//!
//! `scripts/bench-http.sh` builds and runs it.

use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use clap::Parser;
use serde::Deserialize;

#[derive(Debug, Parser)]
#[command(about = "No-op axum baseline for the HTTP benchmark")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:5100")]
    listen: SocketAddr,
}

/// Herald's create body, parsed the same way and then dropped.
#[derive(Deserialize)]
struct CreateBody {
    to: Option<String>,
    message: Option<String>,
    #[serde(rename = "type")]
    channel: Option<String>,
    priority: Option<String>,
}

async fn create(Json(body): Json<CreateBody>) -> Response {
    let present = |field: &Option<String>| field.as_deref().is_some_and(|v| !v.trim().is_empty());
    let priority_ok = body
        .priority
        .as_deref()
        .is_none_or(|p| matches!(p, "low" | "normal" | "high"));
    if !(present(&body.to) && present(&body.message) && present(&body.channel) && priority_ok) {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(serde_json::json!({"error": "`to`, `message` and `type` are required"})),
        )
            .into_response();
    }
    let id = uuid::Uuid::now_v7().hyphenated().to_string();
    let location = HeaderValue::from_str(&format!("/v1/requests/{id}"));
    let mut response = (StatusCode::CREATED, Json(serde_json::json!({ "id": id }))).into_response();
    if let Ok(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let app = Router::new().route("/v1/requests", post(create));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!("noop_server listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await
}
