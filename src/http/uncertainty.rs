//! `POST /v1/models/{model}/uncertainty`, and the `uncertainty` a prediction may ask for.

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
use super::explain::Format;
use super::input::{self, FeaturesJson, RawInput};
use super::pipeline::{self, Drawn, Picture, Record, Valid, Work};
use super::predict::{form_inputs, json_inputs, unsupported_media, Instance};
use super::prepare::{self, Prepared};
use super::{offload, AppState};
use crate::audit::{Kind, Receipt};
use crate::common::targets::RegionMask;
use crate::explain::Limits;
use crate::jobs::{Condition, UncertaintyTask};
use crate::render::{self, RenderOptions};
use crate::runtime::LoadedModel;
use crate::uncertainty::{
    self, Estimate, PlanContext, Setup, Source, SpreadMethod, Uncertainty, UncertaintyInclude, UncertaintyOptions,
    UncertaintyParams, ValidUncertainty,
};

/// An uncertainty request as JSON (or the `request` part of a multipart form, without images).
/// Give exactly one of `image`, `features` or `instances`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UncertaintyRequest {
    /// Base64 PNG or JPEG (a `data:` URL prefix is allowed), for image models.
    pub image: Option<String>,
    /// Feature values, for tabular models.
    pub features: Option<FeaturesJson>,
    /// Text, for text models.
    pub text: Option<String>,
    /// Several inputs at once (at most `max_batch`).
    pub instances: Option<Vec<Instance>>,
    /// Where the samples come from: `mc-dropout` (default), `tta` or `ensemble`.
    pub method: Option<Source>,
    /// The source's parameters.
    pub params: Option<UncertaintyParams>,
    /// Seed of the dropout masks; drawn and echoed when absent.
    pub seed: Option<u64>,
    /// Extra parts (`samples`: every sample's probabilities).
    pub include: Option<Vec<UncertaintyInclude>>,
    /// `png`: the explanation's spread (`params.explain_method`) as a heat map over the image;
    /// `Accept: image/png` also asks for it.
    pub format: Option<Format>,
    /// Record this answer in the audit log (whatever the service's `audit` setting).
    pub audit: Option<bool>,
    /// Segmenters: a region of the image (a box, a polygon or a PNG mask, in the image's pixels)
    /// whose own figures the answer adds under `region`.
    pub region: Option<crate::common::targets::Region>,
}

/// How sure the model is, estimated with a prediction (in the same job).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictUncertainty {
    /// Where the samples come from: `mc-dropout` (default), `tta` or `ensemble`.
    pub method: Option<Source>,
    /// The source's parameters.
    pub params: Option<UncertaintyParams>,
    /// Estimate only for predictions meeting this condition (default: all).
    pub when: Option<Condition>,
    /// Seed of the dropout masks; drawn and echoed when absent.
    pub seed: Option<u64>,
    /// Extra parts (`samples`).
    pub include: Option<Vec<UncertaintyInclude>>,
    /// Segmenters: a region (in each input image's pixels) whose own figures the estimate adds.
    pub region: Option<crate::common::targets::Region>,
}

impl PredictUncertainty {
    /// The estimate's options.
    pub fn options(&self) -> UncertaintyOptions {
        UncertaintyOptions {
            method: self.method,
            params: self.params.clone(),
            seed: self.seed,
            include: self.include.clone(),
        }
    }
}

/// Options in the query string, for raw image bodies.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UncertaintyQuery {
    /// `mc-dropout` (default), `tta` or `ensemble`.
    pub method: Option<Source>,
    /// mc-dropout samples (default 20).
    pub samples: Option<usize>,
    /// mc-dropout rate.
    pub p: Option<f32>,
    /// Seed of the masks.
    pub seed: Option<u64>,
    /// mc-dropout: the gradient method whose spread over the samples is measured.
    pub explain_method: Option<SpreadMethod>,
    /// `png`: the explanation's spread as a heat map over the image.
    pub format: Option<Format>,
    /// Record this answer in the audit log.
    pub audit: Option<bool>,
}

