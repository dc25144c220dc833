//! A model's reference set: a new one uploaded (`POST /v1/models/{model}/reference`), its likely
//! mislabels (`GET /v1/models/{model}/reference/suspects`) and its rows
//! (`GET /v1/models/{model}/reference/{id}`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
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
    let set = state
        .references
        .get(&m.name)
        .ok_or_else(|| ApiError::new(ProblemKind::NotFound, crate::examples::no_set(&m.name)))?;
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
    uri: axum::http::Uri,
) -> Result<Json<SuspectPage>, ApiError> {
    let q: SuspectQuery = super::input::parse_query(&uri)?;
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
            let class = crate::examples::source::label_of(l, labels).ok_or_else(|| {
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
            mask[class as usize] = true;
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
            content((ReferenceRow = "application/json"), (inline(super::openapi::Binary) = "image/png"), (inline(super::openapi::Binary) = "image/jpeg"), (inline(super::openapi::Binary) = "image/webp"))),
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

/// Replaces the model's reference set with the rows of a JSON Lines body, as an asynchronous job:
/// every line is checked first (a bad line refuses the upload, naming the first bad lines), then
/// the rows are run through the model like the manifest's set; the new set is put in force whole
/// when the job succeeds (and used at the next start), and the old one stays in force until then or
/// if the job fails. Lines: image models `{"id": "a.png", "label": "Bag", "image": "<base64>"}`,
/// tabular models `{"label": 1, "features": [...] or {...}}` (ids are row numbers). Or a
/// multipart form with the files a manifest would name: a `labels` CSV and image files named by
/// their ids, or a `rows` CSV; those are checked as the manifest's are (422 naming file and line).
#[utoipa::path(post, path = "/v1/models/{model}/reference", tag = "reference",
    params(("model" = String, Path, description = "model name", example = "fashion-cnn")),
    request_body(description = "JSON Lines, one row per line; or multipart: a `labels` CSV (`id,label`) and image files named by their ids, or a `rows` CSV",
        content((String = "application/x-ndjson"), (Object = "multipart/form-data"))),
    responses(
        (status = 202, body = crate::executor::board::JobView, description = "the build job; follow it at the `Location` given (`/v1/jobs/{id}`)"),
        (status = 400, body = super::error::Problem, content_type = "application/problem+json", description = "bad lines (the first ones named)"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "unknown model"),
        (status = 413, body = super::error::Problem, content_type = "application/problem+json", description = "a body over max_reference_upload_bytes"),
        (status = 415, body = super::error::Problem, content_type = "application/problem+json", description = "not JSON Lines"),
        (status = 422, body = super::error::Problem, content_type = "application/problem+json", description = "a set this model cannot read, or over max_reference_bytes"),
        (status = 503, body = super::error::Problem, content_type = "application/problem+json", description = "the queue or the job board is full"),
    ))]
pub async fn upload(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    caller: Option<axum::Extension<super::auth::Caller>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let m = state.model(&model)?;
    let viewer = super::auth::viewer(caller.as_ref());
    let owner = viewer.caller.clone();
    state.refuse_when_full()?;
    let config = &state.config;
    // An upload may be a training set: ten times the usual read deadline.
    let deadline_ms = config.body_read_timeout_ms.saturating_mul(10);
    let received = super::input::receive_up_to(&headers, body, config.max_reference_upload_bytes, deadline_ms).await?;
    let form = match received.media_type.as_str() {
        "application/x-ndjson" | "application/jsonl" | "application/json-lines" => None,
        "multipart/form-data" => Some(form_parts(&received).await?),
        _ => {
            return Err(ApiError::new(
                ProblemKind::UnsupportedMediaType,
                "send the rows as JSON Lines (application/x-ndjson) or as multipart/form-data (a `labels` CSV \
                 and image files, or a `rows` CSV)",
            ))
        }
    };
    let dir = crate::examples::upload::folder(&config.data_dir, &m.name).join(uuid::Uuid::new_v4().to_string());
    let spec = write_upload(&m, received, form, &dir, config.max_reference_rows).await?;
    let plan = plan_upload(&state, &m, spec, &dir).await?;
    let admission = state.executor.admit()?;
    // A build belongs to this replica's files, so it stays on this replica's board.
    let (id, control) = state
        .jobs
        .create(&m.name, "reference", owner.as_deref(), usize::MAX)
        .map_err(|e| ApiError::new(ProblemKind::Overloaded, e.to_string()).retry_after(config.retry_after_secs))?;
    tokio::spawn(build_and_put_in_force(
        state.clone(),
        admission,
        plan,
        control,
        m,
        dir,
        id.clone(),
    ));
    let view = state
        .jobs
        .get(&id, &viewer)
        .ok_or_else(|| ApiError::internal("a job just created is gone"))?;
    Ok(super::jobs::accepted(view))
}

