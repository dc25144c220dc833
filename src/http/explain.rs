//! `POST /v1/models/{model}/explain/{method}`: validates the request into an [`ExplainJob`], runs
//! it on a worker, maps the attribution back onto the original image, and answers JSON or a PNG.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{audit_context, Caller};
use super::error::{audit_failed, from_exec, model_not_found, ApiError, ProblemKind};
use super::input::{self, FeaturesJson, RawInput};
use super::AppState;
use crate::audit::{Context, Evidence, Kind, Receipt};
use crate::explain::{ExplainJob, ExplainResult, ExplainTask, Limits, Method, MethodParams, TargetRef, TargetSpec};
use crate::render::{self, RenderOptions};
use crate::runtime::manifest::Task;
use crate::runtime::predict::Prediction;
use crate::runtime::preprocess::{self, Features, Geometry, InputError};
use crate::runtime::{LoadedModel, Tensor};

/// Extra parts of the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Include {
    /// The raw attribution in the model's input space (after preprocessing), `attributions.tensor`.
    Tensor,
    /// The PNG overlay, base64, as `overlay_png`.
    Overlay,
}

/// Response format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// JSON (the default).
    Json,
    /// The heat map over the input image, PNG (image models).
    Png,
}

/// An explanation request as JSON (or as the `request` part of a multipart form, without `image`).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// Base64 PNG or JPEG, for image models.
    pub image: Option<String>,
    /// Feature values, for tabular models.
    pub features: Option<FeaturesJson>,
    /// A class index, a label, a list of them, or `{"top_k": k}`; default: the top-1 prediction.
    pub target: Option<TargetSpec>,
    /// The method's parameters (see each method's schema); unknown names are refused.
    #[schema(value_type = Object)]
    pub params: Option<serde_json::Value>,
    /// Seed of the random methods (SmoothGrad); drawn and echoed when absent.
    pub seed: Option<u64>,
    /// Extra parts of the response.
    pub include: Option<Vec<Include>>,
    /// Response format; `Accept: image/png` also asks for PNG.
    pub format: Option<Format>,
    /// How the PNG heat map is drawn.
    pub render: Option<RenderOptions>,
    /// Record this explanation in the audit log (whatever the service's `audit` setting).
    pub audit: Option<bool>,
}

/// A map or tensor: shape and row-major values.
#[derive(Debug, Serialize, ToSchema)]
pub struct Array {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: Vec<f32>,
}

/// The attribution of one target.
#[derive(Debug, Serialize, ToSchema)]
pub struct Attributions {
    /// Image models: `[height, width]` over the original image (scaled down past `max_map_pixels`),
    /// channels folded (largest magnitude for saliency-like maps, sum for signed ones). Tabular
    /// models: one value per feature.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: Vec<f32>,
    /// With `include: ["tensor"]`: the attribution in the model's input space.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tensor: Option<Array>,
}

/// A tabular feature's attribution.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeatureAttribution {
    /// Feature name.
    pub name: String,
    /// The input's value.
    pub value: f32,
    /// Its attribution.
    pub attribution: f32,
}

/// The explanation of one target.
#[derive(Debug, Serialize, ToSchema)]
pub struct TargetExplanation {
    /// The explained class and its score.
    pub target: Prediction,
    /// The attribution.
    pub attributions: Attributions,
    /// Tabular models: features by decreasing |attribution|.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<FeatureAttribution>>,
    /// Integrated Gradients: sum of attributions minus (f(input) - f(baseline)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub convergence_delta: Option<f64>,
    /// CAM methods: the layer used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<String>,
    /// With `include: ["overlay"]`: the PNG overlay, base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay_png: Option<String>,
    /// Method-specific results (LIME: `segments`, `segment_weights`, `segment_map`, `r2`,
    /// `intercept`, `top_positive`, `top_negative`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

/// Work done.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExplainStats {
    /// Model rows run (forward or forward and backward).
    pub model_rows: usize,
    /// ONNX Runtime runs (batches).
    pub model_runs: usize,
    /// Wall time of the whole request, milliseconds.
    pub wall_ms: f64,
}

