//! Vertex AI's online prediction routes at Vertex's own URL form, so that a Vertex client only
//! changes its base URL: `POST /v1/projects/{project}/locations/{location}/endpoints/{endpoint}:predict`
//! and `:explain`, in Vertex's request and response shapes. The endpoint id names an explaind model
//! (`[vertex] endpoint` in its manifest, else its name); project and location are not checked.
//!
//! The instances become explaind inputs, `explanationSpecOverride` becomes an explain method with
//! its options ([`methods`]), and both are validated and run as `POST /v1/models/{model}/predict`
//! with an attached explanation is: the same checks, limits, queue and job. Errors are written in
//! Google's error object ([`errors`]).

mod errors;
mod methods;
mod shapes;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use base64::Engine as _;
use serde::Serialize;
use serde_json::{Map, Value};

pub use errors::google_errors;
pub use shapes::{
    Attribution, Explanation, GoogleError, VertexExplainRequest, VertexExplainResponse, VertexPredictRequest,
    VertexPredictResponse,
};

use crate::audit::Kind;
use crate::http::error::{ApiError, ProblemKind};
use crate::http::explain::{self, ValidExplain};
use crate::http::input::{self, FeaturesJson, RawInput};
use crate::http::pipeline::{self, Drawn, Record, Valid, Work};
use crate::http::prepare::{self, Prepared};
use crate::http::{offload, predict, AppState};
use crate::jobs::{Condition, ExplainResult, PredictJob, PredictOutput};
use crate::runtime::predict::RowPrediction;
use crate::runtime::LoadedModel;

/// The two methods of an endpoint explaind answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Predict,
    Explain,
}

/// `POST .../endpoints/{endpoint}:predict` and `:explain`: one route, as the verb is part of the
/// endpoint's path segment (`{endpoint}:{verb}`).
pub async fn endpoint_call(
    State(state): State<Arc<AppState>>,
    Path((project, location, call)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let (endpoint, verb) = split_call(&call)?;
    let model = endpoint_model(&state, endpoint)?;
    state.refuse_when_full()?;
    let kind = match verb {
        Verb::Predict => Kind::Prediction,
        Verb::Explain => Kind::Explanation,
    };
    // Vertex's answers carry no audit receipt, and the audit log reads explaind's own shapes: a
    // service that records these answers is asked on its own routes instead.
    if state.audit.wants(kind, false) {
        return Err(ApiError::new(
            ProblemKind::InvalidRequest,
            "this service records every answer of this kind in its audit log; the Vertex AI routes are not \
             recorded: ask POST /v1/models/{model}/predict or /explain/{method}",
        ));
    }
    let received = input::receive(&state.config, &headers, body).await?;
    if received.media_type != "application/json" {
        return Err(ApiError::new(
            ProblemKind::UnsupportedMediaType,
            "Vertex AI's routes take application/json",
        ));
    }
    let parsing = model.clone();
    let parsed = offload::cpu(received.bytes.len(), move || parse(&parsing, verb, &received.bytes)).await??;
    predict::check_counts(&state, 1, parsed.inputs.len())?;
    let explain = match parsed.asked {
        Some(asked) => {
            let method = state.method(asked.method)?;
            Some(explain::validate(
                &state,
                &model,
                method.as_ref(),
                asked.options,
                parsed.inputs.len(),
            )?)
        }
        None => None,
    };
    let work = Answering {
        explain,
        keys: parsed.keys,
        names: Names {
            deployed_model_id: model.name.clone(),
            model: format!("projects/{project}/locations/{location}/models/{}", model.name),
        },
        max_map_pixels: state.config.max_map_pixels,
    };
    let valid = Valid {
        model,
        inputs: parsed.inputs,
        work,
        audit: None,
    };
    Ok(pipeline::answer(&state, valid, started).await?.into_response())
}

/// Vertex AI's `predict`: the model's outputs for each instance (as `POST
/// /v1/models/{model}/predict` runs them). Errors are Google's error object.
#[utoipa::path(post, path = "/v1/projects/{project}/locations/{location}/endpoints/{endpoint}:predict", tag = "vertex",
    params(
        ("project" = String, Path, description = "any project id (not checked)"),
        ("location" = String, Path, description = "any location (not checked)"),
        ("endpoint" = String, Path, description = "the model's `[vertex] endpoint`, else its name", example = "fashion-cnn"),
    ),
    request_body(content((VertexPredictRequest = "application/json"))),
    responses(
        (status = 200, body = VertexPredictResponse, description = "one prediction per instance"),
        (status = 400, body = GoogleError, description = "INVALID_ARGUMENT: malformed JSON, unknown field, bad instance"),
        (status = 404, body = GoogleError, description = "NOT_FOUND: unknown endpoint or method"),
        (status = 408, body = GoogleError, description = "DEADLINE_EXCEEDED: the body did not arrive in time"),
        (status = 413, body = GoogleError, description = "OUT_OF_RANGE: body or image too large"),
        (status = 415, body = GoogleError, description = "INVALID_ARGUMENT: not application/json"),
        (status = 422, body = GoogleError, description = "INVALID_ARGUMENT: an instance does not fit the model"),
        (status = 503, body = GoogleError, description = "UNAVAILABLE: at capacity; see Retry-After"),
        (status = 504, body = GoogleError, description = "DEADLINE_EXCEEDED: deadline passed"),
    ))]
