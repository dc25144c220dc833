//! `POST /v1/models/{model}/explain/{method}`: reads the body (within its deadline, before a queue
//! slot is taken), validates the whole request once into a [`ValidExplain`], runs it on a worker,
//! and answers JSON or a PNG.

mod answer;
mod request;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, Uri};
use axum::response::Response;

pub use answer::{explain_body, explanations};
#[cfg(test)]
pub(super) use request::{Attributions, ExplainStats, TargetExplanation};
pub use request::{ExplainRequest, ExplainResponse, Format, Include};

use answer::build_answer;

use super::auth::{audit_context, Caller};
use super::error::ApiError;
use super::input;
use super::pipeline::{self, Drawn, Record, Valid, Work};
use super::prepare::{self, Prepared};
use super::AppState;
use crate::audit::{Kind, Receipt};
use crate::common::targets::RegionMask;
use crate::explain::method::{check_applicable, check_bytes, AnyMethod, PlanContext};
use crate::explain::{targets, ExplainJob, Limits, TargetSpec, ValidParams};
use crate::jobs::{AttachedExplain, Condition, ExplainResult, ExplainTask};
use crate::render::RenderOptions;
use crate::runtime::LoadedModel;

/// Explains a prediction with one method: `POST /v1/models/{model}/explain/{method}`, one path per
/// method (the OpenAPI document lists each with its parameters).
///
/// Takes the same input forms as predict: a raw image body (options and method parameters in the
/// query string, e.g. `?target=3&steps=32&format=png`), multipart with `image` and an optional JSON
/// part `request`, or JSON. Answers JSON; an HTML fragment of the decision with `format=html`
/// (anchors, counterfactual); or the heat map over the image as PNG with
/// `Accept: image/png` or `format=png` (one panel per target, side by side).
#[utoipa::path(post, path = "/v1/models/{model}/explain/{method}", tag = "explanations",
    params(
        ("model" = String, Path, description = "model name", example = "fashion-cnn"),
        ("method" = String, Path, description = "the method"),
    ),
    request_body(content(
        (ExplainRequest = "application/json"),
        (inline(super::openapi::Binary) = "image/png"),
        (inline(super::openapi::Binary) = "image/jpeg"),
        (Object = "multipart/form-data"),
    )),
    responses(
        // One 200 with each content type: utoipa keeps only the last of several `status = 200`.
        (status = 200, description = "the explanation: JSON (the default); the heat map over the image, a tabular \
                                      model's bar chart or a decision as text, as PNG (`format=png` or \
                                      `Accept: image/png`); or an HTML fragment of a decision's rule or \
                                      counterfactuals or of a text's highlighted words (`format=html`)",
            content((ExplainResponse = "application/json"), (inline(super::openapi::Binary) = "image/png"), (String = "text/html"))),
        (status = 400, body = super::error::Problem, content_type = "application/problem+json", description = "malformed JSON, unknown or out-of-range parameter, corrupt image"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "unknown model"),
        (status = 408, body = super::error::Problem, content_type = "application/problem+json", description = "the body did not arrive within body_read_timeout_ms"),
        (status = 413, body = super::error::Problem, content_type = "application/problem+json", description = "body or image too large"),
        (status = 415, body = super::error::Problem, content_type = "application/problem+json", description = "content type not accepted"),
        (status = 422, body = super::error::Problem, content_type = "application/problem+json", description = "the request does not fit the model (layer, target, budget); model not differentiable"),
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
    let model = state.model(&model_name)?;
    let method = state.method(&method_name)?;
    // A full service refuses at once, unread; a slot is taken only once the body is in and valid.
    state.refuse_when_full()?;
    let received = input::receive(&state.config, &headers, body).await?;
    let (raw, request) = request::parse_body(received, &uri).await?;
    let valid = validate(&state, &model, method.as_ref(), request.options(), 1)?;
    let raw = own_input(raw, &valid, "the request")?;
    let answer = AnswerAs::asked(&valid, request.format, &headers)?;
    let asked = request.audit.unwrap_or(false);
    let inputs = vec![raw];
    let ctx = audit_context(&headers, caller)?;
    let audit = pipeline::audit(&state, Kind::Explanation, asked, &model, &inputs, ctx).await?;
    let work = Explaining::new(&state, valid, answer);
    let valid = Valid {
        model,
        inputs,
        work,
        audit,
    };
    Ok(answer::respond(pipeline::answer(&state, valid, started).await?))
}