/// An explanation. With one target its fields (`target`, `attributions`, ...) sit at the top level;
/// with several (a list or `top_k`), `explanations` holds one such object per target, in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExplainResponse {
    /// Explanation id (also in the `x-explanation-id` header of PNG responses).
    pub id: String,
    /// Model name.
    pub model: String,
    /// sha256 of the model file.
    pub model_sha256: String,
    /// Method.
    pub method: Method,
    /// All parameters, defaults filled in.
    #[schema(value_type = Object)]
    pub params: MethodParams,
    /// Seed used (random methods).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The single target's explanation.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub single: Option<TargetExplanation>,
    /// One explanation per target, when several were asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanations: Option<Vec<TargetExplanation>>,
    /// Work done.
    pub stats: ExplainStats,
    /// The audit record written for this answer (also `x-audit-record` on PNG answers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_record: Option<Receipt>,
}

/// The keys of a raw-image request's query string that are not method parameters.
const QUERY_KEYS: &[&str] = &[
    "target",
    "audit",
    "top_k",
    "seed",
    "format",
    "include",
    "colormap",
    "polarity",
    "clip_percentiles",
    "alpha",
    "overlay",
];

/// Explains a prediction: gradient methods, and the forward-only occlusion, RISE and Score-CAM.
///
/// Takes the same input forms as predict: a raw image body (options and method parameters in the
/// query string, e.g. `?target=3&steps=32&format=png`), multipart with `image` and an optional JSON
/// part `request`, or JSON. Answers JSON, or the heat map over the image as PNG with
/// `Accept: image/png` or `format=png` (one panel per target, side by side).
#[utoipa::path(post, path = "/v1/models/{model}/explain/{method}", tag = "explanations",
    params(
        ("model" = String, Path, description = "model name", example = "fashion-cnn"),
        ("method" = Method, Path, description = "saliency, gradient-x-input, integrated-gradients, smoothgrad, grad-cam, grad-cam-plus-plus, guided-backprop, guided-grad-cam, occlusion, rise, score-cam, lime, kernel-shap"),
    ),
    request_body(content(
        (ExplainRequest = "application/json"),
        (Vec<u8> = "image/png"),
        (Vec<u8> = "image/jpeg"),
        (Object = "multipart/form-data"),
    )),
    responses(
        (status = 200, body = ExplainResponse, description = "the explanation (JSON)"),
        (status = 200, content_type = "image/png", body = Vec<u8>, description = "the heat map over the image"),
        (status = 400, body = super::error::Problem, content_type = "application/problem+json", description = "malformed JSON, unknown or out-of-range parameter, corrupt image"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "unknown model or method"),
        (status = 413, body = super::error::Problem, content_type = "application/problem+json", description = "body or image too large"),
        (status = 415, body = super::error::Problem, content_type = "application/problem+json", description = "content type not accepted"),
        (status = 422, body = super::error::Problem, content_type = "application/problem+json", description = "input or target does not fit the model; model not differentiable"),
        (status = 503, body = super::error::Problem, content_type = "application/problem+json", description = "at capacity; see Retry-After"),
        (status = 504, body = super::error::Problem, content_type = "application/problem+json", description = "deadline passed"),
    ))]
