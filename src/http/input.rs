//! Request bodies: JSON, raw image bodies, and multipart forms, read once under the body-size limit
//! and turned into validated inputs. Every failure here is a 4xx problem that says what to fix.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Uri};
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::{ApiError, ProblemKind};
use crate::runtime::preprocess::Features;

/// Tabular features: by name, or as values in the model's feature order.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum FeaturesJson {
    /// `{"feature name": value, ...}`
    #[schema(value_type = Object)]
    Named(serde_json::Map<String, serde_json::Value>),
    /// `[value, ...]` in the order `GET /v1/models/{model}` lists.
    #[schema(value_type = Vec<f64>)]
    Ordered(Vec<serde_json::Value>),
}

impl From<FeaturesJson> for Features {
    fn from(f: FeaturesJson) -> Self {
        match f {
            FeaturesJson::Named(m) => Features::Named(m),
            FeaturesJson::Ordered(v) => Features::Ordered(v),
        }
    }
}

/// One model input as sent by the caller.
#[derive(Debug, Clone)]
pub enum RawInput {
    /// Encoded image bytes (PNG or JPEG).
    Image(Bytes),
    /// Tabular features.
    Features(Features),
    /// Text, for text models.
    Text(String),
    /// One row of the model's input tensor as it is (the Open Inference Protocol's tensors),
    /// checked against the model's row when prepared.
    Row(Vec<f32>),
}

impl RawInput {
    /// Bytes of the input as sent (an image's encoded bytes; a feature vector's values).
    pub fn sent_bytes(&self) -> usize {
        match self {
            RawInput::Image(bytes) => bytes.len(),
            RawInput::Features(Features::Named(map)) => map.len().saturating_mul(32),
            RawInput::Features(Features::Ordered(values)) => values.len().saturating_mul(8),
            RawInput::Text(text) => text.len(),
            RawInput::Row(values) => values.len().saturating_mul(4),
        }
    }
}

/// The one input of a JSON body: exactly one of base64 `image`, `features` and `text` (`what`
/// names the object in the error).
pub fn one_input(
    image: Option<String>,
    features: Option<FeaturesJson>,
    text: Option<String>,
    what: &str,
) -> Result<RawInput, ApiError> {
    at_most_one_input(image, features, text, what)?.ok_or_else(|| needs_one_input(what))
}

/// As [`one_input`], for a request that may send none (activation maximisation from noise).
pub fn at_most_one_input(
    image: Option<String>,
    features: Option<FeaturesJson>,
    text: Option<String>,
    what: &str,
) -> Result<Option<RawInput>, ApiError> {
    match (image, features, text) {
        (None, None, None) => Ok(None),
        (Some(img), None, None) => Ok(Some(RawInput::Image(decode_base64_image(&img)?))),
        (None, Some(f), None) => Ok(Some(RawInput::Features(f.into()))),
        (None, None, Some(t)) => Ok(Some(RawInput::Text(t))),
        _ => Err(needs_one_input(what)),
    }
}

/// The problem of a request without exactly one input.
pub fn needs_one_input(what: &str) -> ApiError {
    ApiError::new(
        ProblemKind::InvalidRequest,
        format!("{what} needs exactly one of `image`, `features`, `text`"),
    )
}

/// A body as received: its content type and bytes, read within the size limit.
pub struct ReceivedBody {
    /// Lower-cased media type without parameters (`application/json`).
    pub media_type: String,
    /// The full Content-Type header (multipart needs its boundary).
    pub content_type: String,
    /// Body bytes.
    pub bytes: Bytes,
}

/// Reads the whole body under the config's size limit and read deadline: a body that stalls is
/// refused with 408 (and its connection closed), so a slow client holds no queue slot.
pub async fn receive(
    config: &crate::config::Config,
    headers: &HeaderMap,
    body: Body,
) -> Result<ReceivedBody, ApiError> {
    receive_up_to(headers, body, config.max_body_bytes, config.body_read_timeout_ms).await
}

/// [`receive`] with its own size limit and read deadline (an upload's).
pub async fn receive_up_to(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    deadline_ms: u64,
) -> Result<ReceivedBody, ApiError> {
    let deadline = std::time::Duration::from_millis(deadline_ms);
    tokio::time::timeout(deadline, read_body(headers, body, limit))
        .await
        .map_err(|_| {
            ApiError::new(
                ProblemKind::RequestTimeout,
                format!("the request body did not arrive within {deadline_ms} ms (body_read_timeout_ms)"),
            )
        })?
}