/// The answer: the same shape as a prediction's, without the predictions.
#[derive(Debug, Serialize, ToSchema)]
pub struct UncertaintyResponse {
    /// Model name.
    pub model: String,
    /// sha256 of the model file that answered.
    pub model_sha256: String,
    /// The estimate of the single input (absent for `instances`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncertainty: Option<Uncertainty>,
    /// One estimate per input, in order, when the request used `instances`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<Vec<UncertaintyInstance>>,
    /// Milliseconds from request to answer.
    pub took_ms: f64,
    /// The audit record written for this answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_record: Option<Receipt>,
}

/// One input's estimate in a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct UncertaintyInstance {
    /// The estimate.
    pub uncertainty: Uncertainty,
}

/// Validates an uncertainty request for `inputs` inputs of `model` (400 for a parameter wrong on
/// its own, 422 for one that does not fit the model).
pub fn validate(
    state: &AppState,
    model: &Arc<LoadedModel>,
    options: UncertaintyOptions,
    inputs: usize,
) -> Result<ValidUncertainty, ApiError> {
    let cx = PlanContext {
        gradients: &state.gradients,
        registry: &state.registry,
        limits: Limits::from_config(&state.config),
    };
    Ok(uncertainty::validate(model, options, &cx, inputs)?)
}

/// Estimates how sure the model is about an input: MC dropout, test-time augmentation or an
/// ensemble.
///
/// Each input runs several times (dropout masks drawn from the seed, augmented views, or ensemble
/// members) in one batched pass; the answer gives the mean class probabilities, their standard
/// deviation, predictive and expected entropy, mutual information (BALD) and variation ratio.
/// Bodies as for predict: JSON, a raw image (options in the query string), or multipart (`image`
/// parts and a JSON part `request`).
#[utoipa::path(post, path = "/v1/models/{model}/uncertainty", tag = "models",
    params(("model" = String, Path, description = "model name", example = "fashion-cnn"), UncertaintyQuery),
    request_body(content(
        (UncertaintyRequest = "application/json"),
        (inline(super::openapi::Binary) = "image/png"),
        (inline(super::openapi::Binary) = "image/jpeg"),
        (Object = "multipart/form-data"),
    )),
    responses(
        (status = 200, description = "the estimate as JSON; or, as PNG, the explanation's spread (standard deviation \
                                      over the samples) as a heat map over the image",
            content((UncertaintyResponse = "application/json"), (inline(super::openapi::Binary) = "image/png"))),
        (status = 400, body = super::error::Problem, content_type = "application/problem+json", description = "malformed JSON, bad base64, corrupt image, unknown field, parameter out of range"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "unknown model"),
        (status = 413, body = super::error::Problem, content_type = "application/problem+json", description = "body or image too large"),
        (status = 415, body = super::error::Problem, content_type = "application/problem+json", description = "content type not accepted"),
        (status = 422, body = super::error::Problem, content_type = "application/problem+json", description = "the source does not fit the model (no place for masks, no ensemble, not an image)"),
        (status = 503, body = super::error::Problem, content_type = "application/problem+json", description = "at capacity; see Retry-After"),
        (status = 504, body = super::error::Problem, content_type = "application/problem+json", description = "deadline passed"),
    ))]
pub async fn uncertainty(
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
    let parsed = parse_body(received, &uri).await?;
    super::predict::check_counts(&state, 1, parsed.inputs.len())?;
    if parsed.format == Some(Format::Html) {
        return Err(ApiError::new(
            ProblemKind::InvalidRequest,
            "format=html draws a decision's rule or counterfactuals (explain with anchors or counterfactual); uncertainty answers JSON or PNG",
        ));
    }
    let wants_png = match parsed.format {
        Some(f) => f == Format::Png,
        None => super::explain::accepts_png(&headers),
    };
    let spread = parsed.options.params.as_ref().and_then(|p| p.explain_method).is_some();
    if wants_png && (!spread || parsed.batched || model.spec.image.is_none()) {
        return Err(ApiError::new(
            ProblemKind::InvalidRequest,
            "a PNG draws one image's explanation spread: give one image and params.explain_method",
        ));
    }
    if let Some(region) = &parsed.region {
        region.check(&model).map_err(ApiError::from)?;
    }
    let valid = validate(&state, &model, parsed.options, parsed.inputs.len())?;
    let ctx = audit_context(&headers, caller)?;
    let audit = pipeline::audit(&state, Kind::Uncertainty, parsed.audit, &model, &parsed.inputs, ctx).await?;
    let work = Estimating {
        region: parsed.region,
        setup: valid.setup(),
        valid: Some(valid),
        batched: parsed.batched,
        wants_png,
        spread,
        max_map_pixels: state.config.max_map_pixels,
    };
    let valid = Valid {
        model,
        inputs: parsed.inputs,
        work,
        audit,
    };
    Ok(pipeline::answer(&state, valid, started).await?.into_response())
}

