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

use super::auth::{audit_context, viewer, Caller};
use super::error::{ApiError, ProblemKind};
use super::explain::{self, AnswerAs, ExplainRequest, Explaining, Format};
use super::input::{self, RawInput};
use super::pipeline::{self, Valid};
use super::AppState;
use crate::audit::{Context, Kind};
use crate::executor::board::{JobState, JobView, Refused, Viewer};
use crate::executor::shared::{NewJob, SubmitError};
use crate::executor::{Admission, Control};

/// How often an event stream looks at its job.
const POLL: Duration = Duration::from_millis(100);

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
fn parse_job(bytes: &[u8]) -> Result<(JobRequest, ExplainRequest, Option<RawInput>), ApiError> {
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
    let raw = input::at_most_one_input(
        request.image.take(),
        request.features.take(),
        request.text.take(),
        "a job",
    )?;
    Ok((job, request, raw))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(ProblemKind::NotFound, format!("no job `{id}` (unknown, or expired)"))
}

/// A job id is a UUID; anything else is a malformed request, not an unknown job.
fn job_id(id: &str) -> Result<String, ApiError> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::new(ProblemKind::InvalidRequest, "a job id is a UUID"))
}

fn refused(state: &AppState, e: Refused) -> ApiError {
    let kind = match e {
        Refused::Full(_) => ProblemKind::Overloaded,
        Refused::CallerLimit(_) => ProblemKind::TooManyJobs,
    };
    ApiError::new(kind, e.to_string()).retry_after(state.config.retry_after_secs)
}

fn store_failed(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ProblemKind::Overloaded, format!("{e}; retry shortly"))
}

/// A job's request checked against its model and its input prepared: ready to run.
pub(super) type Ready = pipeline::Ready<Explaining>;

/// Parses and checks a job body; `audit`: gather the audit evidence it asks for (where it runs).
pub(super) async fn check(state: &AppState, bytes: axum::body::Bytes, audit: bool) -> Result<Ready, ApiError> {
    let (job, mut request, raw) = super::offload::cpu(bytes.len(), move || parse_job(&bytes)).await??;
    let model = state.model(&job.model)?;
    let method = state.method(&job.method)?;
    let valid = explain::validate(state, &model, method.as_ref(), request.options(), 1)?;
    let raw = explain::own_input(raw, &valid, "a job")?;
    let asked = request.audit.take().unwrap_or(false);
    let inputs = vec![raw];
    let audit = match audit {
        // Who asked is known when it runs.
        true => pipeline::audit(state, Kind::Explanation, asked, &model, &inputs, Context::default()).await?,
        false => None,
    };
    let work = Explaining::new(state, valid, AnswerAs::Json);
    let valid = Valid {
        model,
        inputs,
        work,
        audit,
    };
    pipeline::prepare(state, valid).await
}

/// Runs a checked job on `admission` under `control`; the answer, or the problem, as JSON.
pub(super) async fn run(
    state: &AppState,
    mut ready: Ready,
    admission: Admission,
    control: Control,
    ctx: Context,
    started: Instant,
) -> Result<serde_json::Value, serde_json::Value> {
    ready.set_context(ctx);
    let answer = async {
        let done = pipeline::run(state, ready, admission, Some(control), started).await?;
        // The answer's text parsed, not `to_value`: a job's result then prints every number as
        // the synchronous answer does (an f32 written as its shortest text, `0.06`; `to_value`
        // widens it to f64 first, `0.05999999865889549`). An audited answer was parsed once already.
        match (done.value, done.json) {
            (Some(value), _) => Ok(value),
            (None, Some(text)) => serde_json::from_slice(&text).map_err(ApiError::internal),
            (None, None) => Err(ApiError::internal("a job's answer not serialised")),
        }
    };
    answer.await.map_err(|e: ApiError| e.problem_json())
}

/// Submits an explanation to run in the background.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    request_body(content = JobRequest, content_type = "application/json"),
    responses(
        (status = 202, body = JobView, description = "accepted; `Location` names the job"),
        (status = 400, body = super::error::Problem, content_type = "application/problem+json", description = "malformed request"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "unknown model"),
        (status = 422, body = super::error::Problem, content_type = "application/problem+json", description = "input does not fit the model"),
        (status = 429, body = super::error::Problem, content_type = "application/problem+json", description = "this caller has `max_jobs_per_caller` unfinished jobs; see Retry-After"),
        (status = 503, body = super::error::Problem, content_type = "application/problem+json", description = "queue or job board full; see Retry-After"),
    ))]
