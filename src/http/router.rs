//! The route table and the layers every request passes: request id, tracing span, metrics.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use super::error::{ApiError, ProblemKind};
use super::protocols::vertex;
use super::{
    audit, auth, compare, concepts, evaluate, explain, health, jobs, models, openapi, page, patterns, predict,
    problems, protocols, reference, replay, report, uncertainty, AppState,
};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Builds the service's router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/", get(page::index))
        .route("/problems/{slug}", get(problems::problem_doc))
        .route("/v1/models", get(models::list_models))
        // POST: KServe V1's `{model}:predict` and `{model}:explain` (the verb is in the segment).
        .route(
            "/v1/models/{model}",
            get(models::get_model).post(protocols::kserve_v1::verb),
        )
        .route("/v1/models/{model}/reference", post(reference::upload))
        .route("/v1/models/{model}/reference/suspects", get(reference::suspects))
        .route("/v1/models/{model}/reference/{id}", get(reference::row))
        .route("/v1/models/{model}/concepts", get(concepts::list_concepts))
        .route("/v1/models/{model}/concepts/{name}", post(concepts::upload_concept))
        .route("/v1/models/{model}/tcav", post(concepts::tcav))
        .route(
            "/v1/models/{model}/patterns",
            get(patterns::patterns).post(patterns::fit),
        )
        .route(
            "/v1/models/{model}/layer-information",
            post(concepts::layer_information),
        )
        .route("/v1/models/{model}/predict", post(predict::predict))
        .route("/v1/models/{model}/uncertainty", post(uncertainty::uncertainty))
        .route("/v1/models/{model}/evaluate", post(evaluate::evaluate))
        .route("/v1/models/{model}/compare", post(compare::compare))
        .route("/v1/models/{model}/explain/{method}", post(explain::explain))
        .route("/v1/jobs", post(jobs::submit))
        .route("/v1/jobs/{id}", get(jobs::get_job).delete(jobs::cancel_job))
        .route("/v1/jobs/{id}/events", get(jobs::job_events))
        .route("/v1/audit/records", get(audit::list_records))
        .route("/v1/audit/records/{id}", get(audit::get_record))
        .route("/v1/audit/records/{id}/overlay.png", get(audit::record_overlay))
        .route("/v1/audit/records/{id}/replay", post(replay::replay))
        .route("/v1/audit/records/{id}/report", get(report::report))
        .route("/v1/audit/export", get(audit::export))
        .route("/v1/audit/verify", get(audit::verify))
        .route(
            "/v1/projects/{project}/locations/{location}/endpoints/{call}",
            post(vertex::endpoint_call),
        )
        .route("/v1/audit/subjects/{subject}", delete(audit::erase_subject))
        .route("/v2", get(protocols::oip::server_metadata))
        .route("/v2/health/live", get(protocols::oip::live))
        .route("/v2/health/ready", get(protocols::oip::ready))
        .route("/v2/models/{model}", get(protocols::oip::model_metadata))
        .route("/v2/models/{model}/ready", get(protocols::oip::model_ready))
        .route("/v2/models/{model}/infer", post(protocols::oip::infer))
        .merge(utoipa_swagger_ui::SwaggerUi::new("/docs").external_url_unchecked(
            "/openapi.json",
            openapi::document_value(&state.methods, crate::explain::Limits::from_config(&state.config)),
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), auth::require_key))
        .layer(middleware::from_fn_with_state(state.clone(), whole_request_deadline))
        // Outside the key check and the deadline, so their refusals too are in Google's shape.
        .layer(middleware::from_fn(vertex::google_errors))
        .layer(middleware::from_fn_with_state(state.clone(), record_metrics))
        .layer(middleware::from_fn_with_state(state.clone(), timing_allow_origin))
        .layer(cors(&state.config.cors_allowed_origins))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let id = req
                .headers()
                .get(&REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path())
        }))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

/// CORS for browser frontends on other origins: off unless origins are configured.
fn cors(origins: &[String]) -> CorsLayer {
    if origins.is_empty() {
        return CorsLayer::new();
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION, header::ACCEPT, REQUEST_ID])
        .expose_headers([
            REQUEST_ID,
            HeaderName::from_static("x-explanation-id"),
            HeaderName::from_static("x-explanation-target"),
            HeaderName::from_static("x-audit-record"),
            header::LOCATION,
            header::RETRY_AFTER,
            HeaderName::from_static("server-timing"),
        ])
        .max_age(std::time::Duration::from_secs(600))
}

/// Lets the browser origins CORS allows read the answers' `Server-Timing` in the Resource Timing
/// API too (which hides it from other origins without `Timing-Allow-Origin`).
async fn timing_allow_origin(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut response = next.run(req).await;
    let allowed = &state.config.cors_allowed_origins;
    if let Some(origin) = origin {
        let value = if allowed.iter().any(|a| a == "*") {
            Some(HeaderValue::from_static("*"))
        } else {
            allowed
                .iter()
                .any(|a| a.as_bytes() == origin.as_bytes())
                .then_some(origin)
        };
        if let Some(v) = value {
            response.headers_mut().insert("timing-allow-origin", v);
        }
    }
    response
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        ProblemKind::NotFound,
        format!("no route for {} {}", req.method(), req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        ProblemKind::MethodNotAllowed,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// Counts requests by route template (not raw path, to keep label sets bounded) and status.
async fn record_metrics(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let start = Instant::now();
    let response = next.run(req).await;
    state.metrics.observe_request(
        &route,
        &method,
        response.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    response
}

/// The whole-request limit: a request not answered by `request_timeout_ms` gets 503 (the work it
/// queued is cancelled when its future is dropped). Streams (job events) are timed only until their
/// headers are sent.
async fn whole_request_deadline(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let limit = std::time::Duration::from_millis(state.config.request_timeout_ms);
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            ProblemKind::DeadlineExceeded,
            format!(
                "the request was not answered within {} ms (request_timeout_ms)",
                limit.as_millis()
            ),
        )
        .into_response(),
    }
}
