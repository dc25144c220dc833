//! `GET /v1/models` and `GET /v1/models/{model}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{model_not_found, ApiError};
use super::AppState;
use crate::explain::method::{check_applicable, Capabilities, PlanContext};
use crate::explain::Limits;
use crate::runtime::gradients::GradientReport;
use crate::runtime::manifest::ModelSpec;
use crate::runtime::LoadedModel;
use crate::runtime::ModelSummary;
use crate::uncertainty::Source;

/// A loaded model: its manifest, resolved, and its ONNX interface.
#[derive(Serialize, ToSchema)]
pub struct ModelInfo {
    /// Model name (its folder name).
    pub name: String,
    /// sha256 of the ONNX file, hex.
    pub sha256: String,
    /// How inputs are fed and outputs read.
    #[serde(flatten)]
    pub spec: ModelSpec,
    /// Inputs, outputs and opsets read from the graph.
    pub onnx: ModelSummary,
    /// Gradient support: differentiable or not, blocking operators, candidate CAM layers.
    pub gradients: Option<GradientReport>,
    /// The explanation methods that can explain it with their default parameters.
    pub methods: Vec<String>,
    /// The methods that cannot, each with why: the text a request for it is refused with.
    pub unavailable: Vec<Unavailable>,
    /// The same methods, each with what a client needs to offer it: its description, capabilities
    /// and parameters' schema (the web page builds its forms from these).
    pub method_details: Vec<MethodInfo>,
    /// The uncertainty sources it supports (`mc-dropout` where a mask can go, `tta` for images,
    /// `ensemble` with members).
    pub uncertainty: Vec<Source>,
    /// The reference set (`[reference]`) for similar examples, influence and suspects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_set: Option<crate::examples::ReferenceSummary>,
    /// Why its reference set could not be built or loaded at start, when it could not: the model
    /// serves without it (methods that need it are refused) until an upload succeeds.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "labels.csv: line 3: label `Hat` is not one of the model's labels")]
    pub reference_set_failed: Option<String>,
}

/// A method that cannot explain a model, and why.
#[derive(Serialize, ToSchema)]
pub struct Unavailable {
    /// The method's name.
    pub name: &'static str,
    /// Why: the message a request for it gets.
    pub reason: String,
}

/// An explanation method that can explain a model, as a client offers it.
#[derive(Serialize, ToSchema)]
pub struct MethodInfo {
    /// Its name, the path segment of `POST /v1/models/{model}/explain/{name}`.
    pub name: &'static str,
    /// One line on what it shows.
    pub summary: &'static str,
    /// What it needs and explains.
    pub capabilities: Capabilities,
    /// Its parameters' JSON Schema, self-contained (no `$ref`), with the defaults and bounds the
    /// service enforces (as in the OpenAPI document).
    #[schema(value_type = Object)]
    pub params: Value,
    /// Its parameters as they run on this model when none are sent: the schema's defaults, with
    /// those that depend on the model filled in (a layer, a baseline).
    #[schema(value_type = Object)]
    pub defaults: Value,
    /// The JSON Schema of its answers' `details`, self-contained (as the document states it for
    /// its explain path); null for methods whose answers carry no `details`.
    #[schema(value_type = Option<Object>)]
    pub details_schema: Option<Value>,
}

impl ModelInfo {
    /// The model as the API describes it, with what the service can do with it.
    fn of(state: &AppState, m: &LoadedModel) -> Self {
        let limits = Limits::from_config(&state.config);
        let cx = PlanContext {
            model: m,
            limits,
            targets: 1,
            reference: state.references.get(&m.name),
        };
        let mut unavailable = Vec::new();
        let mut method_details = Vec::new();
        for method in state.methods.iter() {
            let planned = check_applicable(method.as_ref(), m).and_then(|()| method.plan(serde_json::json!({}), &cx));
            match planned {
                Ok(planned) => method_details.push(MethodInfo {
                    name: method.name(),
                    summary: method.summary(),
                    capabilities: method.capabilities(),
                    params: super::openapi::params_schema(method.as_ref(), limits),
                    defaults: planned.echo().clone(),
                    details_schema: super::openapi::details_schema(method.as_ref(), limits),
                }),
                Err(why) => unavailable.push(Unavailable {
                    name: method.name(),
                    reason: why.to_string(),
                }),
            }
        }
        let methods = method_details.iter().map(|d| d.name.to_string()).collect();
        let mut uncertainty = Vec::new();
        if state.gradients.mask_sites(m, &[]).is_ok() {
            uncertainty.push(Source::McDropout);
        }
        if m.spec.image.is_some() {
            uncertainty.push(Source::Tta);
        }
        if !m.spec.ensemble.is_empty() {
            uncertainty.push(Source::Ensemble);
        }
        Self {
            name: m.name.clone(),
            sha256: m.sha256.clone(),
            spec: m.spec.as_shown(),
            onnx: m.summary.clone(),
            gradients: m.gradient_report.get().cloned(),
            methods,
            unavailable,
            method_details,
            uncertainty,
            reference_set: state.references.get(&m.name).map(|r| r.summary()),
            reference_set_failed: state.references.failure(&m.name),
        }
    }
}

/// The list of loaded models.
#[derive(Serialize, ToSchema)]
pub struct ModelList {
    /// Models by name.
    pub models: Vec<ModelInfo>,
    /// Model folders that failed to load, by name; they do not serve, the others do.
    pub failed: Vec<FailedModel>,
}

/// A model folder that failed to load.
#[derive(Clone, Serialize, ToSchema)]
pub struct FailedModel {
    /// Folder name (the name the model would have).
    #[schema(example = "resnet18")]
    pub name: String,
    /// Why, naming files relative to the models directory.
    #[schema(example = "resnet18/model.onnx: not an ONNX model: failed to decode Protobuf message")]
    pub error: String,
}

/// The registry's failed model folders, by name.
pub fn failed_models(registry: &crate::runtime::Registry) -> Vec<FailedModel> {
    registry
        .failed()
        .iter()
        .map(|(name, error)| FailedModel {
            name: name.clone(),
            error: error.clone(),
        })
        .collect()
}

/// The reference sets that failed at start, by model name (their models serve without them).
pub fn failed_reference_sets(sets: &crate::examples::Sets) -> Vec<FailedModel> {
    sets.failed()
        .into_iter()
        .map(|(name, error)| FailedModel { name, error })
        .collect()
}

/// Lists the loaded models.
#[utoipa::path(get, path = "/v1/models", tag = "models", responses((status = 200, body = ModelList, description = "every loaded model, and the model folders that failed to load")))]
pub async fn list_models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList {
        models: state.registry.iter().map(|m| ModelInfo::of(&state, m)).collect(),
        failed: failed_models(&state.registry),
    })
}

/// Describes one model.
#[utoipa::path(get, path = "/v1/models/{model}", tag = "models",
    params(("model" = String, Path, description = "model name", example = "fashion-cnn")),
    responses(
        (status = 200, body = ModelInfo, description = "the model, its manifest, interface and gradient support"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "unknown model"),
    ))]
pub async fn get_model(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Json<ModelInfo>, ApiError> {
    let m = state.registry.get(&model).ok_or_else(|| model_not_found(&model))?;
    Ok(Json(ModelInfo::of(&state, m)))
}
