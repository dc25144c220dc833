//! The Open Inference Protocol (KServe V2; Triton's HTTP/REST API): server and model metadata,
//! health, and `POST /v2/models/{model}/infer` with JSON tensors and the binary tensor data
//! extension. Infer runs the model's graph as it is: the input tensor explaind feeds it (an image
//! model's normalised pixels, a tabular model's features in order; a text model's texts as
//! `BYTES`) in, every output tensor out. The request parameter `explain` (`{method, params,
//! target, seed}`) adds the attribution as two more outputs: `attribution` and
//! `attribution_target`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{invalid, serve, ErrorBody, ProtocolError, Row, Shape};
use crate::explain::TargetSpec;
use crate::http::auth::Caller;
use crate::http::error::ApiError;
use crate::http::explain::{self, ExplainOptions, ValidExplain};
use crate::http::input::{self, RawInput};
use crate::http::AppState;
use crate::runtime::{LoadedModel, TensorInfo};

/// The header that gives the JSON part's length in a binary tensor data body.
const HEADER_LENGTH: &str = "inference-header-content-length";
/// The output the explain extension adds: the attribution of each row.
pub const ATTRIBUTION: &str = "attribution";
/// The output the explain extension adds: the class each attribution explains.
pub const ATTRIBUTION_TARGET: &str = "attribution_target";
/// The input a text model takes: its texts.
const TEXT_INPUT: &str = "text";
/// Nesting of `data` arrays accepted (a tensor of rank 32 at most).
const MAX_RANK: usize = 32;

/// `GET /v2`: the server's metadata.
#[derive(Serialize, ToSchema)]
pub struct ServerMetadata {
    /// `explaind`.
    pub name: &'static str,
    /// explaind's version.
    pub version: &'static str,
    /// The protocol's extensions served: `binary_tensor_data`, and explaind's `explain`.
    pub extensions: Vec<&'static str>,
}

