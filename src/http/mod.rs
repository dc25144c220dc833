//! The HTTP face: routes, request parsing, problem+json errors, and the OpenAPI document.
//! Handlers validate and decode; they never touch ONNX Runtime.

mod audit;
pub mod auth;
pub mod error;
mod explain;
mod health;
pub mod input;
mod jobs;
mod models;
pub mod openapi;
mod page;
mod predict;
mod problems;
mod router;

use std::sync::Arc;

pub use router::router;

use crate::audit::AuditLog;
use crate::config::Config;
use crate::executor::board::JobBoard;
use crate::executor::Executor;
use crate::runtime::gradients::GradientCache;
use crate::runtime::Registry;
use crate::telemetry::Metrics;

/// What every handler can reach.
pub struct AppState {
    /// Service configuration.
    pub config: Config,
    /// Loaded models.
    pub registry: Arc<Registry>,
    /// The job executor.
    pub executor: Arc<Executor>,
    /// Backward models built so far.
    pub gradients: Arc<GradientCache>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// The audit log.
    pub audit: Arc<AuditLog>,
    /// Asynchronous jobs.
    pub jobs: Arc<JobBoard>,
}
