//! `POST /v1/models/{model}/predict`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, Uri};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{audit_context, Caller};
use super::error::{audit_failed, from_exec, model_not_found, ApiError, ProblemKind};
use super::explain::{self, ExplainResponse, Include};
use super::input::{self, FeaturesJson, RawInput};
use super::AppState;
use crate::audit::{Context, Evidence, Kind, Receipt};
use crate::explain::{Condition, Limits, Method, MethodParams, PredictExplainTask, TargetSpec};
use crate::render::RenderOptions;
use crate::runtime::manifest::Task;
use crate::runtime::predict::{PredictTask, Prediction, RowPrediction};
use crate::runtime::preprocess::{self, InputError};
use crate::runtime::{LoadedModel, Tensor};

/// Classes reported when `top_k` is not given.
pub const DEFAULT_TOP_K: usize = 5;

/// A prediction request as JSON. Give exactly one of `image`, `features` or `instances`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// Base64 PNG or JPEG (a `data:` URL prefix is allowed), for image models.
    pub image: Option<String>,
    /// Feature values, for tabular models.
    pub features: Option<FeaturesJson>,
    /// Several inputs at once (at most `max_batch`), run in one batched pass.
    pub instances: Option<Vec<Instance>>,
    /// Classes to report per input (default 5, at most `max_top_k`).
    #[schema(minimum = 1)]
    pub top_k: Option<usize>,
    /// Explain the prediction too (every input, or those meeting `when`), in the same job.
    pub explain: Option<PredictExplain>,
    /// Record this prediction in the audit log (whatever the service's `audit` setting).
    pub audit: Option<bool>,
}

/// An explanation attached to a prediction.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictExplain {
    /// The method (a gradient method: saliency, integrated-gradients, grad-cam, ...).
    pub method: Method,
    /// The method's parameters.
    #[schema(value_type = Object)]
    pub params: Option<serde_json::Value>,
    /// Explain only predictions meeting this condition (default: all).
    pub when: Option<Condition>,
    /// Targets (default: the top-1 prediction).
    pub target: Option<TargetSpec>,
    /// Seed of random methods; drawn and echoed when absent.
    pub seed: Option<u64>,
    /// Extra parts (`tensor`, `overlay`).
    pub include: Option<Vec<Include>>,
    /// How an embedded overlay is drawn.
    pub render: Option<RenderOptions>,
}

/// One input of a batch.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    /// Base64 PNG or JPEG.
    pub image: Option<String>,
    /// Feature values.
    pub features: Option<FeaturesJson>,
}

/// Options in the query string, for raw image bodies.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PredictQuery {
    /// Classes to report (default 5).
    pub top_k: Option<usize>,
    /// Record this prediction in the audit log.
    pub audit: Option<bool>,
}

/// Multipart options part `request` (JSON).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MultipartOptions {
    top_k: Option<usize>,
    explain: Option<PredictExplain>,
    audit: Option<bool>,
}

/// The answer to a prediction.
#[derive(Debug, Serialize, ToSchema)]
pub struct PredictResponse {
    /// Model name.
    pub model: String,
    /// sha256 of the model file that answered.
    pub model_sha256: String,
    /// Ranked classes of the single input (absent for `instances`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predictions: Option<Vec<Prediction>>,
    /// Raw model outputs of the single input (absent for `instances`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs: Option<BTreeMap<String, Vec<f64>>>,
    /// The explanation of the single input, when asked and `when` held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<ExplainResponse>,
    /// One result per input, in order, when the request used `instances`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<Vec<InstanceResult>>,
    /// The audit record written for this answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_record: Option<Receipt>,
}

/// One input's result in a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceResult {
    /// Predictions and outputs.
    #[serde(flatten)]
    pub prediction: RowPrediction,
    /// Its explanation, when asked and `when` held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<ExplainResponse>,
}