/// A tensor's name, datatype and shape (`-1` for a size that varies).
#[derive(Serialize, ToSchema)]
pub struct TensorMetadata {
    /// Its name.
    pub name: String,
    /// Its datatype (`FP32`, `INT64`, `BYTES`, ...).
    pub datatype: &'static str,
    /// Its shape, batch axis first.
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{model}`: the model's metadata.
#[derive(Serialize, ToSchema)]
pub struct ModelMetadata {
    /// The model's name.
    pub name: String,
    /// Its one version (explaind serves one per name).
    pub versions: Vec<String>,
    /// `onnx_onnxv1`, the protocol's name for ONNX models.
    pub platform: &'static str,
    /// The inputs infer takes.
    pub inputs: Vec<TensorMetadata>,
    /// The outputs infer answers.
    pub outputs: Vec<TensorMetadata>,
}

/// An inference request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InferRequest {
    /// Echoed in the answer.
    pub id: Option<String>,
    /// The model's name, as KServe's client repeats it (the path's, when given).
    pub model_name: Option<String>,
    /// `binary_data_output` (bool), and explaind's `explain` extension.
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
    /// The model's input (exactly one).
    pub inputs: Vec<InferInput>,
    /// The outputs to answer (default: all).
    pub outputs: Option<Vec<RequestedOutput>>,
}

/// An input tensor.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InferInput {
    /// The model input's name.
    pub name: String,
    /// Its shape, batch axis first.
    pub shape: Vec<u64>,
    /// Its datatype.
    pub datatype: String,
    /// `binary_data_size`: the tensor's bytes follow the JSON part.
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
    /// Its values in row-major order, flat or nested.
    #[schema(value_type = Option<Vec<Object>>)]
    pub data: Option<Box<serde_json::value::RawValue>>,
}

/// An output asked for.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestedOutput {
    /// The output's name.
    pub name: String,
    /// `binary_data` (bool): answer this output's bytes after the JSON part.
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
}

/// The answer to an inference request.
#[derive(Serialize, ToSchema)]
pub struct InferResponse {
    /// The model's name.
    pub model_name: String,
    /// The request's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The outputs.
    pub outputs: Vec<OutputTensor>,
    /// Bytes of the outputs answered as binary, in order, after the JSON part.
    #[serde(skip)]
    #[schema(ignore)]
    pub binary: Vec<u8>,
}

/// An output tensor.
#[derive(Serialize, ToSchema)]
pub struct OutputTensor {
    /// Its name.
    pub name: String,
    /// Its datatype.
    pub datatype: &'static str,
    /// Its shape, batch axis first.
    pub shape: Vec<u64>,
    /// `binary_data_size` when its bytes follow the JSON part; the explain extension's `method`.
    #[serde(skip_serializing_if = "Map::is_empty")]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    /// Its values, row-major (absent when answered as binary).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<f64>>)]
    pub data: Option<Values>,
}

/// An output's values.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Values {
    /// `FP32`.
    F32(Vec<f32>),
    /// `FP64`.
    F64(Vec<f64>),
    /// `INT64` (and the other integer types).
    I64(Vec<i64>),
}

/// The explain extension: `parameters.explain`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainParameter {
    method: String,
    params: Option<Value>,
    target: Option<TargetSpec>,
    seed: Option<u64>,
}

/// `GET /v2`.
#[utoipa::path(get, path = "/v2", tag = "open inference protocol",
    responses((status = 200, body = ServerMetadata, description = "the server's name, version and extensions")))]
pub async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "explaind",
        version: env!("CARGO_PKG_VERSION"),
        extensions: vec!["binary_tensor_data", "explain"],
    })
}

/// Liveness or readiness, as KServe's server words it (Triton's clients read the status only).
#[derive(Serialize, ToSchema)]
pub struct OipHealth {
    /// The process is up (`/v2/health/live`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<bool>,
    /// Every worker can take jobs (`/v2/health/ready`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
}

/// `GET /v2/health/live`: the process is up.
#[utoipa::path(get, path = "/v2/health/live", tag = "open inference protocol",
    responses((status = 200, body = OipHealth, description = "live")))]
pub async fn live() -> Json<OipHealth> {
    Json(OipHealth {
        live: Some(true),
        ready: None,
    })
}

/// `GET /v2/health/ready`: every worker has its sessions (as `/readyz`).
#[utoipa::path(get, path = "/v2/health/ready", tag = "open inference protocol",
    responses((status = 200, body = OipHealth, description = "ready"), (status = 503, body = OipHealth, description = "starting")))]
pub async fn ready(State(state): State<Arc<AppState>>) -> (StatusCode, Json<OipHealth>) {
    let ready = state.executor.is_ready();
    let status = match ready {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    (
        status,
        Json(OipHealth {
            live: None,
            ready: Some(ready),
        }),
    )
}

/// `GET /v2/models/{model}/ready`: the model is loaded and the workers are ready.
#[utoipa::path(get, path = "/v2/models/{model}/ready", tag = "open inference protocol",
    params(("model" = String, Path, description = "model name", example = "fashion-cnn")),
    responses(
        (status = 200, description = "ready"),
        (status = 404, body = ErrorBody, description = "unknown model"),
        (status = 503, description = "starting"),
    ))]
pub async fn model_ready(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<StatusCode, ProtocolError> {
    state.model(&model)?;
    Ok(match state.executor.is_ready() {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    })
}

/// `GET /v2/models/{model}`: the input infer takes and the outputs it answers, from the graph.
#[utoipa::path(get, path = "/v2/models/{model}", tag = "open inference protocol",
    params(("model" = String, Path, description = "model name", example = "fashion-cnn")),
    responses(
        (status = 200, body = ModelMetadata, description = "the model's inputs and outputs"),
        (status = 404, body = ErrorBody, description = "unknown model"),
    ))]
pub async fn model_metadata(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Json<ModelMetadata>, ProtocolError> {
    let model = state.model(&model)?;
    let input = match model.spec.text {
        Some(_) => TensorMetadata {
            name: TEXT_INPUT.into(),
            datatype: "BYTES",
            shape: vec![-1],
        },
        None => {
            let graph = model.summary.inputs.iter().find(|i| i.name == model.spec.input);
            let row = crate::runtime::preprocess::row_shape(&model.spec).unwrap_or_default();
            TensorMetadata {
                name: model.spec.input.clone(),
                datatype: graph.and_then(|g| datatype(&g.dtype)).unwrap_or("FP32"),
                shape: std::iter::once(-1).chain(row.iter().map(|&d| d as i64)).collect(),
            }
        }
    };
    let outputs = model
        .summary
        .outputs
        .iter()
        .filter_map(|o| {
            Some(TensorMetadata {
                name: o.name.clone(),
                datatype: datatype(&o.dtype)?,
                shape: o
                    .shape
                    .iter()
                    .flatten()
                    .map(|d| d.fixed().map_or(-1, |n| n as i64))
                    .collect(),
            })
        })
        .collect();
    Ok(Json(ModelMetadata {
        name: model.name.clone(),
        versions: vec!["1".into()],
        platform: "onnx_onnxv1",
        inputs: vec![input],
        outputs,
    }))
}

/// The protocol's datatype of an ONNX element type, for the tensors explaind reads back.
fn datatype(onnx: &str) -> Option<&'static str> {
    Some(match onnx {
        "float32" | "float" => "FP32",
        "float64" | "double" => "FP64",
        "int64" => "INT64",
        "int32" => "INT32",
        _ => return None,
    })
}

/// Runs the model on the request's input tensor and answers every output tensor (those asked),
/// with the attribution of each row when `parameters.explain` asks for it.
///
/// The body is JSON, or the binary tensor data extension's JSON part followed by the tensors'
/// bytes (its length in `Inference-Header-Content-Length`). Image models take their normalised
/// input tensor (`GET /v2/models/{model}` gives its shape), tabular models their features in the
/// manifest's order, text models their texts as `BYTES`. Errors are `{"error": "..."}` with
/// explaind's problem `type` beside it.
#[utoipa::path(post, path = "/v2/models/{model}/infer", tag = "open inference protocol",
    params(("model" = String, Path, description = "model name", example = "fashion-cnn")),
    request_body(content((InferRequest = "application/json"), (inline(crate::http::openapi::Binary) = "application/octet-stream"))),
    responses(
        (status = 200, description = "the output tensors (JSON, or the binary extension's JSON part and bytes)",
            content((InferResponse = "application/json"), (inline(crate::http::openapi::Binary) = "application/octet-stream"))),
        (status = 400, body = ErrorBody, description = "a request the protocol does not allow, or that does not fit the model"),
        (status = 404, body = ErrorBody, description = "unknown model or explanation method"),
        (status = 408, body = ErrorBody, description = "the body did not arrive within body_read_timeout_ms"),
        (status = 413, body = ErrorBody, description = "body too large"),
        (status = 415, body = ErrorBody, description = "content type not accepted"),
        (status = 422, body = ErrorBody, description = "the input or the explanation does not fit the model"),
        (status = 503, body = ErrorBody, description = "at capacity; see Retry-After"),
        (status = 504, body = ErrorBody, description = "deadline passed"),
    ))]
pub async fn infer(
    State(state): State<Arc<AppState>>,
    Path(model_name): Path<String>,
    headers: HeaderMap,
    caller: Option<Extension<Caller>>,
    body: Body,
) -> Result<Response, ProtocolError> {
    let started = Instant::now();
    let model = state.model(&model_name)?;
    state.refuse_when_full()?;
    let received = input::receive(&state.config, &headers, body).await?;
    let header_length = header_length(&headers)?;
    let name = model.name.clone();
    let parsed = crate::http::offload::cpu(received.bytes.len(), move || {
        parse(&received.bytes, &received.media_type, header_length, &name)
    })
    .await??;
    let inputs = inputs(&model, parsed.input)?;
    let explain = match parsed.explain {
        Some(e) => {
            let method = state.method(&e.method)?;
            let options = ExplainOptions {
                region: None,
                params: e.params,
                target: e.target,
                seed: e.seed,
                include: None,
                render: None,
                evaluate: None,
            };
            Some(explain::validate(
                &state,
                &model,
                method.as_ref(),
                options,
                inputs.len(),
            )?)
        }
        None => None,
    };
    let answer = Answering {
        id: parsed.id,
        outputs: parsed.outputs,
        binary_all: parsed.binary_output,
        batch: inputs.len(),
    };
    let done = serve(&state, model, inputs, explain, answer, (&headers, caller), started).await?;
    let json = done
        .json
        .ok_or_else(|| ApiError::internal("an infer answer not serialised"))?;
    Ok(respond(json, done.body.binary))
}

/// The answer: JSON, or the binary extension's JSON part followed by the outputs' bytes.
fn respond(json: Vec<u8>, binary: Vec<u8>) -> Response {
    if binary.is_empty() {
        return ([(header::CONTENT_TYPE, "application/json")], json).into_response();
    }
    let length = HeaderValue::from(json.len());
    let mut body = json;
    body.extend_from_slice(&binary);
    let mut response = ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response();
    response.headers_mut().insert(HEADER_LENGTH, length);
    response
}

/// The JSON part's length of a binary tensor data body, when the header gives it.
fn header_length(headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    headers
        .get(HEADER_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| invalid("Inference-Header-Content-Length must be a number of bytes"))
        })
        .transpose()
}

/// A request's tensor values, flattened from the JSON's (possibly nested) arrays.
#[derive(Debug, Default)]
pub struct Flat {
    numbers: Vec<f32>,
    strings: Vec<String>,
}

impl Flat {
    /// Reads `data`'s JSON text: numbers straight to float32 with the standard library's parser
    /// (correctly rounded, and several times faster than serde_json's exact f64 path, which this
    /// crate enables for its own round trips: on a 28x28 image that parse was a third of the
    /// request's CPU), booleans as 0 and 1, strings (`BYTES`) as they are.
    fn read(text: &str) -> Result<Self, String> {
        let bytes = text.as_bytes();
        let mut flat = Flat::default();
        let (mut at, mut depth) = (0usize, 0usize);
        while at < bytes.len() {
            match bytes[at] {
                b'[' => {
                    depth += 1;
                    if depth > MAX_RANK {
                        return Err(format!("`data` is nested more than {MAX_RANK} deep"));
                    }
                    at += 1;
                }
                b']' => {
                    depth = depth.saturating_sub(1);
                    at += 1;
                }
                b',' | b' ' | b'\n' | b'\r' | b'\t' => at += 1,
                b'"' => {
                    // The string's end: the first quote not escaped.
                    let mut end = at + 1;
                    while end < bytes.len() && bytes[end] != b'"' {
                        end += if bytes[end] == b'\\' { 2 } else { 1 };
                    }
                    let token = text.get(at..=end).ok_or("`data` has an unterminated string")?;
                    flat.strings
                        .push(serde_json::from_str(token).map_err(|e| format!("`data`: {e}"))?);
                    at = end + 1;
                }
                _ => {
                    let end = bytes[at..]
                        .iter()
                        .position(|b| matches!(b, b',' | b']' | b' ' | b'\n' | b'\r' | b'\t'))
                        .map_or(bytes.len(), |n| at + n);
                    let token = &text[at..end];
                    let value = match token {
                        "true" => 1.0,
                        "false" => 0.0,
                        _ => token.parse::<f32>().map_err(|_| {
                            format!(
                                "`data` holds `{}`, not a number",
                                token.chars().take(20).collect::<String>()
                            )
                        })?,
                    };
                    flat.numbers.push(value);
                    at = end;
                }
            }
        }
        Ok(flat)
    }
}

/// The one input tensor of a request, its values read (from `data` or the binary part).
struct InputTensor {
    name: String,
    shape: Vec<u64>,
    datatype: String,
    values: Flat,
}

/// A request, parsed.
struct Parsed {
    id: Option<String>,
    input: InputTensor,
    outputs: Option<Vec<(String, bool)>>,
    binary_output: bool,
    explain: Option<ExplainParameter>,
}

/// Reads a JSON or binary-extension body.
fn parse(bytes: &Bytes, media: &str, header_length: Option<usize>, model: &str) -> Result<Parsed, ApiError> {
    let (json, mut binary) = match header_length {
        Some(n) => {
            if n > bytes.len() {
                return Err(invalid(format!(
                    "Inference-Header-Content-Length is {n} bytes; the body has {}",
                    bytes.len()
                )));
            }
            (bytes.slice(..n), bytes.slice(n..))
        }
        None if media == "application/json" || media.is_empty() => (bytes.clone(), Bytes::new()),
        None => {
            return Err(ApiError::new(
                crate::http::error::ProblemKind::UnsupportedMediaType,
                "send application/json, or the binary tensor data extension with Inference-Header-Content-Length",
            ))
        }
    };
    let request: InferRequest = input::parse_json(&json)?;
    if request.model_name.as_deref().is_some_and(|m| m != model) {
        return Err(invalid("`model_name` differs from the path's model"));
    }
    let mut parameters = request.parameters.unwrap_or_default();
    let binary_output = match parameters.remove("binary_data_output") {
        None => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(invalid("parameters.binary_data_output must be a boolean")),
    };
    // An object, or its JSON text (parameters are scalars in the protocol's gRPC form).
    let explain = parameters
        .remove("explain")
        .map(|v| match v {
            Value::String(text) => serde_json::from_str::<ExplainParameter>(&text),
            v => serde_json::from_value::<ExplainParameter>(v),
        })
        .transpose()
        .map_err(|e| invalid(format!("parameters.explain: {e}")))?;
    if let Some(name) = parameters.keys().next() {
        return Err(invalid(format!(
            "unknown request parameter `{name}`; accepted: binary_data_output, explain"
        )));
    }
    let mut inputs = request.inputs.into_iter();
    let (Some(one), None) = (inputs.next(), inputs.next()) else {
        return Err(invalid("give exactly one input tensor: the model takes one"));
    };
    let mut values = match &one.data {
        Some(raw) if raw.get().starts_with('[') => Flat::read(raw.get()).map_err(invalid)?,
        Some(_) => return Err(invalid("an input's `data` is an array")),
        None => Flat::default(),
    };
    let mut in_params = one.parameters.unwrap_or_default();
    if let Some(size) = in_params.remove("binary_data_size") {
        let size = size
            .as_u64()
            .and_then(|s| usize::try_from(s).ok())
            .filter(|&s| s <= binary.len())
            .ok_or_else(|| invalid("binary_data_size must be a count of the bytes that follow the JSON part"))?;
        if !values.numbers.is_empty() || !values.strings.is_empty() {
            return Err(invalid("give an input's values in `data` or as binary, not both"));
        }
        values = from_binary(&binary.split_to(size), &one.datatype)?;
    }
    if let Some(name) = in_params.keys().next() {
        return Err(invalid(format!(
            "unknown input parameter `{name}`; accepted: binary_data_size"
        )));
    }
    if !binary.is_empty() {
        return Err(invalid(
            "bytes follow the JSON part that no input's binary_data_size counts",
        ));
    }
    let outputs = request
        .outputs
        .map(|list| {
            list.into_iter()
                .map(|o| {
                    let mut p = o.parameters.unwrap_or_default();
                    let binary = match p.remove("binary_data") {
                        None => binary_output,
                        Some(Value::Bool(b)) => b,
                        Some(_) => return Err(invalid("an output's binary_data must be a boolean")),
                    };
                    if let Some(name) = p.keys().next() {
                        return Err(invalid(format!(
                            "unknown output parameter `{name}`; accepted: binary_data"
                        )));
                    }
                    Ok((o.name, binary))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    Ok(Parsed {
        id: request.id,
        input: InputTensor {
            name: one.name,
            shape: one.shape,
            datatype: one.datatype,
            values,
        },
        outputs,
        binary_output,
        explain,
    })
}

/// An input's values from the binary part: little-endian `FP32`, or `BYTES` (each a 4-byte
/// little-endian length, then its bytes).
fn from_binary(bytes: &[u8], datatype: &str) -> Result<Flat, ApiError> {
    let mut flat = Flat::default();
    match datatype {
        "FP32" => {
            if !bytes.len().is_multiple_of(4) {
                return Err(invalid("binary FP32 data is not a whole number of 4-byte values"));
            }
            flat.numbers = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
        }
        "BYTES" => {
            let mut rest = bytes;
            while !rest.is_empty() {
                let (len, tail) = rest
                    .split_first_chunk::<4>()
                    .ok_or_else(|| invalid("binary BYTES data is cut inside a length"))?;
                let len = u32::from_le_bytes(*len) as usize;
                let (text, tail) = tail
                    .split_at_checked(len)
                    .ok_or_else(|| invalid("binary BYTES data is cut inside an element"))?;
                let text = std::str::from_utf8(text).map_err(|_| invalid("a BYTES element is not UTF-8 text"))?;
                flat.strings.push(text.to_string());
                rest = tail;
            }
        }
        other => {
            return Err(invalid(format!(
                "binary data of datatype {other} is not read: explaind's models take FP32 (or BYTES texts)"
            )))
        }
    }
    Ok(flat)
}

/// The request's input tensor as explaind's inputs, one per row, after checking its name,
/// datatype and shape against the model.
fn inputs(model: &LoadedModel, input: InputTensor) -> Result<Vec<RawInput>, ApiError> {
    let text = model.spec.text.is_some();
    let (name, datatype) = match text {
        true => (TEXT_INPUT, "BYTES"),
        false => (model.spec.input.as_str(), "FP32"),
    };
    if input.name != name {
        return Err(invalid(format!(
            "model `{}` has no input `{}`; its input is `{name}`",
            model.name,
            input.name.chars().take(100).collect::<String>()
        )));
    }
    if input.datatype != datatype {
        return Err(invalid(format!(
            "input `{name}` is {datatype}, not {}",
            input.datatype.chars().take(20).collect::<String>()
        )));
    }
    let count = input
        .shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| invalid("the input's shape holds more values than can be counted"))?;
    let rows = input.shape.first().copied().unwrap_or(0);
    let rows = usize::try_from(rows).map_err(|_| invalid("too many rows"))?;
    if text {
        let fits = input.shape.len() <= 2 && input.shape.get(1).is_none_or(|&d| d == 1);
        if !fits || count != input.values.strings.len() || !input.values.numbers.is_empty() {
            return Err(invalid(format!(
                "input `text` is [rows] or [rows, 1] texts; shape {:?} with {} texts does not fit",
                input.shape,
                input.values.strings.len()
            )));
        }
        return Ok(input.values.strings.into_iter().map(RawInput::Text).collect());
    }
    if !input.values.strings.is_empty() || count != input.values.numbers.len() {
        return Err(invalid(format!(
            "input `{name}` has shape {:?} ({count} values) and {} numbers in `data`",
            input.shape,
            input.values.numbers.len()
        )));
    }
    let row = crate::runtime::preprocess::row_shape(&model.spec).unwrap_or_default();
    if input
        .shape
        .get(1..)
        .is_none_or(|r| !r.iter().map(|&d| d as usize).eq(row.iter().copied()))
    {
        return Err(invalid(format!(
            "input `{name}` has shape {:?}; the model takes [rows, {}]",
            input.shape,
            row.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
        )));
    }
    let per_row = count.checked_div(rows).unwrap_or(0);
    Ok(input
        .values
        .numbers
        .chunks(per_row.max(1))
        .take(rows)
        .map(|chunk| RawInput::Row(chunk.to_vec()))
        .collect())
}

/// How an infer answer is written: the outputs asked (and which as binary), the request's id.
struct Answering {
    id: Option<String>,
    outputs: Option<Vec<(String, bool)>>,
    binary_all: bool,
    batch: usize,
}

impl Shape for Answering {
    type Body = InferResponse;

    fn draw(
        self,
        model: &LoadedModel,
        rows: Vec<Row>,
        explain: Option<&ValidExplain>,
        _: u64,
        _: Instant,
    ) -> Result<InferResponse, ApiError> {
        let mut tensors = model_outputs(model, &rows, self.batch)?;
        if let Some(valid) = explain {
            tensors.extend(attributions(valid, &rows)?);
        }
        let chosen: Vec<(OutputTensor, bool)> = match self.outputs {
            None => tensors.into_iter().map(|t| (t, self.binary_all)).collect(),
            Some(asked) => {
                let mut chosen = Vec::with_capacity(asked.len());
                for (name, binary) in asked {
                    let at = tensors.iter().position(|t| t.name == name).ok_or_else(|| {
                        invalid(format!(
                            "no output `{}`; outputs: {}",
                            name.chars().take(100).collect::<String>(),
                            tensors.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
                        ))
                    })?;
                    chosen.push((tensors.swap_remove(at), binary));
                }
                chosen
            }
        };
        let mut binary = Vec::new();
        let outputs = chosen
            .into_iter()
            .map(|(mut t, as_binary)| {
                if as_binary {
                    let before = binary.len();
                    match t.data.take() {
                        Some(Values::F32(v)) => v.iter().for_each(|x| binary.extend_from_slice(&x.to_le_bytes())),
                        Some(Values::F64(v)) => v.iter().for_each(|x| binary.extend_from_slice(&x.to_le_bytes())),
                        Some(Values::I64(v)) => v.iter().for_each(|x| binary.extend_from_slice(&x.to_le_bytes())),
                        None => {}
                    }
                    t.parameters
                        .insert("binary_data_size".into(), Value::from(binary.len() - before));
                }
                t
            })
            .collect();
        Ok(InferResponse {
            model_name: model.name.clone(),
            id: self.id,
            outputs,
            binary,
        })
    }
}

/// Every output the model gave for every row, stacked on the batch axis (in the graph's order).
fn model_outputs(model: &LoadedModel, rows: &[Row], batch: usize) -> Result<Vec<OutputTensor>, ApiError> {
    let mut out = Vec::new();
    for info in &model.summary.outputs {
        let Some(datatype) = datatype(&info.dtype) else {
            continue;
        };
        let Some(first) = rows.first().and_then(|r| r.prediction.outputs.get(&info.name)) else {
            continue;
        };
        let len = first.len();
        let mut values = Vec::with_capacity(len.saturating_mul(batch));
        for row in rows {
            let v = row
                .prediction
                .outputs
                .get(&info.name)
                .filter(|v| v.len() == len)
                .ok_or_else(|| ApiError::internal("an output's rows differ in length"))?;
            values.extend_from_slice(v);
        }
        out.push(OutputTensor {
            name: info.name.clone(),
            datatype,
            shape: std::iter::once(batch as u64).chain(row_dims(info, len)).collect(),
            parameters: Map::new(),
            data: Some(match datatype {
                "FP32" => Values::F32(values.iter().map(|&v| v as f32).collect()),
                "FP64" => Values::F64(values),
                _ => Values::I64(values.iter().map(|&v| v as i64).collect()),
            }),
        });
    }
    Ok(out)
}

/// One row's dimensions of an output of `len` values per row: the graph's, where it fixes them
/// all, else `[len]`.
fn row_dims(info: &TensorInfo, len: usize) -> Vec<u64> {
    let fixed: Option<Vec<u64>> = info
        .shape
        .as_deref()
        .and_then(|s| s.get(1..))
        .map(|dims| dims.iter().map(|d| d.fixed().map(|n| n as u64)).collect())
        .and_then(|d: Option<Vec<u64>>| d);
    match fixed {
        Some(dims) if dims.iter().product::<u64>() == len as u64 => dims,
        _ => vec![len as u64],
    }
}

/// The explain extension's outputs: `attribution` (each row's attribution in the input's shape;
/// `[rows, targets, ...]` when several targets are asked) and `attribution_target` (the classes
/// explained, `[rows, targets]`).
fn attributions(valid: &ValidExplain, rows: &[Row]) -> Result<[OutputTensor; 2], ApiError> {
    let results: Vec<&crate::jobs::ExplainResult> = rows
        .iter()
        .map(|r| {
            r.explained
                .as_ref()
                .ok_or_else(|| ApiError::internal("a row left unexplained"))
        })
        .collect::<Result<_, _>>()?;
    let first = results
        .first()
        .and_then(|r| r.attributions.first())
        .ok_or_else(|| ApiError::internal("an explanation without attributions"))?;
    let targets = results[0].attributions.len();
    let shape = first.tensor.shape.clone();
    let mut values = Vec::new();
    let mut classes = Vec::new();
    for result in &results {
        if result.attributions.len() != targets || result.attributions.iter().any(|a| a.tensor.shape != shape) {
            return Err(invalid(
                "the rows' attributions differ in shape (texts of different lengths, or targets): explain one row per request",
            ));
        }
        for a in &result.attributions {
            values.extend_from_slice(a.tensor.as_f32().unwrap_or(&[]));
            classes.push(a.target.index as i64);
        }
    }
    let n = rows.len() as u64;
    let mut dims = vec![n];
    if targets > 1 {
        dims.push(targets as u64);
    }
    dims.extend(shape.iter().map(|&d| d as u64));
    let mut parameters = Map::new();
    parameters.insert("method".into(), Value::from(valid.params.method()));
    Ok([
        OutputTensor {
            name: ATTRIBUTION.into(),
            datatype: "FP32",
            shape: dims,
            parameters,
            data: Some(Values::F32(values)),
        },
        OutputTensor {
            name: ATTRIBUTION_TARGET.into(),
            datatype: "INT64",
            shape: vec![n, targets as u64],
            parameters: Map::new(),
            data: Some(Values::I64(classes)),
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::Flat;

    #[test]
    fn data_is_read_flat_whatever_its_nesting() {
        let flat = Flat::read("[[1, -2.5e-1], [true, false], [ 3 ,4]]").unwrap();
        assert_eq!(flat.numbers, vec![1.0, -0.25, 1.0, 0.0, 3.0, 4.0]);
        // float32 correctly rounded from the text (not through f64).
        assert_eq!(Flat::read("[0.1]").unwrap().numbers, vec![0.1f32]);
        let flat = Flat::read(r#"["a \"quoted\" word", "caf\u00e9, ]"]"#).unwrap();
        assert_eq!(flat.strings, vec!["a \"quoted\" word".to_string(), "café, ]".into()]);
        assert!(Flat::read("[1, x]").is_err());
        assert!(Flat::read(r#"["open]"#).is_err());
        assert!(Flat::read(r#"["ends in \"#).is_err());
        assert!(Flat::read(&format!("{}1{}", "[".repeat(33), "]".repeat(33))).is_err());
        assert!(Flat::read(&format!("{}1{}", "[".repeat(32), "]".repeat(32))).is_ok());
    }
}
