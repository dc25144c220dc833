//! DeepLiftShap (Captum's `DeepLiftShap`): DeepLIFT against several references and averaged, an
//! approximation of SHAP values. References: rows of the manifest's background data (tabular) or
//! black, blurred and uniform-noise images (images), drawn from the seed. The convergence delta is
//! the sum of attributions minus (f(x) - mean of f over the references).

use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::baselines::{self, Baseline};
use super::deeplift::{attribution, pair, pair_cost, Pair};
use super::method::{check_range, Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext};
use super::{Cx, ExplainJob, TargetAttribution};
use crate::onnx::autodiff::RuleSet;
use crate::runtime::predict::Prediction;
use crate::runtime::{RuntimeError, Tensor};

/// Most references.
const MAX_BASELINES: usize = 100;

/// DeepLiftShap parameters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DeepLiftShapParams {
    /// References averaged over.
    #[schema(default = 10, minimum = 1, extensions(("x-maximum" = json!(MAX_BASELINES))))]
    pub baselines: usize,
    /// Attributions are (x - x') x multipliers, averaged; false: the multipliers, averaged.
    #[schema(default = true)]
    pub multiply_by_inputs: bool,
}

impl Default for DeepLiftShapParams {
    fn default() -> Self {
        Self {
            baselines: 10,
            multiply_by_inputs: true,
        }
    }
}

/// DeepLiftShap.
pub struct DeepLiftShap;

impl Method for DeepLiftShap {
    type Params = DeepLiftShapParams;
    const NAME: &'static str = "deeplift-shap";
    const SUMMARY: &'static str = "DeepLIFT averaged over references drawn from background data or images";
    const CAPABILITIES: Capabilities = Capabilities {
        passes: Passes::Gradients,
        inputs: Inputs::Any,
        layer: false,
        random: true,
        examples: false,
        decision: false,
        text: false,
        makes_image: false,
    };

    fn details_schema() -> Option<super::method::NamedSchemas> {
        Some(super::method::schemas_of::<super::deeplift::DeepLiftDetails>())
    }

    fn plan(p: &mut DeepLiftShapParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        check_range("baselines", p.baselines, 1, MAX_BASELINES.min(cx.limits.max_samples))?;
        Ok(pair_cost(cx, p.baselines))
    }

    fn rules(_: &Self::Params) -> Vec<RuleSet> {
        vec![RuleSet::Rescale]
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        p: &DeepLiftShapParams,
        targets: &[Prediction],
        _: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        let references = references(job, p.baselines);
        let mut out = Vec::with_capacity(targets.len());
        for t in targets {
            let pairs = references
                .iter()
                .map(|r| pair(cx, job, r, t.index))
                .collect::<Result<Vec<Pair>, _>>()?;
            let k = pairs.len() as f64;
            let mean = |f: &dyn Fn(&Pair) -> &Vec<f64>| -> Vec<f64> {
                let mut acc = vec![0f64; f(&pairs[0]).len()];
                for p in &pairs {
                    for (a, v) in acc.iter_mut().zip(f(p)) {
                        *a += v / k;
                    }
                }
                acc
            };
            let averaged = Pair {
                contributions: mean(&|p| &p.contributions),
                multipliers: mean(&|p| &p.multipliers),
                difference: pairs.iter().map(|p| p.difference).sum::<f64>() / k,
                delta: 0.0,
            };
            let delta = averaged.contributions.iter().sum::<f64>() - averaged.difference;
            out.push(attribution(job, t, &averaged, p.multiply_by_inputs, delta));
        }
        Ok(out)
    }
}

/// `count` references for the job's input, drawn from its seed.
fn references(job: &ExplainJob, count: usize) -> Vec<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(job.seed ^ 0xdee1_1f75);
    match (&job.model.spec.image, job.model.background.as_ref()) {
        (None, Some(rows)) if !rows.is_empty() => {
            let picked = if count <= rows.len() {
                sample(&mut rng, rows.len(), count).into_vec()
            } else {
                (0..count).map(|i| i % rows.len()).collect()
            };
            picked
                .into_iter()
                .map(|i| Tensor::f32(job.input.shape.clone(), rows[i].clone()))
                .collect()
        }
        // Images: black, blurred and uniform noise in turn, each noise image from its own seed.
        _ => (0..count)
            .map(|i| {
                let kind = [Baseline::Black, Baseline::Blur, Baseline::Uniform][i % 3];
                let seed = job.seed.wrapping_add(i as u64);
                baselines::build(kind, &job.input, job.model.spec.image.as_ref(), seed)
            })
            .collect(),
    }
}
