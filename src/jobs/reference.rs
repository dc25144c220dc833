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
/// still valid, else built on the executor (and kept). A set that cannot be read is an error
/// naming the file and line: the service does not start without it.
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
        let (registry, gradients, config2, model2) =
            (registry.clone(), gradients.clone(), config.clone(), model.clone());
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
        .await?
        .map_err(|e| anyhow::anyhow!("model `{}`: reference set: {e}", model.name))?;
        let set = match kept {
            Some(set) => set,
            None => {
                let control = Control {
                    deadline: Duration::from_millis(config.async_job_deadline_ms),
                    cancelled: Default::default(),
                    progress: Default::default(),
                };
                let admission = executor.admit().map_err(|e| anyhow::anyhow!("{e}"))?;
                build_and_keep(admission, plan, control, &config.data_dir)
                    .await
                    .map_err(|e| anyhow::anyhow!("model `{}`: reference set: {e}", model.name))?
            }
        };
        tracing::info!(model = %model.name, rows = set.len(), bytes = set.bytes(), embedding = %set.head.embedding,
            influence = !set.checkpoints.is_empty(), loaded = set.loaded, "reference set ready");
        sets.put(&model.name, Arc::new(set));
    }
    Ok(())
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