/// The request's input, or, when it sent none, the one the method starts from (activation
/// maximisation from noise: its mid-grey start image at the model's input size); `what` names
/// the request in the problem when neither is there.
pub(super) fn own_input(
    raw: Option<input::RawInput>,
    valid: &ValidExplain,
    what: &str,
) -> Result<input::RawInput, ApiError> {
    match raw {
        Some(raw) => Ok(raw),
        None => valid
            .params
            .own_input(&valid.model)
            .map(input::RawInput::Row)
            .ok_or_else(|| input::needs_one_input(what)),
    }
}

/// What an explanation is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerAs {
    /// JSON (the default; always for jobs and attached explanations).
    Json,
    /// The heat map, chart or text panel as PNG.
    Png,
    /// An HTML fragment of a decision or a highlighted text.
    Html,
}

impl AnswerAs {
    /// What the request asks for (`format`, else an `Accept` preferring PNG), where the method and
    /// the model can draw it: reference rows have no picture (an explicit `format=png` is refused,
    /// an `Accept` gets JSON), HTML needs a decision or a text.
    fn asked(valid: &ValidExplain, format: Option<Format>, headers: &HeaderMap) -> Result<Self, ApiError> {
        let method = valid.params.method();
        let rows_only = valid.params.capabilities().examples;
        if format == Some(Format::Png) && rows_only {
            return Err(crate::explain::Invalid::Request(format!(
                "{method} answers reference rows, as JSON; it draws no picture (format=png)"
            ))
            .into());
        }
        if format == Some(Format::Html) && !valid.params.capabilities().decision && valid.model.spec.text.is_none() {
            return Err(crate::explain::Invalid::Request(format!(
                "format=html draws a decision's rule or counterfactuals (anchors, counterfactual) or a text model's \
                 highlighted text; {method} has no decision and the model takes no text"
            ))
            .into());
        }
        Ok(match format {
            Some(Format::Html) => AnswerAs::Html,
            Some(Format::Png) => AnswerAs::Png,
            None if !rows_only && accepts_png(headers) => AnswerAs::Png,
            _ => AnswerAs::Json,
        })
    }
}

/// One explanation run and answered: the explain handler's work, and a job's.
pub(super) struct Explaining {
    /// The request.
    pub valid: ValidExplain,
    answer: AnswerAs,
    max_map_pixels: u64,
}

impl Explaining {
    /// `valid`, answered as `answer`.
    pub fn new(state: &AppState, valid: ValidExplain, answer: AnswerAs) -> Self {
        Self {
            valid,
            answer,
            max_map_pixels: state.config.max_map_pixels,
        }
    }
}

impl Work for Explaining {
    type Task = ExplainTask;
    type Body = ExplainResponse;
    const RECORD: Record = Record::Explanation;

    fn task(&mut self, _: &Arc<LoadedModel>, prepared: &[Prepared]) -> Result<ExplainTask, ApiError> {
        self.valid.task(prepared, None)
    }

    fn drawing_size(&self, prepared: &[Prepared], result: &ExplainResult) -> usize {
        let pictures = self.answer == AnswerAs::Png || self.valid.include.contains(&Include::Overlay);
        prepare::drawing_size(prepared, result.attributions.len(), pictures)
    }

