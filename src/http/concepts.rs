//! Concept sets and the questions asked with them: `POST /v1/models/{model}/concepts/{name}`
//! (a concept set, JSON Lines), `GET /v1/models/{model}/concepts` (the sets),
//! `POST /v1/models/{model}/tcav` and `POST /v1/models/{model}/layer-information` (jobs: 202 with
//! `Location: /v1/jobs/{id}`, progress there, the answer its result).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::{audit_context, viewer, Caller};
use super::error::{audit_failed, ApiError, ProblemKind};
use super::{input, AppState};
use crate::audit::{Context, Evidence, Kind};
use crate::common::targets::TargetRef;
use crate::examples::concepts::{self, ConceptSet, ConceptSummary, MAX_EXAMPLES, MIN_EXAMPLES};
use crate::examples::ReferenceSet;
use crate::explain::tcav::CavKind;
use crate::jobs::concepts::{Labelled, LayerInformationTask, TcavTask};
use crate::runtime::LoadedModel;

/// Most layers one request names.
const MAX_LAYERS: usize = 16;

/// A TCAV request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TcavRequest {
    /// The concept set (`GET /v1/models/{model}/concepts` lists them).
    pub concept: String,
    /// The class: an index or a label; its reference rows are scored.
    #[schema(value_type = Object)]
    pub target: TargetRef,
    /// Layers, shallow to deep (default: three of the CAM layers, the first, middle and last;
    /// any tensor of the graph that depends on the input may be named).
    pub layers: Option<Vec<String>>,
    /// How CAVs are found: `logistic` (default) or `mean-difference` (FastCAV).
    #[serde(default)]
    pub cav: CavKind,
    /// Random sets tested against (default 10, 2 to 50).
    pub runs: Option<usize>,
    /// Examples of the concept and of each random set (default 50, 10 to 500).
    pub examples: Option<usize>,
    /// The class's reference inputs scored, at most (default 100, 1 to 1000).
    pub class_examples: Option<usize>,
    /// Seed of the draws; drawn and echoed when absent.
    pub seed: Option<u64>,
    /// Also answer the first concept CAV per layer (unit length).
    #[serde(default)]
    pub include_cavs: bool,
    /// Record this answer in the audit log (whatever the service's `audit` setting).
    pub audit: Option<bool>,
}

/// A layer-information request.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LayerInformationRequest {
    /// A concept set whose examples carry attribute labels; default: the reference set, labelled
    /// by class.
    pub concept: Option<String>,
    /// Layers (default: three CAM layers, the first, middle and last; at most 16).
    pub layers: Option<Vec<String>>,
    /// Rows used at most, drawn by the seed (default 200, 20 to 2000; the estimator's cost grows
    /// with their square).
    pub max_rows: Option<usize>,
    /// Seed of the draw, the jitter and the shuffled labels; drawn and echoed when absent.
    pub seed: Option<u64>,
    /// Record this answer in the audit log (whatever the service's `audit` setting).
    pub audit: Option<bool>,
}

fn invalid(message: String) -> ApiError {
    ApiError::new(ProblemKind::InvalidInput, message)
}

fn bad(message: String) -> ApiError {
    ApiError::new(ProblemKind::InvalidRequest, message)
}

/// `value` or `default`, within `lo..=hi`, or 400 naming `name`.
fn bounded(name: &str, value: Option<usize>, default: usize, lo: usize, hi: usize) -> Result<usize, ApiError> {
    let v = value.unwrap_or(default);
    if !(lo..=hi).contains(&v) {
        return Err(bad(format!("`{name}` must be between {lo} and {hi}, got {v}")));
    }
    Ok(v)
}

/// Keeps a concept set: JSON Lines, one example per line, as a reference upload's lines
/// (`{"id": "a.png", "image": "<base64>"}` for image models, `{"features": [...] or {...}}` for
/// tabular ones) with an optional attribute `label` (any short name; layer information can ask
/// what each layer knows about it). Replaces a set of that name. 10 to 1000 examples.
#[utoipa::path(post, path = "/v1/models/{model}/concepts/{name}", tag = "concepts",
    params(("model" = String, Path, description = "model name", example = "fashion-cnn"),
        ("name" = String, Path, description = "concept name: letters, digits, `-`, `_`, `.`", example = "striped")),
    request_body(description = "JSON Lines, one example per line", content((String = "application/x-ndjson"))),
    responses(
        (status = 201, body = ConceptSummary, description = "the set, kept"),
        (status = 400, body = super::error::Problem, content_type = "application/problem+json", description = "bad lines (the first ones named), or a bad name"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "unknown model"),
        (status = 413, body = super::error::Problem, content_type = "application/problem+json", description = "a body over max_reference_upload_bytes"),
        (status = 415, body = super::error::Problem, content_type = "application/problem+json", description = "not JSON Lines"),
        (status = 422, body = super::error::Problem, content_type = "application/problem+json", description = "fewer than 10 examples"),
    ))]
