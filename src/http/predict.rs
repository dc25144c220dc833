//! `POST /v1/models/{model}/predict`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{from_exec, model_not_found, ApiError, ProblemKind};
use super::input::{self, FeaturesJson, RawInput};
use super::AppState;
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
}

/// Multipart options part `request` (JSON).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MultipartOptions {
    top_k: Option<usize>,
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
    /// One result per input, in order, when the request used `instances`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<Vec<RowPrediction>>,
}

/// Predicts the class (or value) of an image or a feature vector.
///
/// The image can come as a raw `image/png` / `image/jpeg` body (options in the query string), as the
/// multipart part `image` (several `image` parts form a batch; options in an optional JSON part
/// `request` such as `{"top_k": 3}`, or a text part `top_k`), or base64 in JSON.
#[utoipa::path(post, path = "/v1/models/{model}/predict", tag = "models",
    params(("model" = String, Path, description = "model name"), PredictQuery),
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
    let (inputs, top_k, batched) = parse_predict_body(&received, &uri).await?;

    let top_k = top_k.unwrap_or(DEFAULT_TOP_K);
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

    let mut response = PredictResponse {
        model: model.name.clone(),
        model_sha256: model.sha256.clone(),
        predictions: None,
        outputs: None,
        instances: None,
    };
    if batched {
        response.instances = Some(rows);
    } else if let Some(row) = rows.pop() {
        response.predictions = Some(row.predictions);
        response.outputs = Some(row.outputs);
    }
    Ok(Json(response))
}

/// Reads inputs and options from any of the accepted body forms.
async fn parse_predict_body(
    received: &input::ReceivedBody,
    uri: &Uri,
) -> Result<(Vec<RawInput>, Option<usize>, bool), ApiError> {
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
        let one = |image: Option<String>, features: Option<FeaturesJson>| -> Result<RawInput, ApiError> {
            match (image, features) {
                (Some(img), None) => Ok(RawInput::Image(input::decode_base64_image(&img)?)),
                (None, Some(f)) => Ok(RawInput::Features(f.into())),
                _ => Err(ApiError::new(
                    ProblemKind::InvalidRequest,
                    "each instance needs exactly one of `image`, `features`",
                )),
            }
        };
        if let Some(instances) = req.instances {
            let inputs = instances
                .into_iter()
                .map(|i| one(i.image, i.features))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok((inputs, req.top_k, true));
        }
        return Ok((vec![one(req.image, req.features)?], req.top_k, false));
    }
    if input::is_image_media_type(media) {
        let q: PredictQuery = input::parse_query(uri)?;
        return Ok((vec![RawInput::Image(received.bytes.clone())], q.top_k, false));
    }
    if media == "multipart/form-data" {
        let form = input::parse_multipart(received, &["request", "top_k"]).await?;
        let mut top_k = None;
        for (name, text) in &form.fields {
            match name.as_str() {
                "request" => top_k = input::parse_json::<MultipartOptions>(text.as_bytes())?.top_k.or(top_k),
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
        return Ok((form.images.into_iter().map(RawInput::Image).collect(), top_k, batched));
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
