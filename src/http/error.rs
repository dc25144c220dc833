//! RFC 9457 problem details: every error the API returns, with a stable `type` per kind of problem.
//! Each `type` is a path on this service (`/problems/{slug}`) that documents the problem.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::executor::ExecError;
use crate::runtime::{preprocess::InputError, RuntimeError};

/// The kinds of problem, each with a stable slug, status and title.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    MalformedJson,
    MalformedRequest,
    UriTooLong,
    HeadersTooLarge,
    InvalidRequest,
    InvalidInput,
    InvalidImage,
    ImageTooLarge,
    PayloadTooLarge,
    UnsupportedMediaType,
    ModelNotFound,
    NotDifferentiable,
    UnsupportedModel,
    Unauthorized,
    Forbidden,
    AuditFailed,
    NotFound,
    NotReplayable,
    MethodNotAllowed,
    Overloaded,
    TooManyJobs,
    DeadlineExceeded,
    RequestTimeout,
    ShuttingDown,
    Internal,
}

impl ProblemKind {
    /// Every kind, for documentation.
    pub const ALL: [ProblemKind; 25] = [
        Self::MalformedJson,
        Self::MalformedRequest,
        Self::UriTooLong,
        Self::HeadersTooLarge,
        Self::InvalidRequest,
        Self::InvalidInput,
        Self::InvalidImage,
        Self::ImageTooLarge,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::ModelNotFound,
        Self::NotDifferentiable,
        Self::UnsupportedModel,
        Self::Unauthorized,
        Self::Forbidden,
        Self::AuditFailed,
        Self::NotFound,
        Self::NotReplayable,
        Self::MethodNotAllowed,
        Self::Overloaded,
        Self::TooManyJobs,
        Self::DeadlineExceeded,
        Self::RequestTimeout,
        Self::ShuttingDown,
        Self::Internal,
    ];

    /// Stable identifier used in the `type` URI.
    pub fn slug(self) -> &'static str {
        match self {
            Self::MalformedJson => "malformed-json",
            Self::MalformedRequest => "malformed-request",
            Self::UriTooLong => "uri-too-long",
            Self::HeadersTooLarge => "headers-too-large",
            Self::InvalidRequest => "invalid-request",
            Self::InvalidInput => "invalid-input",
            Self::InvalidImage => "invalid-image",
            Self::ImageTooLarge => "image-too-large",
            Self::PayloadTooLarge => "payload-too-large",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::ModelNotFound => "model-not-found",
            Self::NotDifferentiable => "model-not-differentiable",
            Self::UnsupportedModel => "unsupported-model",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::AuditFailed => "audit-failed",
            Self::NotFound => "not-found",
            Self::NotReplayable => "not-replayable",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::Overloaded => "overloaded",
            Self::TooManyJobs => "too-many-jobs",
            Self::DeadlineExceeded => "deadline-exceeded",
            Self::RequestTimeout => "request-timeout",
            Self::ShuttingDown => "shutting-down",
            Self::Internal => "internal",
        }
    }

    /// HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            Self::MalformedJson | Self::MalformedRequest | Self::InvalidRequest | Self::InvalidImage => {
                StatusCode::BAD_REQUEST
            }
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::InvalidInput | Self::NotDifferentiable | Self::UnsupportedModel => StatusCode::UNPROCESSABLE_ENTITY,
            Self::ImageTooLarge | Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::ModelNotFound | Self::NotFound => StatusCode::NOT_FOUND,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotReplayable => StatusCode::CONFLICT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Overloaded | Self::ShuttingDown | Self::AuditFailed => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooManyJobs => StatusCode::TOO_MANY_REQUESTS,
            Self::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Short human-readable summary.
    pub fn title(self) -> &'static str {
        match self {
            Self::MalformedJson => "The request body is not valid JSON",
            Self::MalformedRequest => "The request is not valid HTTP",
            Self::UriTooLong => "The request URI is too long",
            Self::HeadersTooLarge => "The request headers are too large",
            Self::InvalidRequest => "The request is not valid",
            Self::InvalidInput => "The input does not fit the model",
            Self::InvalidImage => "The image cannot be decoded",
            Self::ImageTooLarge => "The image has too many pixels",
            Self::PayloadTooLarge => "The request body is too large",
            Self::UnsupportedMediaType => "The content type is not accepted here",
            Self::ModelNotFound => "No such model",
            Self::NotDifferentiable => "The model has operators without gradients",
            Self::UnsupportedModel => "The method cannot read this kind of model",
            Self::Unauthorized => "An API key is needed",
            Self::Forbidden => "The API key may not do this",
            Self::AuditFailed => "The audit record could not be written, so no answer is given",
            Self::NotFound => "No such resource",
            Self::NotReplayable => "The audit record cannot be run again",
            Self::MethodNotAllowed => "Method not allowed on this resource",
            Self::Overloaded => "The service is at capacity",
            Self::TooManyJobs => "This caller has as many unfinished jobs as it may",
            Self::DeadlineExceeded => "The job did not finish in time",
            Self::RequestTimeout => "The request did not arrive in time",
            Self::ShuttingDown => "The service is shutting down",
            Self::Internal => "Internal error",
        }
    }

    /// The `type` URI.
    pub fn type_uri(self) -> String {
        format!("/problems/{}", self.slug())
    }

    /// The kind with that slug.
    pub fn from_slug(slug: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.slug() == slug)
    }
}

