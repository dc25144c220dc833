//! Wachter et al. (2017)'s search through the backward model: proximal gradient steps on a hinge
//! over the score margin plus the weighted L1 distance, projected onto the constraints.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::space::Space;
use super::CounterfactualParams;
use crate::explain::{Cx, ExplainJob};
use crate::onnx::autodiff::RuleSet;
use crate::runtime::predict::decided;
use crate::runtime::{RuntimeError, Tensor};

/// Wachter et al.'s search: `count` chains in one batch, proximal gradient steps on the scaled
/// change, projected onto the constraints. Returns each chain's cheapest point that decided the
/// target along the way (and its last point).
pub(super) fn gradient_candidates(
    cx: &mut Cx,
    job: &ExplainJob,
    space: &Space,
    x: &[f32],
    target: usize,
    p: &CounterfactualParams,
) -> Result<(Vec<Vec<f32>>, serde_json::Value), RuntimeError> {
    let n = x.len();
    let classes = job.model.spec.labels.len().max(1);
    let chains = p.count;
    let mut rng = ChaCha8Rng::seed_from_u64(job.seed);
    // Chain 0 starts at the input; the others at seeded points around it (one scale apart).
    let mut rows: Vec<Vec<f32>> = (0..chains)
        .map(|k| {
            (0..n)
                .map(|i| {
                    let jitter = if k == 0 {
                        0.0
                    } else {
                        rng.random_range(-1.0f64..1.0) * space.scale[i]
                    };
                    space
                        .place(i, f64::from(x[i]) + jitter, f64::NEG_INFINITY, f64::INFINITY)
                        .unwrap_or(x[i])
                })
                .collect()
        })
        .collect();
    // Each chain's cheapest valid point in each quarter of the steps: candidates along the path
    // as well as at its end, for the answers to be chosen among (diversity).
    let mut best: Vec<Option<(f64, Vec<f32>)>> = vec![None; chains];
    let mut by_phase: Vec<Option<(f64, Vec<f32>)>> = vec![None; chains * 4];
    let lr = f64::from(p.learning_rate);
    // Wachter et al. tune the weight between the two terms: each chain starts at the given
    // distance weight and quarters it after every quarter of the steps that found nothing valid.
    let mut lambda = vec![f64::from(p.distance_weight); chains];
    let phase = (p.steps / 4).max(1);
    let mut steps_run = 0;
    for step in 0..p.steps {
        if step > 0 && step % phase == 0 {
            for (k, l) in lambda.iter_mut().enumerate() {
                if best[k].is_none() {
                    *l /= 4.0;
                }
            }
        }
        let input = Tensor::f32(vec![chains, n], rows.concat());
        // The pass's scores say which rows decide the target now, and which class to push down.
        let probe = cx.forward(&input)?;
        let s = probe.to_f64();
        let mut weights = vec![0f32; chains * classes];
        let mut active = false;
        for k in 0..chains {
            let row = &s[k * classes..(k + 1) * classes];
            let rival = decided(row, Some(target));
            let gap = row[target] - row[rival];
            if gap > 0.0 {
                let cost = space.cost(x, &rows[k]);
                if best[k].as_ref().is_none_or(|(c, _)| cost < *c) {
                    best[k] = Some((cost, rows[k].clone()));
                }
                let slot = &mut by_phase[k * 4 + (step / phase).min(3)];
                if slot.as_ref().is_none_or(|(c, _)| cost < *c) {
                    *slot = Some((cost, rows[k].clone()));
                }
            }
            if gap < f64::from(p.margin) + 1e-6 {
                weights[k * classes + target] = 1.0;
                weights[k * classes + rival] = -1.0;
                active = true;
            }
        }
        if !active && lambda.iter().all(|l| *l == 0.0) {
            break;
        }
        let pass = cx.gradients(
            &[],
            RuleSet::Standard,
            &input,
            &Tensor::f32(vec![chains, classes], weights),
            cx.max_batch(),
        )?;
        steps_run += 1;
        let g = pass.input_grad.as_f32().unwrap_or(&[]);
        for k in 0..chains {
            for i in 0..n {
                let scale = space.scale[i];
                // Ascend the margin (the hinge's gradient), in scaled units, then shrink the change
                // towards the input by the L1 term's proximal step.
                let u = (f64::from(rows[k][i]) - f64::from(x[i])) / scale;
                let step = u + lr * f64::from(g.get(k * n + i).copied().unwrap_or(0.0)) * scale;
                let shrink = lr * lambda[k] * space.unit_cost[i] * scale;
                let u = step.signum() * (step.abs() - shrink).max(0.0);
                let v = f64::from(x[i]) + u * scale;
                rows[k][i] = space.place(i, v, f64::NEG_INFINITY, f64::INFINITY).unwrap_or(x[i]);
            }
        }
    }
    let stats = json!({"chains": chains, "steps": steps_run, "final_distance_weights": lambda});
    let mut out: Vec<Vec<f32>> = best.into_iter().flatten().map(|(_, y)| y).collect();
    if chains > 1 {
        out.extend(by_phase.into_iter().flatten().map(|(_, y)| y));
    }
    out.extend(rows);
    Ok((out, stats))
}