pub async fn upload_concept(
    State(state): State<Arc<AppState>>,
    Path((model, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let m = state.model(&model)?;
    if !concepts::valid_name(&name) {
        return Err(bad(format!(
            "`{}` is not a concept name: letters, digits, `-`, `_` and `.`, at most 64, not starting with a dot",
            name.chars().take(100).collect::<String>()
        )));
    }
    let config = &state.config;
    let deadline_ms = config.body_read_timeout_ms.saturating_mul(10);
    let received = input::receive_up_to(&headers, body, config.max_reference_upload_bytes, deadline_ms).await?;
    if !matches!(
        received.media_type.as_str(),
        "application/x-ndjson" | "application/jsonl" | "application/json-lines"
    ) {
        return Err(ApiError::new(
            ProblemKind::UnsupportedMediaType,
            "send the examples as JSON Lines (application/x-ndjson)",
        ));
    }
    let data_dir = config.data_dir.clone();
    let kept = tokio::task::spawn_blocking(move || concepts::upload(&m, &data_dir, &name, &received.bytes))
        .await
        .map_err(ApiError::internal)?;
    match kept {
        Ok(set) => Ok((StatusCode::CREATED, Json(set.summary())).into_response()),
        Err(e) if e.contains("needs at least") => Err(invalid(format!("the concept set was refused: {e}"))),
        Err(e) => Err(bad(format!("the concept set was refused: {e}"))),
    }
}

/// The model's concept sets: uploads, and the folder the manifest's `[reference] concepts` names.
#[utoipa::path(get, path = "/v1/models/{model}/concepts", tag = "concepts",
    params(("model" = String, Path, description = "model name", example = "fashion-cnn")),
    responses(
        (status = 200, body = Vec<ConceptSummary>, description = "the concept sets, by name"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "unknown model"),
    ))]
pub async fn list_concepts(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    let m = state.model(&model)?;
    let data_dir = state.config.data_dir.clone();
    let sets = tokio::task::spawn_blocking(move || concepts::list(&m, &data_dir))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(sets).into_response())
}

/// The concept set `name`, read and checked; 404 when there is none, 422 when it cannot serve.
async fn concept(state: &AppState, m: &Arc<LoadedModel>, name: &str) -> Result<ConceptSet, ApiError> {
    let (model, data_dir, owned) = (m.clone(), state.config.data_dir.clone(), name.to_string());
    let found = tokio::task::spawn_blocking(move || concepts::find(&model, &data_dir, &owned))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| invalid(format!("concept set `{name}` cannot be used: {e}")))?;
    found.ok_or_else(|| {
        ApiError::new(
            ProblemKind::NotFound,
            format!(
                "model `{}` has no concept set `{}`; upload one with POST /v1/models/{}/concepts/{{name}}",
                m.name,
                name.chars().take(100).collect::<String>(),
                m.name
            ),
        )
    })
}

fn reference(state: &AppState, m: &LoadedModel) -> Result<Arc<ReferenceSet>, ApiError> {
    state.references.get(&m.name).ok_or_else(|| {
        invalid(format!(
            "{} (random sets and the class's inputs come from it)",
            crate::examples::no_set(&m.name)
        ))
    })
}