/// An uncertainty estimate of each input, validated; answered as JSON or the spread's PNG.
struct Estimating {
    /// Taken by the task.
    valid: Option<ValidUncertainty>,
    /// How the estimate is made, for the answer.
    setup: Setup,
    /// The caller's region (segmenters), in each image's pixels.
    region: Option<crate::common::targets::Region>,
    batched: bool,
    wants_png: bool,
    spread: bool,
    max_map_pixels: u64,
}

impl Work for Estimating {
    type Task = UncertaintyTask;
    type Body = UncertaintyResponse;
    const RECORD: Record = Record::Prediction(Kind::Uncertainty);

    fn task(&mut self, model: &Arc<LoadedModel>, prepared: &[Prepared]) -> Result<UncertaintyTask, ApiError> {
        let regions = regions_on_inputs(model, self.region.as_ref(), prepared)?;
        Ok(UncertaintyTask {
            regions,
            valid: self
                .valid
                .take()
                .ok_or_else(|| ApiError::internal("uncertainty task made twice"))?,
            input: prepare::batch(prepared)?,
        })
    }

    fn drawing_size(&self, prepared: &[Prepared], _: &Vec<Estimate>) -> usize {
        prepare::drawing_size(prepared, self.spread as usize * 2, self.wants_png)
    }

    /// The answer, with explanation spreads drawn back onto the original images (as explanation
    /// maps are), and the first one's standard deviation as a PNG heat map when asked.
    fn draw(
        self,
        model: &LoadedModel,
        prepared: Vec<Prepared>,
        estimates: Vec<Estimate>,
        started: Instant,
    ) -> Result<Drawn<UncertaintyResponse>, ApiError> {
        let setup = self.setup;
        let mut picture = None;
        let mut answers = Vec::with_capacity(estimates.len());
        for (mut estimate, prep) in estimates.into_iter().zip(&prepared) {
            let panel = onto_image(
                &mut estimate,
                model,
                prep,
                self.wants_png && picture.is_none(),
                self.max_map_pixels,
            );
            if let Some(panel) = panel {
                picture = Some(Picture::Png(render::panels_png(&[panel])));
            }
            answers.push(Uncertainty {
                setup: setup.clone(),
                estimate,
            });
        }
        let mut response = UncertaintyResponse {
            model: model.name.clone(),
            model_sha256: model.sha256.clone(),
            uncertainty: None,
            instances: None,
            took_ms: started.elapsed().as_secs_f64() * 1e3,
            audit_record: None,
        };
        if self.batched {
            let list = answers
                .into_iter()
                .map(|uncertainty| UncertaintyInstance { uncertainty });
            response.instances = Some(list.collect());
        } else {
            response.uncertainty = answers.into_iter().next();
        }
        Ok(Drawn {
            body: response,
            picture,
        })
    }

    fn receipt(body: &mut UncertaintyResponse, receipt: Receipt) {
        body.audit_record = Some(receipt);
    }
}

/// The caller's region on each input's grid (none asked: no regions).
pub(super) fn regions_on_inputs(
    model: &LoadedModel,
    region: Option<&crate::common::targets::Region>,
    prepared: &[Prepared],
) -> Result<Vec<Option<Arc<RegionMask>>>, ApiError> {
    match region {
        Some(r) => prepared
            .iter()
            .map(|p| super::segments::region_on_input(model, r, p).map(|m| Some(Arc::new(m))))
            .collect(),
        None => Ok(Vec::new()),
    }
}

