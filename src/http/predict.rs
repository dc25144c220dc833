//! `POST /v1/models/{model}/predict`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{audit_context, Caller};
use super::error::{ApiError, ProblemKind};
use super::explain::{self, ExplainResponse, Include, ValidExplain};
use super::input::{self, FeaturesJson, RawInput};
use super::pipeline::{self, Drawn, Record, Valid, Work};
use super::prepare::{self, Prepared};
use super::segments::Mask;
use super::uncertainty::PredictUncertainty;
use super::{offload, AppState};
use crate::audit::{Context, Kind, Receipt};
use crate::explain::TargetSpec;
use crate::jobs::{Condition, ExplainResult, PredictJob, PredictOutput, PredictTask};
use crate::render::RenderOptions;
use crate::runtime::predict::{Prediction, RowPrediction};
use crate::runtime::LoadedModel;
use crate::uncertainty::{Estimate, Uncertainty, ValidUncertainty};

/// Classes reported when `top_k` is not given.
pub const DEFAULT_TOP_K: usize = 5;

/// A prediction request as JSON. Give exactly one of `image`, `features`, `text` or `instances`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// Base64 PNG or JPEG (a `data:` URL prefix is allowed), for image models.
    pub image: Option<String>,
    /// Feature values, for tabular models.
    pub features: Option<FeaturesJson>,
    /// Text, for text models.
    pub text: Option<String>,
    /// Several inputs at once (at most `max_batch`), run in one batched pass.
    pub instances: Option<Vec<Instance>>,
    /// Classes to report per input (default 5, at most `max_top_k`).
    #[schema(minimum = 1)]
    pub top_k: Option<usize>,
    /// Explain the prediction too (every input, or those meeting `when`), in the same job.
    pub explain: Option<PredictExplain>,
    /// Estimate how sure the model is too (every input, or those meeting `when`), in the same job.
    pub uncertainty: Option<PredictUncertainty>,
    /// Extra parts of a segmenter's answer: `mask` (the class mask as a base64 PNG).
    pub include: Option<Vec<PredictInclude>>,
    /// `png`: a segmenter's answer is its class mask as a PNG (one input).
    pub format: Option<PredictFormat>,
    /// Record this prediction in the audit log (whatever the service's `audit` setting).
    pub audit: Option<bool>,
}

/// An explanation attached to a prediction.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictExplain {
    /// The method (`saliency`, `integrated-gradients`, `grad-cam`, ...: any explain method).
    pub method: String,
    /// The method's parameters.
    #[schema(value_type = Option<Object>)]
    pub params: Option<serde_json::Value>,
    /// Explain only predictions meeting this condition (default: all).
    pub when: Option<Condition>,
    /// Targets (default: the top-1 prediction; a detector's: `{"detection": i}`, `{"box": [...],
    /// "label": "..."}` or `{"top_k": k}` of each input's detections).
    pub target: Option<TargetSpec>,
    /// Segmenters: the region (in each input image's pixels) the targets' class scores are summed
    /// over (default: each class's predicted pixels).
    pub region: Option<crate::common::targets::Region>,
    /// Seed of random methods; drawn and echoed when absent.
    pub seed: Option<u64>,
    /// Extra parts (`tensor`, `overlay`).
    pub include: Option<Vec<Include>>,
    /// How an embedded overlay is drawn.
    pub render: Option<RenderOptions>,
    /// Measure each explanation (metric names or objects with parameters).
    pub evaluate: Option<Vec<crate::eval::MetricRequest>>,
}

impl PredictExplain {
    /// The explanation options.
    pub fn options(&self) -> explain::ExplainOptions {
        explain::ExplainOptions {
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

/// One input of a batch.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    /// Base64 PNG or JPEG.
    pub image: Option<String>,
    /// Feature values.
    pub features: Option<FeaturesJson>,
    /// Text, for text models.
    pub text: Option<String>,
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
    /// `png`: a segmenter's answer is its class mask as a PNG.
    pub format: Option<PredictFormat>,
    /// `mask`: a segmenter's JSON answer carries its class mask as a base64 PNG.
    pub include: Option<PredictInclude>,
}

/// Extra parts of a prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PredictInclude {
    /// A segmenter's class mask, base64 PNG, the original image's size.
    Mask,
}

/// What a prediction is answered as besides JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PredictFormat {
    /// JSON (the default).
    Json,
    /// A segmenter's class mask as a grayscale PNG (each pixel its class index plus one).
    Png,
}

