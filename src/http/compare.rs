//! `POST /v1/models/{model}/compare`: several methods on one input, side by side, each map with its
//! metrics; as JSON, or as one PNG (the input, then one captioned overlay per method).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ProblemKind};
use super::explain::{self, ExplainOptions, ExplainResponse, Format, ValidExplain};
use super::input::{self, FeaturesJson};
use super::pipeline::{self, Drawn, Picture, Record, Valid, Work};
use super::prepare::{self, Prepared};
use super::AppState;
use crate::eval::{Evaluation, MetricRequest};
use crate::explain::TargetSpec;
use crate::jobs::{CompareTask, ExplainResult};
use crate::render::{self, RenderOptions};
use crate::runtime::LoadedModel;

/// Most methods one comparison may run.
const MAX_METHODS: usize = 8;

/// A method in a comparison: its name, or an object with its parameters.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum CompareMethod {
    /// The method with its defaults (`"saliency"`).
    Name(String),
    /// The method with parameters (`{"method": "rise", "params": {"preset": "fast"}}`).
    WithParams(MethodWithParams),
}

/// A method and its parameters.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MethodWithParams {
    /// The method's name.
    pub method: String,
    /// Its parameters.
    #[schema(value_type = Option<Object>)]
    pub params: Option<serde_json::Value>,
}

/// Methods side by side on one input.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompareRequest {
    /// Base64 PNG or JPEG, for image models.
    pub image: Option<String>,
    /// Feature values, for tabular models.
    pub features: Option<FeaturesJson>,
    /// Text, for text models.
    pub text: Option<String>,
    /// The methods (at most 8), by name or with parameters.
    #[schema(min_items = 1, max_items = 8)]
    pub methods: Vec<CompareMethod>,
    /// One class (index or label) every method explains; default: the top prediction.
    pub target: Option<TargetSpec>,
    /// Metrics of every map (default: `deletion`, `insertion`).
    pub evaluate: Option<Vec<MetricRequest>>,
    /// Seed of the random methods and metrics; drawn and echoed when absent.
    pub seed: Option<u64>,
    /// `png`: one picture, the input then a captioned overlay per method; `Accept: image/png` also
    /// asks for it.
    pub format: Option<Format>,
    /// How the overlays are drawn.
    pub render: Option<RenderOptions>,
}

/// Every method's explanation with its metrics.
#[derive(Debug, Serialize, ToSchema)]
pub struct CompareResponse {
    /// Model name.
    pub model: String,
    /// One explanation per method, in the order asked (each with `evaluation`).
    pub comparisons: Vec<ExplainResponse>,
    /// Milliseconds from request to answer.
    pub took_ms: f64,
}

/// Runs several explanation methods on one input and measures each map.
///
/// Every method explains the same class (`target`, default the top prediction) and its map is
/// measured with the same metrics (`evaluate`, default deletion and insertion), in one job that runs
/// the input's forward pass once. JSON gives each explanation as `/explain` would, with
/// `evaluation`; PNG (`format=png` or `Accept: image/png`) gives the input and one overlay per
/// method, captioned with its name and metrics.
#[utoipa::path(post, path = "/v1/models/{model}/compare", tag = "explanations",
    params(("model" = String, Path, description = "model name", example = "fashion-cnn")),
    request_body(content = CompareRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "the explanations with their metrics as JSON; or, as PNG, the input and one \
                                      captioned overlay per method",
            content((CompareResponse = "application/json"), (inline(super::openapi::Binary) = "image/png"))),
        (status = 400, body = super::error::Problem, content_type = "application/problem+json", description = "malformed JSON, unknown method or metric, parameter out of range"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "unknown model or method"),
        (status = 413, body = super::error::Problem, content_type = "application/problem+json", description = "body or image too large"),
        (status = 415, body = super::error::Problem, content_type = "application/problem+json", description = "content type not accepted"),
        (status = 422, body = super::error::Problem, content_type = "application/problem+json", description = "a method does not fit the model; the plans exceed the limits"),
        (status = 503, body = super::error::Problem, content_type = "application/problem+json", description = "at capacity; see Retry-After"),
        (status = 504, body = super::error::Problem, content_type = "application/problem+json", description = "deadline passed"),
    ))]
