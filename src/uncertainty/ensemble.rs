//! Deep ensembles (Lakshminarayanan et al., 2017): the model and the members its manifest names in
//! `ensemble` each run once on the same input; their disagreement is the uncertainty. Members are
//! checked at start to share the task, labels and input (see the registry).

use std::sync::Arc;

use super::{split, Plan, Samples};
use crate::common::Invalid;
use crate::runtime::{LoadedModel, Registry, RuntimeError, Tensor, WorkerRuntime};

/// The model and its members.
pub(super) fn plan(model: &Arc<LoadedModel>, registry: &Registry) -> Result<Plan, Invalid> {
    if model.spec.ensemble.is_empty() {
        return Err(Invalid::Unsupported(format!(
            "model `{}` has no ensemble; list other models of the same task in its model.toml: ensemble = [\"...\"]",
            model.name
        )));
    }
    let mut members = vec![model.clone()];
    for name in &model.spec.ensemble {
        // The registry checked every member at start; a missing one here is a bug, not input.
        let member = registry
            .get(name)
            .ok_or_else(|| Invalid::Unsupported(format!("ensemble member `{name}` is not loaded")))?;
        members.push(member.clone());
    }
    Ok(Plan::Ensemble { members })
}

/// Each input's samples from every member, in member order.
pub(super) fn sample(
    rt: &mut WorkerRuntime,
    members: &[Arc<LoadedModel>],
    input: &Tensor,
) -> Result<Vec<Samples>, RuntimeError> {
    let mut per_input: Vec<Option<Samples>> = (0..input.rows()).map(|_| None).collect();
    for member in members {
        let outputs = rt.run(member, input)?;
        for (samples, one) in per_input.iter_mut().zip(split(member, &outputs, 1, &[])?) {
            match (samples.as_mut(), one) {
                (None, one) => *samples = Some(one),
                (Some(Samples::Rows(all)), Samples::Rows(one)) => all.extend(one),
                (Some(Samples::Detections(all)), Samples::Detections(one)) => all.extend(one),
                (Some(Samples::Pixels { rows: all, grid }), Samples::Pixels { rows: one, grid: other })
                    if *grid == other =>
                {
                    all.extend(one)
                }
                _ => {
                    return Err(RuntimeError::Inference {
                        model: member.name.clone(),
                        message: "ensemble members answer different kinds of output".into(),
                    })
                }
            }
        }
    }
    Ok(per_input
        .into_iter()
        .map(|s| s.unwrap_or(Samples::Rows(Vec::new())))
        .collect())
}