/// Multipart options part `request` (JSON).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MultipartOptions {
    top_k: Option<usize>,
    explain: Option<PredictExplain>,
    uncertainty: Option<PredictUncertainty>,
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
    /// Raw model outputs of the single input (absent for `instances`, and for detectors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs: Option<BTreeMap<String, Vec<f64>>>,
    /// A segmenter's answer: each class's area, and its mask when asked (`include=mask`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segmentation: Option<crate::runtime::predict::SegmentationAnswer>,
    /// A regressor's answer: the value, its name and unit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regression: Option<crate::runtime::predict::RegressionAnswer>,
    /// Detectors: the single input's detections by decreasing score, boxes in its pixels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detections: Option<Vec<crate::runtime::detect::DetectionAnswer>>,
    /// The explanation of the single input, when asked and `when` held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<ExplainResponse>,
    /// How sure the model is about the single input, when asked and `when` held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncertainty: Option<Uncertainty>,
    /// Text models: true when the single text had more tokens than `max_length` and was cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
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
    /// How sure the model is about it, when asked and `when` held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncertainty: Option<Uncertainty>,
    /// Text models: true when the text had more tokens than `max_length` and was cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
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
        (inline(super::openapi::Binary) = "image/png"),
        (inline(super::openapi::Binary) = "image/jpeg"),
        (Object = "multipart/form-data"),
    )),
    responses(
        (status = 200, body = PredictResponse, description = "the prediction, with what was attached to it"),
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
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let model = state.model(&model_name)?;
    state.refuse_when_full()?;
    let received = input::receive(&state.config, &headers, body).await?;
    // The query's options serve raw image bodies, but a malformed one is refused whatever the body
    // (`?top_k=null` beside a JSON body was silently ignored).
    let query: PredictQuery = input::parse_query(&uri)?;
    let mut parsed = parse_predict_body(received, &uri).await?;
    parsed.format = query.format.or(parsed.format);
    parsed.include_mask |= query.include == Some(PredictInclude::Mask);
    let valid = validate(&state, model, parsed, audit_context(&headers, caller)?).await?;
    Ok(pipeline::answer(&state, valid, started).await?.into_response())
}

/// Checks a request whole before a queue slot is taken: the counts, the attached explanation and
/// uncertainty against the model and the limits; gathers the audit evidence it needs.
async fn validate(
    state: &AppState,
    model: Arc<LoadedModel>,
    parsed: ParsedPredict,
    ctx: Context,
) -> Result<Valid<Predicting>, ApiError> {
    let top_k = parsed.top_k.unwrap_or(DEFAULT_TOP_K);
    let inputs = parsed.inputs.len();
    check_counts(state, top_k, inputs)?;
    let png = parsed.format == Some(PredictFormat::Png);
    if (png || parsed.include_mask) && model.spec.segmentation.is_none() {
        return Err(ApiError::new(
            ProblemKind::InvalidRequest,
            format!(
                "model `{}` is not a segmenter: it has no mask to answer (format=png, include=mask)",
                model.name
            ),
        ));
    }
    if png && (parsed.batched || parsed.explain.is_some() || parsed.uncertainty.is_some()) {
        return Err(ApiError::new(
            ProblemKind::InvalidRequest,
            "format=png answers one image's mask: no `instances`, `explain` or `uncertainty`",
        ));
    }
    let explain = match &parsed.explain {
        Some(e) => {
            let method = state.method(&e.method)?;
            let valid = explain::validate(state, &model, method.as_ref(), e.options(), inputs)?;
            Some((valid, e.when.clone().unwrap_or_default()))
        }
        None => None,
    };
    if let Some(region) = parsed.uncertainty.as_ref().and_then(|u| u.region.as_ref()) {
        region.check(&model).map_err(ApiError::from)?;
    }
    let uncertainty = match &parsed.uncertainty {
        Some(u) => Some((
            super::uncertainty::validate(state, &model, u.options(), inputs)?,
            u.when.clone().unwrap_or_default(),
        )),
        None => None,
    };
    // Attached rationale is recorded as explanations are.
    let kind = match (&explain, &uncertainty) {
        (None, None) => Kind::Prediction,
        (Some(_), _) => Kind::Explanation,
        (None, Some(_)) => Kind::Uncertainty,
    };
    let audit = pipeline::audit(state, kind, parsed.audit, &model, &parsed.inputs, ctx).await?;
    let work = Predicting {
        top_k,
        mask: if png {
            Mask::Png
        } else if parsed.include_mask {
            Mask::Included
        } else {
            Mask::Areas
        },
        batched: parsed.batched,
        explain,
        uncertainty_region: parsed.uncertainty.as_ref().and_then(|u| u.region.clone()),
        uncertainty,
        max_map_pixels: state.config.max_map_pixels,
    };
    Ok(Valid {
        model,
        inputs: parsed.inputs,
        work,
        audit,
    })
}

