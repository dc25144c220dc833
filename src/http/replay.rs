//! `POST /v1/audit/records/{id}/replay`: runs a recorded explanation again (the model with the
//! recorded sha256, the recorded input, method, parameters after defaults, targets and seed) and
//! says whether the attributions are the recorded ones, bit for bit or within [`RELATIVE_TOLERANCE`],
//! with where they differ when not. The replay is itself recorded (kind `replay`, pointing at the
//! original). A record that cannot be run again is refused with 409 and the reason.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Extension, Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::audit::{record, recorded_input, recorded_values, NoInput};
use super::auth::{audit_context, Caller};
use super::error::{audit_failed, ApiError, ProblemKind};
use super::explain::{validate, AnswerAs, ExplainOptions, ExplainResponse, Explaining};
use super::input::RawInput;
use super::pipeline::{self, Audit, Valid};
use super::prepare;
use super::AppState;
use crate::audit::{Context, Receipt};
use crate::explain::{TargetRef, TargetSpec};
use crate::runtime::LoadedModel;

/// What a replay may differ by and still count as equal, relative to the largest recorded
/// magnitude of the target's attributions. explaind's methods are deterministic for a given seed
/// (their random draws come from ChaCha8 seeded by the request), but ONNX Runtime's kernels may
/// sum in another order when a pass's batch differs (concurrent requests batched together) or the
/// thread count changed since the record was made; such a reordering moves f32 results by a few
/// units in the last place, far below this.
pub const RELATIVE_TOLERANCE: f64 = 1e-5;

/// Positions of the first differing values listed in an answer.
const FIRST_POSITIONS: usize = 10;

/// How a replay compares with its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Agreement {
    /// Every value has the same bits.
    Bitwise,
    /// Some values differ, each by at most [`RELATIVE_TOLERANCE`] of the largest recorded magnitude.
    WithinTolerance,
    /// Some value differs by more (or the shapes, or an example-based answer's rows, differ).
    Different,
}

/// One target's comparison.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TargetReplay {
    /// Which input of the record (a prediction's instance; 0 for an explanation record).
    pub instance: usize,
    /// The recorded target (index, label, score as recorded).
    #[schema(value_type = Object)]
    pub target: Value,
    /// The score the model gives it now.
    pub score: f32,
    /// How the attributions compare.
    pub agreement: Agreement,
    /// Values compared.
    pub values: usize,
    /// Values whose bits differ.
    pub differing: usize,
    /// The largest absolute difference (0 when bitwise equal).
    pub max_abs_difference: f64,
    /// The tolerance applied: [`RELATIVE_TOLERANCE`] times the largest recorded magnitude.
    pub tolerance: f64,
    /// The first differing positions (flat, row-major), at most 10.
    pub first_positions: Vec<usize>,
    /// The recorded shape, when the replayed one differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_shape: Option<Vec<usize>>,
    /// The replayed shape, when it differs from the recorded one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed_shape: Option<Vec<usize>>,
}

/// The answer of a replay.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReplayResponse {
    /// The record run again.
    pub record: String,
    /// True when every target's attributions are the recorded ones (bitwise or within tolerance).
    pub equal: bool,
    /// The weakest agreement over the targets.
    pub agreement: Agreement,
    /// The model that ran (name, and the sha256 the record names).
    pub model: String,
    /// Its sha256.
    pub model_sha256: String,
    /// The method.
    pub method: String,
    /// Parameters after defaults, as recorded.
    #[schema(value_type = Object)]
    pub params: Value,
    /// The seed, as recorded.
    pub seed: Option<u64>,
    /// The relative tolerance (see `agreement`).
    pub relative_tolerance: f64,
    /// Per target.
    pub targets: Vec<TargetReplay>,
    /// Server time of the replay, ms.
    pub took_ms: f64,
    /// The replay's own audit record.
    pub audit_record: Receipt,
}

fn refuse(why: impl Into<String>) -> ApiError {
    ApiError::new(ProblemKind::NotReplayable, why)
}

/// The loaded model whose ONNX file has `sha256`: the recorded name's when it still matches, else
/// any other name's (a model served under a new name is the same model).
fn model_with(state: &AppState, name: &str, sha256: &str) -> Result<Arc<LoadedModel>, ApiError> {
    if let Some(m) = state.registry.get(name).filter(|m| m.sha256 == sha256) {
        return Ok(m.clone());
    }
    state
        .registry
        .iter()
        .find(|m| m.sha256 == sha256)
        .cloned()
        .ok_or_else(|| {
            let now = match state.registry.get(name) {
                Some(m) => format!("`{name}` is loaded now with sha256 {}", m.sha256),
                None => format!("no model `{name}` is loaded now"),
            };
            refuse(format!(
                "the model the record names (sha256 {sha256}) is no longer loaded: {now}; load that file again to \
                 replay"
            ))
        })
}