/// Reads the whole body, refusing it once it passes `limit` bytes.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<ReceivedBody, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let media_type = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(too_large(limit));
        }
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        // The only error a complete, in-limit body can give is the length limit.
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
            too_large(limit)
        } else {
            ApiError::new(
                ProblemKind::InvalidRequest,
                format!("cannot read the request body: {e}"),
            )
        }
    })?;
    Ok(ReceivedBody {
        media_type,
        content_type,
        bytes,
    })
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ProblemKind::PayloadTooLarge,
        format!("the request body is larger than the limit of {limit} bytes"),
    )
}

/// A body that must be JSON, parsed into `T` (off the async threads when large); any other
/// content type is refused.
pub async fn json_body<T: DeserializeOwned + Send + 'static>(received: ReceivedBody) -> Result<T, ApiError> {
    if received.media_type != "application/json" {
        return Err(ApiError::new(
            ProblemKind::UnsupportedMediaType,
            "send application/json",
        ));
    }
    super::offload::cpu(received.bytes.len(), move || parse_json(&received.bytes)).await?
}

/// Parses JSON into `T`, telling malformed JSON apart from JSON of the wrong shape.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::new(ProblemKind::InvalidRequest, e.to_string()),
        _ => ApiError::new(ProblemKind::MalformedJson, e.to_string()),
    })
}

/// Parses the query string into `T` (unknown parameters are refused).
pub fn parse_query<T: DeserializeOwned>(uri: &Uri) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::new(ProblemKind::InvalidRequest, format!("query string: {}", e.body_text())))
}

/// Decodes a base64 image string (standard alphabet, padding optional, data-URL prefix allowed).
pub fn decode_base64_image(s: &str) -> Result<Bytes, ApiError> {
    let payload = match s.split_once(";base64,") {
        Some((prefix, data)) if prefix.starts_with("data:") => data,
        _ => s,
    };
    let cleaned: String = payload.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(cleaned.trim_end_matches('='))
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(cleaned.trim_end_matches('=')))
        .map(Bytes::from)
        .map_err(|e| ApiError::new(ProblemKind::InvalidImage, format!("`image` is not valid base64: {e}")))
}

/// The parts of a multipart form: image files, and named text fields.
pub struct MultipartForm {
    /// Contents of every `image` part, in order.
    pub images: Vec<Bytes>,
    /// Other parts by name (`request` JSON, `top_k`, ...), as text.
    pub fields: Vec<(String, String)>,
}

/// Splits a multipart/form-data body; only the part names in `allowed` (besides `image`) are accepted.
pub async fn parse_multipart(body: &ReceivedBody, allowed: &[&str]) -> Result<MultipartForm, ApiError> {
    let bad = |m: String| ApiError::new(ProblemKind::InvalidRequest, m);
    let boundary = multer::parse_boundary(&body.content_type).map_err(|e| bad(format!("multipart body: {e}")))?;
    let bytes = body.bytes.clone();
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::convert::Infallible>(bytes) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut form = MultipartForm {
        images: Vec::new(),
        fields: Vec::new(),
    };
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| bad(format!("multipart body: {e}")))?
    {
        let name = field.name().unwrap_or("").to_string();
        if name == "image" {
            form.images.push(
                field
                    .bytes()
                    .await
                    .map_err(|e| bad(format!("multipart part `image`: {e}")))?,
            );
        } else if allowed.contains(&name.as_str()) {
            let text = field
                .text()
                .await
                .map_err(|e| bad(format!("multipart part `{name}`: {e}")))?;
            form.fields.push((name, text));
        } else {
            let mut names = vec!["image"];
            names.extend_from_slice(allowed);
            return Err(bad(format!(
                "unknown multipart part `{name}`; accepted parts: {}",
                names.join(", ")
            )));
        }
    }
    Ok(form)
}

/// True for the media types sent as a bare image body.
pub fn is_image_media_type(media_type: &str) -> bool {
    matches!(
        media_type,
        "image/png" | "image/jpeg" | "image/jpg" | "application/octet-stream"
    )
}