/// Predicts the class (or value) of an image or a feature vector.
///
/// The image can come as a raw `image/png` / `image/jpeg` body (options in the query string), as the
/// multipart part `image` (several `image` parts form a batch; options in an optional JSON part
/// `request` such as `{"top_k": 3}`, or a text part `top_k`), or base64 in JSON.
#[utoipa::path(post, path = "/v1/models/{model}/predict", tag = "models",
    params(("model" = String, Path, description = "model name", example = "fashion-cnn"), PredictQuery),
    request_body(content(
        (PredictRequest = "application/json"),
        (Vec<u8> = "image/png"),
        (Vec<u8> = "image/jpeg"),
        (Object = "multipart/form-data"),
    )),
    responses(
        (status = 200, body = PredictResponse),
        (status = 400, body = super::error::Problem, content_type = "application/problem+json", description = "malformed JSON, bad base64, corrupt image, unknown field"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "unknown model"),
        (status = 413, body = super::error::Problem, content_type = "application/problem+json", description = "body or image too large"),
        (status = 415, body = super::error::Problem, content_type = "application/problem+json", description = "content type not accepted"),
        (status = 422, body = super::error::Problem, content_type = "application/problem+json", description = "input does not fit the model"),
        (status = 503, body = super::error::Problem, content_type = "application/problem+json", description = "at capacity; see Retry-After"),
        (status = 504, body = super::error::Problem, content_type = "application/problem+json", description = "deadline passed"),
    ))]
