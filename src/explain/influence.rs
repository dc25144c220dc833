//! Influence (TracIn, Pruthi et al. 2020) restricted to the last linear layer, where it is exact
//! and cheap (Captum's TracInCPFast): the influence of reference row `i` on the input with label
//! `y` (the target: the given class, else the prediction) is
//! `sum over checkpoints of lr * (a . a_i + 1 when the layer has a bias) * (g . g_i)`, `a` the
//! layer's input and `g = softmax(z) - onehot(y)` the cross-entropy gradient on its output.
//! Proponents (most positive) are rows whose training step lowered the input's loss; opponents
//! (most negative) raised it. `normalize` divides each checkpoint's gradients by their norms (the
//! cosine form), so that a few high-loss rows do not top every input's opponents.

use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::method::{bytes, check_range, Capabilities, Cost, Invalid, Method, PlanContext};
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
            let list = |best: Vec<(usize, f64)>| -> Vec<serde_json::Value> {
                best.into_iter()
                    .map(|(i, s)| {
                        let row = set.row(i, labels, s);
                        json!({"id": row.id, "label": row.label, "prediction": row.prediction, "influence": s})
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
            let details = json!({
                "proponents": proponents,
                "opponents": opponents,
                "label": target.label,
                "normalize": p.normalize,
                "checkpoints": set.checkpoints.iter().map(|c| json!({"model": c.model, "lr": c.lr})).collect::<Vec<_>>(),
                "layer": set.checkpoints[0].input,
                "reference_rows": set.len(),
            });
            out.push(TargetAttribution::from_details(target, details));
        }
        Ok(out)
    }
}
