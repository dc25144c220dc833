//! Deep ensembles (Lakshminarayanan et al., 2017): the model and the members its manifest names in
//! `ensemble` each run once on the same input; their disagreement is the uncertainty. Members are
//! checked at start to share the task, labels and input (see the registry).

use std::sync::Arc;

use super::{split_rows, Plan};
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

/// Each input's probabilities from every member, in member order.
pub(super) fn sample(
    rt: &mut WorkerRuntime,
    members: &[Arc<LoadedModel>],
    input: &Tensor,
) -> Result<Vec<Vec<Vec<f64>>>, RuntimeError> {
    let mut per_input: Vec<Vec<Vec<f64>>> = vec![Vec::with_capacity(members.len()); input.rows()];
    for member in members {
        let outputs = rt.run(member, input)?;
        let scores = outputs
            .get(&member.spec.output)
            .ok_or_else(|| RuntimeError::Inference {
                model: member.name.clone(),
                message: format!("output `{}` missing from the run", member.spec.output),
            })?;
        for (samples, row) in per_input.iter_mut().zip(split_rows(member, scores, 1)) {
            samples.extend(row);
        }
    }
    Ok(per_input)
}
