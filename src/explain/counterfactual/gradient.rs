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
    let classes = crate::common::detection_targets::width(&job.model);
    let chains = p.count;
    let mut state = Chains::start(space, x, chains, job.seed, p.distance_weight);
    let lr = f64::from(p.learning_rate);
    let phase = (p.steps / 4).max(1);
    let mut steps_run = 0;
    for step in 0..p.steps {
        if step > 0 && step % phase == 0 {
            state.relax();
        }
        let input = Tensor::f32(vec![chains, n], state.rows.concat());
        // The pass's scores say which rows decide the target now, and which class to push down.
        let probe = cx.forward(&input)?;
        let (weights, active) = state.read(&probe.to_f64(), target, classes, p.margin, (step / phase).min(3));
        if !active && state.lambda.iter().all(|l| *l == 0.0) {
            break;
        }
        let pass = cx.gradients(
            &[],
            RuleSet::Exact,
            &input,
            &Tensor::f32(vec![chains, classes], weights),
            cx.max_batch(),
        )?;
        steps_run += 1;
        state.descend(pass.input_grad.as_f32().unwrap_or(&[]), lr);
    }
    let stats = json!({"chains": chains, "steps": steps_run, "final_distance_weights": state.lambda});
    Ok((state.candidates(), stats))
}

/// The chains of one search, between passes.
struct Chains<'a> {
    space: &'a Space,
    x: &'a [f32],
    /// Each chain's current point.
    rows: Vec<Vec<f32>>,
    /// Each chain's cheapest point that decided the target, overall and in each quarter of the
    /// steps: candidates along the path as well as at its end, for the answers to be chosen
    /// among (diversity).
    best: Vec<Option<(f64, Vec<f32>)>>,
    by_phase: Vec<Option<(f64, Vec<f32>)>>,
    /// Each chain's distance weight: Wachter et al. tune the weight between the two terms, so
    /// each chain starts at the given one and quarters it after every quarter of the steps that
    /// found nothing valid.
    lambda: Vec<f64>,
}

impl<'a> Chains<'a> {
    /// Chain 0 starts at the input; the others at seeded points around it (one scale apart).
    fn start(space: &'a Space, x: &'a [f32], chains: usize, seed: u64, distance_weight: f32) -> Self {
        let n = x.len();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let rows: Vec<Vec<f32>> = (0..chains)
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
        Chains {
            space,
            x,
            rows,
            best: vec![None; chains],
            by_phase: vec![None; chains * 4],
            lambda: vec![f64::from(distance_weight); chains],
        }
    }

    /// Quarters the distance weight of each chain that has found nothing valid yet.
    fn relax(&mut self) {
        for (k, l) in self.lambda.iter_mut().enumerate() {
            if self.best[k].is_none() {
                *l /= 4.0;
            }
        }
    }

    /// Reads a forward pass's scores (a row of `classes` per chain): keeps each point that
    /// decides the target where it is its chain's cheapest (overall, and in `quarter`), and
    /// returns the hinge's output weights (+1 on the target, -1 on the strongest rival, for the
    /// chains short of `margin`) and whether any chain is short.
    fn read(&mut self, s: &[f64], target: usize, classes: usize, margin: f32, quarter: usize) -> (Vec<f32>, bool) {
        let chains = self.rows.len();
        let mut weights = vec![0f32; chains * classes];
        let mut active = false;
        for k in 0..chains {
            let row = &s[k * classes..(k + 1) * classes];
            let rival = decided(row, Some(target));
            let gap = row[target] - row[rival];
            if gap > 0.0 {
                let cost = self.space.cost(self.x, &self.rows[k]);
                if self.best[k].as_ref().is_none_or(|(c, _)| cost < *c) {
                    self.best[k] = Some((cost, self.rows[k].clone()));
                }
                let slot = &mut self.by_phase[k * 4 + quarter];
                if slot.as_ref().is_none_or(|(c, _)| cost < *c) {
                    *slot = Some((cost, self.rows[k].clone()));
                }
            }
            if gap < f64::from(margin) + 1e-6 {
                weights[k * classes + target] = 1.0;
                weights[k * classes + rival] = -1.0;
                active = true;
            }
        }
        (weights, active)
    }

    /// One proximal gradient step per chain, from the input gradient `g` of the hinge's weights.
    fn descend(&mut self, g: &[f32], lr: f64) {
        let (space, x, n) = (self.space, self.x, self.x.len());
        for (k, row) in self.rows.iter_mut().enumerate() {
            for i in 0..n {
                let scale = space.scale[i];
                // Ascend the margin (the hinge's gradient), in scaled units, then shrink the change
                // towards the input by the L1 term's proximal step.
                let u = (f64::from(row[i]) - f64::from(x[i])) / scale;
                let step = u + lr * f64::from(g.get(k * n + i).copied().unwrap_or(0.0)) * scale;
                let shrink = lr * self.lambda[k] * space.unit_cost[i] * scale;
                let u = step.signum() * (step.abs() - shrink).max(0.0);
                let v = f64::from(x[i]) + u * scale;
                row[i] = space.place(i, v, f64::NEG_INFINITY, f64::INFINITY).unwrap_or(x[i]);
            }
        }
    }

    /// Each chain's cheapest valid point, then (with several chains) each quarter's, then each
    /// chain's last point.
    fn candidates(self) -> Vec<Vec<f32>> {
        let mut out: Vec<Vec<f32>> = self.best.into_iter().flatten().map(|(_, y)| y).collect();
        if self.rows.len() > 1 {
            out.extend(self.by_phase.into_iter().flatten().map(|(_, y)| y));
        }
        out.extend(self.rows);
        out
    }
}