#[allow(dead_code)] // The document's path: `endpoint_call` answers it.
pub(crate) fn predict_path() {}

/// Vertex AI's `explain`: each instance's prediction and its attributions, by integrated
/// gradients (the default), sampled Shapley or XRAI as `explanationSpecOverride` asks.
#[utoipa::path(post, path = "/v1/projects/{project}/locations/{location}/endpoints/{endpoint}:explain", tag = "vertex",
    params(
        ("project" = String, Path, description = "any project id (not checked)"),
        ("location" = String, Path, description = "any location (not checked)"),
        ("endpoint" = String, Path, description = "the model's `[vertex] endpoint`, else its name", example = "fashion-cnn"),
    ),
    request_body(content((VertexExplainRequest = "application/json"))),
    responses(
        (status = 200, body = VertexExplainResponse, description = "one explanation and one prediction per instance"),
        (status = 400, body = GoogleError, description = "INVALID_ARGUMENT: malformed JSON, unknown field, out-of-range parameter, bad instance"),
        (status = 404, body = GoogleError, description = "NOT_FOUND: unknown endpoint, deployed model or method"),
        (status = 408, body = GoogleError, description = "DEADLINE_EXCEEDED: the body did not arrive in time"),
        (status = 413, body = GoogleError, description = "OUT_OF_RANGE: body or image too large"),
        (status = 415, body = GoogleError, description = "INVALID_ARGUMENT: not application/json"),
        (status = 422, body = GoogleError, description = "INVALID_ARGUMENT or FAILED_PRECONDITION: the request does not fit the model (targets, budget, gradients)"),
        (status = 503, body = GoogleError, description = "UNAVAILABLE: at capacity; see Retry-After"),
        (status = 504, body = GoogleError, description = "DEADLINE_EXCEEDED: deadline passed"),
    ))]
#[allow(dead_code)] // The document's path: `endpoint_call` answers it.
pub(crate) fn explain_path() {}

/// `{endpoint}:{verb}` split, the verb one explaind answers.
fn split_call(call: &str) -> Result<(&str, Verb), ApiError> {
    let not_found = |m: String| ApiError::new(ProblemKind::NotFound, m);
    let (endpoint, verb) = call
        .rsplit_once(':')
        .ok_or_else(|| not_found("name a method: .../endpoints/{endpoint}:predict or :explain".into()))?;
    match verb {
        "predict" => Ok((endpoint, Verb::Predict)),
        "explain" => Ok((endpoint, Verb::Explain)),
        other => Err(not_found(format!(
            "no method `:{}` here; explaind answers :predict and :explain",
            other.chars().take(40).collect::<String>()
        ))),
    }
}

