//! Attention rollout (Abnar and Zuidema, ACL 2020) for vision transformers: each self-attention
//! layer's probabilities with the heads fused (mean, max or min), optionally the weakest
//! `discard_ratio` of each fused map dropped (jacobgil's vit-explain, which keeps the class token's
//! own entry), the identity added for the residual path, `(A + I) / 2` renormalised by rows, and the
//! layers multiplied in order; the class token's row over the patch tokens, laid on the patch grid,
//! divided by its maximum and upsampled over the image. The same map for every target: attention
//! does not depend on the class. One forward pass, the attention maps as further outputs. On text
//! transformers the `[CLS]` row gives one value per token (special tokens left at zero).

use ndarray::Array2;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::method::{bytes, Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext};
use super::method::{schemas_of, NamedSchemas};
use super::{Cx, ExplainJob, TargetAttribution};
use crate::onnx::autodiff::TokenGrid;
use crate::runtime::predict::Prediction;
use crate::runtime::{LoadedModel, RuntimeError};

/// How the heads of one layer are fused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HeadFusion {
    #[default]
    Mean,
    Max,
    Min,
}

/// Attention-rollout parameters.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AttentionRolloutParams {
    /// How each layer's heads are fused: `mean` (Abnar and Zuidema), `max` or `min`.
    pub head_fusion: HeadFusion,
    /// Fraction of each fused map's weakest entries set to zero before the residual is added
    /// (0: none, as in the paper; vit-explain uses 0.9). The class token's attention to itself is
    /// kept.
    #[schema(default = 0.0, minimum = 0.0, maximum = 0.99)]
    pub discard_ratio: f64,
}

/// Attention rollout.
pub struct AttentionRollout;

/// Where the tokens of the attention maps lie: on a vision transformer's patch grid, or along a
/// text (the first token, `[CLS]`, is the class token).
#[derive(Debug, Clone, Copy)]
pub(super) enum Tokens {
    /// A ViT's patch grid (after `skip` class tokens).
    Grid(TokenGrid),
    /// A text of at most `most` tokens.
    Text { most: usize },
}

impl Tokens {
    /// Tokens in the maps of the job's input.
    pub fn count(&self, job: &ExplainJob) -> usize {
        match self {
            Tokens::Grid(g) => g.skip + g.height * g.width,
            Tokens::Text { .. } => job.text.as_ref().map_or(0, |t| t.tokens.len()),
        }
    }

    /// Tokens in the largest maps (what a plan budgets).
    pub fn most(&self) -> usize {
        match self {
            Tokens::Grid(g) => g.skip + g.height * g.width,
            Tokens::Text { most } => *most,
        }
    }

    /// Of the class token's row over every token, the values explained: the patch tokens', or
    /// the text's tokens but the special ones (whose own entries, `[CLS]` on itself above all,
    /// say nothing of the text).
    pub fn explained(&self, job: &ExplainJob, row: &[f64]) -> Vec<f64> {
        match self {
            Tokens::Grid(g) => row[g.skip..].to_vec(),
            Tokens::Text { .. } => match &job.text {
                Some(text) => text
                    .tokens
                    .iter()
                    .zip(row)
                    .filter(|(t, _)| !t.special)
                    .map(|(_, v)| *v)
                    .collect(),
                None => row.to_vec(),
            },
        }
    }

    /// The answer's map of the explained values: the patch grid upsampled over the image, or one
    /// value per token (zero for special tokens); and the details that describe it.
    pub fn map(
        &self,
        job: &ExplainJob,
        method: &str,
        values: &[f64],
        layers: usize,
    ) -> Result<(crate::runtime::Tensor, serde_json::Value), RuntimeError> {
        match self {
            Tokens::Grid(grid) => patch_map(job, method, values, *grid, layers),
            Tokens::Text { .. } => {
                let text = job.text.as_ref().ok_or_else(|| other_tokens(job, 0))?;
                let mut explained = values.iter();
                let map: Vec<f32> = text
                    .tokens
                    .iter()
                    .map(|t| match t.special {
                        true => 0.0,
                        false => explained.next().copied().unwrap_or(0.0) as f32,
                    })
                    .collect();
                let details = AttentionDetails {
                    layers,
                    class_token: true,
                    grid: None,
                    patches: None,
                };
                Ok((
                    crate::runtime::Tensor::f32(vec![map.len()], map),
                    serde_json::to_value(details).unwrap_or_default(),
                ))
            }
        }
    }
}

