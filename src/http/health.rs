//! Liveness, readiness and metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;

/// Health or readiness state.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`, `ready`, `starting`, or `database-unreachable`.
    pub status: &'static str,
    /// Jobs queued or running.
    pub jobs: usize,
    /// Most jobs that may be queued or running.
    pub capacity: usize,
    /// Readiness: model folders that failed to load (the others serve); absent when none did.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_models: Vec<super::models::FailedModel>,
    /// Readiness: reference sets that failed at start, by model name, with why (their models
    /// serve without them); absent when none did.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_reference_sets: Vec<super::models::FailedModel>,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health, description = "the process is up")))]
pub async fn healthz(State(state): State<Arc<AppState>>) -> Json<Health> {
    let (jobs, capacity) = state.executor.load();
    Json(Health {
        status: "ok",
        jobs,
        capacity,
        failed_models: Vec::new(),
        failed_reference_sets: Vec::new(),
    })
}

/// Every worker has its model sessions and can take jobs, and the shared jobs database (if any)
/// answers.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, body = Health, description = "ready"),
    (status = 503, body = Health, description = "workers still loading models, or the jobs database unreachable"),
))]
pub async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let (jobs, capacity) = state.executor.load();
    let failed = super::models::failed_models(&state.registry);
    let failed_sets = super::models::failed_reference_sets(&state.references);
    let database = match &state.shared_jobs {
        Some(shared) => shared.reachable().await,
        None => true,
    };
    if !database {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "database-unreachable",
                jobs,
                capacity,
                failed_models: failed,
                failed_reference_sets: failed_sets,
            }),
        );
    }
    if state.executor.is_ready() {
        (
            StatusCode::OK,
            Json(Health {
                status: "ready",
                jobs,
                capacity,
                failed_models: failed,
                failed_reference_sets: failed_sets,
            }),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "starting",
                jobs,
                capacity,
                failed_models: failed,
                failed_reference_sets: failed_sets,
            }),
        )
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, content_type = "text/plain; version=0.0.4", body = String, description = "Prometheus metrics"),
))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
}
