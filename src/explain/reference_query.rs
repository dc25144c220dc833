//! What the example-based methods (similar examples, influence) share: the model's reference set,
//! a label filter, and the input's vectors read from the same tensors as the set's rows.

use std::sync::Arc;

use super::counterfactual::{class_index, ClassRef};
use super::method::{Capabilities, Inputs, Invalid, Passes};
use super::{Cx, ExplainJob};
use crate::examples::{loss_gradient, Query, ReferenceSet};
use crate::runtime::{LoadedModel, RuntimeError};

/// What the example-based methods need and answer: forward passes of any model with a reference
/// set, reference rows rather than an attribution.
pub(super) const ROWS: Capabilities = Capabilities {
    passes: Passes::Forward,
    inputs: Inputs::Any,
    layer: false,
    random: false,
    examples: true,
    decision: false,
    text: false,
    makes_image: false,
};

/// The tensors the scoring pass returns for an example-based method: the set's embedding and
/// last-layer tensors.
pub(super) fn scored_with(job: &ExplainJob) -> Vec<String> {
    let scores = &job.model.spec.output;
    job.reference
        .as_ref()
        .map(|s| s.head.outputs(scores))
        .unwrap_or_default()
}

/// The model's reference set, or a 422 naming the manifest section to add.
pub(super) fn reference_of(set: &Option<Arc<ReferenceSet>>, model: &LoadedModel) -> Result<Arc<ReferenceSet>, Invalid> {
    set.clone()
        .ok_or_else(|| Invalid::Model(crate::examples::no_set(&model.name)))
}

/// Refuses influence on a set whose model has no linear last layer, with the reason.
pub(super) fn check_influence(set: &ReferenceSet, model: &LoadedModel) -> Result<(), Invalid> {
    if set.checkpoints.is_empty() {
        return Err(Invalid::Unsupported(format!(
            "model `{}` has no linear last layer whose output makes its scores, so influence and gradient \
             similarity cannot be computed ({}); cosine and l2 similarity still can",
            model.name,
            set.head.no_influence.as_deref().unwrap_or("no head")
        )));
    }
    Ok(())
}

/// The classes `labels` names as a per-class mask (`None` when the list is empty).
pub(super) fn allowed(model: &LoadedModel, labels: &[ClassRef]) -> Result<Option<Vec<bool>>, Invalid> {
    if labels.is_empty() {
        return Ok(None);
    }
    let mut mask = vec![false; model.spec.labels.len().max(1)];
    for l in labels {
        mask[class_index(model, l, "labels")?] = true;
    }
    Ok(Some(mask))
}

/// The input's embedding and last-layer inputs and logits (per checkpoint, all of them or only the
/// model's own): one forward pass per checkpoint, through the same tensors as the set's rows.
pub(super) fn input_vectors(
    cx: &mut Cx,
    job: &ExplainJob,
    set: &ReferenceSet,
    all_checkpoints: bool,
) -> Result<InputVectors, RuntimeError> {
    let model = job.model.clone();
    let read = |outs: &std::collections::HashMap<String, crate::runtime::Tensor>, name: &str| {
        outs.get(name)
            .and_then(|t| t.as_f32())
            .map(<[f32]>::to_vec)
            .ok_or_else(|| RuntimeError::Inference {
                model: model.name.clone(),
                message: format!("the model gave no `{name}`"),
            })
    };
    let head = &set.head;
    let names = head.outputs(&model.spec.output);
    // The pass that scored the input returned these already, when the method asked it to.
    let outs = match cx.scored() {
        Some(outs) if names.iter().all(|n| outs.contains_key(n)) => outs,
        _ => cx.forward_with(&model, &names, &job.input)?,
    };
    let embedding = read(&outs, &head.embedding)?;
    let mut checkpoints = Vec::new();
    if let Some(l) = &head.linear {
        checkpoints.push((read(&outs, &l.input)?, read(&outs, &l.logits)?));
    }
    if all_checkpoints {
        for c in set.checkpoints.iter().skip(1) {
            let other = cx.loaded(&c.model)?;
            let outs = cx.forward_with(&other, &[c.input.clone(), c.logits.clone()], &job.input)?;
            checkpoints.push((read(&outs, &c.input)?, read(&outs, &c.logits)?));
        }
    }
    let vectors = InputVectors {
        embedding,
        last_layer: checkpoints,
    };
    // The set's rows came through the same tensors: other lengths mean another model.
    if !set.fits(&vectors.query(0)) {
        return Err(RuntimeError::Inference {
            model: model.name.clone(),
            message: "the input's embedding or last-layer tensors differ in size from the reference set's".into(),
        });
    }
    Ok(vectors)
}

/// The input's embedding, and per checkpoint its last layer's input `a` and logits `z`.
pub(super) struct InputVectors {
    embedding: Vec<f32>,
    last_layer: Vec<(Vec<f32>, Vec<f32>)>,
}

impl InputVectors {
    /// The query for `label`: the embedding, and per checkpoint `a` and the loss gradient
    /// `softmax(z) - onehot(label)`.
    pub(super) fn query(&self, label: usize) -> Query {
        Query {
            embedding: self.embedding.clone(),
            checkpoints: self
                .last_layer
                .iter()
                .map(|(a, z)| (a.clone(), loss_gradient(z, label)))
                .collect(),
        }
    }
}