pub async fn submit(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    caller: Option<Extension<Caller>>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let viewer = viewer(caller.as_ref());
    let owner = viewer.caller.clone();
    let ctx = audit_context(&headers, caller)?;
    if let Some(shared) = state.shared_jobs.clone() {
        if ctx.subject.is_some() {
            // The shared jobs table keeps no subject: the record would be sealed with a key of its
            // own, and the subject's erasure would miss it.
            return Err(ApiError::new(
                ProblemKind::InvalidRequest,
                format!("`{}` is not supported on shared jobs (jobs_database_url); send the request to the explain route instead", super::auth::SUBJECT_HEADER),
            ));
        }
        // Checked here so that a bad request is refused now, then run by whichever replica is free.
        let received = input::receive(&state.config, &headers, body).await?;
        let ready = check(&state, received.bytes.clone(), false).await?;
        let stored = shared
            .submit(
                NewJob {
                    model: &ready.model().name,
                    model_sha256: &ready.model().sha256,
                    method: ready.work().valid.params.method(),
                    owner: owner.as_deref(),
                    request_id: ctx.request_id.as_deref(),
                    request: &received.bytes,
                },
                state.config.max_jobs_per_caller,
            )
            .await
            .map_err(|e| match e {
                SubmitError::Refused(r) => refused(&state, r),
                SubmitError::Store(e) => store_failed(e),
            })?;
        return Ok(accepted(stored));
    }
    state.refuse_when_full()?;
    let received = input::receive(&state.config, &headers, body).await?;
    let ready = check(&state, received.bytes, true).await?;
    let admission = state.executor.admit()?;
    let (id, control) = state
        .jobs
        .create(
            &ready.model().name,
            ready.work().valid.params.method(),
            owner.as_deref(),
            state.config.max_jobs_per_caller,
        )
        .map_err(|e| refused(&state, e))?;
    let task_state = state.clone();
    let task_id = id.clone();
    tokio::spawn(async move {
        let outcome = run(&task_state, ready, admission, control, ctx, started).await;
        task_state.jobs.finish(&task_id, outcome);
    });
    let view = state.jobs.get(&id, &viewer).ok_or_else(|| not_found(&id))?;
    Ok(accepted(view))
}

/// 202 with the job as it stands and its address in `Location`.
pub(super) fn accepted(view: JobView) -> Response {
    let location = format!("/v1/jobs/{}", view.id);
    let mut response = (StatusCode::ACCEPTED, Json(view)).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// What is done to a job.
#[derive(Clone, Copy)]
enum Act {
    /// Read it (its result too, or not).
    Read { with_result: bool },
    /// Cancel it.
    Cancel,
}

/// Does `what` to job `id` as `viewer` may: on this replica's board first (reference builds, and
/// every job when jobs live in memory), then in the shared table; the job as it stands after.
async fn act(state: &AppState, id: &str, viewer: &Viewer, what: Act) -> Result<JobView, ApiError> {
    let id = job_id(id)?;
    let local = match what {
        Act::Read { .. } => state.jobs.get(&id, viewer),
        Act::Cancel => state.jobs.cancel(&id, viewer),
    };
    if let Some(view) = local {
        return Ok(view);
    }
    let shared = match (&state.shared_jobs, what) {
        (Some(shared), Act::Read { with_result }) => shared.get(&id, viewer, with_result).await,
        (Some(shared), Act::Cancel) => shared.cancel(&id, viewer).await,
        (None, _) => Ok(None),
    };
    shared.map_err(store_failed)?.ok_or_else(|| not_found(&id))
}

/// The job as `viewer` may see it.
async fn find(state: &AppState, id: &str, viewer: &Viewer, with_result: bool) -> Result<JobView, ApiError> {
    act(state, id, viewer, Act::Read { with_result }).await
}

/// A job's state, progress and (when done) result.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "job id (a UUID)")),
    responses(
        (status = 200, body = JobView, description = "the job: state, progress, and its result once done"),
        (status = 400, body = super::error::Problem, content_type = "application/problem+json", description = "the id is not a UUID"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "unknown or expired job, or another caller's"),
    ))]
pub async fn get_job(
    State(state): State<Arc<AppState>>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    find(&state, &id, &viewer(caller.as_ref()), true).await.map(Json)
}

/// Cancels a queued or running job (its worker stops at the next pass); a finished job is unchanged.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "job id (a UUID)")),
    responses(
        (status = 200, body = JobView, description = "the job, cancelled (or already finished)"),
        (status = 400, body = super::error::Problem, content_type = "application/problem+json", description = "the id is not a UUID"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "unknown or expired job, or another caller's"),
    ))]
pub async fn cancel_job(
    State(state): State<Arc<AppState>>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    act(&state, &id, &viewer(caller.as_ref()), Act::Cancel).await.map(Json)
}

/// The job's progress as Server-Sent Events: `progress` while it runs (on every change), then one
/// final event named after its end state (`done`, `failed`, `cancelled`) carrying the whole job.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = String, Path, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", description = "job id (a UUID)")),
    responses(
        (status = 200, content_type = "text/event-stream", body = super::openapi::JobEvent, description = "events, each `data` a JobView"),
        (status = 400, body = super::error::Problem, content_type = "application/problem+json", description = "the id is not a UUID"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json", description = "unknown or expired job, or another caller's"),
    ))]
pub async fn job_events(
    State(state): State<Arc<AppState>>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let viewer = viewer(caller.as_ref());
    let id = find(&state, &id, &viewer, false).await?.id;
    // Polls: progress counters live in a worker, perhaps on another replica, so there is nothing to
    // push from. Events lag the job by at most POLL (plus a replica's renewal period when shared).
    let events = stream::unfold(
        (state, id, viewer, None::<JobView>, false),
        |(state, id, viewer, last, ended)| async move {
            if ended {
                return None;
            }
            loop {
                let brief = find(&state, &id, &viewer, false).await.ok()?;
                let view = if brief.state.is_final() {
                    find(&state, &id, &viewer, true).await.ok()?
                } else {
                    brief
                };
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
                    return Some((Ok(event), (state, id, viewer, Some(view), true)));
                }
                if changed {
                    let mut brief = view.clone();
                    brief.result = None;
                    let event = Event::default().event("progress").json_data(&brief).unwrap_or_default();
                    return Some((Ok(event), (state, id, viewer, Some(view), false)));
                }
                tokio::time::sleep(POLL).await;
            }
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
