//! How stable an explanation is: a gradient method's map for every MC-dropout sample, each through
//! the model with that sample's masks (the same masks as the estimate's), and their per-pixel mean
//! and standard deviation. Where the deviation is high, the explanation itself is uncertain.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::common::batch::{fold_channels, one_hot, repeat_rows, Fold};
use crate::onnx::dropout::MaskSite;
use crate::runtime::predict::Prediction;
use crate::runtime::{LoadedModel, RuntimeError, Tensor, WorkerRuntime};

/// Gradient methods whose spread over the samples can be measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SpreadMethod {
    /// |gradient| (largest over channels).
    Saliency,
    /// Gradient times input (summed over channels).
    GradientXInput,
}

/// The samples' maps summarised.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Spread {
    /// The method.
    pub method: SpreadMethod,
    /// The class explained: the mean probabilities' top class.
    pub target: Prediction,
    /// Shape of the maps: `[height, width]` of the model input, or `[features]`.
    pub shape: Vec<usize>,
    /// Mean of the samples' maps.
    pub mean: Vec<f32>,
    /// Standard deviation of the samples' maps, per pixel or feature (n - 1 in the divisor).
    pub std: Vec<f32>,
}

/// The spread of `method`'s map of `target` for one input (`[1, ...]`) over the samples whose
/// masks are `masks` (`[samples, ...]` per site), in one backward pass.
pub(super) fn spread(
    rt: &mut WorkerRuntime,
    model: &LoadedModel,
    sites: &[MaskSite],
    masks: &[Tensor],
    method: SpreadMethod,
    input: &Tensor,
    target: Prediction,
) -> Result<Spread, RuntimeError> {
    let samples = masks.first().map_or(1, Tensor::rows);
    let rows = repeat_rows(input, samples);
    let weights = one_hot(&vec![target.index; samples], model.spec.labels.len().max(1));
    let grads = rt.masked_gradients(model, sites, &rows, &weights, masks)?.input_grad;
    let values = grads.as_f32().unwrap_or(&[]);
    let x = input.as_f32().unwrap_or(&[]);
    let per_row = grads.row_len();
    // The method's map per sample, in the model's input space.
    let maps: Vec<Vec<f32>> = (0..samples)
        .map(|t| {
            let g = &values[t * per_row..(t + 1) * per_row];
            let attribution: Vec<f32> = match method {
                SpreadMethod::Saliency => g.iter().map(|v| v.abs()).collect(),
                SpreadMethod::GradientXInput => g.iter().zip(x).map(|(g, x)| g * x).collect(),
            };
            match &model.spec.image {
                Some(spec) => {
                    let fold = match method {
                        SpreadMethod::Saliency => Fold::MaxAbs,
                        SpreadMethod::GradientXInput => Fold::Sum,
                    };
                    let one = Tensor::f32(input.shape.clone(), attribution);
                    fold_channels(&one, 0, spec, fold).as_f32().unwrap_or(&[]).to_vec()
                }
                None => attribution,
            }
        })
        .collect();
    let shape = match &model.spec.image {
        Some(spec) => vec![spec.height, spec.width],
        None => vec![per_row],
    };
    // The same mean and sample standard deviation as the estimate's probabilities.
    let as_rows: Vec<Vec<f64>> = maps.iter().map(|m| m.iter().map(|v| f64::from(*v)).collect()).collect();
    let summary = super::stats::summarize(&as_rows, false);
    Ok(Spread {
        method,
        target,
        shape,
        mean: summary.mean.iter().map(|&v| v as f32).collect(),
        std: summary.std.iter().map(|&v| v as f32).collect(),
    })
}
