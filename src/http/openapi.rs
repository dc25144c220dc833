//! The OpenAPI document, generated from the handlers and types by utoipa. `openapi/openapi.json` is
//! its committed copy; a test fails when the two drift apart.

use utoipa::OpenApi;

use super::{audit, error, explain, health, input, jobs, models, predict, problems};

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
        jobs::submit,
        jobs::get_job,
        jobs::cancel_job,
        jobs::job_events,
        audit::get_record,
        audit::list_records,
        audit::record_overlay,
        audit::export,
        audit::verify,
    ),
    components(schemas(error::Problem, input::FeaturesJson)),
    tags(
        (name = "models", description = "Loaded models and predictions"),
        (name = "explanations", description = "Why a model predicted what it did"),
        (name = "jobs", description = "Explanations run in the background, with progress"),
        (name = "audit", description = "The tamper-evident record of predictions and explanations"),
        (name = "operations", description = "Health, readiness, metrics, API documents"),
    )
)]
pub struct ApiDoc;

/// The API document, versioned like the crate.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// The document as pretty JSON with a trailing newline (the form committed under `openapi/`).
pub fn document_json() -> String {
    let mut text = document()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}
