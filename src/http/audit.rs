//! The audit log's routes: one record, filtered listings, the overlay drawn again from a stored
//! map, a streamed JSON Lines export, chain verification, and a subject's erasure.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use base64::Engine;
use futures_util::stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::auth::{audit_context, check_subject, Caller};
use super::error::{audit_failed, ApiError, ProblemKind};
use super::input::RawInput;
use super::AppState;
use crate::audit::record::unpack_map;
use crate::audit::{AuditLog, Erasure, ExportAt, Filter, Verification};
use crate::render::{self, Bar, RenderOptions};
use crate::runtime::preprocess::Features;

/// Filters and paging of `GET /v1/audit/records`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Model name.
    pub model: Option<String>,
    /// Method (`saliency`, ...).
    pub method: Option<String>,
    /// Target label (as recorded; several targets are joined by commas).
    pub target: Option<String>,
    /// `prediction`, `explanation`, `uncertainty`, `concepts` (TCAV, layer information), `replay`
    /// or `erasure`.
    pub kind: Option<String>,
    /// From this time on (RFC 3339, inclusive).
    pub since: Option<String>,
    /// Before this time (RFC 3339).
    pub until: Option<String>,
    /// Records per page (default 50, at most 500).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<i64>,
}

/// A page of records.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordPage {
    /// Records in chain order, each with its `chain` position and hashes.
    #[schema(value_type = Vec<Object>)]
    pub records: Vec<Value>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<i64>,
}

fn millis(name: &str, text: &Option<String>) -> Result<Option<i64>, ApiError> {
    text.as_deref()
        .map(|t| {
            humantime::parse_rfc3339_weak(t)
                .map_err(|e| {
                    ApiError::new(
                        ProblemKind::InvalidRequest,
                        format!("`{name}`: {e} (RFC 3339 expected)"),
                    )
                })
                .map(|time| {
                    time.duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or(0)
                })
        })
        .transpose()
}

/// The record `id` as the API shows it (404 when there is none). Every handler reads a record's
/// contents through here, so `AuditLog::to_json` stays the one place that reads a stored body.
pub(super) async fn record(state: &AppState, id: &str) -> Result<Value, ApiError> {
    let store = state.audit.store().await.map_err(audit_failed)?;
    let stored = store.get(id).await.map_err(audit_failed)?.ok_or_else(|| {
        ApiError::new(
            ProblemKind::NotFound,
            format!("no audit record `{}`", id.chars().take(100).collect::<String>()),
        )
    })?;
    Ok(AuditLog::to_json(&stored))
}

/// Why a record's input cannot be read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoInput {
    /// The service ran without `audit_store_inputs` when it was recorded.
    NotStored,
    /// It was stored and has since been erased (its `data` is null).
    Erased,
}

/// The record's input at `index` as it was sent (an image's bytes, a feature vector in the
/// model's order, a text), or why there is none.
pub(super) fn recorded_input(record: &Value, index: usize) -> Result<RawInput, NoInput> {
    let evidence = &record["inputs"][index];
    let data = match evidence.get("data") {
        None => return Err(NoInput::NotStored),
        Some(d) => d,
    };
    let input = if let Some(b64) = data["image_base64"].as_str() {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .map(|bytes| RawInput::Image(bytes.into()))
    } else if let Some(text) = data["text"].as_str() {
        Some(RawInput::Text(text.to_string()))
    } else {
        data["features"]
            .as_array()
            .map(|v| RawInput::Features(Features::Ordered(v.clone())))
    };
    input.ok_or(NoInput::Erased)
}

/// A recorded target's attributions with their shape: a tabular model's in full, else the packed
/// map (kept with `audit_store_maps`); `None` when the record kept neither.
pub(super) fn recorded_values(target: &Value) -> Option<(Vec<usize>, Vec<f32>)> {
    match target["attributions"].as_array() {
        // Each number is an f32 as the answer's text wrote it: as f32 again it is the same value.
        Some(values) => {
            let values: Vec<f32> = values.iter().filter_map(Value::as_f64).map(|v| v as f32).collect();
            Some((vec![values.len()], values))
        }
        None => unpack_map(&target["map"]),
    }
}