pub async fn predict(
    State(state): State<Arc<AppState>>,
    Path(model_name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    caller: Option<Extension<Caller>>,
    body: Body,
) -> Result<Json<PredictResponse>, ApiError> {
    let model = state
        .registry
        .get(&model_name)
        .cloned()
        .ok_or_else(|| model_not_found(&model_name))?;
    let retry_after = state.config.retry_after_secs;
    // A slot first: a full service spends nothing on reading or decoding.
    let admission = state.executor.admit().map_err(|e| from_exec(e, retry_after))?;
    let received = input::read_body(&headers, body, state.config.max_body_bytes).await?;
    let parsed = parse_predict_body(&received, &uri).await?;
    let (inputs, batched) = (parsed.inputs, parsed.batched);
    let kind = if parsed.explain.is_some() {
        Kind::Explanation
    } else {
        Kind::Prediction
    };
    let audit = state.audit.wants(kind, parsed.audit).then(|| {
        let keep = state.audit.keeps_inputs();
        let evidence: Vec<Evidence> = inputs.iter().map(|raw| explain::evidence(&model, raw, keep)).collect();
        (evidence, audit_context(&headers, caller))
    });

    let top_k = parsed.top_k.unwrap_or(DEFAULT_TOP_K);
    if top_k == 0 || top_k > state.config.max_top_k {
        return Err(ApiError::new(
            ProblemKind::InvalidRequest,
            format!("top_k must be between 1 and {}", state.config.max_top_k),
        ));
    }
    if inputs.is_empty() {
        return Err(ApiError::new(
            ProblemKind::InvalidRequest,
            "give an `image`, `features`, or `instances`",
        ));
    }
    if inputs.len() > state.config.max_batch {
        return Err(ApiError::new(
            ProblemKind::InvalidRequest,
            format!(
                "{} instances; at most {} per request (max_batch)",
                inputs.len(),
                state.config.max_batch
            ),
        ));
    }
    let max_pixels = state.config.max_image_pixels;
    let mut response = PredictResponse {
        model: model.name.clone(),
        model_sha256: model.sha256.clone(),
        predictions: None,
        outputs: None,
        explanation: None,
        instances: None,
        audit_record: None,
    };

    let Some(plan) = parsed.explain else {
        let prep_model = model.clone();
        let tensor = tokio::task::spawn_blocking(move || prepare_rows(&prep_model, inputs, max_pixels))
            .await
            .map_err(ApiError::internal)??;
        let mut rows = admission
            .run(PredictTask {
                model: model.clone(),
                input: tensor,
                top_k,
            })
            .await
            .map_err(|e| from_exec(e, retry_after))?;
        if batched {
            response.instances = Some(
                rows.into_iter()
                    .map(|prediction| InstanceResult {
                        prediction,
                        explanation: None,
                    })
                    .collect(),
            );
        } else if let Some(row) = rows.pop() {
            response.predictions = Some(row.predictions);
            response.outputs = Some(row.outputs);
        }
        return audited(&state, audit, response).await;
    };

    // With an explanation: each input keeps what maps its attribution back onto it.
    let started = Instant::now();
    explain::check_applicable(&model, plan.method)?;
    let limits = Limits {
        max_samples: state.config.max_samples,
        max_targets: state.config.max_targets,
    };
    let params = MethodParams::parse(
        plan.method,
        plan.params.clone().unwrap_or_else(|| serde_json::json!({})),
        limits,
    )
    .map_err(|e| ApiError::new(ProblemKind::InvalidRequest, e))?
    .resolved_for(&model);
    let render_options = plan.render.clone().unwrap_or_default();
    render_options
        .validate()
        .map_err(|e| ApiError::new(ProblemKind::InvalidRequest, e))?;
    let seed = plan.seed.unwrap_or_else(rand::random);
    let prep_model = model.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        inputs
            .into_iter()
            .map(|raw| explain::prepare(&prep_model, raw, max_pixels))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(ApiError::internal)??;
    let tensor = Tensor::concat_rows(prepared.iter().map(|p| p.tensor.clone()).collect())
        .ok_or_else(|| ApiError::internal("inputs of different shapes"))?;
    let task = PredictExplainTask {
        predict: PredictTask {
            model: model.clone(),
            input: tensor,
            top_k,
        },
        params: params.clone(),
        targets: plan.target.clone(),
        seed,
        limits,
        when: plan.when.clone().unwrap_or_default(),
    };
    let (rows, results) = admission.run(task).await.map_err(|e| from_exec(e, retry_after))?;
    let include = plan.include.clone().unwrap_or_default();
    let max_map_pixels = state.config.max_map_pixels;
    let method = plan.method;
    let seed_echo = method.is_random().then_some(seed);
    let model_for_render = model.clone();
    let instances = tokio::task::spawn_blocking(move || {
        rows.into_iter()
            .zip(results)
            .zip(&prepared)
            .map(|((prediction, result), prep)| {
                let explanation = result.map(|r| {
                    let (list, _) = explain::explanations(
                        &model_for_render,
                        &r,
                        prep,
                        &render_options,
                        &include,
                        false,
                        max_map_pixels,
                    );
                    let id = uuid::Uuid::new_v4().to_string();
                    explain::explain_body(
                        &model_for_render,
                        method,
                        params.clone(),
                        seed_echo,
                        id,
                        list,
                        &r,
                        started,
                    )
                });
                InstanceResult {
                    prediction,
                    explanation,
                }
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(ApiError::internal)?;
    if batched {
        response.instances = Some(instances);
    } else if let Some(one) = instances.into_iter().next() {
        response.predictions = Some(one.prediction.predictions);
        response.outputs = Some(one.prediction.outputs);
        response.explanation = one.explanation;
    }
    audited(&state, audit, response).await
}

/// Writes the answer's audit record when one is wanted; the answer is not sent unless it is written.
async fn audited(
    state: &AppState,
    audit: Option<(Vec<Evidence>, Context)>,
    mut response: PredictResponse,
) -> Result<Json<PredictResponse>, ApiError> {
    if let Some((evidence, ctx)) = audit {
        let value = super::audit::as_sent(&response)?;
        let receipt = state
            .audit
            .prediction(&ctx, evidence, &value)
            .await
            .map_err(audit_failed)?;
        response.audit_record = Some(receipt);
    }
    Ok(Json(response))
}

/// A predict body, parsed.
struct ParsedPredict {
    inputs: Vec<RawInput>,
    top_k: Option<usize>,
    batched: bool,
    explain: Option<PredictExplain>,
    audit: bool,
}

/// Reads inputs and options from any of the accepted body forms.
async fn parse_predict_body(received: &input::ReceivedBody, uri: &Uri) -> Result<ParsedPredict, ApiError> {
    let media = received.media_type.as_str();
    if media == "application/json" {
        let req: PredictRequest = input::parse_json(&received.bytes)?;
        let given = [req.image.is_some(), req.features.is_some(), req.instances.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(ApiError::new(
                ProblemKind::InvalidRequest,
                "give exactly one of `image`, `features`, `instances`",
            ));
        }
        let one = |image, features| input::one_input(image, features, "each instance");
        if let Some(instances) = req.instances {
            let inputs = instances
                .into_iter()
                .map(|i| one(i.image, i.features))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(ParsedPredict {
                inputs,
                top_k: req.top_k,
                batched: true,
                explain: req.explain,
                audit: req.audit.unwrap_or(false),
            });
        }
        return Ok(ParsedPredict {
            inputs: vec![one(req.image, req.features)?],
            top_k: req.top_k,
            batched: false,
            explain: req.explain,
            audit: req.audit.unwrap_or(false),
        });
    }
    if input::is_image_media_type(media) {
        let q: PredictQuery = input::parse_query(uri)?;
        return Ok(ParsedPredict {
            inputs: vec![RawInput::Image(received.bytes.clone())],
            top_k: q.top_k,
            batched: false,
            explain: None,
            audit: q.audit.unwrap_or(false),
        });
    }
    if media == "multipart/form-data" {
        let form = input::parse_multipart(received, &["request", "top_k"]).await?;
        let mut top_k = None;
        let mut explain = None;
        let mut audit = false;
        for (name, text) in &form.fields {
            match name.as_str() {
                "request" => {
                    let options = input::parse_json::<MultipartOptions>(text.as_bytes())?;
                    top_k = options.top_k.or(top_k);
                    explain = options.explain;
                    audit = options.audit.unwrap_or(false);
                }
                _ => {
                    top_k = Some(text.trim().parse().map_err(|_| {
                        ApiError::new(
                            ProblemKind::InvalidRequest,
                            format!("multipart part `top_k` must be a number, got `{text}`"),
                        )
                    })?)
                }
            }
        }
        if form.images.is_empty() {
            return Err(ApiError::new(
                ProblemKind::InvalidRequest,
                "the multipart form has no `image` part",
            ));
        }
        let batched = form.images.len() > 1;
        return Ok(ParsedPredict {
            inputs: form.images.into_iter().map(RawInput::Image).collect(),
            top_k,
            batched,
            explain,
            audit,
        });
    }
    Err(ApiError::new(
        ProblemKind::UnsupportedMediaType,
        format!(
            "content type `{}` is not accepted; send application/json, image/png, image/jpeg or multipart/form-data",
            if media.is_empty() { "(none)" } else { media }
        ),
    ))
}

/// Decodes and preprocesses every input into one batch tensor.
fn prepare_rows(model: &LoadedModel, inputs: Vec<RawInput>, max_pixels: u64) -> Result<Tensor, ApiError> {
    let spec = &model.spec;
    let mut rows = Vec::with_capacity(inputs.len());
    for raw in inputs {
        let row = match (raw, spec.task) {
            (RawInput::Image(bytes), Task::ImageClassification) => {
                let img = preprocess::decode_image(&bytes, max_pixels)?;
                let image_spec = spec
                    .image
                    .as_ref()
                    .ok_or_else(|| ApiError::internal("image model without image spec"))?;
                preprocess::prepare_image(&img, image_spec).tensor
            }
            (RawInput::Features(f), Task::TabularClassification | Task::TabularRegression) => {
                let tab = spec
                    .tabular
                    .as_ref()
                    .ok_or_else(|| ApiError::internal("tabular model without tabular spec"))?;
                preprocess::prepare_features(&f, tab)?
            }
            (RawInput::Image(_), _) => {
                return Err(InputError::WrongKind(format!(
                    "model `{}` is tabular: send `features`, not an image",
                    model.name
                ))
                .into())
            }
            (RawInput::Features(_), _) => {
                return Err(InputError::WrongKind(format!(
                    "model `{}` takes images: send an image, not `features`",
                    model.name
                ))
                .into())
            }
        };
        rows.push(row);
    }
    Tensor::concat_rows(rows).ok_or_else(|| ApiError::internal("inputs of different shapes"))
}
