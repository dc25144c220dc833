//! The explain request and response types, and reading a request from any of the accepted body
//! forms: JSON, a raw image with options in the query string, or multipart.

use axum::http::Uri;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::super::error::{ApiError, ProblemKind};
use super::super::input::{self, FeaturesJson, RawInput};
use super::super::offload;
use crate::audit::Receipt;
use crate::eval::{Evaluation, MetricRequest};
use crate::explain::{TargetRef, TargetSpec};
use crate::render::RenderOptions;
use crate::runtime::predict::Prediction;

/// Extra parts of the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Include {
    /// The raw attribution in the model's input space (after preprocessing), `attributions.tensor`.
    Tensor,
    /// The PNG overlay, base64, as `overlay_png`.
    Overlay,
    /// Text models: the attribution per word, as `words`.
    Words,
}

/// Response format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// JSON (the default).
    Json,
    /// The heat map over the input image (image models), the highlighted text (text models), or
    /// a chart (tabular models), PNG.
    Png,
    /// An HTML fragment of a decision's rule or counterfactuals (`anchors`, `counterfactual`),
    /// or of a text with its words highlighted (text models), for a page to embed.
    Html,
}

/// An explanation request as JSON (or as the `request` part of a multipart form, without `image`).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// Base64 PNG or JPEG, for image models. Exactly one of `image`, `features` and `text`, but
    /// for a method that makes an image from noise (`capabilities.makes_image`: activation
    /// maximisation with `start: noise`), which may send none and starts at the model's input size.
    pub image: Option<String>,
    /// Feature values, for tabular models.
    pub features: Option<FeaturesJson>,
    /// Text, for text models.
    pub text: Option<String>,
    /// A class index, a label, a list of them, or `{"top_k": k}`; default: the top-1 prediction
    /// (of the method's own start image when the request sends no input).
    pub target: Option<TargetSpec>,
    /// Segmenters: the region whose class scores the target sums (a box, a polygon or a PNG
    /// mask, in the image's pixels); default: the target class's predicted region.
    pub region: Option<crate::common::targets::Region>,
    /// The method's parameters (see each method's schema); unknown names are refused.
    #[schema(value_type = Option<Object>)]
    pub params: Option<serde_json::Value>,
    /// Seed of the random methods (SmoothGrad); drawn and echoed when absent.
    pub seed: Option<u64>,
    /// Extra parts of the response.
    pub include: Option<Vec<Include>>,
    /// Response format; `Accept: image/png` also asks for PNG.
    pub format: Option<Format>,
    /// How the PNG heat map is drawn.
    pub render: Option<RenderOptions>,
    /// Measure each explanation in the same job: metric names (`deletion`, `insertion`,
    /// `mu_fidelity`, `pixel_flipping`, `sparseness`, `complexity`) or objects with parameters.
    pub evaluate: Option<Vec<MetricRequest>>,
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

/// A token's or a word's attribution, with where it lies in the text.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TextAttribution {
    /// The token as the tokenizer writes it (`##ing`, `[CLS]`), or the word as in the text.
    pub text: String,
    /// First character in the original text (Unicode scalar values, as Python counts them).
    pub start: usize,
    /// One past the last character.
    pub end: usize,
    /// Its attribution (a word's: the sum over its tokens).
    pub value: f32,
}

/// The explanation of one target.
#[derive(Debug, Serialize, ToSchema)]
pub struct TargetExplanation {
    /// The explained class and its score (a detector's: `index` is the position of the
    /// detection's class score in a row of the scores output).
    pub target: Prediction,
    /// Detectors: the explained detection, its box in the image's pixels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detection: Option<crate::runtime::detect::DetectionAnswer>,
    /// The attribution.
    pub attributions: Attributions,
    /// Tabular models: features by decreasing |attribution|.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<FeatureAttribution>>,
    /// Text models: every token in order (special tokens included), with its attribution.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Vec<TextAttribution>>,
    /// Text models, with `include: ["words"]`: tokens merged into the words they came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub words: Option<Vec<TextAttribution>>,
    /// Integrated Gradients and DeepLIFT: sum of attributions minus (f(input) - f(baseline));
    /// LRP: sum of input relevance minus the target's score (conservation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub convergence_delta: Option<f64>,
    /// CAM methods: the layer used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<String>,
    /// With `include: ["overlay"]`: the PNG overlay, base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay_png: Option<String>,
    /// Method-specific results, as each method declares them: the schema on its explain path
    /// (`TargetExplanation.{method}`) and its `details_schema` in `GET /v1/models/{model}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
    /// The metrics `evaluate` asked for, on the map in the model's input space.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<Vec<Evaluation>>,
}

/// Work done.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExplainStats {
    /// Model rows run (forward or forward and backward).
    pub model_rows: usize,
    /// Model rows the plan expected before the run (the unit and the total of a job's progress);
    /// a method that stops early (a `tolerance` met) runs fewer.
    pub planned_rows: usize,
    /// ONNX Runtime runs (batches).
    pub model_runs: usize,
    /// Wall time of the whole request, milliseconds (also in the `Server-Timing` header as `total`).
    pub wall_ms: f64,
    /// Of that, time on the worker thread: the method's passes and its own arithmetic (`worker`).
    /// The rest is reading, decoding, queueing and drawing.
    pub worker_ms: f64,
    /// Of that, time inside ONNX Runtime runs (`model`): the floor the method stands on.
    pub model_ms: f64,
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
    pub method: String,
    /// All parameters, defaults filled in.
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    /// Seed used (random methods).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Segmenters: the region the request gave (in the image's pixels), as given: with the
    /// targets, what a replay of the answer needs to explain the same scalar.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<crate::common::targets::Region>,
    /// Text models: true when the text had more tokens than the model's `max_length` and only
    /// the first ones were explained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
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

impl ExplainRequest {
    /// The explanation options, whatever the body form.
    pub fn options(&self) -> super::ExplainOptions {
        super::ExplainOptions {
            params: self.params.clone(),
            target: self.target.clone(),
            region: self.region.clone(),
            seed: self.seed,
            include: self.include.clone(),
            render: self.render.clone(),
            evaluate: self.evaluate.clone(),
        }
    }
}

/// Input and options from any of the accepted body forms; a JSON body may send no input (for a
/// method that makes its own, [`super::own_input`]).
pub(super) async fn parse_body(
    received: input::ReceivedBody,
    uri: &Uri,
) -> Result<(Option<RawInput>, ExplainRequest), ApiError> {
    let media = received.media_type.as_str();
    if media == "application/json" {
        // JSON and base64 of a large body are CPU work: off the async threads.
        return offload::cpu(received.bytes.len(), move || {
            let mut req: ExplainRequest = input::parse_json(&received.bytes)?;
            let raw = input::at_most_one_input(req.image.take(), req.features.take(), req.text.take(), "the request")?;
            Ok((raw, req))
        })
        .await?;
    }
    if input::is_image_media_type(media) {
        let pairs: Vec<(String, String)> = input::parse_query(uri)?;
        return Ok((
            Some(RawInput::Image(received.bytes.clone())),
            request_from_query(&pairs)?,
        ));
    }
    if media == "multipart/form-data" {
        let form = input::parse_multipart(&received, &["request"]).await?;
        let req = match form.fields.iter().find(|(n, _)| n == "request") {
            Some((_, text)) => input::parse_json::<ExplainRequest>(text.as_bytes())?,
            None => ExplainRequest::default(),
        };
        if req.image.is_some() || req.features.is_some() || req.text.is_some() {
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
        return Ok((Some(RawInput::Image(image)), req));
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