/// The layers asked for, each checked against the model's graph (422 naming the candidates), or
/// `count` of the CAM layers spread from shallow to deep; with each layer's channel axis.
fn layers(
    state: &AppState,
    m: &LoadedModel,
    asked: Option<Vec<String>>,
    count: usize,
) -> Result<Vec<(String, usize)>, ApiError> {
    let report = m.gradient_report.get();
    let cam: Vec<String> = report.map(|r| r.cam_layers.clone()).unwrap_or_default();
    let axis_of = |l: &str| {
        report
            .and_then(|r| r.cam_layer_channel_axis.get(l).copied())
            .unwrap_or(1)
    };
    let Some(asked) = asked else {
        if cam.is_empty() {
            return Err(invalid(format!(
                "model `{}` has no CAM layers to choose from: name `layers` (tensors of its graph)",
                m.name
            )));
        }
        let n = cam.len();
        let mut picked: Vec<usize> = match count {
            1 => vec![n - 1],
            c if c >= n => (0..n).collect(),
            c => (0..c).map(|i| i * (n - 1) / (c - 1)).collect(),
        };
        picked.dedup();
        return Ok(picked.into_iter().map(|i| (cam[i].clone(), axis_of(&cam[i]))).collect());
    };
    if asked.is_empty() || asked.len() > MAX_LAYERS {
        return Err(bad(format!("`layers` names 1 to {MAX_LAYERS} layers")));
    }
    let mut out = Vec::with_capacity(asked.len());
    for l in asked {
        let dims = state
            .gradients
            .float_tensor_dims(m, &l)
            .map_err(|e| invalid(format!("model `{}` cannot expose its layers: {e}", m.name)))?;
        let known = dims.is_some_and(|d| d.len() >= 2) && l != m.spec.input;
        if !known {
            let shown: Vec<&str> = cam.iter().map(String::as_str).take(20).collect();
            return Err(invalid(format!(
                "model `{}` has no layer `{}` (a float tensor of its graph with a batch axis); CAM layers: {}",
                m.name,
                l.chars().take(200).collect::<String>(),
                if shown.is_empty() {
                    "none".to_string()
                } else {
                    shown.join(", ")
                }
            )));
        }
        if out.iter().any(|(o, _)| o == &l) {
            return Err(bad(format!("layer `{l}` is named twice")));
        }
        let axis = axis_of(&l);
        out.push((l, axis));
    }
    Ok(out)
}

/// Values per row of each layer, from the probed shapes (unknown axes: the input's pixel count).
fn layer_values(state: &AppState, m: &LoadedModel, layers: &[(String, usize)]) -> u64 {
    let fallback = m.spec.image.as_ref().map_or(1024, |i| i.width * i.height * i.channels) as u64;
    layers
        .iter()
        .map(|(l, _)| match state.gradients.float_tensor_dims(m, l) {
            Ok(Some(dims)) => dims[1..]
                .iter()
                .map(|d| d.map_or(fallback, |d| d.max(1) as u64))
                .fold(1u64, u64::saturating_mul),
            _ => fallback.saturating_mul(64),
        })
        .fold(0u64, u64::saturating_add)
}

/// Who asks, and whether the answer is recorded in the audit log (`asked`: the request's own
/// `"audit": true`).
pub(super) struct Asker {
    caller: Option<axum::Extension<Caller>>,
    audit: Option<Context>,
}

impl Asker {
    /// A caller whose job's answer is not an explanation the audit log records.
    pub(super) fn unaudited(caller: Option<axum::Extension<Caller>>) -> Self {
        Self { caller, audit: None }
    }

    fn new(
        state: &AppState,
        headers: &HeaderMap,
        caller: Option<axum::Extension<Caller>>,
        asked: Option<bool>,
    ) -> Result<Self, ApiError> {
        let audit = match state.audit.wants(Kind::Concepts, asked.unwrap_or(false)) {
            true => Some(audit_context(headers, caller.clone())?),
            false => None,
        };
        Ok(Self { caller, audit })
    }
}

/// The job for `task` on this replica's board: 202 with its place. Its answer is recorded in the
/// audit log when asked (`what`: the method the record names) before it is given: a record that
/// cannot be written fails the job.
pub(super) async fn submit<T: crate::executor::Task>(
    state: &Arc<AppState>,
    m: &LoadedModel,
    what: &'static str,
    asker: Asker,
    task: T,
) -> Result<Response, ApiError>
where
    T::Output: serde::Serialize,
{
    let viewer = viewer(asker.caller.as_ref());
    let owner = viewer.caller.clone();
    let admission = state.executor.admit()?;
    let (id, control) = state
        .jobs
        .create(&m.name, what, owner.as_deref(), state.config.max_jobs_per_caller)
        .map_err(|e| {
            ApiError::new(ProblemKind::Overloaded, e.to_string()).retry_after(state.config.retry_after_secs)
        })?;
    let (runner, task_id, model) = (state.clone(), id.clone(), m.name.clone());
    let audit = asker.audit;
    tokio::spawn(async move {
        let outcome = match admission.run_controlled(task, control).await {
            Ok(answer) => answered(&runner, what, audit, answer)
                .await
                .map_err(|e| e.problem_json()),
            Err(e) => {
                tracing::warn!(model = %model, job = %what, error = %e, "job failed");
                Err(ApiError::from(e).problem_json())
            }
        };
        runner.jobs.finish(&task_id, outcome);
    });
    let view = state
        .jobs
        .get(&id, &viewer)
        .ok_or_else(|| ApiError::internal("a job just created is gone"))?;
    Ok(super::jobs::accepted(view))
}