/// The model's attention maps and where their tokens lie, or why the model has none.
pub(super) fn attention_of(model: &LoadedModel) -> Result<(Vec<String>, Tokens), Invalid> {
    let report = model.gradient_report.get();
    let maps = report.map(|r| r.attention_maps.clone()).unwrap_or_default();
    let grid = report
        .and_then(|r| r.default_cam_layer.as_ref().and_then(|l| r.cam_layer_tokens.get(l)))
        .copied();
    let tokens = match (&model.spec.text, grid) {
        (Some(text), _) => Some(Tokens::Text { most: text.max_length }),
        (None, Some(grid)) => Some(Tokens::Grid(grid)),
        (None, None) => None,
    };
    match (maps.is_empty(), tokens) {
        (false, Some(tokens)) => Ok((maps, tokens)),
        _ => Err(Invalid::Unsupported(format!(
            "model `{}` is not a transformer explaind can read: attention methods need self-attention \
             probabilities (Softmax outputs [batch, heads, tokens, tokens]) over a text's tokens or over tokens \
             that lie on the image as patches (found {} attention maps, {})",
            model.name,
            maps.len(),
            if tokens.is_some() {
                "tokens placed"
            } else {
                "no token grid"
            }
        ))),
    }
}

impl Method for AttentionRollout {
    type Params = AttentionRolloutParams;
    const NAME: &'static str = "attention-rollout";
    const SUMMARY: &'static str =
        "Vision transformers: attention multiplied through the layers, the class token's row on the patch grid (Abnar and Zuidema 2020)";
    const CAPABILITIES: Capabilities = Capabilities {
        passes: Passes::Forward,
        inputs: Inputs::Image,
        layer: false,
        random: false,
        examples: false,
        decision: false,
        text: true,
        makes_image: false,
    };

    fn details_schema() -> Option<NamedSchemas> {
        Some(schemas_of::<AttentionDetails>())
    }

    fn plan(p: &mut AttentionRolloutParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        if !(0.0..=0.99).contains(&p.discard_ratio) {
            return Err(Invalid::Request(format!(
                "params.discard_ratio must be between 0 and 0.99, got {}",
                p.discard_ratio
            )));
        }
        let (maps, placed) = attention_of(cx.model)?;
        let tokens = placed.most();
        // Every layer's maps as read, the fused map, and the running product.
        let per_layer = bytes(tokens.saturating_mul(tokens), 4).saturating_mul(16);
        Ok(Cost {
            samples: 1,
            rows: 1,
            bytes: per_layer
                .saturating_mul(maps.len() as u64 + 2)
                .saturating_add(bytes(cx.pixels(), 8)),
        })
    }

    fn with_scores(_: &Self::Params, job: &ExplainJob) -> Vec<String> {
        attention_of(&job.model).map(|(maps, _)| maps).unwrap_or_default()
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        p: &AttentionRolloutParams,
        targets: &[Prediction],
        _: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        let unsupported = |e: Invalid| RuntimeError::UnsupportedModel {
            model: job.model.name.clone(),
            message: e.to_string(),
        };
        let (names, placed) = attention_of(&job.model).map_err(unsupported)?;
        let outputs = match cx.scored() {
            Some(outs) if names.iter().all(|n| outs.contains_key(n)) => outs,
            _ => {
                let model = job.model.clone();
                cx.forward_with(&model, &names, &job.input)?
            }
        };
        let mut layers = Vec::with_capacity(names.len());
        for name in &names {
            let t = &outputs[name];
            let (heads, tokens) = (t.shape[1], t.shape[2]);
            let values = t.as_f32().unwrap_or(&[]);
            // The first row: a job explains one input.
            layers.push(fuse(&values[..heads * tokens * tokens], heads, tokens, p.head_fusion));
        }
        let tokens = placed.count(job);
        let rolled = rollout(&layers, tokens, p.discard_ratio).ok_or_else(|| other_tokens(job, tokens))?;
        let mut patches = placed.explained(job, &rolled);
        let peak = patches.iter().fold(0f64, |m, v| m.max(*v));
        if peak > 0.0 {
            patches.iter_mut().for_each(|v| *v /= peak);
        }
        let map = placed.map(job, Self::NAME, &patches, names.len())?;
        Ok(targets
            .iter()
            .map(|t| TargetAttribution::from_map(t, map.0.clone(), None, Some(map.1.clone())))
            .collect())
    }
}

/// An attention map that does not cover the input's tokens (a model that pools tokens
/// between layers): explaind cannot roll it out.
pub(super) fn other_tokens(job: &ExplainJob, tokens: usize) -> RuntimeError {
    RuntimeError::UnsupportedModel {
        model: job.model.name.clone(),
        message: format!("an attention map does not cover the input's {tokens} tokens"),
    }
}

