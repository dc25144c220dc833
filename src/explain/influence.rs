//! Influence (TracIn, Pruthi et al. 2020) restricted to the last linear layer, where it is exact
//! and cheap (Captum's TracInCPFast): the influence of reference row `i` on the input with label
//! `y` (the target: the given class, else the prediction) is
//! `sum over checkpoints of lr * (a . a_i + 1 when the layer has a bias) * (g . g_i)`, `a` the
//! layer's input and `g = softmax(z) - onehot(y)` the cross-entropy gradient on its output.
//! Proponents (most positive) are rows whose training step lowered the input's loss; opponents
//! (most negative) raised it. `normalize` divides each checkpoint's gradients by their norms (the
//! cosine form), so that a few high-loss rows do not top every input's opponents.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::method::{bytes, check_range, schemas_of, Capabilities, Cost, Invalid, Method, NamedSchemas, PlanContext};
use super::reference_query::{check_influence, input_vectors, reference_of, scored_with, ROWS};
use super::similar_examples::unsupported;
use super::{Cx, ExplainJob, TargetAttribution};
use crate::examples::top;
use crate::runtime::predict::Prediction;
use crate::runtime::RuntimeError;

/// Influence parameters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct InfluenceParams {
    /// Proponents and opponents to return, each.
    #[schema(default = 5, minimum = 1, maximum = 100)]
    pub k: usize,
    /// The cosine form: each checkpoint's gradients scaled to unit length.
    #[schema(default = false)]
    pub normalize: bool,
}

impl Default for InfluenceParams {
    fn default() -> Self {
        Self { k: 5, normalize: false }
    }
}

/// TracIn influence.
pub struct Influence;

impl Method for Influence {
    type Params = InfluenceParams;
    const NAME: &'static str = "influence";
    const SUMMARY: &'static str =
        "Reference rows that pulled the model towards (proponents) or away from (opponents) the target (TracIn, last layer)";
    const CAPABILITIES: Capabilities = ROWS;

    fn details_schema() -> Option<NamedSchemas> {
        Some(schemas_of::<InfluenceDetails>())
    }

    fn plan(p: &mut InfluenceParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        check_range("k", p.k, 1, 100)?;
        let set = reference_of(&cx.reference, cx.model)?;
        check_influence(&set, cx.model)?;
        let checkpoints = set.checkpoints.len();
        Ok(Cost {
            samples: checkpoints,
            rows: checkpoints,
            bytes: bytes(set.len(), 16).saturating_mul(cx.targets.max(1) as u64),
        })
    }

    fn with_scores(_: &Self::Params, job: &ExplainJob) -> Vec<String> {
        scored_with(job)
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        p: &InfluenceParams,
        targets: &[Prediction],
        _: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        let set = reference_of(&job.reference, &job.model).map_err(|e| unsupported(job, e))?;
        check_influence(&set, &job.model).map_err(|e| unsupported(job, e))?;
        let vectors = input_vectors(cx, job, &set, true)?;
        let labels = &job.model.spec.labels;
        let mut out = Vec::new();
        for target in targets {
            let query = vectors.query(target.index);
            let scores = set.influence(&query.checkpoints, p.normalize);
            let scored: Vec<(usize, f64)> = scores.iter().copied().enumerate().collect();
            let list = |best: Vec<(usize, f64)>| -> Vec<InfluenceRow> {
                best.into_iter()
                    .map(|(i, s)| {
                        let row = set.row(i, labels, s);
                        InfluenceRow {
                            id: row.id,
                            label: row.label,
                            prediction: row.prediction,
                            influence: s,
                        }
                    })
                    .collect()
            };
            let proponents = list(
                top(scored.clone(), p.k, |s| s)
                    .into_iter()
                    .filter(|r| r.1 > 0.0)
                    .collect(),
            );
            let opponents = list(top(scored, p.k, |s| -s).into_iter().filter(|r| r.1 < 0.0).collect());
            let details = InfluenceDetails {
                proponents,
                opponents,
                label: target.label.clone(),
                normalize: p.normalize,
                checkpoints: set
                    .checkpoints
                    .iter()
                    .map(|c| CheckpointUsed {
                        model: c.model.clone(),
                        lr: c.lr,
                    })
                    .collect(),
                layer: set.checkpoints[0].input.clone(),
                reference_rows: set.len(),
            };
            out.push(TargetAttribution::from_details(
                target,
                serde_json::to_value(details).unwrap_or_default(),
            ));
        }
        Ok(out)
    }
}

/// Influence's `details`: the rows that pulled most either way.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InfluenceDetails {
    /// Rows whose training steps lowered the input's loss, most influential first.
    pub proponents: Vec<InfluenceRow>,
    /// Rows whose training steps raised it, most influential first.
    pub opponents: Vec<InfluenceRow>,
    /// The label whose loss is traced (the target).
    pub label: String,
    /// Whether each checkpoint's gradients were divided by their norms.
    pub normalize: bool,
    /// The checkpoints summed over.
    pub checkpoints: Vec<CheckpointUsed>,
    /// The last linear layer's input, where influence is computed.
    pub layer: String,
    /// Rows in the reference set.
    pub reference_rows: usize,
}

/// A reference row and its influence.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InfluenceRow {
    /// The row's id.
    pub id: String,
    /// Its label.
    pub label: String,
    /// The model's prediction for it.
    pub prediction: String,
    /// Its influence on the input's loss.
    pub influence: f64,
}

/// A training checkpoint and its learning rate.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointUsed {
    /// The checkpoint's model.
    pub model: String,
    /// Its learning rate.
    pub lr: f64,
}