/// An RFC 9457 problem details body.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// Stable URI reference identifying the kind of problem; dereference it for documentation.
    #[serde(rename = "type")]
    #[schema(example = "/problems/overloaded")]
    pub type_uri: String,
    /// Short summary of the kind of problem.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// What went wrong with this request, and what to do about it.
    pub detail: String,
}

/// An error on its way to becoming a problem+json response.
#[derive(Debug)]
pub struct ApiError {
    /// Kind of problem.
    pub kind: ProblemKind,
    /// Detail shown to the caller.
    pub detail: String,
    /// Seconds for `Retry-After`, on 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A problem of `kind` with a caller-facing `detail`.
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// An internal error: the detail is logged, the caller sees a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            ProblemKind::Internal,
            "the server failed to handle this request; the x-request-id response header finds its log lines",
        )
    }

    /// The problem body this error answers with.
    pub fn problem(&self) -> Problem {
        Problem {
            type_uri: self.kind.type_uri(),
            title: self.kind.title().to_string(),
            status: self.kind.status().as_u16(),
            detail: self.detail.clone(),
        }
    }

    /// The problem as JSON, as a failed job keeps it.
    pub fn problem_json(&self) -> serde_json::Value {
        serde_json::to_value(self.problem()).unwrap_or_default()
    }

    /// Marks a 503 with the `Retry-After` to send.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.kind.status();
        if status.is_client_error() {
            tracing::info!(problem = self.kind.slug(), status = status.as_u16(), detail = %self.detail, "request refused");
        } else {
            tracing::warn!(problem = self.kind.slug(), status = status.as_u16(), detail = %self.detail, "request failed");
        }
        let body = Problem {
            type_uri: self.kind.type_uri(),
            title: self.kind.title().to_string(),
            status: status.as_u16(),
            detail: self.detail,
        };
        let mut response = (status, axum::Json(body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        // A body that stalled, or one refused unread, leaves the connection in an unknown state.
        if matches!(self.kind, ProblemKind::RequestTimeout | ProblemKind::PayloadTooLarge) {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.kind == ProblemKind::Unauthorized {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        let kind = match &e {
            InputError::BadImage(_) => ProblemKind::InvalidImage,
            InputError::ImageTooLarge { .. } => ProblemKind::ImageTooLarge,
            InputError::BadFeatures(_) | InputError::WrongKind(_) | InputError::BadText(_) => ProblemKind::InvalidInput,
            InputError::TextTooLong { .. } => ProblemKind::PayloadTooLarge,
        };
        Self::new(kind, e.to_string())
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Input(e) => e.into(),
            RuntimeError::UnknownModel(name) => model_not_found(&name),
            e @ RuntimeError::NotDifferentiable { .. } => Self::new(ProblemKind::NotDifferentiable, e.to_string()),
            e @ RuntimeError::UnsupportedModel { .. } => Self::new(ProblemKind::UnsupportedModel, e.to_string()),
            RuntimeError::Cancelled => Self::new(
                ProblemKind::DeadlineExceeded,
                "the job was cancelled before it finished",
            ),
            e @ RuntimeError::Inference { .. } => Self::internal(e),
        }
    }
}

impl From<ExecError> for ApiError {
    fn from(e: ExecError) -> Self {
        match e {
            ExecError::Overloaded { retry_after_secs, .. } => {
                ApiError::new(ProblemKind::Overloaded, e.to_string()).retry_after(retry_after_secs)
            }
            e @ ExecError::DeadlineExceeded(_) => ApiError::new(ProblemKind::DeadlineExceeded, e.to_string()),
            e @ ExecError::ShuttingDown => ApiError::new(ProblemKind::ShuttingDown, e.to_string()).retry_after(1),
            e @ ExecError::Panicked(_) => ApiError::internal(e),
            ExecError::Runtime(e) => e.into(),
        }
    }
}

impl From<crate::explain::Invalid> for ApiError {
    fn from(e: crate::explain::Invalid) -> Self {
        use crate::explain::Invalid;
        let kind = match &e {
            Invalid::Request(_) => ProblemKind::InvalidRequest,
            Invalid::Model(_) => ProblemKind::InvalidInput,
            Invalid::Unsupported(_) => ProblemKind::UnsupportedModel,
            Invalid::NotDifferentiable(_) => ProblemKind::NotDifferentiable,
        };
        ApiError::new(kind, e.to_string())
    }
}

/// The problem for an unknown model name.
pub fn model_not_found(name: &str) -> ApiError {
    ApiError::new(
        ProblemKind::ModelNotFound,
        format!("no model named `{name}`; GET /v1/models lists the loaded models"),
    )
}

/// The answer to a request whose audit record could not be written: no record, no answer.
pub fn audit_failed(e: crate::audit::StoreError) -> ApiError {
    tracing::error!(error = %e, "audit record not written; the answer is withheld");
    ApiError::new(ProblemKind::AuditFailed, "the audit log is unavailable; retry shortly").retry_after(5)
}