/// The record's input at `index`, or the 409 that says why it cannot be read.
pub(super) fn input_of(record: &Value, index: usize) -> Result<RawInput, ApiError> {
    recorded_input(record, index).map_err(|why| match why {
        NoInput::NotStored => refuse(
            "the record holds no input: the service ran without audit_store_inputs when it was recorded \
             (set audit_store_inputs = true for records that can be replayed)",
        ),
        NoInput::Erased => refuse("the record's input was erased: it cannot be run again"),
    })
}

/// The recorded explanation run again on `model` with `raw`: the recorded method, parameters,
/// targets and seed (`options` overrides none of them); `audit` when the answer is recorded.
pub(super) async fn rerun(
    state: &AppState,
    model: Arc<LoadedModel>,
    method: &str,
    options: ExplainOptions,
    raw: RawInput,
    audit: Option<Audit>,
    started: Instant,
) -> Result<ExplainResponse, ApiError> {
    let method = state.method(method)?;
    let valid = validate(state, &model, method.as_ref(), options, 1)?;
    let work = Explaining::new(state, valid, AnswerAs::Json);
    let valid = Valid {
        model,
        inputs: vec![raw],
        work,
        audit,
    };
    Ok(pipeline::answer(state, valid, started).await?.body)
}

/// Runs a recorded explanation again and compares its attributions with the recorded ones (a
/// prediction's attached explanations: each instance's on its input).
///
/// Needs the record's input (`audit_store_inputs`), its image or text maps (`audit_store_maps`;
/// tabular attributions are always kept), and the model with the recorded sha256 loaded. The
/// replay is recorded (kind `replay`, `replay_of` the original).
#[utoipa::path(post, path = "/v1/audit/records/{id}/replay", tag = "audit",
    params(("id" = String, Path, description = "record id (`audit_record.id` of an explanation's answer, or of a prediction's with `explain`)")),
    responses(
        (status = 200, body = ReplayResponse, description = "whether the attributions are the recorded ones, and where they differ"),
        (status = 401, body = super::error::Problem, content_type = "application/problem+json", description = "no or bad API key"),
        (status = 403, body = super::error::Problem, content_type = "application/problem+json", description = "the key lacks the audit scope"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "no such record"),
        (status = 409, body = super::error::Problem, content_type = "application/problem+json", description = "the record cannot be run again: it holds no explanation, its model is no longer loaded, its input or maps were not stored or were erased, or it lacks its parameters or seed"),
        (status = 503, body = super::error::Problem, content_type = "application/problem+json", description = "at capacity, or the audit log is unavailable"),
    ))]
pub async fn replay(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    caller: Option<Extension<Caller>>,
) -> Result<Json<ReplayResponse>, ApiError> {
    let started = Instant::now();
    state.refuse_when_full()?;
    let original = record(&state, &id).await?;
    let parts = explained_parts(&id, &original)?;
    let mut model = None;
    let mut evidence = Vec::with_capacity(parts.len());
    let mut targets = Vec::new();
    let mut ran = None;
    for (instance, part) in &parts {
        let plan = Plan::of(&state, &original, part)?;
        let model = match &model {
            Some(m) => Arc::clone(m),
            None => model.insert(model_with(&state, &plan.model, &plan.sha256)?).clone(),
        };
        let raw = input_of(&original, *instance)?;
        let recorded = recorded_targets(part)?;
        evidence.push(prepare::evidence(&model, &raw, false));
        let options = plan.options(part, &recorded)?;
        let answer = rerun(&state, model, &plan.method, options, raw, None, started).await?;
        let replayed: Vec<_> = answer
            .single
            .iter()
            .chain(answer.explanations.iter().flatten())
            .collect();
        for (i, Recorded { target, shape, values }) in recorded.iter().enumerate() {
            let Some(now) = replayed.get(i) else {
                return Err(ApiError::internal("a replay answered fewer targets than recorded"));
            };
            let mut t = compare(target, shape, values, &now.attributions.shape, &now.attributions.values);
            t.instance = *instance;
            t.score = now.target.score;
            if plan.examples && t.agreement != Agreement::Different {
                // Example-based methods answer rows, not values: the rows must be the recorded ones.
                let now_json = serde_json::to_value(now).map_err(ApiError::internal)?;
                // What the answer cost (its time on the worker) is no part of the explanation.
                let without_cost = |mut summary: serde_json::Value| {
                    if let Some(fields) = summary.as_object_mut() {
                        fields.remove("cost");
                    }
                    summary
                };
                if without_cost(crate::audit::record::summarize(&now_json)) != without_cost(target["summary"].clone()) {
                    t.agreement = Agreement::Different;
                }
            }
            targets.push(t);
        }
        ran.get_or_insert((answer.method, answer.params, answer.seed));
    }
    let (Some(model), Some((method, params, seed))) = (model, ran) else {
        return Err(ApiError::internal("a replay of no explanation"));
    };
    let agreement = targets
        .iter()
        .map(|t| t.agreement)
        .max_by_key(|a| *a as u8)
        .unwrap_or(Agreement::Bitwise);
    let equal = agreement != Agreement::Different;
    let outcome = json!({"equal": equal, "agreement": agreement, "relative_tolerance": RELATIVE_TOLERANCE,
                         "targets": targets});
    let ran = json!({"model": model.name, "model_sha256": model.sha256, "method": method,
                     "params": params, "seed": seed});
    let ctx: Context = audit_context(&headers, caller)?;
    let receipt = state
        .audit
        .replay(&ctx, &original, &evidence, &ran, outcome)
        .await
        .map_err(audit_failed)?;
    Ok(Json(ReplayResponse {
        record: id,
        equal,
        agreement,
        model: model.name.clone(),
        model_sha256: model.sha256.clone(),
        method,
        params,
        seed,
        relative_tolerance: RELATIVE_TOLERANCE,
        targets,
        took_ms: started.elapsed().as_secs_f64() * 1e3,
        audit_record: receipt,
    }))
}