/// A finished job's answer as JSON, recorded in the audit log first when `audit` says who asked
/// (its evidence: the digest of the rows it ran on), the receipt in it.
async fn answered<A: serde::Serialize>(
    state: &AppState,
    method: &str,
    audit: Option<Context>,
    answer: A,
) -> Result<serde_json::Value, ApiError> {
    let mut value = serde_json::to_value(answer).map_err(ApiError::internal)?;
    let Some(ctx) = audit else {
        return Ok(value);
    };
    let evidence: Vec<Evidence> = value["inputs_sha256"]
        .as_str()
        .map(|h| Evidence::rows(h.to_string()))
        .into_iter()
        .collect();
    let receipt = state
        .audit
        .concepts(method, &ctx, &evidence, &value)
        .await
        .map_err(audit_failed)?;
    value["audit_record"] = serde_json::to_value(&receipt).map_err(ApiError::internal)?;
    Ok(value)
}

/// TCAV (Kim et al. 2018) as a job: for a concept set and a class, per layer, the share of the
/// class's reference inputs whose class logit grows along the concept's activation vector (CAV),
/// for CAVs trained against `runs` random sets drawn from the reference set, compared by a
/// two-sided t-test with CAVs trained between random sets (`p < 0.05` significant). The result: a
/// table per layer and a bar chart (`chart_png`, base64).
#[utoipa::path(post, path = "/v1/models/{model}/tcav", tag = "concepts",
    params(("model" = String, Path, description = "model name", example = "fashion-cnn")),
    request_body(content = TcavRequest, content_type = "application/json"),
    responses(
        (status = 202, body = crate::executor::board::JobView, description = "the job; its result is a `TcavAnswer`"),
        (status = 400, body = super::error::Problem, content_type = "application/problem+json", description = "malformed JSON, a parameter out of range"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "unknown model or concept set"),
        (status = 413, body = super::error::Problem, content_type = "application/problem+json", description = "a body over the request size limit"),
        (status = 415, body = super::error::Problem, content_type = "application/problem+json", description = "not JSON"),
        (status = 422, body = super::error::Problem, content_type = "application/problem+json", description = "an unknown layer or class, a model without a reference set, a concept set that cannot serve"),
        (status = 503, body = super::error::Problem, content_type = "application/problem+json", description = "the queue or the job board is full"),
    ))]
pub async fn tcav(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    caller: Option<axum::Extension<Caller>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let m = state.model(&model)?;
    state.refuse_when_full()?;
    let received = input::receive(&state.config, &headers, body).await?;
    let req: TcavRequest = input::json_body(received).await?;
    let asker = Asker::new(&state, &headers, caller, req.audit)?;
    let runs = bounded("runs", req.runs, 10, 2, 50)?;
    let examples = bounded("examples", req.examples, 50, MIN_EXAMPLES, 500)?;
    let class_examples = bounded("class_examples", req.class_examples, 100, 1, MAX_EXAMPLES)?;
    let labels = &m.spec.labels;
    let target = match &req.target {
        TargetRef::Index(i) if *i < labels.len() => *i,
        TargetRef::Label(l) => crate::examples::source::label_of(l, labels)
            .map(|c| c as usize)
            .ok_or_else(|| {
                invalid(format!(
                    "class `{}` is not a label of model `{}`; labels: {}",
                    l.chars().take(100).collect::<String>(),
                    m.name,
                    labels.join(", ")
                ))
            })?,
        TargetRef::Index(i) => {
            return Err(invalid(format!(
                "class {i} is not a class of model `{}` ({} classes)",
                m.name,
                labels.len()
            )))
        }
    };
    let reference = reference(&state, &m)?;
    let class_rows = reference.labels.iter().filter(|&&l| l as usize == target).count();
    if class_rows == 0 {
        return Err(invalid(format!(
            "the reference set of `{}` holds no row of class `{}`",
            m.name, labels[target]
        )));
    }
    let layers = layers(&state, &m, req.layers, 3)?;
    let concept = concept(&state, &m, &req.concept).await?;
    // The activations held: the concept's and the random sets' rows (forward), the class's rows
    // twice (values and gradients); budgeted like a reference set.
    let rows = (examples as u64).saturating_mul(runs as u64 + 2) + 2 * class_examples as u64;
    let bytes = rows.saturating_mul(layer_values(&state, &m, &layers)).saturating_mul(4);
    if bytes > state.config.max_reference_bytes {
        return Err(invalid(format!(
            "this TCAV run would hold {} MiB of activations; the limit is {} MiB (max_reference_bytes): fewer runs, examples or layers",
            bytes.div_ceil(1 << 20),
            state.config.max_reference_bytes >> 20
        )));
    }
    let task = TcavTask {
        model: m.clone(),
        concept,
        reference,
        target,
        layers: layers.into_iter().map(|(l, _)| l).collect(),
        runs,
        examples,
        class_examples,
        cav: req.cav,
        seed: req.seed.unwrap_or_else(rand::random),
        include_cavs: req.include_cavs,
        max_pixels: state.config.max_image_pixels,
    };
    submit(&state, &m, "tcav", asker, task).await
}

