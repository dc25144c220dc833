//! KServe's V1 protocol: `POST /v1/models/{model}:predict` and `:explain`, `{"instances": [...]}`
//! in, `{"predictions": [...]}` or `{"explanations": [...]}` out. The verb shares its path segment
//! with the model's name, which axum's router cannot split (a parameter takes a whole segment), so
//! `POST /v1/models/{model}` takes it and [`verb`] reads the suffix; `GET /v1/models/{model}`
//! stays explaind's model description.
//!
//! An instance is what the model takes: a text model's text (a string, or `{"text": ...}`); an
//! image model's PNG or JPEG as base64 (`{"b64": ...}`, TensorFlow Serving's `{"image_bytes":
//! {"b64": ...}}`, TorchServe's `{"data": ...}`, or explaind's `{"image": ...}`) or its input
//! tensor row as nested numbers; a
//! tabular model's features (values in the manifest's order, or an object by name). A prediction
//! is the row of the model's score output; an explanation is explaind's own explain answer, by the
//! method the manifest's `[explanation]` names (else the task's default, [`DEFAULT_METHODS`]).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{invalid, serve, ErrorBody, ProtocolError, Row, Shape};
use crate::http::auth::Caller;
use crate::http::error::{ApiError, ProblemKind};
use crate::http::explain::{self, ExplainOptions, ExplainResponse, ValidExplain};
use crate::http::input::{self, RawInput};
use crate::http::AppState;
use crate::runtime::manifest::Task;
use crate::runtime::preprocess::Features;
use crate::runtime::LoadedModel;

/// The methods `:explain` tries, in order, for a model whose manifest names none: the first that
/// can explain the model is used. Integrated gradients for images and texts (what KServe's and
/// TorchServe's Captum examples use); TreeSHAP for tree ensembles, exact and fast, else KernelSHAP
/// (alibi's and KServe's tabular default) for tabular models.
pub const DEFAULT_METHODS: [(Task, &[&str]); 4] = [
    (Task::ImageClassification, &["integrated-gradients", "kernel-shap"]),
    (Task::TabularClassification, &["tree-shap", "kernel-shap"]),
    (Task::TabularRegression, &["tree-shap", "kernel-shap"]),
    (Task::TextClassification, &["integrated-gradients", "kernel-shap"]),
];

/// Nesting of an instance's arrays accepted.
const MAX_DEPTH: usize = 32;

/// A KServe V1 request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct V1Request {
    /// The inputs (at most `max_batch`).
    #[schema(value_type = Vec<Object>)]
    pub instances: Vec<Value>,
}

/// The answer to `:predict`.
#[derive(Serialize, ToSchema)]
pub struct V1Predictions {
    /// Per instance, the row of the model's score output (logits, probabilities or the value).
    pub predictions: Vec<Vec<f64>>,
}

/// The answer to `:explain`.
#[derive(Serialize, ToSchema)]
pub struct V1Explanations {
    /// Per instance, explaind's explanation (as `POST /v1/models/{model}/explain/{method}`
    /// answers it).
    pub explanations: Vec<ExplainResponse>,
}

/// KServe V1 predict or explain: `POST /v1/models/{model}:predict`, `POST /v1/models/{model}:explain`.
///
/// `{"instances": [...]}` in; `{"predictions": [...]}` (each instance's row of the model's score
/// output) or `{"explanations": [...]}` (each instance's explaind explanation, by the method the
/// model's manifest names in `[explanation]`, else the task's default) out. Errors are
/// `{"error": "..."}` with explaind's problem `type` beside it.
#[utoipa::path(post, path = "/v1/models/{model}", tag = "kserve v1",
    params(("model" = String, Path, description = "the model's name and KServe's verb: `{model}:predict` or `{model}:explain` (`GET` takes the name alone)", example = "fashion-cnn:predict")),
    request_body(content((V1Request = "application/json"))),
    responses(
        (status = 200, description = "predictions (`:predict`) or explanations (`:explain`)",
            content((V1Predictions = "application/json"), (V1Explanations = "application/json"))),
        (status = 400, body = ErrorBody, description = "malformed JSON, an instance the model does not take"),
        (status = 404, body = ErrorBody, description = "unknown model, verb or method"),
        (status = 405, body = ErrorBody, description = "no verb after the model's name"),
        (status = 408, body = ErrorBody, description = "the body did not arrive within body_read_timeout_ms"),
        (status = 413, body = ErrorBody, description = "body or image too large"),
        (status = 415, body = ErrorBody, description = "content type not accepted"),
        (status = 422, body = ErrorBody, description = "an instance or the explanation does not fit the model"),
        (status = 503, body = ErrorBody, description = "at capacity; see Retry-After"),
        (status = 504, body = ErrorBody, description = "deadline passed"),
    ))]