pub async fn explain(
    State(state): State<Arc<AppState>>,
    Path((model_name, method_name)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    caller: Option<Extension<Caller>>,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let method = Method::from_name(&method_name).ok_or_else(|| {
        let names: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
        ApiError::new(
            ProblemKind::NotFound,
            format!("no method `{method_name}`; methods: {}", names.join(", ")),
        )
    })?;
    let model = state
        .registry
        .get(&model_name)
        .cloned()
        .ok_or_else(|| model_not_found(&model_name))?;
    check_applicable(&model, method)?;
    let config = &state.config;
    let retry_after = config.retry_after_secs;
    let admission = state.executor.admit().map_err(|e| from_exec(e, retry_after))?;
    let received = input::read_body(&headers, body, config.max_body_bytes).await?;
    let (raw, request) = parse_body(&received, &uri).await?;
    let wants_png = match request.format {
        Some(f) => f == Format::Png,
        None => accepts_png(&headers),
    };
    let mut planned = plan(&state, model, method, raw, &request).await?;
    let result = admission
        .run(ExplainTask(planned.job.clone()))
        .await
        .map_err(|e| from_exec(e, retry_after))?;
    let max_map_pixels = config.max_map_pixels;
    let evidence = planned.audit.take();
    let mut answer =
        tokio::task::spawn_blocking(move || build_answer(&planned, result, wants_png, max_map_pixels, started))
            .await
            .map_err(ApiError::internal)?;
    if let Some(evidence) = evidence {
        let ctx = audit_context(&headers, caller);
        let receipt = audit_explanation(&state, ctx, evidence, &answer.body).await?;
        answer.body.audit_record = Some(receipt);
    }
    Ok(answer.into_response())
}

/// A validated explanation, ready to run, with what its answer is drawn from.
pub(super) struct Planned {
    pub(super) model: Arc<LoadedModel>,
    pub(super) method: Method,
    pub(super) params: MethodParams,
    pub(super) render: RenderOptions,
    pub(super) include: Vec<Include>,
    pub(super) seed: u64,
    pub(super) prepared: Prepared,
    /// When the answer is to be recorded: the input's audit evidence (hash, and the input when
    /// configured). Hashing is skipped for answers that are not recorded.
    pub(super) audit: Option<Evidence>,
    pub(super) job: ExplainJob,
}

/// Validates parameters and render options, decodes and preprocesses the input.
pub(super) async fn plan(
    state: &AppState,
    model: Arc<LoadedModel>,
    method: Method,
    raw: RawInput,
    request: &ExplainRequest,
) -> Result<Planned, ApiError> {
    let config = &state.config;
    let limits = Limits {
        max_samples: config.max_samples,
        max_targets: config.max_targets,
    };
    let params = MethodParams::parse(
        method,
        request.params.clone().unwrap_or_else(|| serde_json::json!({})),
        limits,
    )
    .map_err(|e| ApiError::new(ProblemKind::InvalidRequest, e))?
    .resolved_for(&model);
    let render = request.render.clone().unwrap_or_default();
    render
        .validate()
        .map_err(|e| ApiError::new(ProblemKind::InvalidRequest, e))?;
    let seed = request.seed.unwrap_or_else(rand::random);
    let audit = state
        .audit
        .wants(Kind::Explanation, request.audit.unwrap_or(false))
        .then(|| evidence(&model, &raw, state.audit.keeps_inputs()));
    let max_pixels = config.max_image_pixels;
    let prep_model = model.clone();
    let prepared = tokio::task::spawn_blocking(move || prepare(&prep_model, raw, max_pixels))
        .await
        .map_err(ApiError::internal)??;
    let job = ExplainJob {
        model: model.clone(),
        input: prepared.tensor.clone(),
        targets: request.target.clone(),
        params: params.clone(),
        seed,
        limits,
        scores: None,
    };
    Ok(Planned {
        model,
        method,
        params,
        render,
        include: request.include.clone().unwrap_or_default(),
        seed,
        prepared,
        audit,
        job,
    })
}

/// An input's audit evidence: the uploaded image's bytes, or the features in the model's order.
pub(super) fn evidence(model: &LoadedModel, raw: &RawInput, keep: bool) -> Evidence {
    match raw {
        RawInput::Image(bytes) => Evidence::image(bytes, keep),
        RawInput::Features(f) => {
            let values = model
                .spec
                .tabular
                .as_ref()
                .and_then(|spec| preprocess::prepare_features(f, spec).ok())
                .and_then(|t| t.as_f32().map(<[f32]>::to_vec))
                .unwrap_or_default();
            Evidence::features(&values, keep)
        }
    }
}

/// An explanation's answer: the JSON body, and the PNG when asked for one.
pub(super) struct Answer {
    pub(super) body: ExplainResponse,
    png: Option<Vec<u8>>,
}

/// Draws the answer (maps over the original image, features, PNG panels).
pub(super) fn build_answer(
    planned: &Planned,
    result: ExplainResult,
    wants_png: bool,
    max_map_pixels: u64,
    started: Instant,
) -> Answer {
    let (explanations, panels) = explanations(
        &planned.model,
        &result,
        &planned.prepared,
        &planned.render,
        &planned.include,
        wants_png,
        max_map_pixels,
    );
    let png = wants_png.then(|| render::png(&render::side_by_side(&panels)));
    let method_seed = planned.method.is_random().then_some(planned.seed);
    let body = explain_body(
        &planned.model,
        planned.method,
        planned.params.clone(),
        method_seed,
        uuid::Uuid::new_v4().to_string(),
        explanations,
        &result,
        started,
    );
    Answer { body, png }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let Some(png) = self.png else {
            return Json(self.body).into_response();
        };
        let targets: Vec<String> = std::iter::once(&self.body.single)
            .flatten()
            .chain(self.body.explanations.iter().flatten())
            .map(|e| format!("{}:{}", e.target.index, ascii(&e.target.label)))
            .collect();
        let mut response = (StatusCode::OK, png).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
        if let Ok(v) = HeaderValue::from_str(&self.body.id) {
            headers.insert("x-explanation-id", v);
        }
        if let Ok(v) = HeaderValue::from_str(&targets.join(",")) {
            headers.insert("x-explanation-target", v);
        }
        if let Some(r) = self
            .body
            .audit_record
            .as_ref()
            .and_then(|r| HeaderValue::from_str(&r.id).ok())
        {
            headers.insert("x-audit-record", r);
        }
        response
    }
}

