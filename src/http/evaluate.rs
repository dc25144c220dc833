//! `POST /v1/models/{model}/evaluate`: metrics of a given attribution map, or of an explanation
//! kept in the audit log.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{ApiError, ProblemKind};
use super::input::{self, FeaturesJson, RawInput};
use super::pipeline::{self, Drawn, Record, Valid, Work};
use super::prepare::{self, Prepared};
use super::AppState;
use crate::eval::{self, Evaluation, MetricRequest};
use crate::explain::{targets, Limits, TargetSpec};
use crate::jobs::EvaluateTask;
use crate::runtime::predict::Prediction;
use crate::runtime::LoadedModel;

/// Metrics of one attribution map: the input (or the audit record's, when it kept it) and the map
/// (or an audit record of an explanation).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateRequest {
    /// Base64 PNG or JPEG, for image models.
    pub image: Option<String>,
    /// Feature values, for tabular models.
    pub features: Option<FeaturesJson>,
    /// Text, for text models.
    pub text: Option<String>,
    /// The map: one value per pixel of the model's input (`[height, width]`) or of the original
    /// image (as explain answers give it; brought onto the model's grid through the same crop and
    /// resize), or one per feature.
    pub attributions: Option<MapJson>,
    /// Or the audit record of an explanation (`audit_record.id` of its answer): its map, target and,
    /// when the record kept it, its input.
    pub explanation_record: Option<String>,
    /// The class the map explains: an index or a label (default: the record's target, else the top
    /// prediction).
    pub target: Option<TargetSpec>,
    /// The metrics: names or objects with parameters.
    pub evaluate: Vec<MetricRequest>,
    /// Seed of random subsets (mu_fidelity); drawn and echoed when absent.
    pub seed: Option<u64>,
}

/// A map as given.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MapJson {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: Vec<f32>,
}

/// The metrics of a map.
#[derive(Debug, Serialize, ToSchema)]
pub struct EvaluateResponse {
    /// Model name.
    pub model: String,
    /// sha256 of the model file.
    pub model_sha256: String,
    /// The class the map was evaluated for, with its score.
    pub target: Prediction,
    /// Seed used.
    pub seed: u64,
    /// One result per metric, in the order asked.
    pub evaluation: Vec<Evaluation>,
    /// Milliseconds from request to answer.
    pub took_ms: f64,
}

/// Measures an attribution map: deletion, insertion, mu-fidelity, pixel flipping, sparseness,
/// complexity.
///
/// The map lies on the model's input grid (`[height, width]` of the model input) or on the original
/// image's (as explain answers give maps; brought onto the model's grid through the preprocessing's
/// crop and resize), or is taken from the audit record of an explanation (`explanation_record`;
/// image maps are kept only with `audit_store_maps`). The input comes in the body, or from the
/// record when it kept it.
#[utoipa::path(post, path = "/v1/models/{model}/evaluate", tag = "explanations",
    params(("model" = String, Path, description = "model name", example = "fashion-cnn")),
    request_body(content = EvaluateRequest, content_type = "application/json"),
    responses(
        (status = 200, body = EvaluateResponse, description = "the metrics"),
        (status = 400, body = super::error::Problem, content_type = "application/problem+json", description = "malformed JSON, unknown metric or parameter, parameter out of range"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "unknown model or explanation record"),
        (status = 413, body = super::error::Problem, content_type = "application/problem+json", description = "body or image too large"),
        (status = 415, body = super::error::Problem, content_type = "application/problem+json", description = "content type not accepted"),
        (status = 422, body = super::error::Problem, content_type = "application/problem+json", description = "the map does not fit the model; the record belongs to another model or kept no map"),
        (status = 503, body = super::error::Problem, content_type = "application/problem+json", description = "at capacity; see Retry-After"),
        (status = 504, body = super::error::Problem, content_type = "application/problem+json", description = "deadline passed"),
    ))]
