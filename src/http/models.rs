//! `GET /v1/models` and `GET /v1/models/{model}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{model_not_found, ApiError};
use super::AppState;
use crate::onnx::ModelSummary;
use crate::runtime::gradients::GradientReport;
use crate::runtime::manifest::ModelSpec;
use crate::runtime::LoadedModel;

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
}

impl From<&LoadedModel> for ModelInfo {
    fn from(m: &LoadedModel) -> Self {
        Self {
            name: m.name.clone(),
            sha256: m.sha256.clone(),
            spec: m.spec.clone(),
            onnx: m.summary.clone(),
            gradients: m.gradient_report.get().cloned(),
        }
    }
}

/// The list of loaded models.
#[derive(Serialize, ToSchema)]
pub struct ModelList {
    /// Models by name.
    pub models: Vec<ModelInfo>,
}

/// Lists the loaded models.
#[utoipa::path(get, path = "/v1/models", tag = "models", responses((status = 200, body = ModelList, description = "every loaded model")))]
pub async fn list_models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList {
        models: state.registry.iter().map(|m| ModelInfo::from(m.as_ref())).collect(),
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
    Ok(Json(ModelInfo::from(m.as_ref())))
}