    fn draw(
        self,
        _: &LoadedModel,
        prepared: Vec<Prepared>,
        result: ExplainResult,
        started: Instant,
    ) -> Result<Drawn<ExplainResponse>, ApiError> {
        let one = prepared
            .first()
            .ok_or_else(|| ApiError::internal("no prepared input"))?;
        Ok(build_answer(
            &self.valid,
            one,
            result,
            self.answer,
            self.max_map_pixels,
            started,
        ))
    }

    fn receipt(body: &mut ExplainResponse, receipt: Receipt) {
        body.audit_record = Some(receipt);
    }
}

/// What an explain request asks, whatever form it came in (explain body, predict's `explain`, job).
pub struct ExplainOptions {
    /// Method parameters (JSON object).
    pub params: Option<serde_json::Value>,
    /// Targets.
    pub target: Option<TargetSpec>,
    /// Segmenters: the region the targets' class scores are summed over.
    pub region: Option<crate::common::targets::Region>,
    /// Seed.
    pub seed: Option<u64>,
    /// Extra parts.
    pub include: Option<Vec<Include>>,
    /// Drawing options.
    pub render: Option<RenderOptions>,
    /// Metrics of each explanation.
    pub evaluate: Option<Vec<crate::eval::MetricRequest>>,
}

/// An explain request validated against its model and the limits: the only thing that is queued.
pub struct ValidExplain {
    /// The model.
    pub model: Arc<LoadedModel>,
    /// The method with its planned parameters.
    pub params: ValidParams,
    /// Targets as asked (indices and labels checked).
    pub targets: Option<TargetSpec>,
    /// Segmenters: the caller's region (checked but for the image it needs).
    pub region: Option<crate::common::targets::Region>,
    /// Seed (drawn when absent).
    pub seed: u64,
    /// Drawing options.
    pub render: RenderOptions,
    /// Extra parts.
    pub include: Vec<Include>,
    /// The limits it was checked against.
    pub limits: Limits,
    /// Metrics of each explanation.
    pub evaluate: Vec<crate::eval::ValidMetric>,
    /// The model's reference set in force when the request was validated.
    pub reference: Option<Arc<crate::examples::ReferenceSet>>,
}

impl ValidExplain {
    /// The worker's job for `input` (scores when a prediction already computed them).
    pub fn task(&self, prepared: &[Prepared], scores: Option<Vec<f64>>) -> Result<ExplainTask, ApiError> {
        let (targets, region) = match prepared.first() {
            Some(p) => self.on_input(p)?,
            None => (self.targets.clone(), None),
        };
        let job = ExplainJob {
            region,
            model: self.model.clone(),
            input: prepare::batch(prepared)?,
            text: prepared.first().and_then(|p| p.text.clone()),
            targets,
            params: self.params.clone(),
            seed: self.seed,
            limits: self.limits,
            scores,
            scored_outputs: None,
            reference: self.reference.clone(),
        };
        Ok(ExplainTask {
            job,
            evaluate: self.evaluate.clone(),
        })
    }

    /// The targets and region on one input's grid: a detector's box target and a segmenter's
    /// region are given in the image's pixels; the job weighs the input's.
    fn on_input(&self, p: &Prepared) -> Result<(Option<TargetSpec>, Option<Arc<RegionMask>>), ApiError> {
        let region = match &self.region {
            Some(r) => Some(Arc::new(super::segments::region_on_input(&self.model, r, p)?)),
            None => None,
        };
        let size = self.model.spec.image.as_ref().map_or((0, 0), |i| (i.width, i.height));
        let targets =
            crate::common::detection_targets::in_input_pixels(self.targets.clone(), p.geometry.as_ref(), size)?;
        Ok((targets, region))
    }

    /// This explanation attached to a prediction of the `prepared` inputs, for those meeting
    /// `when`.
    pub fn attach(&self, when: Condition, prepared: &[Prepared]) -> Result<AttachedExplain, ApiError> {
        Ok(AttachedExplain {
            params: self.params.clone(),
            targets: prepared.iter().map(|p| self.on_input(p)).collect::<Result<_, _>>()?,
            seed: self.seed,
            limits: self.limits,
            when,
            evaluate: self.evaluate.clone(),
            reference: self.reference.clone(),
        })
    }
}