/// Writes the audit record of an explanation answer; the answer is not sent unless this succeeds.
pub(super) async fn audit_explanation(
    state: &AppState,
    ctx: Context,
    evidence: Evidence,
    body: &ExplainResponse,
) -> Result<Receipt, ApiError> {
    let value = super::audit::as_sent(body)?;
    state
        .audit
        .explanation(&ctx, evidence, &value)
        .await
        .map_err(audit_failed)
}

/// Refuses, before any work, methods the model cannot serve.
pub(super) fn check_applicable(model: &LoadedModel, method: Method) -> Result<(), ApiError> {
    if let Some(report) = model.gradient_report.get().filter(|_| method.needs_gradients()) {
        if !report.differentiable {
            return Err(ApiError::new(
                ProblemKind::NotDifferentiable,
                format!(
                    "model `{}` has operators without gradient rules, so gradient methods cannot explain it: {}",
                    model.name,
                    report.blocking_operators.join("; ")
                ),
            ));
        }
    }
    if method.tabular_only() && model.spec.tabular.is_none() {
        return Err(ApiError::new(
            ProblemKind::InvalidInput,
            format!(
                "{} explains tabular models; `{}` takes images",
                method.name(),
                model.name
            ),
        ));
    }
    if method == Method::TreeShap {
        model.forest().map_err(|why| {
            ApiError::new(
                ProblemKind::UnsupportedModel,
                format!("tree-shap cannot explain model `{}`: {why}", model.name),
            )
        })?;
    }
    if method.image_only() && model.spec.image.is_none() {
        return Err(ApiError::new(
            ProblemKind::InvalidInput,
            format!("{} explains image models; `{}` is tabular", method.name(), model.name),
        ));
    }
    Ok(())
}

fn accepts_png(headers: &HeaderMap) -> bool {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let png = accept.find("image/png");
    let json = accept.find("application/json");
    matches!((png, json), (Some(p), Some(j)) if p < j) || (png.is_some() && json.is_none())
}

/// Input and options from any of the accepted body forms.
async fn parse_body(received: &input::ReceivedBody, uri: &Uri) -> Result<(RawInput, ExplainRequest), ApiError> {
    let media = received.media_type.as_str();
    if media == "application/json" {
        let mut req: ExplainRequest = input::parse_json(&received.bytes)?;
        let raw = input::one_input(req.image.take(), req.features.take(), "the request")?;
        return Ok((raw, req));
    }
    if input::is_image_media_type(media) {
        let pairs: Vec<(String, String)> = input::parse_query(uri)?;
        return Ok((RawInput::Image(received.bytes.clone()), request_from_query(&pairs)?));
    }
    if media == "multipart/form-data" {
        let form = input::parse_multipart(received, &["request"]).await?;
        let req = match form.fields.iter().find(|(n, _)| n == "request") {
            Some((_, text)) => input::parse_json::<ExplainRequest>(text.as_bytes())?,
            None => ExplainRequest::default(),
        };
        if req.image.is_some() || req.features.is_some() {
            return Err(ApiError::new(
                ProblemKind::InvalidRequest,
                "the `request` part must not hold the input; send it as the `image` part",
            ));
        }
        let mut images = form.images.into_iter();
        let (Some(image), None) = (images.next(), images.next()) else {
            return Err(ApiError::new(
                ProblemKind::InvalidRequest,
                "the multipart form needs exactly one `image` part",
            ));
        };
        return Ok((RawInput::Image(image), req));
    }
    Err(ApiError::new(
        ProblemKind::UnsupportedMediaType,
        format!(
            "content type `{}` is not accepted; send application/json, image/png, image/jpeg or multipart/form-data",
            if media.is_empty() { "(none)" } else { media }
        ),
    ))
}