/// The model answering on endpoint `id`.
fn endpoint_model(state: &AppState, id: &str) -> Result<Arc<LoadedModel>, ApiError> {
    let shown = id.chars().take(100).collect::<String>();
    match state.registry.by_vertex_endpoint(id).as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(ApiError::new(
            ProblemKind::ModelNotFound,
            format!(
                "no endpoint `{shown}`: an endpoint id is a model's `[vertex] endpoint`, else its name; GET \
                 /v1/models lists the models"
            ),
        )),
        several => Err(ApiError::new(
            ProblemKind::NotFound,
            format!(
                "endpoint `{shown}` names {} models ({}): give each its own `[vertex] endpoint`",
                several.len(),
                several.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// A request body, read into explaind's inputs and explain options.
struct Parsed {
    inputs: Vec<RawInput>,
    /// Each instance's input name, when it named one (`{"image_bytes": {"b64": ...}}`).
    keys: Vec<Option<String>>,
    asked: Option<methods::Asked>,
}

fn parse(model: &LoadedModel, verb: Verb, bytes: &[u8]) -> Result<Parsed, ApiError> {
    let (instances, parameters, asked) = match verb {
        Verb::Predict => {
            let req: VertexPredictRequest = input::parse_json(bytes)?;
            (req.instances, req.parameters, None)
        }
        Verb::Explain => {
            let req: VertexExplainRequest = input::parse_json(bytes)?;
            if let Some(id) = req
                .deployed_model_id
                .as_deref()
                .filter(|id| !id.is_empty() && *id != model.name)
            {
                return Err(ApiError::new(
                    ProblemKind::NotFound,
                    format!(
                        "deployedModelId `{}`: this endpoint's deployed model is `{}`",
                        id.chars().take(100).collect::<String>(),
                        model.name
                    ),
                ));
            }
            let asked = methods::asked(req.explanation_spec_override, model)?;
            (req.instances, req.parameters, Some(asked))
        }
    };
    match parameters {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) if m.is_empty() => {}
        Some(_) => {
            return Err(ApiError::new(
                ProblemKind::InvalidRequest,
                "parameters: explaind's models take no parameters (give {} or leave it out)",
            ))
        }
    }
    let mut inputs = Vec::with_capacity(instances.len());
    let mut keys = Vec::with_capacity(instances.len());
    for (i, instance) in instances.into_iter().enumerate() {
        let (raw, key) = instance_input(model, instance).map_err(|mut e| {
            e.detail = format!("instances[{i}]: {}", e.detail);
            e
        })?;
        inputs.push(raw);
        keys.push(key);
    }
    Ok(Parsed { inputs, keys, asked })
}

/// One instance as an input of `model`, and the input name it gave: an image as base64 (a string,
/// `{"b64": ...}`, or either under one key); a tabular row as a list or an object by feature
/// name; a text as a string, or under one key.
fn instance_input(model: &LoadedModel, instance: Value) -> Result<(RawInput, Option<String>), ApiError> {
    let bad = |m: &str| ApiError::new(ProblemKind::InvalidRequest, m.to_string());
    if model.spec.tabular.is_some() {
        let features: FeaturesJson = serde_json::from_value(instance)
            .map_err(|_| bad("a tabular instance is a list of feature values or an object by feature name"))?;
        return Ok((input::one_input(None, Some(features), None, "an instance")?, None));
    }
    let (key, inner) = match instance {
        Value::Object(m) if m.len() == 1 && !m.contains_key("b64") => {
            let (k, v) = m.into_iter().next().ok_or_else(|| bad("an empty instance"))?;
            (Some(k), v)
        }
        other => (None, other),
    };
    let text = match inner {
        Value::String(s) => s,
        Value::Object(mut m) if m.len() == 1 => match m.remove("b64") {
            Some(Value::String(s)) => s,
            _ => return Err(bad("an instance's value is a string, or {\"b64\": string}")),
        },
        _ => return Err(bad("an instance's value is a string, or {\"b64\": string}")),
    };
    let raw = if model.spec.text.is_some() {
        input::one_input(None, None, Some(text), "an instance")?
    } else {
        input::one_input(Some(text), None, None, "an instance")?
    };
    Ok((raw, key))
}

/// The names a Vertex answer gives the model.
struct Names {
    deployed_model_id: String,
    model: String,
}

/// A Vertex call: a prediction, with every instance explained for `:explain`.
struct Answering {
    explain: Option<ValidExplain>,
    keys: Vec<Option<String>>,
    names: Names,
    max_map_pixels: u64,
}

/// A Vertex answer: `PredictResponse` or `ExplainResponse`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum VertexAnswer {
    Predict(VertexPredictResponse),
    Explain(VertexExplainResponse),
}

impl Answering {
    /// Whether the model's manifest asks for pictures (`[vertex.visualization]`).
    fn visualized(&self) -> bool {
        self.explain
            .as_ref()
            .is_some_and(|v| v.model.spec.vertex.as_ref().is_some_and(|s| s.visualization.is_some()))
    }
}

impl Work for Answering {
    type Task = PredictJob;
    type Body = VertexAnswer;
    const RECORD: Record = Record::None;

    fn task(&mut self, model: &Arc<LoadedModel>, prepared: &[Prepared]) -> Result<PredictJob, ApiError> {
        let explain = match &self.explain {
            Some(v) => Some(v.attach(Condition::default(), prepared)?),
            None => None,
        };
        Ok(super::super::predict::job(model, prepared, 1, explain, None))
    }

    fn drawing_size(&self, prepared: &[Prepared], _: &PredictOutput) -> usize {
        prepare::drawing_size(prepared, self.explain.is_some() as usize, self.visualized())
    }

    fn draw(
        self,
        model: &LoadedModel,
        prepared: Vec<Prepared>,
        output: PredictOutput,
        _: Instant,
    ) -> Result<Drawn<VertexAnswer>, ApiError> {
        let predictions: Vec<Value> = output.rows.iter().map(prediction).collect();
        let body = match &self.explain {
            None => VertexAnswer::Predict(VertexPredictResponse {
                predictions,
                deployed_model_id: self.names.deployed_model_id,
                model: self.names.model,
                model_display_name: model.name.clone(),
                model_version_id: model.sha256.clone(),
            }),
            Some(valid) => {
                let pictures = self.visualized();
                let mut explanations = Vec::with_capacity(output.explained.len());
                for ((result, prep), key) in output.explained.iter().zip(&prepared).zip(&self.keys) {
                    let result = result
                        .as_ref()
                        .ok_or_else(|| ApiError::internal("an instance left unexplained"))?;
                    let key = key.clone().unwrap_or_else(|| model.spec.input.clone());
                    explanations.push(explanation(valid, result, prep, &key, pictures, self.max_map_pixels));
                }
                VertexAnswer::Explain(VertexExplainResponse {
                    explanations,
                    deployed_model_id: self.names.deployed_model_id,
                    predictions,
                })
            }
        };
        Ok(Drawn { body, picture: None })
    }
}

/// A row's prediction as a Vertex prediction: the model's output, or its outputs by name.
fn prediction(row: &RowPrediction) -> Value {
    match row.outputs.len() {
        1 => row
            .outputs
            .values()
            .next()
            .map(|v| Value::from(v.clone()))
            .unwrap_or_default(),
        _ => Value::Object(
            row.outputs
                .iter()
                .map(|(name, v)| (name.clone(), Value::from(v.clone())))
                .collect(),
        ),
    }
}

/// One instance's explanation: an attribution per explained output.
fn explanation(
    valid: &ValidExplain,
    result: &ExplainResult,
    prep: &Prepared,
    key: &str,
    pictures: bool,
    max_map_pixels: u64,
) -> Explanation {
    let model = &valid.model;
    // Text models' values per token, and the pictures, as explaind's own answer places them.
    let (placed, panels) = explain::explanations(valid, result, prep, pictures, max_map_pixels);
    let attributions = result
        .attributions
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let values = a.tensor.as_f32().unwrap_or(&[]);
            let scored = result.scores.get(i).copied().unwrap_or(f64::from(a.target.score));
            let (instance, baseline, approximation_error) = ends_and_error(a, values, scored);
            let feature_attributions = match (&model.spec.tabular, panels.get(i), placed.get(i)) {
                (Some(t), _, _) => Value::Object(
                    t.features
                        .iter()
                        .zip(values)
                        .map(|(name, v)| (name.clone(), short(*v)))
                        .collect(),
                ),
                (None, Some(panel), _) => {
                    let jpeg = base64::engine::general_purpose::STANDARD.encode(crate::render::jpeg(panel));
                    one_key(key, serde_json::json!({ "b64_jpeg": jpeg }))
                }
                (None, None, Some(p)) if p.tokens.is_some() => one_key(
                    key,
                    Value::from(
                        p.tokens
                            .iter()
                            .flatten()
                            .map(|t| f64::from(t.value))
                            .collect::<Vec<_>>(),
                    ),
                ),
                _ => one_key(key, nested(&a.tensor.shape, values)),
            };
            Attribution {
                baseline_output_value: baseline,
                instance_output_value: instance,
                feature_attributions,
                output_index: vec![a.target.index],
                output_display_name: a.target.label.clone(),
                approximation_error,
                output_name: model.spec.output.clone(),
            }
        })
        .collect();
    Explanation { attributions }
}

