//! API keys: with keys configured, every route but health, readiness, metrics and the documents
//! needs `Authorization: Bearer <key>`; the audit routes need a key with the `audit` scope. Keys
//! are stored as sha256 hashes, so the config file holds no secret.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;
use axum::Extension;
use sha2::{Digest, Sha256};

use super::error::{ApiError, ProblemKind};
use super::AppState;
use crate::audit::Context;
use crate::config::Scope;
use crate::executor::board::Viewer;

/// The authenticated caller: the key's name, and whether it may see every caller's jobs.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub admin: bool,
}

/// Routes anyone may call: probes, metrics, and the documents that describe the API.
fn is_open(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics" | "/" | "/openapi.json")
        || path.starts_with("/docs")
        || path.starts_with("/problems/")
}

/// The sha256 (hex) of a key, as the config stores it.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Checks the bearer key of every request that needs one.
pub async fn require_key(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let keys = &state.config.api_keys;
    let path = req.uri().path().to_string();
    // CORS preflights carry no credentials by design.
    if keys.is_empty() || is_open(&path) || req.method() == axum::http::Method::OPTIONS {
        return Ok(next.run(req).await);
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::new(
                ProblemKind::Unauthorized,
                "this service needs an API key: send `Authorization: Bearer <key>`",
            )
        })?;
    let digest = hash_key(presented);
    // Compare every configured hash in full, so timing says nothing about which one is near.
    let matching: Vec<&crate::config::ApiKey> = keys
        .iter()
        .filter(|k| constant_time_eq(k.sha256.to_ascii_lowercase().as_bytes(), digest.as_bytes()))
        .collect();
    let key = matching
        .first()
        .ok_or_else(|| ApiError::new(ProblemKind::Unauthorized, "the API key is not valid"))?;
    // Erasure destroys data for good: only administrators.
    let needed = if path.starts_with("/v1/audit/subjects") {
        Scope::Admin
    } else if path.starts_with("/v1/audit") {
        Scope::Audit
    } else if req.method() == axum::http::Method::POST
        && path.starts_with("/v1/models/")
        && (path.ends_with("/reference") || path.contains("/concepts/"))
    {
        Scope::Reference
    } else {
        Scope::Predict
    };
    if !key.scopes.contains(&needed) {
        return Err(ApiError::new(
            ProblemKind::Forbidden,
            format!("key `{}` lacks the `{needed:?}` scope this route needs", key.name).to_lowercase(),
        ));
    }
    req.extensions_mut().insert(Caller {
        name: key.name.clone(),
        admin: key.scopes.contains(&Scope::Admin),
    });
    Ok(next.run(req).await)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The header naming whose data an audited request holds.
pub const SUBJECT_HEADER: &str = "x-audit-subject";

/// Longest subject id, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 256;

/// A subject id as given (header or path): 1 to 256 bytes of visible ASCII.
pub fn check_subject(subject: &str) -> Result<(), ApiError> {
    if subject.is_empty() || subject.len() > MAX_SUBJECT_BYTES || !subject.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::new(
            ProblemKind::InvalidRequest,
            format!("an audit subject is 1 to {MAX_SUBJECT_BYTES} visible ASCII characters"),
        ));
    }
    Ok(())
}

/// The audit context of a request: its id, its caller, and its subject (`x-audit-subject`).
pub fn audit_context(headers: &HeaderMap, caller: Option<Extension<Caller>>) -> Result<Context, ApiError> {
    let subject = match headers.get(SUBJECT_HEADER) {
        None => None,
        Some(v) => {
            let text = v.to_str().map_err(|_| {
                ApiError::new(
                    ProblemKind::InvalidRequest,
                    format!("`{SUBJECT_HEADER}` must be visible ASCII"),
                )
            })?;
            check_subject(text)?;
            Some(text.to_string())
        }
    };
    Ok(Context {
        request_id: headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(String::from),
        caller: caller.map(|Extension(c)| c.name),
        record_id: None,
        subject,
    })
}

/// Who asks about a job (see [`Viewer`]).
pub fn viewer(caller: Option<&Extension<Caller>>) -> Viewer {
    caller
        .map(|Extension(c)| Viewer {
            caller: Some(c.name.clone()),
            admin: c.admin,
        })
        .unwrap_or_default()
}