/// The explanations a record holds, each with its input's position: an explanation record's
/// own, or a prediction's attached ones (one per instance that has one).
fn explained_parts(id: &str, original: &Value) -> Result<Vec<(usize, Value)>, ApiError> {
    let kind = original["kind"].as_str().unwrap_or_default();
    match kind {
        "explanation" => Ok(vec![(0, original.clone())]),
        "prediction" => {
            let parts: Vec<(usize, Value)> = original["results"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
                .filter_map(|(i, r)| Some((i, r.get("explanation").filter(|e| e.is_object())?.clone())))
                .collect();
            if parts.is_empty() {
                return Err(refuse(format!(
                    "record `{id}` is a prediction recorded without an explanation: there is no explanation to replay"
                )));
            }
            Ok(parts)
        }
        _ => Err(refuse(format!(
            "record `{id}` is a {kind}; replay runs explanations (and predictions' attached explanations) again"
        ))),
    }
}

/// A recorded explanation's targets with their attributions (409 when the map was not kept).
fn recorded_targets(part: &Value) -> Result<Vec<Recorded>, ApiError> {
    part["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let (shape, values) = recorded_values(t).ok_or_else(|| {
                refuse(
                    "the record kept no attribution map: the service ran without audit_store_maps when it was recorded \
                     (set audit_store_maps = true for image and text records that can be replayed)",
                )
            })?;
            Ok(Recorded {
                target: t.clone(),
                shape,
                values,
            })
        })
        .collect()
}

/// One recorded target: as recorded, and its attributions with their shape.
struct Recorded {
    target: Value,
    shape: Vec<usize>,
    values: Vec<f32>,
}

/// What a record says to run: model, method, parameters after defaults, seed.
struct Plan {
    model: String,
    sha256: String,
    method: String,
    params: Value,
    seed: Option<u64>,
    examples: bool,
}

impl Plan {
    /// Reads the plan of `part` (the record itself, or a prediction's attached explanation) from
    /// `record`; 409 when the record lacks part of it.
    fn of(state: &AppState, record: &Value, part: &Value) -> Result<Self, ApiError> {
        let text = |v: &Value, key: &str| v[key].as_str().map(String::from);
        let (Some(model), Some(sha256), Some(method)) = (
            text(record, "model"),
            text(record, "model_sha256"),
            text(part, "method"),
        ) else {
            return Err(refuse("the record does not name its model, model sha256 and method"));
        };
        let params = part["params"].clone();
        if !params.is_object() {
            return Err(refuse(
                "the record holds no parameters after defaults (it was made before explaind recorded them)",
            ));
        }
        let capabilities = state
            .methods
            .get(&method)
            .ok_or_else(|| refuse(format!("the method `{method}` is no longer served")))?
            .capabilities();
        let seed = part["seed"].as_u64();
        if capabilities.random && seed.is_none() {
            return Err(refuse(format!(
                "{method} draws random numbers, and the record holds no seed (it was made before explaind recorded it)"
            )));
        }
        Ok(Self {
            model,
            sha256,
            method,
            params,
            seed,
            examples: capabilities.examples,
        })
    }

