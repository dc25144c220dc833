//! A model's reference set: its likely mislabels (`GET /v1/models/{model}/reference/suspects`) and
//! its rows (`GET /v1/models/{model}/reference/{id}`).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ProblemKind};
use super::AppState;
use crate::examples::source::Inputs;
use crate::examples::{ReferenceSet, RowScore};
use crate::runtime::LoadedModel;

/// Filter and paging of the suspects.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SuspectQuery {
    /// Only rows with this label (name or class index).
    pub label: Option<String>,
    /// Rows per page (default 50, at most 500).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<usize>,
}

/// A page of likely mislabels, highest self-influence first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SuspectPage {
    /// Rows with their self-influence as `score`.
    pub rows: Vec<RowScore>,
    /// Rows that pass the filter, in all.
    pub total: usize,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<usize>,
}

fn set_of(state: &AppState, model: &str) -> Result<(Arc<LoadedModel>, Arc<ReferenceSet>), ApiError> {
    let m = state.model(model)?;
    let set = m.reference().ok_or_else(|| {
        ApiError::new(
            ProblemKind::NotFound,
            format!(
                "model `{}` has no reference set: declare one in the `[reference]` section of its model.toml",
                m.name
            ),
        )
    })?;
    Ok((m, set))
}

/// Reference rows ranked by self-influence, `sum over checkpoints of lr (|a|^2 + 1) |g|^2`: rows
/// the model finds hardest to fit with their label, a review queue for data cleansing.
#[utoipa::path(get, path = "/v1/models/{model}/reference/suspects", tag = "reference",
    params(("model" = String, Path, description = "model name", example = "fashion-cnn"), SuspectQuery),
    responses(
        (status = 200, body = SuspectPage, description = "a page of rows, highest self-influence first"),
        (status = 400, body = super::error::Problem, content_type = "application/problem+json", description = "a bad label or limit"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "unknown model, or a model without a reference set"),
    ))]
pub async fn suspects(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    query: Result<Query<SuspectQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SuspectPage>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(ProblemKind::InvalidRequest, e.body_text()))?;
    let (m, set) = set_of(&state, &model)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::new(
            ProblemKind::InvalidRequest,
            format!("limit must be between 1 and 500, got {limit}"),
        ));
    }
    let labels = &m.spec.labels;
    let mask = match &q.label {
        None => None,
        Some(l) => {
            let class = labels
                .iter()
                .position(|x| x == l)
                .or_else(|| l.parse::<usize>().ok().filter(|&i| i < labels.len()))
                .ok_or_else(|| {
                    ApiError::new(
                        ProblemKind::InvalidRequest,
                        format!(
                            "label `{}` is neither a label of `{}` nor a class index",
                            l.chars().take(100).collect::<String>(),
                            m.name
                        ),
                    )
                })?;
            let mut mask = vec![false; labels.len()];
            mask[class] = true;
            Some(mask)
        }
    };
    let start = q.cursor.unwrap_or(0);
    let total = set.suspects(mask.as_deref()).count();
    let rows: Vec<RowScore> = set
        .suspects(mask.as_deref())
        .skip(start)
        .take(limit)
        .map(|i| set.row(i, labels, set.self_influence[i]))
        .collect();
    let next = start.saturating_add(limit);
    Ok(Json(SuspectPage {
        rows,
        total,
        next_cursor: (next < total).then_some(next),
    }))
}

/// One tabular reference row.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReferenceRow {
    /// Its id (row number).
    pub id: String,
    /// Its label.
    pub label: String,
    /// The model's prediction for it.
    pub prediction: String,
    /// Its self-influence.
    pub self_influence: f64,
    /// Its features, by name.
    pub features: serde_json::Map<String, serde_json::Value>,
}

/// A reference row: an image model's image file as it is, a tabular model's row as JSON.
#[utoipa::path(get, path = "/v1/models/{model}/reference/{id}", tag = "reference",
    params(("model" = String, Path, description = "model name", example = "fashion-cnn"),
        ("id" = String, Path, description = "row id: the image's file name, or the row number", example = "train-00000.png")),
    responses(
        (status = 200, description = "the row: a tabular model's as JSON, an image model's image file as it is",
            content((ReferenceRow = "application/json"), (Vec<u8> = "image/png"), (Vec<u8> = "image/jpeg"), (Vec<u8> = "image/webp"))),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "unknown model or row, or a model without a reference set"),
    ))]
pub async fn row(
    State(state): State<Arc<AppState>>,
    Path((model, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (m, set) = set_of(&state, &model)?;
    let i = set.position(&id).ok_or_else(|| {
        ApiError::new(
            ProblemKind::NotFound,
            format!(
                "model `{}`'s reference set has no row `{}`",
                m.name,
                id.chars().take(100).collect::<String>()
            ),
        )
    })?;
    match &set.inputs {
        Inputs::Images(dir) => {
            let bytes = tokio::fs::read(dir.join(&set.ids[i]))
                .await
                .map_err(ApiError::internal)?;
            let kind = image::guess_format(&bytes)
                .map(|f| f.to_mime_type())
                .unwrap_or("application/octet-stream");
            Ok(([(header::CONTENT_TYPE, kind)], bytes).into_response())
        }
        Inputs::Rows(rows) => {
            let names = m.spec.tabular.as_ref().map(|t| t.features.clone()).unwrap_or_default();
            let row = set.row(i, &m.spec.labels, set.self_influence[i]);
            Ok(Json(ReferenceRow {
                id: row.id,
                label: row.label,
                prediction: row.prediction,
                self_influence: row.score,
                features: names
                    .into_iter()
                    .zip(&rows[i])
                    .map(|(n, v)| (n, serde_json::json!(v)))
                    .collect(),
            })
            .into_response())
        }
    }
}