/// `top_k` and the number of inputs within their limits.
pub(super) fn check_counts(state: &AppState, top_k: usize, inputs: usize) -> Result<(), ApiError> {
    let bad = |m: String| ApiError::new(ProblemKind::InvalidRequest, m);
    let (max_top_k, max_batch) = (state.config.max_top_k, state.config.max_batch);
    if top_k == 0 || top_k > max_top_k {
        return Err(bad(format!("top_k must be between 1 and {max_top_k}")));
    }
    if inputs == 0 {
        return Err(bad("give an `image`, `features`, or `instances`".into()));
    }
    if inputs > max_batch {
        return Err(bad(format!(
            "{inputs} instances; at most {max_batch} per request (max_batch)"
        )));
    }
    Ok(())
}

/// A prediction, with what is attached to it (an explanation, an uncertainty estimate, each for
/// the inputs meeting its condition), in one job.
struct Predicting {
    top_k: usize,
    mask: Mask,
    batched: bool,
    explain: Option<(ValidExplain, Condition)>,
    uncertainty: Option<(ValidUncertainty, Condition)>,
    /// A segmenter's region for the uncertainty estimate, in each image's pixels.
    uncertainty_region: Option<crate::common::targets::Region>,
    max_map_pixels: u64,
}

impl Work for Predicting {
    type Task = PredictJob;
    type Body = PredictResponse;
    // Recorded as a prediction whatever is attached (it is recorded with it).
    const RECORD: Record = Record::Prediction(Kind::Prediction);

    fn task(&mut self, model: &Arc<LoadedModel>, prepared: &[Prepared]) -> Result<PredictJob, ApiError> {
        let explain = match &self.explain {
            Some((valid, when)) => Some(valid.attach(when.clone(), prepared)?),
            None => None,
        };
        let mut job = job(model, prepared, self.top_k, explain, self.uncertainty.clone());
        job.regions = super::uncertainty::regions_on_inputs(model, self.uncertainty_region.as_ref(), prepared)?;
        Ok(job)
    }

    fn drawing_size(&self, prepared: &[Prepared], _: &PredictOutput) -> usize {
        let pictures = self
            .explain
            .as_ref()
            .is_some_and(|(v, _)| v.include.contains(&Include::Overlay));
        prepare::drawing_size(prepared, self.explain.is_some() as usize, pictures)
    }

