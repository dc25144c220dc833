//! The HTTP face: routes, request parsing, problem+json errors, and the OpenAPI document.
//! Handlers validate and decode; they never touch ONNX Runtime.

mod audit;
pub mod auth;
pub mod claimer;
mod compare;
mod concepts;
pub mod error;
mod evaluate;
mod explain;
mod health;
pub mod input;
mod jobs;
mod models;
pub mod offload;
pub mod openapi;
mod page;
mod patterns;
mod pipeline;
mod predict;
pub mod prepare;
mod problems;
pub(crate) mod protocols;
mod reference;
mod replay;
mod report;
mod router;
mod segments;
pub mod server;
mod uncertainty;

use std::sync::Arc;

pub use explain::{ExplainOptions, ValidExplain};
pub use router::router;

use crate::audit::AuditLog;
use crate::config::Config;
use crate::executor::board::JobBoard;
use crate::executor::shared::SharedJobs;
use crate::executor::Executor;
use crate::explain::{AnyMethod, Methods};
use crate::runtime::gradients::GradientCache;
use crate::runtime::LoadedModel;
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
    /// The models' reference sets in force.
    pub references: Arc<crate::examples::Sets>,
    /// Backward models built so far.
    pub gradients: Arc<GradientCache>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// The audit log.
    pub audit: Arc<AuditLog>,
    /// Asynchronous jobs this replica keeps in memory: every job when jobs are not shared, and
    /// reference-set builds (they belong to this replica's files) always.
    pub jobs: Arc<JobBoard>,
    /// Asynchronous jobs in PostgreSQL, shared with every replica on the same database.
    pub shared_jobs: Option<Arc<SharedJobs>>,
    /// The explanation methods served.
    pub methods: Arc<Methods>,
}

impl AppState {
    /// The model named `name`, or 404.
    pub fn model(&self, name: &str) -> Result<Arc<LoadedModel>, error::ApiError> {
        self.registry
            .get(name)
            .cloned()
            .ok_or_else(|| error::model_not_found(name))
    }

    /// The method named `name`, or 404 listing the methods.
    pub fn method(&self, name: &str) -> Result<&Arc<dyn AnyMethod>, error::ApiError> {
        self.methods.get(name).ok_or_else(|| {
            error::ApiError::new(
                error::ProblemKind::NotFound,
                format!(
                    "no method `{}`; methods: {}",
                    name.chars().take(100).collect::<String>(),
                    self.methods.names().join(", ")
                ),
            )
        })
    }

    /// 503 at once, before the body is read, when no queue slot is free.
    pub fn refuse_when_full(&self) -> Result<(), error::ApiError> {
        if self.executor.is_full() {
            let (_, capacity) = self.executor.load();
            self.metrics.jobs_rejected.inc();
            return Err(crate::executor::ExecError::Overloaded {
                capacity,
                retry_after_secs: self.config.retry_after_secs,
            }
            .into());
        }
        Ok(())
    }
}
