//! MC dropout (Gal and Ghahramani, 2016): the input runs `samples` times, each with its own
//! dropout masks, all as rows of one batched pass. The masks are graph inputs that explaind draws
//! from the seed (Bernoulli keep masks scaled by 1 / (1 - p)), so the same seed gives the same
//! answer on any machine and in any session.

use std::sync::Arc;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{split, Plan, PlanContext, Samples, UncertaintyParams, DEFAULT_P, DEFAULT_SAMPLES};
use crate::common::batch::zeroed_batch;
use crate::common::Invalid;
use crate::onnx::dropout::MaskSite;
use crate::runtime::{LoadedModel, RuntimeError, Tensor, WorkerRuntime};

/// Most tensors one request may mask.
const MAX_LAYERS: usize = 32;

/// Checks the parameters and finds where the masks go.
pub(super) fn plan(model: &Arc<LoadedModel>, params: &UncertaintyParams, cx: &PlanContext) -> Result<Plan, Invalid> {
    let samples = params.samples.unwrap_or(DEFAULT_SAMPLES);
    let max = cx.limits.max_samples;
    if samples == 0 || samples > max {
        return Err(Invalid::Request(format!(
            "samples must be between 1 and {max} (max_samples), got {samples}"
        )));
    }
    if let Some(p) = params.p {
        if !(p.is_finite() && (0.0..1.0).contains(&p)) {
            return Err(Invalid::Request(format!("p must be in [0, 1), got {p}")));
        }
    }
    let layers = params.dropout_layers.clone().unwrap_or_default();
    if layers.len() > MAX_LAYERS || layers.iter().any(|l| l.is_empty() || l.len() > 512) {
        return Err(Invalid::Request(format!(
            "dropout_layers: at most {MAX_LAYERS} tensor names, each 1 to 512 characters"
        )));
    }
    let sites = cx.gradients.mask_sites(model, &layers).map_err(|why| {
        let message = format!("model `{}`: no dropout masks can go where asked: {why}", model.name);
        match layers.is_empty() {
            true => Invalid::Unsupported(message),
            false => Invalid::Model(message),
        }
    })?;
    let rates = sites
        .iter()
        .map(|s| params.p.unwrap_or(s.ratio.unwrap_or(DEFAULT_P)).clamp(0.0, 0.999))
        .collect();
    if params.explain_method.is_some() {
        // Filled in at start for every model.
        let blocked = match model.gradient_report.get() {
            Some(report) if report.differentiable => None,
            Some(report) => Some(report.blocking_operators.join(", ")),
            None => Some("its gradient report is not ready".to_string()),
        };
        if let Some(why) = blocked {
            return Err(Invalid::NotDifferentiable(format!(
                "model `{}`: explain_method needs gradients; blocked by {why}",
                model.name
            )));
        }
    }
    Ok(Plan::McDropout {
        sites,
        rates,
        samples,
        spread: params.explain_method,
    })
}

/// `samples` rows of keep masks per site (the same for every input, so an input's answer does not
/// depend on the others in its batch).
pub fn masks(sites: &[MaskSite], rates: &[f32], samples: usize, seed: u64) -> Vec<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut data: Vec<Vec<f32>> = sites.iter().map(|s| Vec::with_capacity(samples * s.len())).collect();
    for _ in 0..samples {
        for ((site, &p), out) in sites.iter().zip(rates).zip(data.iter_mut()) {
            let keep = 1.0 / (1.0 - p);
            out.extend((0..site.len()).map(|_| if rng.random::<f32>() >= p { keep } else { 0.0 }));
        }
    }
    sites
        .iter()
        .zip(data)
        .map(|(site, values)| {
            let shape = std::iter::once(samples).chain(site.dims.iter().copied()).collect();
            Tensor::f32(shape, values)
        })
        .collect()
}

/// Each input's rows of class probabilities, one per sample of the `drawn` masks ([`masks`]).
pub(super) fn sample(
    rt: &mut WorkerRuntime,
    model: &LoadedModel,
    sites: &[MaskSite],
    drawn: &[Tensor],
    input: &Tensor,
) -> Result<Vec<Samples>, RuntimeError> {
    let inputs = input.rows();
    let samples = drawn.first().map_or(1, Tensor::rows);
    let rows = inputs.saturating_mul(samples);
    let replicated = tile(model, input, samples, true)?;
    let masks = drawn
        .iter()
        .map(|m| tile(model, m, inputs, false))
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = rt.run_masked(model, sites, &replicated, &masks)?;
    debug_assert!(outputs.get(&model.spec.output).is_none_or(|s| s.rows() == rows));
    split(model, &outputs, samples, &[])
}

/// `times` copies: of each row in turn (`each_row`: a a b b), or of the whole tensor (a b a b).
fn tile(model: &LoadedModel, t: &Tensor, times: usize, each_row: bool) -> Result<Tensor, RuntimeError> {
    let values = t.as_f32().unwrap_or(&[]);
    let len = values.len().saturating_mul(times);
    let mut data = zeroed_batch(&model.name, len)?;
    let row = t.row_len().max(1);
    let mut at = 0;
    if each_row {
        for r in values.chunks(row) {
            for _ in 0..times {
                data[at..at + row].copy_from_slice(r);
                at += row;
            }
        }
    } else {
        for _ in 0..times {
            data[at..at + values.len()].copy_from_slice(values);
            at += values.len();
        }
    }
    let mut shape = t.shape.clone();
    if let Some(first) = shape.first_mut() {
        *first = first.saturating_mul(times);
    }
    Ok(Tensor::f32(shape, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::dropout::SiteOrigin;

    fn site(n: usize) -> MaskSite {
        MaskSite {
            tensor: "h".into(),
            origin: SiteOrigin::LastLinear,
            dims: vec![n],
            ratio: None,
            only_node: None,
        }
    }

    #[test]
    fn masks_keep_about_one_minus_p_scaled_up_and_repeat_for_a_seed() {
        let m = masks(&[site(1000)], &[0.25], 20, 7);
        let v = m[0].as_f32().unwrap();
        assert_eq!(m[0].shape, vec![20, 1000]);
        let kept = v.iter().filter(|&&x| x > 0.0).count() as f64 / v.len() as f64;
        assert!((kept - 0.75).abs() < 0.02, "kept {kept}");
        assert!(v.iter().all(|&x| x == 0.0 || (x - 1.0 / 0.75).abs() < 1e-6));
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        assert!((mean - 1.0).abs() < 0.03, "masks keep the expected value: {mean}");
        assert_eq!(m, masks(&[site(1000)], &[0.25], 20, 7));
        assert_ne!(m, masks(&[site(1000)], &[0.25], 20, 8));
        assert!(masks(&[site(10)], &[0.0], 3, 1)[0]
            .as_f32()
            .unwrap()
            .iter()
            .all(|&x| x == 1.0));
    }
}
