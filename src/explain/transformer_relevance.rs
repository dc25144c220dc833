//! Transformer relevance (Chefer, Gur and Wolf, ICCV 2021, "generic attention-model
//! explainability"): for each self-attention layer in order, the attention probabilities times
//! their gradients for the target's score, negatives clipped, averaged over the heads,
//! `A = mean_h((dA * A)+)`; relevance starts as the identity and accumulates `R <- R + A . R`
//! (the residual keeps each token's own relevance). The class token's row over the patch tokens,
//! laid on the patch grid, scaled to [0, 1] by its minimum and maximum (as the authors' notebook
//! does) and upsampled over the image; on text, the `[CLS]` row over the other tokens, one value
//! per token. One gradient pass per target, at the attention maps.

use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::attention_rollout::{attention_of, other_tokens};
use super::method::{bytes, Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext};
use super::method::{schemas_of, NamedSchemas};
use super::{one_hot, repeat_rows, Cx, ExplainJob, TargetAttribution};
use crate::onnx::autodiff::RuleSet;
use crate::runtime::predict::Prediction;
use crate::runtime::RuntimeError;

/// Transformer-relevance parameters (none).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TransformerRelevanceParams {}

/// Transformer relevance.
pub struct TransformerRelevance;

impl Method for TransformerRelevance {
    type Params = TransformerRelevanceParams;
    const NAME: &'static str = "transformer-relevance";
    const SUMMARY: &'static str =
        "Vision transformers: attention weighted by its gradient, accumulated through the layers (Chefer et al. 2021)";
    const CAPABILITIES: Capabilities = Capabilities {
        passes: Passes::Gradients,
        inputs: Inputs::Image,
        layer: false,
        random: false,
        examples: false,
        decision: false,
        text: true,
        makes_image: false,
    };

    fn details_schema() -> Option<NamedSchemas> {
        Some(schemas_of::<super::attention_rollout::AttentionDetails>())
    }

    fn plan(_: &mut TransformerRelevanceParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        let (maps, placed) = attention_of(cx.model)?;
        let tokens = placed.most();
        // Per target and layer, the maps and their gradients as read (up to 16 heads' worth), and
        // the relevance being accumulated.
        let per_layer = bytes(tokens.saturating_mul(tokens), 8).saturating_mul(16);
        let mut cost = super::saliency::one_gradient_per_target(cx);
        cost.bytes = cost.bytes.saturating_add(
            per_layer
                .saturating_mul(maps.len() as u64 + 1)
                .saturating_mul(cx.targets as u64),
        );
        Ok(cost)
    }

    fn one_pass(_: &Self::Params, job: &ExplainJob) -> Option<(Vec<String>, RuleSet)> {
        Some((attention_of(&job.model).ok()?.0, RuleSet::Exact))
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        _: &TransformerRelevanceParams,
        targets: &[Prediction],
        _: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        let (names, placed) = attention_of(&job.model).map_err(|e| RuntimeError::UnsupportedModel {
            model: job.model.name.clone(),
            message: e.to_string(),
        })?;
        let classes = crate::common::detection_targets::width(&job.model);
        let indices: Vec<usize> = targets.iter().map(|t| t.index).collect();
        let input = repeat_rows(&job.input, targets.len());
        let pass = cx.layer_gradients(&names, &input, &one_hot(&indices, classes), cx.max_batch())?;
        let tokens = placed.count(job);
        let mut out = Vec::with_capacity(targets.len());
        for (r, target) in targets.iter().enumerate() {
            let layers: Vec<Vec<f64>> = pass
                .layers
                .iter()
                .map(|(a, g)| {
                    let (heads, t) = (a.shape[1], a.shape[2]);
                    let size = heads * t * t;
                    let a = &a.as_f32().unwrap_or(&[])[r * size..(r + 1) * size];
                    let g = &g.as_f32().unwrap_or(&[])[r * size..(r + 1) * size];
                    weighted_attention(a, g, heads, t)
                })
                .collect();
            let relevance = accumulate(&layers, tokens).ok_or_else(|| other_tokens(job, tokens))?;
            let mut patches = placed.explained(job, &relevance);
            let lo = patches.iter().fold(f64::INFINITY, |m, v| m.min(*v));
            let hi = patches.iter().fold(f64::NEG_INFINITY, |m, v| m.max(*v));
            if hi > lo {
                patches.iter_mut().for_each(|v| *v = (*v - lo) / (hi - lo));
            } else {
                patches.iter_mut().for_each(|v| *v = 0.0);
            }
            let (map, details) = placed.map(job, Self::NAME, &patches, names.len())?;
            out.push(TargetAttribution::from_map(target, map, None, Some(details)));
        }
        Ok(out)
    }
}

/// `mean_h((g * a)+)` of one layer's maps and gradients `[heads][t][t]`.
fn weighted_attention(a: &[f32], g: &[f32], heads: usize, t: usize) -> Vec<f64> {
    let n = t * t;
    (0..n)
        .map(|i| {
            (0..heads)
                .map(|h| (f64::from(a[h * n + i]) * f64::from(g[h * n + i])).max(0.0))
                .sum::<f64>()
                / heads.max(1) as f64
        })
        .collect()
}

/// `R = I`, then `R <- R + A . R` for each layer's weighted attention `[t][t]`; the first token's
/// row (`None`: a map of another size).
fn accumulate(layers: &[Vec<f64>], t: usize) -> Option<Vec<f64>> {
    let mut r = Array2::<f64>::eye(t);
    for a in layers {
        let a = ArrayView2::from_shape((t, t), a).ok()?;
        r = &r + &a.dot(&r);
    }
    Some(r.row(0).to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relevance_accumulates_positive_gradient_weighted_attention_over_the_identity() {
        // Two heads, two tokens: (g * a)+ per head, then their mean.
        let a = [0.5f32, 0.5, 0.5, 0.5, 1.0, 0.0, 0.0, 1.0];
        let g = [2.0f32, -2.0, 0.0, 4.0, 1.0, 3.0, 5.0, -1.0];
        let w = weighted_attention(&a, &g, 2, 2);
        assert_eq!(w, vec![1.0, 0.0, 0.0, 1.0]);
        // One layer: R = I + A; its first row.
        assert_eq!(accumulate(std::slice::from_ref(&w), 2), Some(vec![2.0, 0.0]));
        // Two layers: R = (I + A)(I + A) = [[4, 0], [0, 4]].
        assert_eq!(accumulate(&[w.clone(), w], 2), Some(vec![4.0, 0.0]));
    }
}