/// One audit record.
#[utoipa::path(get, path = "/v1/audit/records/{id}", tag = "audit",
    params(("id" = String, Path, description = "record id (`audit_record.id` of the answer)")),
    responses(
        (status = 200, body = Object, description = "the record, with its `chain` position and hashes"),
        (status = 401, body = super::error::Problem, content_type = "application/problem+json", description = "no or bad API key"),
        (status = 403, body = super::error::Problem, content_type = "application/problem+json", description = "the key lacks the audit scope"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "no such record"),
    ))]
pub async fn get_record(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    record(&state, &id).await.map(Json)
}

/// Audit records, filtered, in chain order, a page at a time.
#[utoipa::path(get, path = "/v1/audit/records", tag = "audit", params(ListQuery),
    responses(
        (status = 200, body = RecordPage, description = "records in chain order, and the cursor for the next page"),
        (status = 400, body = super::error::Problem, content_type = "application/problem+json", description = "bad filter"),
        (status = 401, body = super::error::Problem, content_type = "application/problem+json", description = "no or bad API key"),
        (status = 403, body = super::error::Problem, content_type = "application/problem+json", description = "the key lacks the audit scope"),
    ))]
pub async fn list_records(
    State(state): State<Arc<AppState>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RecordPage>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(ProblemKind::InvalidRequest, e.body_text()))?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::new(
            ProblemKind::InvalidRequest,
            "limit must be between 1 and 500",
        ));
    }
    let filter = Filter {
        model: q.model,
        method: q.method,
        target: q.target,
        kind: q.kind,
        since_ms: millis("since", &q.since)?,
        until_ms: millis("until", &q.until)?,
    };
    let store = state.audit.store().await.map_err(audit_failed)?;
    let rows = store
        .list(&filter, q.cursor.unwrap_or(0), limit + 1)
        .await
        .map_err(audit_failed)?;
    let more = rows.len() as i64 > limit;
    let rows = &rows[..rows.len().min(limit as usize)];
    Ok(Json(RecordPage {
        records: rows.iter().map(AuditLog::to_json).collect(),
        next_cursor: more.then(|| rows.last().map(|r| r.seq)).flatten(),
    }))
}

/// The record's explanation drawn again: the stored map over the stored image (or on black when the
/// input was not kept); for tabular models the bar chart. Needs `audit_store_maps` for image maps.
#[utoipa::path(get, path = "/v1/audit/records/{id}/overlay.png", tag = "audit",
    params(("id" = String, Path, description = "record id"), ("target" = Option<usize>, Query, description = "which target (default 0)")),
    responses(
        (status = 200, content_type = "image/png", body = inline(super::openapi::Binary), description = "the recorded map over the recorded input"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "no such record, or it kept no map"),
    ))]
pub async fn record_overlay(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let record = record(&state, &id).await?;
    let index: usize = q.get("target").and_then(|t| t.parse().ok()).unwrap_or(0);
    let targets = record["targets"]
        .as_array()
        .or_else(|| record["results"][0]["explanation"]["targets"].as_array())
        .cloned()
        .unwrap_or_default();
    let target = targets
        .get(index)
        .ok_or_else(|| {
            ApiError::new(
                ProblemKind::NotFound,
                format!("record `{id}` has no explained target {index}"),
            )
        })?
        .clone();
    let registry = state.registry.clone();
    let png = tokio::task::spawn_blocking(move || draw(&record, &target, &registry))
        .await
        .map_err(ApiError::internal)??;
    let mut response = (StatusCode::OK, png).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
    Ok(response)
}