/// Builds the request from a raw-image body's query string: known keys, and method parameters.
fn request_from_query(pairs: &[(String, String)]) -> Result<ExplainRequest, ApiError> {
    let bad = |m: String| ApiError::new(ProblemKind::InvalidRequest, format!("query string: {m}"));
    let literal = |v: &str| {
        serde_json::from_str::<serde_json::Value>(v).unwrap_or_else(|_| serde_json::Value::String(v.to_string()))
    };
    let mut req = ExplainRequest::default();
    let mut params = serde_json::Map::new();
    let mut render = serde_json::Map::new();
    for (key, value) in pairs {
        match key.as_str() {
            "target" => {
                let refs: Vec<TargetRef> = value
                    .split(',')
                    .map(|v| {
                        v.trim()
                            .parse::<usize>()
                            .map(TargetRef::Index)
                            .unwrap_or_else(|_| TargetRef::Label(v.trim().to_string()))
                    })
                    .collect();
                req.target = Some(if refs.len() == 1 {
                    TargetSpec::One(refs[0].clone())
                } else {
                    TargetSpec::Many(refs)
                });
            }
            "top_k" => {
                req.target = Some(TargetSpec::TopK {
                    top_k: value
                        .parse()
                        .map_err(|_| bad(format!("top_k must be a number, got `{value}`")))?,
                })
            }
            "seed" => {
                req.seed = Some(
                    value
                        .parse()
                        .map_err(|_| bad(format!("seed must be a non-negative integer, got `{value}`")))?,
                )
            }
            "format" => {
                req.format = Some(
                    serde_json::from_value(serde_json::Value::String(value.clone()))
                        .map_err(|_| bad(format!("format must be json or png, got `{value}`")))?,
                )
            }
            "include" => {
                req.include = Some(
                    value
                        .split(',')
                        .map(|v| serde_json::from_value(serde_json::Value::String(v.trim().to_string())))
                        .collect::<Result<_, _>>()
                        .map_err(|_| bad(format!("include takes tensor and overlay, got `{value}`")))?,
                )
            }
            "audit" => {
                req.audit = Some(
                    value
                        .parse()
                        .map_err(|_| bad(format!("audit must be true or false, got `{value}`")))?,
                )
            }
            "clip_percentiles" => {
                let values: Vec<serde_json::Value> = value.split(',').map(|v| literal(v.trim())).collect();
                render.insert(key.clone(), serde_json::Value::Array(values));
            }
            k if QUERY_KEYS.contains(&k) => {
                render.insert(key.clone(), literal(value));
            }
            _ => {
                params.insert(key.clone(), literal(value));
            }
        }
    }
    req.params = Some(serde_json::Value::Object(params));
    if !render.is_empty() {
        req.render = Some(serde_json::from_value(serde_json::Value::Object(render)).map_err(|e| bad(e.to_string()))?);
    }
    Ok(req)
}

/// The prepared input and what is needed to map results back.
pub(super) struct Prepared {
    pub(super) tensor: Tensor,
    original: Option<image::RgbImage>,
    geometry: Option<Geometry>,
    features: Option<Vec<f32>>,
}

/// Decodes and preprocesses one input, keeping what maps results back onto it.
pub(super) fn prepare(model: &LoadedModel, raw: RawInput, max_pixels: u64) -> Result<Prepared, ApiError> {
    match (raw, model.spec.task) {
        (RawInput::Image(bytes), Task::ImageClassification) => {
            let img = preprocess::decode_image(&bytes, max_pixels)?;
            let spec = model
                .spec
                .image
                .as_ref()
                .ok_or_else(|| ApiError::internal("image model without image spec"))?;
            let p = preprocess::prepare_image(&img, spec);
            Ok(Prepared {
                tensor: p.tensor,
                original: Some(p.original),
                geometry: Some(p.geometry),
                features: None,
            })
        }
        (RawInput::Features(f), Task::TabularClassification | Task::TabularRegression) => {
            let spec = model
                .spec
                .tabular
                .as_ref()
                .ok_or_else(|| ApiError::internal("tabular model without tabular spec"))?;
            let tensor = preprocess::prepare_features(&f, spec)?;
            let values = tensor.as_f32().map(<[f32]>::to_vec);
            Ok(Prepared {
                tensor,
                original: None,
                geometry: None,
                features: values,
            })
        }
        (RawInput::Image(_), _) => Err(InputError::WrongKind(format!(
            "model `{}` is tabular: send `features`, not an image",
            model.name
        ))
        .into()),
        (RawInput::Features(Features::Named(_) | Features::Ordered(_)), _) => Err(InputError::WrongKind(format!(
            "model `{}` takes images: send an image, not `features`",
            model.name
        ))
        .into()),
    }
}

