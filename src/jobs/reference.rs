//! Reference sets as jobs: built on the executor at start (unless the kept set is still valid)
//! and on upload, then kept in the data directory.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::examples::build::Plan;
use crate::examples::{store, upload, ReferenceSet, Sets};
use crate::executor::{Admission, Control, Executor, Task};
use crate::runtime::gradients::GradientCache;
use crate::runtime::{JobContext, Registry, RuntimeError, WorkerRuntime};

/// Runs a [`Plan`] on a worker.
pub struct BuildReference(pub Plan);

impl Task for BuildReference {
    type Output = ReferenceSet;

    fn run(self, rt: &mut WorkerRuntime, ctx: &JobContext) -> Result<ReferenceSet, RuntimeError> {
        self.0.build(rt, ctx)
    }
}

/// At start: every model whose manifest has `[reference]`, or that has an uploaded set in force,
/// gets its set (the upload's, else the manifest's), loaded from the data directory when it is
/// still valid, else built on the executor (and kept). A set that cannot be read or built (the
/// error names the file and line) is recorded in `sets` as failed, with why, and its model serves
/// without it; with `strict_models` the service does not start.
pub async fn prepare_all(
    registry: &Arc<Registry>,
    sets: &Sets,
    gradients: &Arc<GradientCache>,
    executor: &Arc<Executor>,
    config: &Config,
) -> anyhow::Result<()> {
    for model in registry.iter() {
        let spec = match upload::current(&config.data_dir, model) {
            Some(uploaded) => uploaded,
            None => match &model.spec.reference {
                Some(spec) => spec.clone(),
                None => continue,
            },
        };
        match prepare(model, spec, registry, gradients, executor, config).await {
            Ok(set) => {
                tracing::info!(model = %model.name, rows = set.len(), bytes = set.bytes(), embedding = %set.head.embedding,
                    influence = !set.checkpoints.is_empty(), loaded = set.loaded, "reference set ready");
                sets.put(&model.name, Arc::new(set));
            }
            Err(e) if config.strict_models => anyhow::bail!("model `{}`: reference set: {e}", model.name),
            Err(e) => {
                let reason = shown(&e, config);
                tracing::error!(model = %model.name, error = %reason,
                    "reference set failed; the model serves without it (strict_models = false)");
                sets.fail(&model.name, reason);
            }
        }
    }
    Ok(())
}

/// `model`'s set from `spec`: the kept one when still valid, else built on the executor and kept.
async fn prepare(
    model: &Arc<crate::runtime::LoadedModel>,
    spec: crate::runtime::manifest::ReferenceSpec,
    registry: &Arc<Registry>,
    gradients: &Arc<GradientCache>,
    executor: &Arc<Executor>,
    config: &Config,
) -> Result<ReferenceSet, String> {
    let (registry, gradients, config2, model2) = (registry.clone(), gradients.clone(), config.clone(), model.clone());
    let path = store::path(&config.data_dir, &model.name);
    let (plan, kept) = tokio::task::spawn_blocking(move || {
        let plan = Plan::new(&model2, &spec, &registry, &gradients, &config2)?;
        let kept = match store::load(&path, plan.listing.inputs.clone()) {
            Ok(Some(set)) => match plan.matches(&set) {
                Ok(()) => Some(set),
                Err(why) => {
                    tracing::info!(model = %model2.name, reason = why, "reference set rebuilt");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(model = %model2.name, error = %e, "kept reference set unreadable: rebuilt");
                None
            }
        };
        Ok::<_, String>((plan, kept))
    })
    .await
    .map_err(|e| e.to_string())??;
    if let Some(set) = kept {
        return Ok(set);
    }
    let control = Control {
        deadline: Duration::from_millis(config.async_job_deadline_ms),
        cancelled: Default::default(),
        progress: Default::default(),
    };
    let admission = executor.admit().map_err(|e| e.to_string())?;
    build_and_keep(admission, plan, control, &config.data_dir).await
}

/// A failure as clients see it: without the server's models and data directories.
fn shown(error: &str, config: &Config) -> String {
    let mut error = error.to_string();
    for dir in [&config.models_dir, &config.data_dir] {
        let dir = dir.display().to_string();
        let prefix = format!(
            "{}{}",
            dir.trim_end_matches(std::path::MAIN_SEPARATOR),
            std::path::MAIN_SEPARATOR
        );
        error = error.replace(&prefix, "");
    }
    error
}

/// Builds `plan` on the executor under `control` and keeps the set in `data_dir`.
pub async fn build_and_keep(
    admission: Admission,
    plan: Plan,
    control: Control,
    data_dir: &std::path::Path,
) -> Result<ReferenceSet, String> {
    let began = std::time::Instant::now();
    let model = plan.model.name.clone();
    let set = admission
        .run_controlled(BuildReference(plan), control)
        .await
        .map_err(|e| e.to_string())?;
    let path = store::path(data_dir, &model);
    let set = tokio::task::spawn_blocking(move || store::save(&path, &set).map(|()| set))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot keep the reference set: {e}"))?;
    tracing::info!(model = %model, rows = set.len(), ms = began.elapsed().as_millis() as u64, "reference set built");
    Ok(set)
}
