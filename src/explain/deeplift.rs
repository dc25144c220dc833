//! DeepLIFT with the rescale rule (Shrikumar et al. 2017), as Captum's `DeepLift`: the input and a
//! reference run as one batch of two through the backward graph whose nonlinearities pass
//! (f(x) - f(x')) / (x - x') (`RuleSet::Rescale`); attributions are (x - x') times the
//! multipliers, and their sum minus (f(x) - f(x')) is reported as the convergence delta (0 up to
//! rounding on networks of linear layers, elementwise nonlinearities and max pooling, which follows
//! Captum's rule).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::baselines::{self, Baseline};
use super::method::{bytes, Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext};
use super::{fold_channels, one_hot, row, Cx, ExplainJob, Fold, TargetAttribution};
use crate::onnx::autodiff::RuleSet;
use crate::runtime::predict::Prediction;
use crate::runtime::{RuntimeError, Tensor};

/// DeepLIFT parameters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DeepLiftParams {
    /// Reference input.
    #[schema(default = "black")]
    pub baseline: Baseline,
    /// Attributions are (x - x') x multipliers (Captum's `multiply_by_inputs`); false: the multipliers.
    #[schema(default = true)]
    pub multiply_by_inputs: bool,
}

impl Default for DeepLiftParams {
    fn default() -> Self {
        Self {
            baseline: Baseline::Black,
            multiply_by_inputs: true,
        }
    }
}

/// DeepLIFT.
pub struct DeepLift;

impl Method for DeepLift {
    type Params = DeepLiftParams;
    const NAME: &'static str = "deeplift";
    const SUMMARY: &'static str = "Differences from a reference through the rescale rule (Shrikumar et al. 2017)";
    const CAPABILITIES: Capabilities = Capabilities {
        passes: Passes::Gradients,
        inputs: Inputs::Any,
        layer: false,
        random: false,
        examples: false,
        decision: false,
        text: false,
        makes_image: false,
    };

    fn details_schema() -> Option<super::method::NamedSchemas> {
        Some(super::method::schemas_of::<super::deeplift::DeepLiftDetails>())
    }

    fn plan(p: &mut DeepLiftParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        baselines::planned(&mut p.baseline, cx)?;
        Ok(pair_cost(cx, 1))
    }

    fn rules(_: &Self::Params) -> Vec<RuleSet> {
        vec![RuleSet::Rescale]
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        p: &DeepLiftParams,
        targets: &[Prediction],
        _: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        let reference = baselines::for_job(p.baseline, job);
        let mut out = Vec::with_capacity(targets.len());
        for t in targets {
            let pair = pair(cx, job, &reference, t.index)?;
            out.push(attribution(job, t, &pair, p.multiply_by_inputs, pair.delta));
        }
        Ok(out)
    }
}

/// The cost of `references` input/reference pairs per target: two gradient rows each.
pub(super) fn pair_cost(cx: &PlanContext, references: usize) -> Cost {
    let pairs = references.saturating_mul(cx.targets);
    Cost {
        samples: pairs,
        rows: pairs.saturating_mul(2),
        bytes: bytes(cx.input_len(), 4)
            .saturating_mul(6)
            .saturating_add(bytes(cx.input_len(), 8).saturating_mul(cx.targets as u64))
            .saturating_add(cx.answer_bytes()),
    }
}

/// One input/reference pair through the rescale rules.
pub(super) struct Pair {
    /// (x - x') x multipliers, in the input's space.
    pub contributions: Vec<f64>,
    /// The multipliers.
    pub multipliers: Vec<f64>,
    /// f(x) - f(x') for the target.
    pub difference: f64,
    /// Sum of contributions minus the difference.
    pub delta: f64,
}

/// DeepLIFT's (and DeepLiftShap's) `details`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeepLiftDetails {
    /// f(input) - f(reference) for the target (averaged over references for DeepLiftShap): what
    /// the contributions add up to.
    pub difference: f64,
}

/// Runs `input` and `reference` as one pass of two rows for target `index`.
pub(super) fn pair(cx: &mut Cx, job: &ExplainJob, reference: &Tensor, index: usize) -> Result<Pair, RuntimeError> {
    let x = job.input.as_f32().unwrap_or(&[]);
    let r = reference.as_f32().unwrap_or(&[]);
    let mut shape = job.input.shape.clone();
    shape[0] = 2;
    let batch = Tensor::f32(shape, x.iter().chain(r).copied().collect());
    let classes = crate::common::detection_targets::width(&job.model);
    let pass = cx.gradients(&[], RuleSet::Rescale, &batch, &one_hot(&[index, index], classes), 2)?;
    let scores = pass.scores.to_f64();
    let width = pass.scores.row_len().max(1);
    let difference = scores[index.min(width - 1)] - scores[width + index.min(width - 1)];
    let multipliers: Vec<f64> = pass.input_grad.as_f32().unwrap_or(&[])[..x.len()]
        .iter()
        .map(|v| f64::from(*v))
        .collect();
    let contributions: Vec<f64> = multipliers
        .iter()
        .zip(x.iter().zip(r))
        .map(|(m, (x, r))| m * f64::from(x - r))
        .collect();
    let delta = contributions.iter().sum::<f64>() - difference;
    Ok(Pair {
        contributions,
        multipliers,
        difference,
        delta,
    })
}

/// The answer for target `t`: contributions (or multipliers), summed over channels on images.
pub(super) fn attribution(
    job: &ExplainJob,
    t: &Prediction,
    pair: &Pair,
    by_inputs: bool,
    delta: f64,
) -> TargetAttribution {
    let values = if by_inputs {
        &pair.contributions
    } else {
        &pair.multipliers
    };
    let mut shape = job.input.shape.clone();
    shape[0] = 1;
    let batch = Tensor::f32(shape, values.iter().map(|v| *v as f32).collect());
    TargetAttribution {
        target: t.clone(),
        tensor: row(&batch, 0),
        map: job
            .model
            .spec
            .image
            .as_ref()
            .map(|s| fold_channels(&batch, 0, s, Fold::Sum)),
        convergence_delta: Some(delta),
        layer: None,
        // What the contributions add up to: f(input) - f(reference).
        details: serde_json::to_value(DeepLiftDetails {
            difference: pair.difference,
        })
        .ok(),
    }
}
