//! Fitting a model's PatternNet patterns as a job of its own (`POST /v1/models/{model}/patterns`,
//! or at start with `fit_patterns_at_start`): one forward pass over the model's data, its rows
//! counted as the job's progress, the patterns kept in memory and on disk for every later
//! PatternNet and PatternAttribution request. At start, patterns kept on disk are read back for
//! every model with data, so the first request after a restart fits nothing.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use utoipa::ToSchema;

use crate::config::Config;
use crate::examples::{ReferenceSet, Sets};
use crate::executor::{Control, Executor, Task};
use crate::explain::patterns::{fit, Data, PatternDetails};
use crate::explain::Cx;
use crate::runtime::gradients::GradientCache;
use crate::runtime::preprocess::InputError;
use crate::runtime::registry::Registry;
use crate::runtime::{JobContext, LoadedModel, RuntimeError, WorkerRuntime};

/// A fit of one model's patterns.
#[derive(Debug, Clone)]
pub struct FitTask {
    /// The model.
    pub model: Arc<LoadedModel>,
    /// Its reference set, when it has one.
    pub reference: Option<Arc<ReferenceSet>>,
    /// Most bytes of statistics held.
    pub max_job_bytes: u64,
    /// The rows of its data when the fit was asked for: planned before the job lists its data
    /// again (a watcher must not see it run with no plan).
    pub rows: usize,
}

/// A fit's answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PatternFit {
    /// Model name.
    pub model: String,
    /// The patterns (`fitted_now` false: they were kept, or fitted by a request this job waited for).
    pub patterns: PatternDetails,
    /// Milliseconds the job ran on its worker.
    pub ms: f64,
}

impl Task for FitTask {
    type Output = PatternFit;

    fn run(self, rt: &mut WorkerRuntime, ctx: &JobContext) -> Result<PatternFit, RuntimeError> {
        let began = Instant::now();
        ctx.plan(self.rows);
        let data = Data::of(&self.model, self.reference.as_ref()).map_err(InputError::BadFeatures)?;
        // A folder changed since: the rows this fit runs.
        ctx.plan(data.rows());
        let mut cx = Cx::new(rt, ctx, self.model.clone());
        let (_, patterns) = fit(&mut cx, &data, self.max_job_bytes)?;
        Ok(PatternFit {
            model: self.model.name.clone(),
            patterns,
            ms: began.elapsed().as_secs_f64() * 1e3,
        })
    }
}

/// At start: reads every model's kept patterns back from disk; with `fit_patterns_at_start`,
/// fits those of the models with data and none kept, one model at a time on the executor (in
/// the background: the service serves meanwhile, and a request that needs them waits for the fit).
pub async fn prepare_all(
    registry: &Arc<Registry>,
    sets: &Arc<Sets>,
    gradients: &Arc<GradientCache>,
    executor: &Arc<Executor>,
    config: &Config,
) {
    let (registry2, sets2, gradients2) = (registry.clone(), sets.clone(), gradients.clone());
    // Hashing a folder of images reads it: off the async threads.
    let missing = tokio::task::spawn_blocking(move || {
        let mut missing = Vec::new();
        for model in registry2.iter() {
            let reference = sets2.get(&model.name);
            let Ok(data) = Data::of(model, reference.as_ref()) else {
                continue;
            };
            match data.sha256(gradients2.patterns()) {
                Ok(sha) if gradients2.patterns().get(&model.sha256, &sha).is_some() => {
                    tracing::info!(model = %model.name, data = data.name(), "patterns read back from disk");
                }
                Ok(_) => missing.push((model.clone(), reference.clone(), data.rows())),
                Err(e) => tracing::warn!(model = %model.name, error = %e, "pattern data unreadable"),
            }
        }
        missing
    })
    .await
    .unwrap_or_default();
    if !config.fit_patterns_at_start || missing.is_empty() {
        return;
    }
    let (executor, deadline, max_job_bytes) = (
        executor.clone(),
        Duration::from_millis(config.async_job_deadline_ms),
        config.max_job_bytes,
    );
    tokio::spawn(async move {
        for (model, reference, rows) in missing {
            let name = model.name.clone();
            let task = FitTask {
                model,
                reference,
                max_job_bytes,
                rows,
            };
            let control = Control {
                deadline,
                cancelled: Arc::new(AtomicBool::new(false)),
                progress: Arc::default(),
            };
            let fitted = match executor.admit() {
                Ok(admission) => admission.run_controlled(task, control).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match fitted {
                Ok(fit) => {
                    tracing::info!(model = %name, rows = fit.patterns.rows, ms = fit.ms, "patterns fitted at start")
                }
                Err(e) => tracing::warn!(model = %name, error = %e, "patterns not fitted at start"),
            }
        }
    });
}