fn one_key(key: &str, value: Value) -> Value {
    Value::Object(Map::from_iter([(key.to_string(), value)]))
}

/// The explained output at the input and at the baseline, and the approximation error (`scored`:
/// the model's output at the input). From a method's own details: sampled Shapley's `value` and
/// `base_value` (it explains the score predictions report, a logit model's probability) and
/// relative standard error; XRAI's outputs at its two baselines
/// (averaged, as Vertex averages several baselines) and the mean of their relative completeness
/// gaps. Else from the completeness gap (`convergence_delta`, integrated gradients): baseline =
/// instance - (sum - gap), error = |gap| / |instance - baseline|.
fn ends_and_error(a: &crate::explain::TargetAttribution, values: &[f32], scored: f64) -> (f64, f64, Option<f64>) {
    let instance = scored;
    let details = a.details.as_ref().unwrap_or(&Value::Null);
    let relative = |gap: f64, spread: f64| {
        if spread.abs() > 0.0 {
            gap.abs() / spread.abs()
        } else {
            gap.abs()
        }
    };
    if let (Some(value), Some(base)) = (details["value"].as_f64(), details["base_value"].as_f64()) {
        return (value, base, details["approximation_error"]["relative"].as_f64());
    }
    let at = |d: &Value| Some((d["black"].as_f64()?, d["white"].as_f64()?));
    if let Some((black, white)) = at(&details["base_values"]) {
        let error = at(&details["ig_convergence_deltas"])
            .map(|(db, dw)| (relative(db, instance - black) + relative(dw, instance - white)) / 2.0);
        return (instance, (black + white) / 2.0, error);
    }
    let sum: f64 = values.iter().map(|v| f64::from(*v)).sum();
    match a.convergence_delta {
        Some(gap) => {
            let baseline = instance - (sum - gap);
            (instance, baseline, Some(relative(gap, instance - baseline)))
        }
        // Attributions that sum to the output's change (efficiency).
        None => (instance, instance - sum, None),
    }
}