    /// The response: maps drawn back onto the images, one result per input.
    fn draw(
        self,
        model: &LoadedModel,
        prepared: Vec<Prepared>,
        output: PredictOutput,
        started: Instant,
    ) -> Result<Drawn<PredictResponse>, ApiError> {
        let max_map_pixels = self.max_map_pixels;
        let explain = self.explain.map(|(valid, _)| valid);
        let setup = self.uncertainty.map(|(valid, _)| valid.setup());
        let explanation = |result: Option<ExplainResult>, prep: &Prepared| {
            let (valid, result) = explain.as_ref().zip(result)?;
            let (list, _) = explain::explanations(valid, &result, prep, false, max_map_pixels);
            Some(explain::explain_body(valid, list, &result, started))
        };
        let uncertainty = |estimate: Option<Estimate>, prep: &Prepared| {
            let mut estimate = estimate?;
            super::uncertainty::onto_image(&mut estimate, model, prep, false, max_map_pixels);
            Some(Uncertainty {
                setup: setup.clone()?,
                estimate,
            })
        };
        let mut picture = None;
        let mut rows = output.rows;
        for (row, prep) in rows.iter_mut().zip(&prepared) {
            let Some(map) = row.class_map.take() else { continue };
            let Some(geometry) = prep.geometry else { continue };
            let answer = super::segments::answer(model, &map, &geometry, self.mask);
            if self.mask == Mask::Png {
                picture = answer.1.map(super::pipeline::Picture::Png);
            }
            row.segmentation = Some(answer.0);
        }
        let mut instances = rows
            .into_iter()
            .zip(output.explained)
            .zip(output.estimates)
            .zip(&prepared)
            .map(|(((prediction, result), estimate), prep)| InstanceResult {
                prediction: in_original_pixels(model, prediction, prep),
                explanation: explanation(result, prep),
                uncertainty: uncertainty(estimate, prep),
                truncated: prep.text.as_ref().map(|t| t.truncated),
            });
        let mut response = PredictResponse {
            model: model.name.clone(),
            model_sha256: model.sha256.clone(),
            predictions: None,
            outputs: None,
            segmentation: None,
            regression: None,
            detections: None,
            explanation: None,
            uncertainty: None,
            truncated: None,
            instances: None,
            audit_record: None,
        };
        if self.batched {
            response.instances = Some(instances.collect());
        } else if let Some(one) = instances.next() {
            response.segmentation = one.prediction.segmentation;
            response.regression = one.prediction.regression;
            response.predictions = Some(one.prediction.predictions);
            response.outputs = (!one.prediction.outputs.is_empty()).then_some(one.prediction.outputs);
            response.detections = one.prediction.detections;
            response.explanation = one.explanation;
            response.uncertainty = one.uncertainty;
            response.truncated = one.truncated;
        }
        Ok(Drawn {
            body: response,
            picture,
        })
    }

    fn receipt(body: &mut PredictResponse, receipt: Receipt) {
        body.audit_record = Some(receipt);
    }
}

/// A detector's row answered: boxes mapped from the model's input onto the original image, and no
/// raw outputs (a YOLO head is most of a million numbers). Other models' rows as they are.
pub(super) fn in_original_pixels(model: &LoadedModel, mut row: RowPrediction, prep: &Prepared) -> RowPrediction {
    let (Some(found), Some(image)) = (row.detections.as_mut(), model.spec.image.as_ref()) else {
        return row;
    };
    if let Some(g) = &prep.geometry {
        for d in found.iter_mut() {
            d.bbox = g.box_to_original(d.bbox, image.width, image.height);
        }
    }
    row.outputs.clear();
    row
}

/// The prediction job of prepared inputs, with what is attached to it (predict's, and the other
/// protocols' predictions).
pub(super) fn job(
    model: &Arc<LoadedModel>,
    prepared: &[Prepared],
    top_k: usize,
    explain: Option<crate::jobs::AttachedExplain>,
    uncertainty: Option<(ValidUncertainty, Condition)>,
) -> PredictJob {
    PredictJob {
        predict: PredictTask {
            model: model.clone(),
            inputs: prepared.iter().map(|p| p.tensor.clone()).collect(),
            top_k,
        },
        explain,
        uncertainty,
        texts: prepared.iter().map(|p| p.text.clone()).collect(),
        regions: Vec::new(),
    }
}

/// A predict body, parsed.
struct ParsedPredict {
    format: Option<PredictFormat>,
    include_mask: bool,
    inputs: Vec<RawInput>,
    top_k: Option<usize>,
    batched: bool,
    explain: Option<PredictExplain>,
    uncertainty: Option<PredictUncertainty>,
    audit: bool,
}