/// Checks the upload and writes its files into `dir` (removed when refused): the spec that reads
/// them. 400 names the bad lines.
async fn write_upload(
    m: &Arc<LoadedModel>,
    received: super::input::ReceivedBody,
    form: Option<FormParts>,
    dir: &std::path::Path,
    max_rows: usize,
) -> Result<crate::runtime::manifest::ReferenceSpec, ApiError> {
    let (model, dir) = (m.clone(), dir.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let written = match form {
            Some(parts) => crate::examples::upload::write_form(&model, parts, &dir),
            None => crate::examples::upload::write(&model, &received.bytes, &dir, max_rows),
        };
        if written.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        written
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| ApiError::new(ProblemKind::InvalidRequest, format!("the upload was refused: {e}")))
}

/// What building the uploaded set would take; 422 (and `dir` removed) for a set this model cannot
/// read or one over `max_reference_bytes`.
async fn plan_upload(
    state: &Arc<AppState>,
    m: &Arc<LoadedModel>,
    spec: crate::runtime::manifest::ReferenceSpec,
    dir: &std::path::Path,
) -> Result<crate::examples::build::Plan, ApiError> {
    let (model, state, dir) = (m.clone(), state.clone(), dir.to_path_buf());
    tokio::task::spawn_blocking(move || {
        crate::examples::build::Plan::new(&model, &spec, &state.registry, &state.gradients, &state.config)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| {
        let _ = std::fs::remove_dir_all(&dir);
        ApiError::new(
            ProblemKind::InvalidInput,
            format!("the upload cannot serve as a reference set: {e}"),
        )
    })
}

/// The upload's build job: on success the set is put in force (in memory and for the next start);
/// on failure its folder is removed and the previous set stays.
async fn build_and_put_in_force(
    state: Arc<AppState>,
    admission: crate::executor::Admission,
    plan: crate::examples::build::Plan,
    control: crate::executor::Control,
    m: Arc<LoadedModel>,
    dir: std::path::PathBuf,
    task_id: String,
) {
    let data_dir = state.config.data_dir.clone();
    let built = crate::jobs::reference::build_and_keep(admission, plan, control, &data_dir).await;
    let outcome =
        match built.and_then(|set| crate::examples::upload::put_in_force(&data_dir, &m.name, &dir).map(|()| set)) {
            Ok(set) => {
                let summary = set.summary();
                state.references.put(&m.name, Arc::new(set));
                tracing::info!(model = %m.name, rows = summary.rows, "uploaded reference set in force");
                Ok(serde_json::to_value(summary).unwrap_or_default())
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                tracing::warn!(model = %m.name, error = %e, "reference upload failed; the previous set stays");
                let problem = ApiError::new(
                    ProblemKind::InvalidInput,
                    format!("the reference set was not built: {e}"),
                );
                Err(problem.problem_json())
            }
        };
    state.jobs.finish(&task_id, outcome);
}

/// A multipart upload's parts: (name, file name, bytes).
type FormParts = Vec<(String, Option<String>, Vec<u8>)>;

/// Reads a multipart upload's parts.
async fn form_parts(received: &super::input::ReceivedBody) -> Result<FormParts, ApiError> {
    let bad = |m: String| ApiError::new(ProblemKind::InvalidRequest, m);
    let boundary = multer::parse_boundary(&received.content_type).map_err(|e| bad(format!("multipart body: {e}")))?;
    let bytes = received.bytes.clone();
    let stream = futures_util::stream::once(async move { Ok::<axum::body::Bytes, std::convert::Infallible>(bytes) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut parts = Vec::new();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| bad(format!("multipart body: {e}")))?
    {
        let name = field.name().unwrap_or("").to_string();
        let file = field.file_name().map(str::to_string);
        let data = field
            .bytes()
            .await
            .map_err(|e| bad(format!("multipart part `{name}`: {e}")))?;
        parts.push((name, file, data.to_vec()));
    }
    Ok(parts)
}