/// The record's chart (tabular) or its map over its input (images), PNG: what `overlay.png`
/// answers and the decision report shows.
pub(super) fn draw(record: &Value, target: &Value, registry: &crate::runtime::Registry) -> Result<Vec<u8>, ApiError> {
    let title = format!(
        "{} ({:.4})",
        target["target"]["label"].as_str().unwrap_or("?"),
        target["target"]["score"].as_f64().unwrap_or(f64::NAN)
    );
    if let Some(values) = target["attributions"].as_array() {
        // Tabular: names from the model when it is still loaded, input values when kept.
        let model = record["model"].as_str().and_then(|m| registry.get(m));
        let names = model
            .and_then(|m| m.spec.tabular.as_ref())
            .map(|t| t.features.clone())
            .unwrap_or_default();
        let inputs = record["inputs"][0]["data"]["features"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut bars: Vec<Bar> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Bar {
                name: names.get(i).cloned().unwrap_or_else(|| format!("feature {i}")),
                value: inputs.get(i).and_then(Value::as_f64).unwrap_or(f64::NAN) as f32,
                attribution: v.as_f64().unwrap_or(0.0) as f32,
            })
            .collect();
        bars.sort_by(|a, b| b.attribution.abs().total_cmp(&a.attribution.abs()));
        return Ok(render::png(&render::bar_chart(&title, &bars, 12)));
    }
    let (shape, map) = unpack_map(&target["map"]).ok_or_else(|| {
        let why = if record["erased"] == true {
            "this record's attribution map was erased with its subject"
        } else {
            "this record kept no attribution map (the service ran without audit_store_maps)"
        };
        ApiError::new(ProblemKind::NotFound, why)
    })?;
    let (h, w) = (shape[0] as u32, shape.get(1).copied().unwrap_or(1) as u32);
    let background = record["inputs"][0]["data"]["image_base64"]
        .as_str()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|bytes| image::load_from_memory(&bytes).ok())
        .map(|img| image::imageops::resize(&img.to_rgb8(), w, h, image::imageops::FilterType::Triangle))
        .unwrap_or_else(|| image::RgbImage::new(w, h));
    Ok(render::png(&render::overlay(
        &background,
        &map,
        &RenderOptions::default(),
    )))
}

/// Every record as JSON Lines, in chain order, streamed a page at a time; with checkpoints, the
/// public keys first and the signed checkpoints last.
#[utoipa::path(get, path = "/v1/audit/export", tag = "audit",
    responses(
        (status = 200, content_type = "application/x-ndjson", body = String, description = "one record per line; with a signing key, a first line `{\"public_keys\": [...]}` and a line `{\"checkpoint\": {...}}` per checkpoint after the records"),
        (status = 401, body = super::error::Problem, content_type = "application/problem+json", description = "no or bad API key"),
    ))]
pub async fn export(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    state.audit.store().await.map_err(audit_failed)?;
    let pieces = stream::unfold((state, Some(ExportAt::Start)), |(state, at)| async move {
        let at = at?;
        match state.audit.export(at).await {
            Ok((text, next)) => Some((Ok::<_, std::io::Error>(text), (state, next))),
            Err(e) => Some((Err(std::io::Error::other(e.to_string())), (state, None))),
        }
    });
    let mut response = Body::from_stream(pieces).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    Ok(response)
}

/// Erases a subject (crypto-shredding): destroys the data keys its records' inputs, maps and
/// per-feature attributions were encrypted with. The records stay, and the chain still verifies;
/// reading them shows `"erased": true` without those values. The erasure is itself recorded.
#[utoipa::path(delete, path = "/v1/audit/subjects/{subject}", tag = "audit",
    params(("subject" = String, Path, description = "the subject id requests sent as `x-audit-subject` (1 to 256 visible ASCII characters)")),
    responses(
        (status = 200, body = Erasure, description = "the keys destroyed, and the erasure's record"),
        (status = 400, body = super::error::Problem, content_type = "application/problem+json", description = "not a subject id"),
        (status = 401, body = super::error::Problem, content_type = "application/problem+json", description = "no or bad API key"),
        (status = 403, body = super::error::Problem, content_type = "application/problem+json", description = "the key lacks the admin scope"),
        (status = 503, body = super::error::Problem, content_type = "application/problem+json", description = "the audit log cannot be written"),
    ))]
pub async fn erase_subject(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    caller: Option<Extension<Caller>>,
    Path(subject): Path<String>,
) -> Result<Json<Erasure>, ApiError> {
    check_subject(&subject)?;
    let mut ctx = audit_context(&headers, caller)?;
    ctx.subject = None;
    state.audit.erase(&subject, &ctx).await.map(Json).map_err(audit_failed)
}

/// Walks the hash chain and reports the first broken link: an edited, deleted or re-ordered record,
/// a checkpoint whose signature does not verify, or records cut off after the newest checkpoint.
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit",
    responses(
        (status = 200, body = Verification, description = "the chain's check: intact, or the first broken link; the newest signed checkpoint"),
        (status = 401, body = super::error::Problem, content_type = "application/problem+json", description = "no or bad API key"),
    ))]
pub async fn verify(State(state): State<Arc<AppState>>) -> Result<Json<Verification>, ApiError> {
    state.audit.verify().await.map(Json).map_err(audit_failed)
}