/// Reads inputs and options from any of the accepted body forms.
async fn parse_predict_body(received: input::ReceivedBody, uri: &Uri) -> Result<ParsedPredict, ApiError> {
    let media = received.media_type.as_str();
    if media == "application/json" {
        // JSON and base64 of a large body are CPU work: off the async threads.
        return offload::cpu(received.bytes.len(), move || parse_predict_json(&received.bytes)).await?;
    }
    parse_predict_other(&received, uri).await
}

/// A JSON predict body.
fn parse_predict_json(bytes: &[u8]) -> Result<ParsedPredict, ApiError> {
    let req: PredictRequest = input::parse_json(bytes)?;
    let (inputs, batched) = json_inputs(req.image, req.features, req.text, req.instances)?;
    Ok(ParsedPredict {
        format: req.format,
        include_mask: req.include.unwrap_or_default().contains(&PredictInclude::Mask),
        inputs,
        top_k: req.top_k,
        batched,
        explain: req.explain,
        uncertainty: req.uncertainty,
        audit: req.audit.unwrap_or(false),
    })
}

/// The inputs of a JSON body in the predict forms: exactly one of `image`, `features` or
/// `instances` (then batched).
pub(super) fn json_inputs(
    image: Option<String>,
    features: Option<FeaturesJson>,
    text: Option<String>,
    instances: Option<Vec<Instance>>,
) -> Result<(Vec<RawInput>, bool), ApiError> {
    let given = [image.is_some(), features.is_some(), text.is_some(), instances.is_some()];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(ApiError::new(
            ProblemKind::InvalidRequest,
            "give exactly one of `image`, `features`, `text`, `instances`",
        ));
    }
    let one = |image, features, text| input::one_input(image, features, text, "each instance");
    match instances {
        Some(list) => {
            let inputs = list
                .into_iter()
                .map(|i| one(i.image, i.features, i.text))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((inputs, true))
        }
        None => Ok((vec![one(image, features, text)?], false)),
    }
}

/// The images of a multipart form in the predict forms (batched when several).
pub(super) fn form_inputs(images: Vec<axum::body::Bytes>) -> Result<(Vec<RawInput>, bool), ApiError> {
    if images.is_empty() {
        return Err(ApiError::new(
            ProblemKind::InvalidRequest,
            "the multipart form has no `image` part",
        ));
    }
    let batched = images.len() > 1;
    Ok((images.into_iter().map(RawInput::Image).collect(), batched))
}

/// The problem for a body in none of the predict forms.
pub(super) fn unsupported_media(media: &str) -> ApiError {
    ApiError::new(
        ProblemKind::UnsupportedMediaType,
        format!(
            "content type `{}` is not accepted; send application/json, image/png, image/jpeg or multipart/form-data",
            if media.is_empty() { "(none)" } else { media }
        ),
    )
}

/// A raw-image or multipart predict body.
async fn parse_predict_other(received: &input::ReceivedBody, uri: &Uri) -> Result<ParsedPredict, ApiError> {
    let media = received.media_type.as_str();
    if input::is_image_media_type(media) {
        let q: PredictQuery = input::parse_query(uri)?;
        return Ok(ParsedPredict {
            format: None,
            include_mask: false,
            inputs: vec![RawInput::Image(received.bytes.clone())],
            top_k: q.top_k,
            batched: false,
            explain: None,
            uncertainty: None,
            audit: q.audit.unwrap_or(false),
        });
    }
    if media == "multipart/form-data" {
        let form = input::parse_multipart(received, &["request", "top_k"]).await?;
        let mut top_k = None;
        let mut explain = None;
        let mut uncertainty = None;
        let mut audit = false;
        for (name, text) in &form.fields {
            match name.as_str() {
                "request" => {
                    let options = input::parse_json::<MultipartOptions>(text.as_bytes())?;
                    top_k = options.top_k.or(top_k);
                    explain = options.explain;
                    uncertainty = options.uncertainty;
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
        let (inputs, batched) = form_inputs(form.images)?;
        return Ok(ParsedPredict {
            format: None,
            include_mask: false,
            inputs,
            top_k,
            batched,
            explain,
            uncertainty,
            audit,
        });
    }
    Err(unsupported_media(media))
}