pub async fn compare(
    State(state): State<Arc<AppState>>,
    Path(model_name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let model = state.model(&model_name)?;
    state.refuse_when_full()?;
    let received = input::receive(&state.config, &headers, body).await?;
    let mut req: CompareRequest = input::json_body(received).await?;
    let bad = |m: String| ApiError::new(ProblemKind::InvalidRequest, m);
    if req.methods.is_empty() || req.methods.len() > MAX_METHODS {
        return Err(bad(format!("methods: 1 to {MAX_METHODS}")));
    }
    if matches!(req.target, Some(TargetSpec::TopK { .. } | TargetSpec::Many(_))) {
        return Err(bad("a comparison explains one class: give one index or label".into()));
    }
    if req.format == Some(Format::Html) {
        return Err(ApiError::new(
            ProblemKind::InvalidRequest,
            "format=html draws a decision's rule or counterfactuals (explain with anchors or counterfactual); compare answers JSON or PNG",
        ));
    }
    let wants_png = match req.format {
        Some(f) => f == Format::Png,
        None => explain::accepts_png(&headers),
    };
    let raw = input::one_input(req.image.take(), req.features.take(), req.text.take(), "the request")?;
    let work = Comparison {
        methods: validate_methods(&state, &model, &req)?,
        wants_png,
        max_map_pixels: state.config.max_map_pixels,
    };
    let valid = Valid {
        model,
        inputs: vec![raw],
        work,
        audit: None,
    };
    Ok(pipeline::answer(&state, valid, started).await?.into_response())
}

/// Validates each method whole (its rows within max_samples, with the seed, target, drawing and
/// metrics every method shares), and the plans together within the job's byte budget.
fn validate_methods(
    state: &AppState,
    model: &Arc<LoadedModel>,
    req: &CompareRequest,
) -> Result<Vec<ValidExplain>, ApiError> {
    let seed = req.seed.unwrap_or_else(rand::random);
    let evaluate = req.evaluate.clone().unwrap_or_else(|| {
        ["deletion", "insertion"]
            .into_iter()
            .map(|m| MetricRequest::Name(m.into()))
            .collect()
    });
    let mut valid = Vec::with_capacity(req.methods.len());
    let mut bytes = 0u64;
    for m in &req.methods {
        let (name, params) = match m {
            CompareMethod::Name(n) => (n, None),
            CompareMethod::WithParams(w) => (&w.method, w.params.clone()),
        };
        let options = ExplainOptions {
            region: None,
            params,
            target: req.target.clone(),
            seed: Some(seed),
            include: None,
            render: req.render.clone(),
            evaluate: Some(evaluate.clone()),
        };
        let v = explain::validate(state, model, state.method(name)?.as_ref(), options, 1)?;
        if v.params.capabilities().examples {
            return Err(crate::explain::Invalid::Request(format!(
                "methods: compare sets attributions side by side; {name} answers reference rows"
            ))
            .into());
        }
        if v.params.capabilities().makes_image {
            return Err(crate::explain::Invalid::Request(format!(
                "methods: compare sets attributions side by side; {name} answers an image it made"
            ))
            .into());
        }
        bytes = bytes.saturating_add(v.params.cost().bytes);
        valid.push(v);
    }
    let max_job_bytes = state.config.max_job_bytes;
    if bytes > max_job_bytes {
        return Err(ApiError::new(
            ProblemKind::InvalidInput,
            format!(
                "the methods together would hold {} MiB; at most {} MiB per job (max_job_bytes)",
                bytes >> 20,
                max_job_bytes >> 20
            ),
        ));
    }
    Ok(valid)
}

/// Several methods on one input, in one job; answered as JSON or one PNG strip.
struct Comparison {
    methods: Vec<ValidExplain>,
    wants_png: bool,
    max_map_pixels: u64,
}

impl Work for Comparison {
    type Task = CompareTask;
    type Body = CompareResponse;
    const RECORD: Record = Record::None;

    fn task(&mut self, _: &Arc<LoadedModel>, prepared: &[Prepared]) -> Result<CompareTask, ApiError> {
        let jobs = self.methods.iter().map(|v| v.task(prepared, None));
        Ok(CompareTask(jobs.collect::<Result<Vec<_>, _>>()?))
    }

    fn drawing_size(&self, prepared: &[Prepared], _: &Vec<ExplainResult>) -> usize {
        prepare::drawing_size(prepared, self.methods.len(), self.wants_png)
    }

    fn draw(
        self,
        model: &LoadedModel,
        prepared: Vec<Prepared>,
        results: Vec<ExplainResult>,
        started: Instant,
    ) -> Result<Drawn<CompareResponse>, ApiError> {
        let one = prepared
            .first()
            .ok_or_else(|| ApiError::internal("no prepared input"))?;
        let mut comparisons = Vec::with_capacity(self.methods.len());
        let mut panels = Vec::new();
        if let Some(original) = &one.original {
            // As many caption lines as the method panels, so the strip stays even.
            let lines = ["input".to_string(), String::new()];
            panels.push(render::captioned(original, &lines, 160));
        }
        for (v, result) in self.methods.iter().zip(&results) {
            let (list, drawn) = explain::explanations(v, result, one, self.wants_png, self.max_map_pixels);
            let mut lines = vec![v.params.method().to_string()];
            lines.extend(result.evaluations.first().map(|e| caption(e)));
            panels.extend(drawn.iter().map(|p| render::captioned(p, &lines, 160)));
            comparisons.push(explain::explain_body(v, list, result, started));
        }
        let picture = self.wants_png.then(|| Picture::Png(render::panels_png(&panels)));
        let body = CompareResponse {
            model: model.name.clone(),
            comparisons,
            took_ms: started.elapsed().as_secs_f64() * 1e3,
        };
        Ok(Drawn { body, picture })
    }
}

/// `del 0.12  ins 0.86`: the metrics under a panel.
fn caption(evaluations: &[Evaluation]) -> String {
    evaluations
        .iter()
        .map(|e| {
            let name = serde_json::to_value(e.metric)
                .ok()
                .and_then(|v| v.as_str().map(|s| s.chars().take(3).collect::<String>()))
                .unwrap_or_default();
            match e.value {
                Some(v) => format!("{name} {v:.3}"),
                None => format!("{name} -"),
            }
        })
        .collect::<Vec<_>>()
        .join("  ")
}