/// Validates everything an explanation needs before any work: the method fits the model, render
/// options, targets, parameters and the plan's cost (`inputs` explanations of it, for predict's
/// `instances`). 400 for a request wrong on its own, 422 for one that does not fit the model.
pub fn validate(
    state: &AppState,
    model: &Arc<LoadedModel>,
    method: &dyn AnyMethod,
    options: ExplainOptions,
    inputs: usize,
) -> Result<ValidExplain, ApiError> {
    let method_name = method.name();
    check_applicable(method, model)?;
    let render = options.render.unwrap_or_default();
    render.validate().map_err(crate::explain::Invalid::Request)?;
    let limits = Limits::from_config(&state.config);
    let count = targets::check(options.target.as_ref(), model, limits.max_targets)?;
    if let Some(region) = &options.region {
        region.check(model)?;
    }
    let reference = state.references.get(&model.name);
    let cx = PlanContext {
        model,
        limits,
        targets: count,
        reference: reference.clone(),
    };
    let params = method.plan(options.params.unwrap_or_else(|| serde_json::json!({})), &cx)?;
    // The plan checked one explanation's bytes: several inputs' are checked together here.
    if inputs > 1 {
        check_bytes(params.cost().bytes, inputs, limits)?;
    }
    let asked = options.evaluate.unwrap_or_default();
    if !asked.is_empty() && method.capabilities().examples {
        return Err(crate::explain::Invalid::Request(format!(
            "evaluate: metrics judge attributions over the input; {method_name} answers reference rows"
        ))
        .into());
    }
    if !asked.is_empty() && method.capabilities().makes_image {
        return Err(crate::explain::Invalid::Request(format!(
            "evaluate: metrics judge attributions over the input; {method_name} answers an image it made"
        ))
        .into());
    }
    let evaluate = crate::eval::plan(&asked, model, count.max(1), limits)?;
    check_randomization(state, model, &evaluate, params.cost().samples, limits)?;
    Ok(ValidExplain {
        model: model.clone(),
        params,
        targets: options.target,
        region: options.region,
        seed: options.seed.unwrap_or_else(rand::random),
        render,
        include: options.include.unwrap_or_default(),
        limits,
        evaluate,
        reference,
    })
}

/// The randomisation check re-runs the method once per layer: those samples within `max_samples`.
fn check_randomization(
    state: &AppState,
    model: &LoadedModel,
    evaluate: &[crate::eval::ValidMetric],
    samples: usize,
    limits: Limits,
) -> Result<(), ApiError> {
    for metric in evaluate {
        let crate::eval::ValidMetric::Randomization { layers } = metric else {
            continue;
        };
        let weighted = state.gradients.weighted_layer_count(model);
        if weighted == 0 {
            return Err(crate::explain::Invalid::Unsupported(format!(
                "model `{}` has no Conv, Gemm or MatMul weights to randomise",
                model.name
            ))
            .into());
        }
        let steps = layers
            .unwrap_or(weighted)
            .min(weighted)
            .min(crate::eval::MAX_RANDOMIZED);
        let total = samples.saturating_mul(steps.saturating_add(1));
        if total > limits.max_samples {
            return Err(crate::explain::Invalid::Model(format!(
                "model_randomization re-runs the method on {steps} copies: {total} samples; at most {} \
                 (max_samples): ask fewer `layers` or a cheaper method",
                limits.max_samples
            ))
            .into());
        }
    }
    Ok(())
}

pub(crate) fn accepts_png(headers: &HeaderMap) -> bool {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let png = accept.find("image/png");
    let json = accept.find("application/json");
    matches!((png, json), (Some(p), Some(j)) if p < j) || (png.is_some() && json.is_none())
}