/// Per-target JSON explanations, and the overlay panels when `panels` is asked.
pub(super) fn explanations(
    model: &LoadedModel,
    result: &ExplainResult,
    prepared: &Prepared,
    render_options: &RenderOptions,
    include: &[Include],
    panels: bool,
    max_map_pixels: u64,
) -> (Vec<TargetExplanation>, Vec<image::RgbImage>) {
    let mut drawn = Vec::new();
    let mut explanations = Vec::new();
    for a in &result.attributions {
        let (shape, values, panel) = match (&a.map, &prepared.geometry, &prepared.original) {
            (Some(map), Some(geometry), Some(original)) => {
                let (h, w) = (map.shape[0], map.shape[1]);
                let (ow, oh, values) = geometry.map_back(map.as_f32().unwrap_or(&[]), w, h, max_map_pixels);
                let panel = (panels || include.contains(&Include::Overlay)).then(|| {
                    let background = if (ow, oh) == original.dimensions() {
                        original.clone()
                    } else {
                        image::imageops::resize(original, ow, oh, image::imageops::FilterType::Triangle)
                    };
                    render::overlay(&background, &values, render_options)
                });
                (vec![oh as usize, ow as usize], values, panel)
            }
            _ => (a.tensor.shape.clone(), a.tensor.as_f32().unwrap_or(&[]).to_vec(), None),
        };
        let features = prepared
            .features
            .as_ref()
            .zip(model.spec.tabular.as_ref())
            .map(|(inputs, tab)| {
                let mut list: Vec<FeatureAttribution> = tab
                    .features
                    .iter()
                    .zip(inputs)
                    .zip(&values)
                    .map(|((name, value), attribution)| FeatureAttribution {
                        name: name.clone(),
                        value: *value,
                        attribution: *attribution,
                    })
                    .collect();
                list.sort_by(|a, b| b.attribution.abs().total_cmp(&a.attribution.abs()));
                list
            });
        // Tabular models: the picture is a bar chart of the largest attributions.
        let panel = panel.or_else(|| {
            let list = features.as_ref()?;
            (panels || include.contains(&Include::Overlay)).then(|| {
                let bars: Vec<render::Bar> = list
                    .iter()
                    .map(|f| render::Bar {
                        name: f.name.clone(),
                        value: f.value,
                        attribution: f.attribution,
                    })
                    .collect();
                render::bar_chart(&format!("{} ({:.4})", a.target.label, a.target.score), &bars, 12)
            })
        });
        let overlay_png = match (&panel, include.contains(&Include::Overlay)) {
            (Some(p), true) => Some(base64::engine::general_purpose::STANDARD.encode(render::png(p))),
            _ => None,
        };
        if let Some(p) = panel {
            drawn.push(p);
        }
        let tensor = include.contains(&Include::Tensor).then(|| Array {
            shape: a.tensor.shape.clone(),
            values: a.tensor.as_f32().unwrap_or(&[]).to_vec(),
        });
        explanations.push(TargetExplanation {
            target: a.target.clone(),
            attributions: Attributions { shape, values, tensor },
            features,
            convergence_delta: a.convergence_delta,
            layer: a.layer.clone(),
            overlay_png,
            details: a.details.clone(),
        });
    }
    (explanations, drawn)
}

/// The JSON body of an explanation.
#[allow(clippy::too_many_arguments)]
pub(super) fn explain_body(
    model: &LoadedModel,
    method: Method,
    params: MethodParams,
    seed: Option<u64>,
    id: String,
    mut explanations: Vec<TargetExplanation>,
    result: &ExplainResult,
    started: Instant,
) -> ExplainResponse {
    let stats = ExplainStats {
        model_rows: result.rows,
        model_runs: result.runs,
        wall_ms: started.elapsed().as_secs_f64() * 1e3,
    };
    let (single, many) = if explanations.len() == 1 {
        (explanations.pop(), None)
    } else {
        (None, Some(explanations))
    };
    ExplainResponse {
        id,
        model: model.name.clone(),
        model_sha256: model.sha256.clone(),
        method,
        params,
        seed,
        single,
        explanations: many,
        stats,
        audit_record: None,
    }
}

/// A header-safe version of a label.
fn ascii(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                if c == ',' {
                    ';'
                } else {
                    c
                }
            } else {
                '?'
            }
        })
        .collect()
}