/// Brings an estimate onto its original image: a detector's boxes into the image's pixels (as
/// predict's), the explanation spread drawn back as explanation maps are; returns the standard
/// deviation's heat map when `panel`.
pub(super) fn onto_image(
    estimate: &mut Estimate,
    model: &LoadedModel,
    prep: &prepare::Prepared,
    panel: bool,
    max_map_pixels: u64,
) -> Option<image::RgbImage> {
    if let (Some(found), Some(g), Some(image)) = (estimate.detection.as_mut(), &prep.geometry, &model.spec.image) {
        for d in &mut found.detections {
            d.bbox = g.box_to_original(d.bbox, image.width, image.height);
        }
    }
    let (Some(spread), Some(geometry), Some(original)) =
        (estimate.explanation_spread.as_mut(), &prep.geometry, &prep.original)
    else {
        return None;
    };
    let size = (spread.shape[1], spread.shape[0]);
    let options = RenderOptions::default();
    let on = |values: &[f32], panel: Option<&RenderOptions>| {
        render::map_on_image(values, size, geometry, original, panel, max_map_pixels)
    };
    let mean = on(&spread.mean, None);
    let std = on(&spread.std, panel.then_some(&options));
    spread.shape = vec![std.height as usize, std.width as usize];
    spread.mean = mean.values;
    spread.std = std.values;
    std.panel
}

/// An uncertainty body, parsed.
struct Parsed {
    inputs: Vec<RawInput>,
    batched: bool,
    options: UncertaintyOptions,
    format: Option<Format>,
    audit: bool,
    region: Option<crate::common::targets::Region>,
}

impl Parsed {
    fn from_request(req: UncertaintyRequest, inputs: Vec<RawInput>, batched: bool) -> Self {
        Parsed {
            inputs,
            batched,
            options: UncertaintyOptions {
                method: req.method,
                params: req.params,
                seed: req.seed,
                include: req.include,
            },
            format: req.format,
            audit: req.audit.unwrap_or(false),
            region: req.region,
        }
    }
}

/// Reads inputs and options from any of the accepted body forms.
async fn parse_body(received: input::ReceivedBody, uri: &Uri) -> Result<Parsed, ApiError> {
    let media = received.media_type.clone();
    // The query is checked whatever the body (its options apply to image bodies); a seed is an
    // int64, as the document says.
    let q: UncertaintyQuery = input::parse_query(uri)?;
    if q.seed.is_some_and(|s| s > i64::MAX as u64) {
        return Err(ApiError::new(
            ProblemKind::InvalidRequest,
            format!("query string: seed must be at most {}", i64::MAX),
        ));
    }
    if media == "application/json" {
        return offload::cpu(received.bytes.len(), move || parse_json(&received.bytes)).await?;
    }
    if input::is_image_media_type(&media) {
        let given = q.samples.is_some() || q.p.is_some() || q.explain_method.is_some();
        let params = given.then(|| UncertaintyParams {
            samples: q.samples,
            p: q.p,
            explain_method: q.explain_method,
            ..Default::default()
        });
        let req = UncertaintyRequest {
            method: q.method,
            params,
            seed: q.seed,
            format: q.format,
            audit: q.audit,
            ..Default::default()
        };
        return Ok(Parsed::from_request(
            req,
            vec![RawInput::Image(received.bytes.clone())],
            false,
        ));
    }
    if media == "multipart/form-data" {
        let form = input::parse_multipart(&received, &["request"]).await?;
        let req = match form.fields.first() {
            Some((_, text)) => input::parse_json::<UncertaintyRequest>(text.as_bytes())?,
            None => UncertaintyRequest::default(),
        };
        if req.image.is_some() || req.features.is_some() || req.text.is_some() || req.instances.is_some() {
            return Err(ApiError::new(
                ProblemKind::InvalidRequest,
                "in a multipart form, inputs come as `image` parts, not in `request`",
            ));
        }
        let (inputs, batched) = form_inputs(form.images)?;
        return Ok(Parsed::from_request(req, inputs, batched));
    }
    Err(unsupported_media(&media))
}

fn parse_json(bytes: &[u8]) -> Result<Parsed, ApiError> {
    let mut req: UncertaintyRequest = input::parse_json(bytes)?;
    let (inputs, batched) = json_inputs(
        req.image.take(),
        req.features.take(),
        req.text.take(),
        req.instances.take(),
    )?;
    Ok(Parsed::from_request(req, inputs, batched))
}
