//! Errors on the Vertex AI routes in Google's error object (`{"error": {"code", "message",
//! "status", "details"}}`), whoever refused the request: the handler, the API-key check, the
//! whole-request deadline, the route table. One layer rewrites the problem+json every one of them
//! answers with, so the statuses, details and headers (`Retry-After`) stay those of explaind's
//! own endpoints, and explaind's problem `type` rides along in a `google.rpc.ErrorInfo`.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

use super::shapes::{ErrorInfo, GoogleError, GoogleStatus};
use crate::http::error::ProblemKind;

/// The paths answered in Google's error shape.
pub const PREFIX: &str = "/v1/projects/";

/// Problem bodies are a few hundred bytes; anything larger is not one of them.
const MAX_PROBLEM_BYTES: usize = 64 * 1024;

/// Rewrites the problem+json answers of the Vertex AI paths into Google's error object.
pub async fn google_errors(req: Request, next: Next) -> Response {
    let vertex = req.uri().path().starts_with(PREFIX);
    let response = next.run(req).await;
    let problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !vertex || !problem {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_PROBLEM_BYTES).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let problem: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let text = |key: &str| problem[key].as_str().unwrap_or_default().to_string();
    let type_uri = text("type");
    let kind = type_uri
        .strip_prefix("/problems/")
        .and_then(ProblemKind::from_slug)
        .unwrap_or(ProblemKind::Internal);
    let body = google_error(kind, parts.status.as_u16(), text("detail"));
    let json = serde_json::to_vec(&body).unwrap_or_default();
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(json))
}

/// The error object of a problem of `kind`, answered with HTTP `code`.
pub fn google_error(kind: ProblemKind, code: u16, message: String) -> GoogleError {
    let metadata = BTreeMap::from([
        ("type".to_string(), kind.type_uri()),
        ("title".to_string(), kind.title().to_string()),
    ]);
    GoogleError {
        error: GoogleStatus {
            code,
            message,
            status: canonical(kind).into(),
            details: vec![ErrorInfo {
                type_url: "type.googleapis.com/google.rpc.ErrorInfo".into(),
                reason: kind.slug().replace('-', "_").to_ascii_uppercase(),
                domain: "explaind".into(),
                metadata,
            }],
        },
    }
}

/// The canonical code (`google.rpc.Code`) nearest each kind of problem.
fn canonical(kind: ProblemKind) -> &'static str {
    use ProblemKind::*;
    match kind {
        MalformedJson | MalformedRequest | InvalidRequest | InvalidInput | InvalidImage | UnsupportedMediaType => {
            "INVALID_ARGUMENT"
        }
        UriTooLong | HeadersTooLarge | ImageTooLarge | PayloadTooLarge => "OUT_OF_RANGE",
        NotDifferentiable | UnsupportedModel | NotReplayable => "FAILED_PRECONDITION",
        ModelNotFound | NotFound => "NOT_FOUND",
        Unauthorized => "UNAUTHENTICATED",
        Forbidden => "PERMISSION_DENIED",
        MethodNotAllowed => "UNIMPLEMENTED",
        TooManyJobs => "RESOURCE_EXHAUSTED",
        Overloaded | ShuttingDown | AuditFailed => "UNAVAILABLE",
        DeadlineExceeded | RequestTimeout => "DEADLINE_EXCEEDED",
        Internal => "INTERNAL",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_has_a_reason_in_capitals() {
        for kind in ProblemKind::ALL {
            let e = google_error(kind, kind.status().as_u16(), "m".into());
            let reason = &e.error.details[0].reason;
            assert!(reason.chars().all(|c| c.is_ascii_uppercase() || c == '_'), "{reason}");
            assert_eq!(e.error.details[0].metadata["type"], kind.type_uri());
        }
    }
}