/// A map over the patch grid upsampled over the image, and the details that describe it (the
/// grid's own values in `patches`).
fn patch_map(
    job: &ExplainJob,
    method: &str,
    patches: &[f64],
    grid: TokenGrid,
    layers: usize,
) -> Result<(crate::runtime::Tensor, serde_json::Value), RuntimeError> {
    let values: Vec<f32> = patches.iter().map(|v| *v as f32).collect();
    let spec = job.image_spec(method)?;
    let map = super::grad_cam::upsample(&values, grid.width, grid.height, spec.width, spec.height);
    let details = AttentionDetails {
        layers,
        class_token: grid.skip > 0,
        grid: Some([grid.height, grid.width]),
        patches: Some(patches.to_vec()),
    };
    Ok((map, serde_json::to_value(details).unwrap_or_default()))
}

/// One layer's heads `[heads][tokens][tokens]` fused into `[tokens][tokens]`.
fn fuse(values: &[f32], heads: usize, tokens: usize, how: HeadFusion) -> Vec<f64> {
    let n = tokens * tokens;
    (0..n)
        .map(|i| {
            let across = (0..heads).map(|h| f64::from(values[h * n + i]));
            match how {
                HeadFusion::Mean => across.sum::<f64>() / heads.max(1) as f64,
                HeadFusion::Max => across.fold(f64::NEG_INFINITY, f64::max),
                HeadFusion::Min => across.fold(f64::INFINITY, f64::min),
            }
        })
        .collect()
}

/// The rollout of fused maps `[tokens][tokens]` in layer order; the first token's row (`None`: a
/// map of another size).
fn rollout(layers: &[Vec<f64>], tokens: usize, discard_ratio: f64) -> Option<Vec<f64>> {
    let n = tokens * tokens;
    let mut result = Array2::<f64>::eye(tokens);
    for fused in layers {
        let mut a = fused.clone();
        let drop = (n as f64 * discard_ratio) as usize;
        if drop > 0 {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|x, y| a[*x].total_cmp(&a[*y]).then(x.cmp(y)));
            for &i in order.iter().take(drop) {
                if i != 0 {
                    a[i] = 0.0;
                }
            }
        }
        let mut a = Array2::from_shape_vec((tokens, tokens), a).ok()?;
        a += &Array2::<f64>::eye(tokens);
        for mut row in a.rows_mut() {
            let sum = row.sum();
            if sum > 0.0 {
                row /= sum;
            }
        }
        result = a.dot(&result);
    }
    Some(result.row(0).to_vec())
}

/// The `details` of a map read from attention (rollout, transformer relevance).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttentionDetails {
    /// Self-attention layers read.
    pub layers: usize,
    /// Whether the class token's row was read.
    pub class_token: bool,
    /// Images: the patch grid, `[height, width]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 2, max_items = 2)]
    pub grid: Option<[usize; 2]>,
    /// Images: the values on the patch grid, row by row, before upsampling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patches: Option<Vec<f64>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_adds_the_residual_renormalises_and_multiplies_the_layers() {
        // Two tokens; a layer where token 0 attends only to token 1.
        let layer = vec![0.0, 1.0, 0.5, 0.5];
        // (A + I) / 2 by rows: [0.5, 0.5], [0.25, 0.75].
        assert_eq!(rollout(std::slice::from_ref(&layer), 2, 0.0), Some(vec![0.5, 0.5]));
        // Two such layers: [0.5, 0.5] . [[0.5, 0.5], [0.25, 0.75]] = [0.375, 0.625].
        assert_eq!(rollout(&[layer.clone(), layer], 2, 0.0), Some(vec![0.375, 0.625]));
        // Two heads over one token.
        let heads = [0.25f32, 0.75];
        assert_eq!(fuse(&heads, 2, 1, HeadFusion::Max), vec![0.75]);
        assert_eq!(fuse(&heads, 2, 1, HeadFusion::Min), vec![0.25]);
        assert_eq!(fuse(&heads, 2, 1, HeadFusion::Mean), vec![0.5]);
        // Discarding half drops the 0.2, and keeps the class token's own entry (index 0) however
        // small: rows of A + I [1.1, 0.9], [1, 1.8], normalised.
        let kept = rollout(&[vec![0.1, 0.9, 0.2, 0.8]], 2, 0.5).unwrap();
        assert!(
            (kept[0] - 0.55).abs() < 1e-12 && (kept[1] - 0.45).abs() < 1e-12,
            "{kept:?}"
        );
    }
}
