//! A model's PatternNet patterns: `POST /v1/models/{model}/patterns` fits them as a job (202 with
//! `Location: /v1/jobs/{id}`, the data's rows as its progress there, a `PatternFit` its result),
//! or answers 200 with their state when they are kept already;
//! `GET /v1/models/{model}/patterns` says whether they are kept, being fitted, or absent. A
//! PatternNet or PatternAttribution request while a fit runs waits for it rather than fit again,
//! as does a second fitting job.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ProblemKind};
use super::AppState;
use crate::explain::method::{check_applicable, PlanContext};
use crate::explain::patterns::Data;
use crate::explain::Limits;
use crate::jobs::patterns::FitTask;

/// Where a model's patterns stand.
#[derive(Debug, Serialize, ToSchema)]
pub struct PatternState {
    /// Model name.
    pub model: String,
    /// What they are fitted on: `images` (the manifest's `[patterns]` folder), `reference set` or
    /// `background`.
    pub data: String,
    /// Rows of that data.
    pub rows: usize,
    /// `kept` (in memory or on disk: requests use them at once), `fitting` (a fit is under way;
    /// requests wait for it) or `absent` (the first request, or `POST`, fits them).
    #[schema(pattern = "^(kept|fitting|absent)$")]
    pub state: String,
    /// Linear layers with a pattern (when kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<usize>,
    /// Of those, the layers a ReLU follows (when kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub two_component: Option<usize>,
}

fn no_data(message: String) -> ApiError {
    ApiError::new(ProblemKind::InvalidInput, message)
}

/// Fits the model's patterns as a job (one forward pass over its data; progress in rows): kept
/// ones answer at once with their state (200, no job), and a fit already under way is joined,
/// not repeated.
#[utoipa::path(post, path = "/v1/models/{model}/patterns", tag = "explanations",
    params(("model" = String, Path, description = "model name", example = "fashion-cnn")),
    responses(
        (status = 200, body = PatternState, description = "the patterns are kept already: where they stand, no job"),
        (status = 202, body = crate::executor::board::JobView, description = "the job; its result is a `PatternFit`"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "unknown model"),
        (status = 422, body = super::error::Problem, content_type = "application/problem+json", description = "PatternNet cannot explain the model: no data to fit patterns on, or no gradients"),
        (status = 503, body = super::error::Problem, content_type = "application/problem+json", description = "the queue or the job board is full"),
    ))]
pub async fn fit(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    caller: Option<axum::Extension<super::auth::Caller>>,
) -> Result<Response, ApiError> {
    let m = state.model(&model)?;
    // Kept patterns are answered as they stand: no job, nothing fitted again.
    let standing = pattern_state(&state, &m).await?;
    if standing.state == "kept" {
        return Ok(Json(standing).into_response());
    }
    state.refuse_when_full()?;
    let task = FitTask {
        model: m.clone(),
        reference: state.references.get(&m.name),
        max_job_bytes: state.config.max_job_bytes,
        rows: standing.rows,
    };
    let asker = super::concepts::Asker::unaudited(caller);
    super::concepts::submit(&state, &m, "patterns", asker, task).await
}

/// Whether the model's patterns are kept, being fitted, or absent, and what they are fitted on.
#[utoipa::path(get, path = "/v1/models/{model}/patterns", tag = "explanations",
    params(("model" = String, Path, description = "model name", example = "fashion-cnn")),
    responses(
        (status = 200, body = PatternState, description = "where the patterns stand"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "unknown model"),
        (status = 422, body = super::error::Problem, content_type = "application/problem+json", description = "PatternNet cannot explain the model: no data to fit patterns on, or no gradients"),
    ))]
pub async fn patterns(State(state): State<Arc<AppState>>, Path(model): Path<String>) -> Result<Response, ApiError> {
    let m = state.model(&model)?;
    Ok(Json(pattern_state(&state, &m).await?).into_response())
}

/// Where `m`'s patterns stand; 422, with the reason PatternNet requests get, when PatternNet
/// cannot explain it (no data to fit on, no gradients: a tree ensemble).
async fn pattern_state(state: &AppState, m: &Arc<crate::runtime::LoadedModel>) -> Result<PatternState, ApiError> {
    if let Some(method) = state.methods.get("pattern-net") {
        let cx = PlanContext {
            model: m,
            limits: Limits::from_config(&state.config),
            targets: 1,
            reference: state.references.get(&m.name),
        };
        check_applicable(method.as_ref(), m).and_then(|()| method.plan(serde_json::json!({}), &cx))?;
    }
    let (m, reference) = (m.clone(), state.references.get(&m.name));
    let gradients = state.gradients.clone();
    // Hashing a `[patterns]` folder reads its images, and kept patterns may be read from disk.
    tokio::task::spawn_blocking(move || -> Result<PatternState, ApiError> {
        let data = Data::of(&m, reference.as_ref()).map_err(no_data)?;
        let store = gradients.patterns();
        let sha = data.sha256(store).map_err(ApiError::from)?;
        let kept = store.get(&m.sha256, &sha);
        let state = match (&kept, store.is_fitting(&m.sha256, &sha)) {
            (Some(_), _) => "kept",
            (None, true) => "fitting",
            (None, false) => "absent",
        };
        Ok(PatternState {
            model: m.name.clone(),
            data: data.name().into(),
            rows: data.rows(),
            state: state.into(),
            layers: kept.as_ref().map(|p| p.layers.len()),
            two_component: kept
                .as_ref()
                .map(|p| p.layers.values().filter(|l| l.two_component).count()),
        })
    })
    .await
    .map_err(ApiError::internal)?
}