/// What each layer knows about a label, as a job: per layer, the mutual information (nats)
/// between its pooled activations (each channel's mean) and the reference set's classes, or a
/// concept set's attribute labels, by Ross's k-nearest-neighbour estimator (k = 3), beside the
/// same estimate for shuffled labels (the estimator's floor), and the co-information of each
/// layer with the next (redundancy minus synergy); a curve over the layers (`chart_png`).
#[utoipa::path(post, path = "/v1/models/{model}/layer-information", tag = "concepts",
    params(("model" = String, Path, description = "model name", example = "fashion-cnn")),
    request_body(content = LayerInformationRequest, content_type = "application/json"),
    responses(
        (status = 202, body = crate::executor::board::JobView, description = "the job; its result is a `LayerInformationAnswer`"),
        (status = 400, body = super::error::Problem, content_type = "application/problem+json", description = "malformed JSON, a parameter out of range"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "unknown model or concept set"),
        (status = 413, body = super::error::Problem, content_type = "application/problem+json", description = "a body over the request size limit"),
        (status = 415, body = super::error::Problem, content_type = "application/problem+json", description = "not JSON"),
        (status = 422, body = super::error::Problem, content_type = "application/problem+json", description = "an unknown layer, a model without a reference set, a concept set without attribute labels"),
        (status = 503, body = super::error::Problem, content_type = "application/problem+json", description = "the queue or the job board is full"),
    ))]
pub async fn layer_information(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    caller: Option<axum::Extension<Caller>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let m = state.model(&model)?;
    state.refuse_when_full()?;
    let received = input::receive(&state.config, &headers, body).await?;
    let req: LayerInformationRequest = input::json_body(received).await?;
    let asker = Asker::new(&state, &headers, caller, req.audit)?;
    let max_rows = bounded("max_rows", req.max_rows, 200, 20, 2000)?;
    let layers = layers(&state, &m, req.layers, 3)?;
    let rows = match &req.concept {
        None => Labelled::Reference(reference(&state, &m)?),
        Some(name) => {
            let set = concept(&state, &m, name).await?;
            if !set.labelled() || set.attributes.len() < 2 {
                return Err(invalid(format!(
                    "concept set `{name}` needs attribute labels on every example, at least two different ones"
                )));
            }
            Labelled::Concept(set)
        }
    };
    let bytes = (max_rows as u64)
        .saturating_mul(layer_values(&state, &m, &layers))
        .saturating_mul(4);
    if bytes > state.config.max_reference_bytes {
        return Err(invalid(format!(
            "this run would hold {} MiB of activations; the limit is {} MiB (max_reference_bytes): fewer rows or layers",
            bytes.div_ceil(1 << 20),
            state.config.max_reference_bytes >> 20
        )));
    }
    let task = LayerInformationTask {
        model: m.clone(),
        rows,
        channel_axes: layers.iter().map(|(_, a)| *a).collect(),
        layers: layers.into_iter().map(|(l, _)| l).collect(),
        max_rows,
        seed: req.seed.unwrap_or_else(rand::random),
        max_pixels: state.config.max_image_pixels,
    };
    submit(&state, &m, "layer-information", asker, task).await
}