pub async fn verb(
    State(state): State<Arc<AppState>>,
    Path(model_verb): Path<String>,
    headers: HeaderMap,
    caller: Option<Extension<Caller>>,
    body: Body,
) -> Result<Response, ProtocolError> {
    let started = Instant::now();
    let (name, verb) = model_verb.rsplit_once(':').ok_or_else(|| {
        ApiError::new(
            ProblemKind::MethodNotAllowed,
            "POST /v1/models/{model} takes a verb: `{model}:predict` or `{model}:explain`",
        )
    })?;
    let explaining = match verb {
        "predict" => false,
        "explain" => true,
        other => {
            return Err(ApiError::new(
                ProblemKind::NotFound,
                format!(
                    "no verb `:{}`; KServe V1 has `:predict` and `:explain`",
                    other.chars().take(40).collect::<String>()
                ),
            )
            .into())
        }
    };
    let model = state.model(name)?;
    state.refuse_when_full()?;
    let received = input::receive(&state.config, &headers, body).await?;
    let request: V1Request = input::json_body(received).await?;
    let inputs = request
        .instances
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            instance(&model, v).map_err(|mut e| {
                e.detail = format!("instances[{i}]: {}", e.detail);
                e
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let who = (&headers, caller);
    let done = match explaining {
        false => serve(&state, model, inputs, None, Predicting, who, started)
            .await
            .map(|d| d.json),
        true => {
            let valid = default_explanation(&state, &model, inputs.len())?;
            serve(&state, model, inputs, Some(valid), Explaining, who, started)
                .await
                .map(|d| d.json)
        }
    }?;
    let json = done.ok_or_else(|| ApiError::internal("a V1 answer not serialised"))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

/// The model's explanation for `:explain`, validated for `inputs` instances: the manifest's
/// `[explanation]`, else the first of the task's [`DEFAULT_METHODS`] that can explain it.
fn default_explanation(state: &AppState, model: &Arc<LoadedModel>, inputs: usize) -> Result<ValidExplain, ApiError> {
    let options = |params: Option<Value>| ExplainOptions {
        params,
        target: None,
        seed: None,
        include: None,
        render: None,
        evaluate: None,
    };
    if let Some(e) = &model.spec.explanation {
        let method = state.method(&e.method)?;
        return explain::validate(state, model, method.as_ref(), options(e.params.clone()), inputs);
    }
    let names = DEFAULT_METHODS
        .iter()
        .find(|(task, _)| *task == model.spec.task)
        .map_or(&[][..], |(_, names)| *names);
    // The first that validates: it applies to the model and its plan fits the limits.
    let mut refusal = None;
    for method in names.iter().filter_map(|n| state.methods.get(n)) {
        match explain::validate(state, model, method.as_ref(), options(None), inputs) {
            Ok(valid) => return Ok(valid),
            Err(e) => refusal = refusal.or(Some(e)),
        }
    }
    Err(refusal.unwrap_or_else(|| {
        ApiError::new(
            ProblemKind::UnsupportedModel,
            format!(
                "no default method explains model `{}`: name one in its manifest's [explanation]",
                model.name
            ),
        )
    }))
}

/// One instance as the input the model takes.
fn instance(model: &LoadedModel, value: Value) -> Result<RawInput, ApiError> {
    let bad = |m: &str| invalid(m.to_string());
    match (model.spec.task, value) {
        (Task::TextClassification, Value::String(text)) => Ok(RawInput::Text(text)),
        (Task::TextClassification, Value::Object(mut o)) if o.len() == 1 => match o.remove("text") {
            Some(Value::String(text)) => Ok(RawInput::Text(text)),
            _ => Err(bad("a text model's instance is a string, or {\"text\": \"...\"}")),
        },
        (Task::TextClassification, _) => Err(bad("a text model's instance is a string, or {\"text\": \"...\"}")),
        (Task::ImageClassification | Task::ObjectDetection, Value::Object(o)) => {
            let one = (o.len() == 1).then(|| o.iter().next()).flatten();
            let b64 = match one.map(|(k, v)| (k.as_str(), v)) {
                Some(("b64" | "data" | "image", Value::String(s))) => s,
                Some(("image_bytes", Value::Object(inner))) => match (inner.len(), inner.get("b64")) {
                    (1, Some(Value::String(s))) => s,
                    _ => return Err(bad("`image_bytes` is {\"b64\": \"...\"}")),
                },
                _ => {
                    return Err(bad(
                        "an image instance is {\"b64\": \"...\"}, {\"image_bytes\": {\"b64\": \"...\"}}, \
                         {\"data\": \"...\"}, {\"image\": \"...\"} or the input tensor's row as nested numbers",
                    ))
                }
            };
            Ok(RawInput::Image(input::decode_base64_image(b64)?))
        }
        (Task::ImageClassification | Task::ObjectDetection, v @ Value::Array(_)) => {
            let mut row = Vec::new();
            flatten(&v, 0, &mut row)?;
            Ok(RawInput::Row(row))
        }
        (Task::ImageClassification | Task::ObjectDetection, _) => Err(bad(
            "an image instance is {\"b64\": \"...\"} or the input tensor's row as nested numbers",
        )),
        (_, Value::Array(values)) => Ok(RawInput::Features(Features::Ordered(values))),
        (_, Value::Object(named)) => Ok(RawInput::Features(Features::Named(named))),
        (_, _) => Err(bad(
            "a tabular instance is the feature values in the manifest's order, or an object by name",
        )),
    }
}

/// The numbers of nested arrays, in row-major order (as float32, checked by the model's row).
fn flatten(value: &Value, depth: usize, into: &mut Vec<f32>) -> Result<(), ApiError> {
    match value {
        Value::Array(items) if depth < MAX_DEPTH => items.iter().try_for_each(|v| flatten(v, depth + 1, into)),
        Value::Number(n) => {
            into.push(n.as_f64().unwrap_or(f64::NAN) as f32);
            Ok(())
        }
        _ => Err(invalid(format!(
            "a tensor row is numbers in arrays nested at most {MAX_DEPTH} deep"
        ))),
    }
}

/// `:predict`'s answer.
struct Predicting;

impl Shape for Predicting {
    type Body = V1Predictions;

    fn draw(
        self,
        model: &LoadedModel,
        rows: Vec<Row>,
        _: Option<&ValidExplain>,
        _: u64,
        _: Instant,
    ) -> Result<V1Predictions, ApiError> {
        let predictions = rows
            .into_iter()
            .map(|mut r| {
                r.prediction
                    .outputs
                    .remove(&model.spec.output)
                    .ok_or_else(|| ApiError::internal("the score output missing from a row"))
            })
            .collect::<Result<_, _>>()?;
        Ok(V1Predictions { predictions })
    }
}

/// `:explain`'s answer.
struct Explaining;

impl Shape for Explaining {
    type Body = V1Explanations;

    fn draw(
        self,
        _: &LoadedModel,
        rows: Vec<Row>,
        valid: Option<&ValidExplain>,
        max_map_pixels: u64,
        started: Instant,
    ) -> Result<V1Explanations, ApiError> {
        let valid = valid.ok_or_else(|| ApiError::internal(":explain without its explanation"))?;
        let explanations = rows
            .iter()
            .map(|row| {
                let result = row
                    .explained
                    .as_ref()
                    .ok_or_else(|| ApiError::internal("an instance left unexplained"))?;
                let (list, _) = explain::explanations(valid, result, &row.prepared, false, max_map_pixels);
                let mut body = explain::explain_body(valid, list, result, started);
                body.truncated = row.prepared.text.as_ref().map(|t| t.truncated);
                Ok(body)
            })
            .collect::<Result<_, ApiError>>()?;
        Ok(V1Explanations { explanations })
    }
}