/// An f32 as JSON in its shortest form (`0.0014114551`, as explaind's own answers write f32s),
/// not the f64 it widens to (`0.0014114551013335586`): image attributions are long lists.
fn short(v: f32) -> Value {
    let text = v.to_string();
    Value::from(text.parse::<f64>().unwrap_or(f64::from(v)))
}

/// Row-major values as nested lists of `shape`.
fn nested(shape: &[usize], values: &[f32]) -> Value {
    match shape.split_first() {
        None => values.first().map_or(Value::Null, |v| short(*v)),
        Some((_, [])) => Value::Array(values.iter().map(|v| short(*v)).collect()),
        Some((&n, rest)) => {
            let size = rest.iter().product::<usize>().max(1);
            Value::Array(values.chunks(size).take(n).map(|chunk| nested(rest, chunk)).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_lists_follow_the_shape() {
        let v: Vec<f32> = (0..6).map(|i| i as f32).collect();
        assert_eq!(
            nested(&[2, 3], &v),
            serde_json::json!([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
        );
        assert_eq!(
            nested(&[1, 2, 3], &v),
            serde_json::json!([[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]])
        );
        assert_eq!(nested(&[6], &v).as_array().map(Vec::len), Some(6));
    }

    #[test]
    fn the_verb_follows_the_last_colon() {
        assert!(matches!(split_call("fashion:explain"), Ok(("fashion", Verb::Explain))));
        assert!(matches!(split_call("a:b:predict"), Ok(("a:b", Verb::Predict))));
        assert!(split_call("fashion:rawPredict").is_err());
        assert!(split_call("fashion").is_err());
    }
}