    /// The request to run: the recorded parameters, seed, targets and region. A class target is
    /// its index; a detector's detection is its recorded box and label (the detection of the
    /// same input that overlaps it most: itself), several its count of best detections; a
    /// segmenter's region is the one recorded (absent: each class's predicted pixels, again).
    fn options(&self, part: &Value, recorded: &[Recorded]) -> Result<ExplainOptions, ApiError> {
        let detections: Vec<&Value> = recorded
            .iter()
            .filter_map(|r| r.target.get("detection").filter(|d| d.is_object()))
            .collect();
        let target = match detections.as_slice() {
            [] => {
                let indices: Vec<TargetRef> = recorded
                    .iter()
                    .filter_map(|r| r.target["target"]["index"].as_u64())
                    .map(|i| TargetRef::Index(i as usize))
                    .collect();
                match indices.len() {
                    0 => None,
                    1 => indices.into_iter().next().map(TargetSpec::One),
                    _ => Some(TargetSpec::Many(indices)),
                }
            }
            [one] => {
                let bbox: [f64; 4] = serde_json::from_value(one["box"].clone())
                    .map_err(|_| refuse("the record's detection has no box"))?;
                let label = one["label"].as_str().map(String::from);
                Some(TargetSpec::Box { bbox, label })
            }
            // Several detections come only from `top_k`: the same number of best ones.
            many => Some(TargetSpec::TopK { top_k: many.len() }),
        };
        let region = match part.get("region").filter(|r| !r.is_null()) {
            Some(r) => {
                Some(serde_json::from_value(r.clone()).map_err(|_| refuse("the record's region cannot be read"))?)
            }
            None => None,
        };
        Ok(ExplainOptions {
            region,
            params: Some(self.params.clone()),
            target,
            // A deterministic method echoes no seed; any seed gives it the same answer.
            seed: Some(self.seed.unwrap_or(0)),
            include: None,
            render: None,
            evaluate: None,
        })
    }
}

/// Compares recorded values with replayed ones.
fn compare(target: &Value, shape: &[usize], recorded: &[f32], now_shape: &[usize], now: &[f32]) -> TargetReplay {
    let peak = recorded.iter().fold(0f64, |m, v| m.max(f64::from(v.abs())));
    let tolerance = RELATIVE_TOLERANCE * peak;
    let mut t = TargetReplay {
        instance: 0,
        target: target["target"].clone(),
        score: f32::NAN,
        agreement: Agreement::Bitwise,
        values: recorded.len(),
        differing: 0,
        max_abs_difference: 0.0,
        tolerance,
        first_positions: Vec::new(),
        recorded_shape: None,
        replayed_shape: None,
    };
    // A tabular record keeps its values flat: only their count can be compared.
    let same_shape = if shape.len() == 1 {
        recorded.len() == now.len()
    } else {
        shape == now_shape
    };
    if !same_shape {
        t.agreement = Agreement::Different;
        t.recorded_shape = Some(shape.to_vec());
        t.replayed_shape = Some(now_shape.to_vec());
        return t;
    }
    for (i, (a, b)) in recorded.iter().zip(now).enumerate() {
        if a.to_bits() == b.to_bits() {
            continue;
        }
        t.differing += 1;
        if t.first_positions.len() < FIRST_POSITIONS {
            t.first_positions.push(i);
        }
        let d = (f64::from(*a) - f64::from(*b)).abs();
        // NaN differs by more than any tolerance.
        t.max_abs_difference = if d.is_nan() {
            f64::INFINITY
        } else {
            t.max_abs_difference.max(d)
        };
    }
    t.agreement = match t.differing {
        0 => Agreement::Bitwise,
        _ if t.max_abs_difference <= tolerance => Agreement::WithinTolerance,
        _ => Agreement::Different,
    };
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitwise_within_tolerance_and_different_are_told_apart() {
        let target = json!({"target": {"index": 1}});
        let a = [1.0f32, -2.0, 0.5];
        assert_eq!(compare(&target, &[3], &a, &[3], &a).agreement, Agreement::Bitwise);
        let nudged = [1.0f32, -2.0 + 1e-6, 0.5];
        let t = compare(&target, &[3], &a, &[3], &nudged);
        assert_eq!(
            (t.agreement, t.differing, t.first_positions.clone()),
            (Agreement::WithinTolerance, 1, vec![1])
        );
        let moved = [1.5f32, -2.0, 0.25];
        let t = compare(&target, &[3], &a, &[3], &moved);
        assert_eq!(t.agreement, Agreement::Different);
        assert_eq!(
            (t.differing, t.first_positions.clone(), t.max_abs_difference),
            (2, vec![0, 2], 0.5)
        );
        let t = compare(&target, &[1, 3], &a, &[3, 1], &a);
        assert_eq!(t.agreement, Agreement::Different);
        assert_eq!(
            (t.recorded_shape.clone(), t.replayed_shape.clone()),
            (Some(vec![1, 3]), Some(vec![3, 1]))
        );
        let nan = [f32::NAN, -2.0, 0.5];
        assert_eq!(compare(&target, &[3], &a, &[3], &nan).agreement, Agreement::Different);
    }
}