pub async fn evaluate(
    State(state): State<Arc<AppState>>,
    Path(model_name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let model = state.model(&model_name)?;
    state.refuse_when_full()?;
    let received = input::receive(&state.config, &headers, body).await?;
    let req: EvaluateRequest = input::json_body(received).await?;
    let valid = validate(&state, model, req).await?;
    Ok(pipeline::answer(&state, valid, started).await?.into_response())
}

/// Checks a request whole before a queue slot is taken: one input and one map (from the body or
/// an explanation's audit record), a map that holds its values, the target, the metrics.
async fn validate(
    state: &AppState,
    model: Arc<LoadedModel>,
    mut req: EvaluateRequest,
) -> Result<Valid<Evaluating>, ApiError> {
    let bad = |m: String| ApiError::new(ProblemKind::InvalidRequest, m);
    let mut raw = None;
    if req.image.is_some() || req.features.is_some() || req.text.is_some() {
        raw = Some(input::one_input(
            req.image.take(),
            req.features.take(),
            req.text.take(),
            "the request",
        )?);
    }
    let mut target = req.target.take();
    let map = match (req.attributions.take(), req.explanation_record.take()) {
        (Some(m), None) => m,
        (None, Some(id)) => {
            let record = recorded(state, &id, &model.name).await?;
            let (recorded_map, recorded_target, recorded_input) = from_record(&record)?;
            target = target.or(recorded_target);
            raw = raw.or(recorded_input);
            recorded_map
        }
        _ => return Err(bad("give exactly one of `attributions`, `explanation_record`".into())),
    };
    let raw =
        raw.ok_or_else(|| bad("give the input (`image`, `features` or `text`): the record did not keep it".into()))?;
    // Checked: the shape comes from the client.
    let held = map.shape.iter().try_fold(1usize, |n, d| n.checked_mul(*d));
    if held != Some(map.values.len()) || map.values.iter().any(|v| !v.is_finite()) {
        return Err(ApiError::new(
            ProblemKind::InvalidInput,
            format!(
                "the map's shape {:?} does not hold its {} values, or a value is not finite",
                map.shape,
                map.values.len()
            ),
        ));
    }
    if req.evaluate.is_empty() {
        return Err(bad("`evaluate` names no metric".into()));
    }
    let limits = Limits::from_config(&state.config);
    targets::check(target.as_ref(), &model, 1)?;
    let metrics = eval::plan(&req.evaluate, &model, 1, limits)?;
    if metrics
        .iter()
        .any(|m| matches!(m, eval::ValidMetric::Randomization { .. }))
    {
        return Err(bad(
            "model_randomization re-runs a method: ask for it in an explain request's `evaluate`".into(),
        ));
    }
    let work = Evaluating {
        map,
        target,
        metrics,
        seed: req.seed.unwrap_or_else(rand::random),
    };
    Ok(Valid {
        model,
        inputs: vec![raw],
        work,
        audit: None,
    })
}

/// Metrics of one map, validated.
struct Evaluating {
    map: MapJson,
    target: Option<TargetSpec>,
    metrics: Vec<eval::ValidMetric>,
    seed: u64,
}

impl Work for Evaluating {
    type Task = EvaluateTask;
    type Body = EvaluateResponse;
    const RECORD: Record = Record::None;

    /// The task, once the map is on the model's input grid: as it is when it lies there, else
    /// (on the original image's grid, as explain answers give it) through the same crop and resize.
    fn task(&mut self, model: &Arc<LoadedModel>, prepared: &[Prepared]) -> Result<EvaluateTask, ApiError> {
        let one = prepared
            .first()
            .ok_or_else(|| ApiError::internal("no prepared input"))?;
        // The grid a map lies on: the model's input pixels, its features, or this text's tokens.
        let model_grid: Vec<usize> = match (&model.spec.image, &one.text) {
            (Some(i), _) => vec![i.height, i.width],
            (None, Some(text)) => vec![text.tokens.len()],
            (None, None) => vec![eval::feature_count(model)],
        };
        let original_grid = one
            .geometry
            .as_ref()
            .map(|g| vec![g.original_height as usize, g.original_width as usize]);
        let map = std::mem::take(&mut self.map.values);
        let values = match (&one.geometry, &original_grid) {
            _ if self.map.shape == model_grid => map,
            (Some(geometry), Some(grid)) if *grid == self.map.shape => {
                geometry.map_forward(&map, model_grid[1], model_grid[0])
            }
            _ => {
                return Err(ApiError::new(
                    ProblemKind::InvalidInput,
                    format!(
                        "the map must lie on the model's input grid {model_grid:?}{}, got shape {:?}",
                        original_grid
                            .map(|g| format!(" or the image's {g:?}"))
                            .unwrap_or_default(),
                        self.map.shape
                    ),
                ))
            }
        };
        Ok(EvaluateTask {
            model: model.clone(),
            input: prepare::batch(prepared)?,
            map: values,
            target: self.target.take(),
            metrics: std::mem::take(&mut self.metrics),
            seed: self.seed,
            text: one.text.clone(),
        })
    }

    fn drawing_size(&self, _: &[Prepared], _: &(Prediction, Vec<Evaluation>)) -> usize {
        0
    }

    fn draw(
        self,
        model: &LoadedModel,
        _: Vec<Prepared>,
        (target, evaluation): (Prediction, Vec<Evaluation>),
        started: Instant,
    ) -> Result<Drawn<EvaluateResponse>, ApiError> {
        let body = EvaluateResponse {
            model: model.name.clone(),
            model_sha256: model.sha256.clone(),
            target,
            seed: self.seed,
            evaluation,
            took_ms: started.elapsed().as_secs_f64() * 1e3,
        };
        Ok(Drawn { body, picture: None })
    }
}

/// The audit record `id`, an explanation of `model`.
async fn recorded(state: &AppState, id: &str, model: &str) -> Result<Value, ApiError> {
    let record = super::audit::record(state, id).await?;
    let kind = record["kind"].as_str().unwrap_or_default();
    if kind != "explanation" {
        return Err(ApiError::new(
            ProblemKind::InvalidInput,
            format!("audit record `{id}` is a {kind}, not an explanation"),
        ));
    }
    let explained = record["model"].as_str().unwrap_or_default();
    if explained != model {
        return Err(ApiError::new(
            ProblemKind::InvalidInput,
            format!("audit record `{id}` explains model `{explained}`, not `{model}`"),
        ));
    }
    Ok(record)
}

/// The first target's map, the target, and the input when the record kept it.
fn from_record(record: &Value) -> Result<(MapJson, Option<TargetSpec>, Option<RawInput>), ApiError> {
    let first = &record["targets"][0];
    let (shape, values) = super::audit::recorded_values(first).ok_or_else(|| {
        ApiError::new(
            ProblemKind::InvalidInput,
            "the record kept no map (the service's audit_store_maps is off)",
        )
    })?;
    let map = MapJson { shape, values };
    let target = first["target"]["index"]
        .as_u64()
        .map(|i| TargetSpec::One(crate::explain::TargetRef::Index(i as usize)));
    Ok((map, target, super::audit::recorded_input(record, 0).ok()))
}
