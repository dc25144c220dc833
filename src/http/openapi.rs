//! The OpenAPI document, generated from the handlers and types by utoipa. `openapi/openapi.json` is
//! its committed copy; a test fails when the two drift apart.

use axum::Json;
use utoipa::OpenApi;

use super::{error, explain, health, input, models, predict, problems};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "explaind",
        description = "Explains the predictions of ONNX models over HTTP. Errors are RFC 9457 problem details \
                       (`application/problem+json`) whose `type` is a stable URI documented at `/problems/{slug}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        health::healthz,
        health::readyz,
        health::metrics,
        problems::problem_doc,
        models::list_models,
        models::get_model,
        predict::predict,
        explain::explain,
        serve_document,
    ),
    components(schemas(error::Problem, input::FeaturesJson)),
    tags(
        (name = "models", description = "Loaded models and predictions"),
        (name = "explanations", description = "Why a model predicted what it did"),
        (name = "operations", description = "Health, readiness, metrics, API documents"),
    )
)]
pub struct ApiDoc;

/// The document as pretty JSON with a trailing newline (the form committed under `openapi/`).
pub fn document_json() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let mut text = doc
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// This OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn serve_document() -> impl axum::response::IntoResponse {
    let value: serde_json::Value = serde_json::from_str(&document_json()).unwrap_or_default();
    Json(value)
}
