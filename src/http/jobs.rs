//! Asynchronous explanations: `POST /v1/jobs` takes an explain request (plus `model` and `method`)
//! and answers 202 at once; the job runs on the same bounded executor as every request (a full
//! queue refuses the submission with 503); `GET /v1/jobs/{id}` shows state, progress and the
//! result; `GET /v1/jobs/{id}/events` streams them as Server-Sent Events; `DELETE` cancels.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::{audit_context, Caller};
use super::error::{ApiError, ProblemKind};
use super::explain::{self, ExplainRequest, Format};
use super::input::{self, RawInput};
use super::{prepare, AppState};
use crate::executor::board::{JobState, JobView};
use crate::explain::ExplainTask;

/// A job: the explain request's fields plus the model and the method.
#[derive(Debug, Deserialize, ToSchema)]
pub struct JobRequest {
    /// Model name.
    pub model: String,
    /// Method (`kernel-shap`, `rise`, `smoothgrad`, ...).
    pub method: String,
    /// The explain request (`image` or `features`, `target`, `params`, `seed`, `include`, `render`,
    /// `audit`), as for `POST /v1/models/{model}/explain/{method}`; the answer is JSON.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub request: serde_json::Map<String, serde_json::Value>,
}

/// A job body: the job, its explain request, and the input.
fn parse_job(bytes: &[u8]) -> Result<(JobRequest, ExplainRequest, RawInput), ApiError> {
    let mut job: JobRequest = input::parse_json(bytes)?;
    let request = std::mem::take(&mut job.request);
    let mut request: ExplainRequest = serde_json::from_value(serde_json::Value::Object(request))
        .map_err(|e| ApiError::new(ProblemKind::InvalidRequest, format!("job request: {e}")))?;
    if matches!(request.format, Some(Format::Png | Format::Html)) {
        return Err(ApiError::new(
            ProblemKind::InvalidRequest,
            "jobs answer JSON; ask for `include: [\"overlay\"]` to get the picture in it",
        ));
    }
    let raw = input::one_input(request.image.take(), request.features.take(), "a job")?;
    Ok((job, request, raw))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(ProblemKind::NotFound, format!("no job `{id}` (unknown, or expired)"))
}

/// Submits an explanation to run in the background.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    request_body(content = JobRequest, content_type = "application/json"),
    responses(
        (status = 202, body = JobView, description = "accepted; `Location` names the job"),
        (status = 400, body = super::error::Problem, content_type = "application/problem+json", description = "malformed request"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "unknown model"),
        (status = 422, body = super::error::Problem, content_type = "application/problem+json", description = "input does not fit the model"),
        (status = 503, body = super::error::Problem, content_type = "application/problem+json", description = "queue or job board full; see Retry-After"),
    ))]
pub async fn submit(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    caller: Option<Extension<Caller>>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    state.refuse_when_full()?;
    let received = input::receive(&state.config, &headers, body).await?;
    let (job, mut request, raw) =
        super::offload::cpu(received.bytes.len(), move || parse_job(&received.bytes)).await??;
    let model = state.model(&job.model)?;
    let valid = explain::validate(&state, &model, &job.method, request.options(), 1)?;
    let evidence = explain::audit_evidence(&state, &model, &raw, request.audit.take().unwrap_or(false)).await?;
    let admission = state.executor.admit()?;
    let prepared = prepare::prepare_all(&model, vec![raw], state.config.max_image_pixels).await?;
    let explain_job = valid.job(prepare::batch(&prepared)?, None);
    let (id, control) = state.jobs.create(&model.name, valid.params.method()).map_err(|e| {
        ApiError::new(ProblemKind::Overloaded, e.to_string()).retry_after(state.config.retry_after_secs)
    })?;
    let ctx = audit_context(&headers, caller);
    let task_state = state.clone();
    let task_id = id.clone();
    tokio::spawn(async move {
        let state = task_state;
        let outcome = admission.run_controlled(ExplainTask(explain_job), control).await;
        let finished = match outcome {
            Ok(result) => {
                let audit = evidence.map(|evidence| (evidence, ctx));
                match explain::finish(&state, valid, prepared, result, false, started, audit).await {
                    Ok(answer) => serde_json::to_value(&answer.body).map_err(ApiError::internal),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(ApiError::from(e)),
        }
        .map_err(|e| e.problem());
        let finished = finished.map_err(|p| serde_json::to_value(p).unwrap_or_default());
        state.jobs.finish(&task_id, finished);
    });
    accepted(&state, &id)
}

/// 202 with the job as it stands and its address in `Location`.
pub(super) fn accepted(state: &AppState, id: &str) -> Result<Response, ApiError> {
    let view = state.jobs.get(id).ok_or_else(|| not_found(id))?;
    let mut response = (StatusCode::ACCEPTED, Json(view)).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&format!("/v1/jobs/{id}")) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

/// A job's state, progress and (when done) result.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    responses(
        (status = 200, body = JobView, description = "the job: state, progress, and its result once done"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "unknown or expired job"),
    ))]
pub async fn get_job(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<JobView>, ApiError> {
    state.jobs.get(&id).map(Json).ok_or_else(|| not_found(&id))
}

/// Cancels a queued or running job (its worker stops at the next pass); a finished job is unchanged.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    responses(
        (status = 200, body = JobView, description = "the job, cancelled (or already finished)"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "unknown or expired job"),
    ))]
pub async fn cancel_job(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<JobView>, ApiError> {
    state.jobs.cancel(&id).map(Json).ok_or_else(|| not_found(&id))
}

/// The job's progress as Server-Sent Events: `progress` while it runs (on every change), then one
/// final event named after its end state (`done`, `failed`, `cancelled`) carrying the whole job.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    responses(
        (status = 200, content_type = "text/event-stream", body = String, description = "events, each `data` a JobView"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "unknown or expired job"),
    ))]
pub async fn job_events(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    state.jobs.get(&id).ok_or_else(|| not_found(&id))?;
    // Polls the board: progress counters live in the worker, so there is nothing to push from.
    let events = stream::unfold(
        (state, id, None::<JobView>, false),
        |(state, id, last, ended)| async move {
            if ended {
                return None;
            }
            loop {
                let view = state.jobs.get(&id)?;
                let changed = last
                    .as_ref()
                    .is_none_or(|l| l.state != view.state || l.progress != view.progress);
                if view.state.is_final() {
                    let name = match view.state {
                        JobState::Done => "done",
                        JobState::Failed => "failed",
                        _ => "cancelled",
                    };
                    let event = Event::default().event(name).json_data(&view).unwrap_or_default();
                    return Some((Ok(event), (state, id, Some(view), true)));
                }
                if changed {
                    let mut brief = view.clone();
                    brief.result = None;
                    let event = Event::default().event("progress").json_data(&brief).unwrap_or_default();
                    return Some((Ok(event), (state, id, Some(view), false)));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
