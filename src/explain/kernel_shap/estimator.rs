//! KernelSHAP's estimator: complementary pairs of coalitions drawn from the Shapley kernel, the
//! constrained regression (the sampled kernel matrix when the pairs determine it, else the exact
//! one in closed form), and grouped-jackknife standard errors. Knows players only as indices.

use nalgebra::{DMatrix, DVector};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use super::{KernelShapParams, Samples};
use crate::explain::regression::{
    add_tr_mul, bit, cholesky, cholesky_solve, largest_eigenvalue, pack, smallest_eigenvalue, Check,
};
use crate::explain::{Cx, ExplainJob};
use crate::runtime::predict::Prediction;
use crate::runtime::RuntimeError;

/// The Shapley kernel's size distribution over 1..M-1, and E[z zT] under it: every diagonal entry
/// is `diag`, every other `off`.
pub(super) fn kernel(m: usize) -> (Vec<f64>, f64, f64) {
    let mf = m as f64;
    let raw: Vec<f64> = (1..m).map(|s| 1.0 / (s as f64 * (mf - s as f64))).collect();
    let z: f64 = raw.iter().sum();
    let sizes: Vec<f64> = raw.iter().map(|r| r / z).collect();
    // P(i in S) = s/M; P(i, j in S) = s(s-1)/(M(M-1)).
    let diag: f64 = sizes.iter().enumerate().map(|(k, p)| p * (k + 1) as f64 / mf).sum();
    let off: f64 = sizes
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let s = (k + 1) as f64;
            p * s * (s - 1.0) / (mf * (mf - 1.0))
        })
        .sum();
    (sizes, diag, off)
}

/// The constrained solution with the exact kernel matrix, in closed form: that matrix is
/// (diag - off) I + off 11', so phi = (b - mean(b)) / (diag - off) + total / M, which is what
/// `solver` gives for it, without an M x M matrix.
fn exact_values(b: &DVector<f64>, gap: f64, total: f64) -> Vec<f64> {
    let m = b.len() as f64;
    let mean = b.sum() / m;
    b.iter().map(|v| (v - mean) / gap + total / m).collect()
}

/// The sampled kernel matrix, when its regression is determined: a sample with fewer pairs than
/// players, or whose matrix is near singular (players that always came together), would give
/// values of any size (1e16 for probabilities, seen with 31 pairs over 49 segments), so such a
/// sample is solved with the exact matrix instead (Covert and Lee's unbiased estimator). Its
/// Cholesky factor when determined (smallest eigenvalue over 1e-6 of the largest), each step
/// under the job's `check`: an eigen-decomposition of thousands of players is one call that runs
/// for seconds.
fn conditioned_factor(a: &DMatrix<f64>, check: &Check) -> Result<Option<DMatrix<f64>>, RuntimeError> {
    let hi = largest_eigenvalue(a, check)?;
    if hi <= 0.0 {
        return Ok(None);
    }
    let Some(l) = cholesky(a.clone(), check)? else {
        return Ok(None);
    };
    Ok((smallest_eigenvalue(&l, check)? > hi * 1e-6).then_some(l))
}

/// Scores the given coalitions: one score row per coalition.
pub(super) type Evaluate<'a> = dyn FnMut(&mut Cx, &[Vec<bool>]) -> Result<Vec<Vec<f64>>, RuntimeError> + 'a;

/// Jackknife groups of pairs for the standard errors.
const GROUPS: usize = 20;

/// Sampled coalitions' outcome for every target: values, standard errors, samples drawn, why it stopped.
pub(super) struct Solved {
    pub(super) phi: Vec<Vec<f64>>,
    se: Vec<Vec<f64>>,
    drawn: usize,
    stopped: &'static str,
}

impl Solved {
    /// The details every KernelSHAP answer carries for target `ti`; callers add their own fields.
    pub(super) fn details(&self, ti: usize, v0: f64, v1: f64) -> serde_json::Value {
        let phi = &self.phi[ti];
        serde_json::json!({
            "shapley_values": phi,
            "standard_errors": self.se[ti],
            "base_value": v0,
            "value": v1,
            "efficiency_gap": phi.iter().sum::<f64>() - (v1 - v0),
            "samples": self.drawn,
            "stopped": self.stopped,
        })
    }
}

/// Samples coalitions of `m` players in complementary pairs from the Shapley kernel, scores them with
/// `evaluate` (one score row per coalition), and solves for values that sum to `v1 - v0` exactly.
/// Point estimates use the sampled kernel matrix (KernelSHAP's regression, exact for additive
/// games; the exact matrix when the sample does not determine it); standard errors are a grouped
/// jackknife over the pairs, which are independent (Covert and Lee 2021 use the pairs' variance too).
#[allow(clippy::too_many_arguments)]
pub(super) fn solve(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &KernelShapParams,
    targets: &[Prediction],
    m: usize,
    v0: &[f64],
    v1: &[f64],
    evaluate: &mut Evaluate,
) -> Result<Solved, RuntimeError> {
    let budget = job.limits.max_samples.saturating_sub(1);
    let (auto, target_samples) = match &p.samples {
        None => (false, (2 * m + 2048).min(budget)),
        Some(Samples::Fixed(n)) => (false, (*n).min(budget)),
        Some(Samples::Auto(_)) => (true, budget),
    };
    let (sizes, diag, off) = kernel(m);
    let gap = diag - off;
    if !(gap.is_finite() && gap > 0.0) {
        return Err(RuntimeError::Inference {
            model: job.model.name.clone(),
            message: "singular Shapley kernel".into(),
        });
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(job.seed);
    // The pairs themselves (bit-packed first halves), and per target and jackknife group the
    // pairs' b sums: no M x M matrix unless the pairs determine the sampled one.
    let mut pairs: Vec<Vec<u64>> = Vec::new();
    let mut group_b: Vec<Vec<DVector<f64>>> = vec![vec![DVector::zeros(m); GROUPS]; targets.len()];
    let mut group_n = [0usize; GROUPS];
    let totals: Vec<f64> = v1.iter().zip(v0).map(|(v1, v0)| v1 - v0).collect();
    let mut players: Vec<usize> = (0..m).collect();
    let round = 64usize;
    let mut drawn = 0usize;
    let mut stopped = "sample budget reached";
    while drawn + 2 <= target_samples {
        let n_pairs = ((target_samples - drawn) / 2).min(if auto { round / 2 } else { usize::MAX });
        let coalitions = draw_pairs(n_pairs, &sizes, &mut players, &mut rng, &|| cx.checkpoint())?;
        let outputs = evaluate(cx, &coalitions)?;
        for k in 0..n_pairs {
            // Each pair adds to M sums per target: thousands of pairs over thousands of players
            // are seconds of work in a debug build.
            cx.checkpoint()?;
            let g = pairs.len() % GROUPS;
            group_n[g] += 1;
            pairs.push(pack(&coalitions[2 * k]));
            for half in [2 * k, 2 * k + 1] {
                for (ti, t) in targets.iter().enumerate() {
                    let gain = outputs[half][t.index] - v0[ti];
                    let b = &mut group_b[ti][g];
                    for j in (0..m).filter(|j| coalitions[half][*j]) {
                        b[j] += gain / 2.0;
                    }
                }
            }
        }
        drawn += 2 * n_pairs;
        if auto && drawn >= 4 * m.max(16) {
            let worst = jackknife(&pairs, &group_b, &group_n, &totals, gap, &|| cx.checkpoint())?
                .iter()
                .flat_map(|(_, se)| se.iter().copied())
                .fold(0.0, f64::max);
            if worst < p.tolerance {
                stopped = "every standard error is below the tolerance";
                break;
            }
        }
    }
    let (phi, se) = jackknife(&pairs, &group_b, &group_n, &totals, gap, &|| cx.checkpoint())?
        .into_iter()
        .unzip();
    let solved = Solved {
        phi,
        se,
        drawn,
        stopped,
    };
    Ok(solved)
}

/// `n` complementary pairs of coalitions (a coalition, then its complement), each coalition's
/// size drawn from the Shapley kernel's `sizes` and its players uniformly.
fn draw_pairs(
    n: usize,
    sizes: &[f64],
    players: &mut [usize],
    rng: &mut rand_chacha::ChaCha8Rng,
    check: &Check,
) -> Result<Vec<Vec<bool>>, RuntimeError> {
    let m = players.len();
    let mut coalitions: Vec<Vec<bool>> = Vec::with_capacity(2 * n);
    for _ in 0..n {
        check()?;
        let u: f64 = rng.random();
        let mut acc = 0.0;
        let mut size = m - 1;
        for (k, q) in sizes.iter().enumerate() {
            acc += q;
            if u < acc {
                size = k + 1;
                break;
            }
        }
        players.shuffle(rng);
        let mut z = vec![false; m];
        for &i in &players[..size] {
            z[i] = true;
        }
        let complement: Vec<bool> = z.iter().map(|b| !b).collect();
        coalitions.push(z);
        coalitions.push(complement);
    }
    Ok(coalitions)
}

/// The sampled kernel matrix's sum over the given pairs: each pair's two coalitions' z z' / 2, a
/// block of pairs at a time (one matrix product per block).
fn pair_sums(pairs: &[&Vec<u64>], m: usize, check: &Check) -> Result<DMatrix<f64>, RuntimeError> {
    let mut a = DMatrix::zeros(m, m);
    for block in pairs.chunks(128) {
        check()?;
        let z = DMatrix::from_fn(2 * block.len(), m, |r, j| {
            f64::from(u8::from(bit(block[r / 2], j) == (r % 2 == 0)))
        });
        add_tr_mul(&mut a, &z, &z, 0.5, check)?;
    }
    Ok(a)
}

/// One target's values and their standard errors.
type Estimate = (Vec<f64>, Vec<f64>);

/// Every target's values from all pairs, and each value's grouped-jackknife standard error (pair
/// `k` sits in group `k % GROUPS`). The matrix work is shared by the targets.
fn jackknife(
    pairs: &[Vec<u64>],
    group_b: &[Vec<DVector<f64>>],
    group_n: &[usize],
    totals: &[f64],
    gap: f64,
    check: &Check,
) -> Result<Vec<Estimate>, RuntimeError> {
    let m = group_b.first().and_then(|g| g.first()).map_or(0, |b| b.len());
    let in_group = |g: usize| -> Vec<&Vec<u64>> { pairs.iter().skip(g).step_by(group_n.len()).collect() };
    // The sampled matrix is used when the whole sample determines it; then also for the
    // leave-one-group-out values, unless dropping a group leaves it singular.
    let whole = if pairs.len() >= m {
        let a = pair_sums(&pairs.iter().collect::<Vec<_>>(), m, check)?;
        conditioned_factor(&a, check)?.map(|l| (a, l))
    } else {
        None
    };
    let values = |skip: Option<usize>| -> Result<Vec<Vec<f64>>, RuntimeError> {
        check()?;
        let n = group_n
            .iter()
            .enumerate()
            .filter(|(g, _)| Some(*g) != skip)
            .map(|(_, n)| n)
            .sum::<usize>();
        let n = n.max(1) as f64;
        // The factor of A / n is A's over sqrt(n).
        let factor = match (&whole, skip) {
            (None, _) => None,
            (Some((_, l)), None) => Some(l / n.sqrt()),
            (Some((a, _)), Some(g)) => {
                let a = a - pair_sums(&in_group(g), m, check)?;
                conditioned_factor(&a, check)?.map(|l| l / n.sqrt())
            }
        };
        let b = DMatrix::from_fn(m, totals.len(), |j, t| {
            let sum: f64 = (0..group_n.len())
                .filter(|g| Some(*g) != skip)
                .map(|g| group_b[t][g][j])
                .sum();
            sum / n
        });
        let Some(l) = factor else {
            return Ok((0..totals.len())
                .map(|t| exact_values(&b.column(t).into_owned(), gap, totals[t]))
                .collect());
        };
        // The values minimise the sampled regression subject to summing to the total: with
        // x = A^-1 b and u = A^-1 1, phi = x + u (total - 1'x) / 1'u.
        let x = cholesky_solve(&l, &b, check)?;
        let u = cholesky_solve(&l, &DMatrix::from_element(m, 1, 1.0), check)?;
        let u = u.column(0);
        Ok((0..totals.len())
            .map(|t| {
                let x = x.column(t);
                let scale = (totals[t] - x.sum()) / u.sum();
                (0..m).map(|j| x[j] + u[j] * scale).collect()
            })
            .collect())
    };
    let phi = values(None)?;
    let used: Vec<usize> = (0..group_n.len()).filter(|g| group_n[*g] > 0).collect();
    if used.len() < 2 {
        return Ok(phi.into_iter().map(|phi| (phi, vec![f64::INFINITY; m])).collect());
    }
    let leave_out = used.iter().map(|g| values(Some(*g))).collect::<Result<Vec<_>, _>>()?;
    let k = used.len() as f64;
    Ok(phi
        .into_iter()
        .enumerate()
        .map(|(t, phi)| {
            let se = (0..m)
                .map(|j| {
                    let mean = leave_out.iter().map(|v| v[t][j]).sum::<f64>() / k;
                    let spread = leave_out.iter().map(|v| (v[t][j] - mean).powi(2)).sum::<f64>();
                    ((k - 1.0) / k * spread).sqrt()
                })
                .collect();
            (phi, se)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The linear map from b = E[z (v(z) - v0)] to the constrained solution's free part, and the
    /// constraint's direction: phi = C b + d * total.
    fn solver(a: &DMatrix<f64>) -> Option<(DMatrix<f64>, DVector<f64>)> {
        let m = a.nrows();
        let inv = a.clone().try_inverse()?;
        let ones = DVector::from_element(m, 1.0);
        let inv_ones = &inv * &ones;
        let denom = ones.dot(&inv_ones);
        let c = &inv - (&inv_ones * inv_ones.transpose()) / denom;
        Some((c, inv_ones / denom))
    }

    /// An additive game's values from `pairs` sampled complementary pairs over `m` players.
    fn additive(m: usize, pairs: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
        let weights: Vec<f64> = (0..m).map(|i| ((i * 7919) % 13) as f64 / 100.0).collect();
        let (sizes, diag, off) = kernel(m);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut packed = Vec::new();
        let mut group_b = vec![vec![DVector::zeros(m); GROUPS]];
        let mut group_n = [0usize; GROUPS];
        let mut players: Vec<usize> = (0..m).collect();
        for k in 0..pairs {
            let u: f64 = rng.random();
            let size = 1 + sizes
                .iter()
                .scan(0.0, |acc, q| {
                    *acc += q;
                    Some(*acc)
                })
                .take_while(|acc| u >= *acc)
                .count()
                .min(m - 2);
            players.shuffle(&mut rng);
            let z: Vec<bool> = (0..m).map(|i| players[..size].contains(&i)).collect();
            packed.push(pack(&z));
            let v = DVector::from_fn(m, |i, _| if z[i] { 1.0 } else { 0.0 });
            for v in [v.clone(), v.map(|x| 1.0 - x)] {
                let gain: f64 = v.iter().zip(&weights).map(|(z, w)| z * w).sum();
                group_b[0][k % GROUPS] += &v * (gain / 2.0);
            }
            group_n[k % GROUPS] += 1;
        }
        let total = weights.iter().sum();
        let mut solved = jackknife(&packed, &group_b, &group_n, &[total], diag - off, &|| Ok(())).unwrap();
        (solved.remove(0).0, weights)
    }

    #[test]
    fn the_closed_form_is_the_exact_kernel_solution() {
        for m in [2usize, 3, 9, 50] {
            let (_, diag, off) = kernel(m);
            let a = DMatrix::from_fn(m, m, |i, j| if i == j { diag } else { off });
            let (c, d) = solver(&a).unwrap();
            let b = DVector::from_fn(m, |i, _| ((i * 31) % 7) as f64 - 2.5);
            let free = &c * &b;
            let closed = exact_values(&b, diag - off, 1.25);
            for j in 0..m {
                assert!((free[j] + d[j] * 1.25 - closed[j]).abs() < 1e-9, "m {m}: {closed:?}");
            }
        }
    }

    #[test]
    fn too_few_pairs_give_bounded_values() {
        // 31 pairs over 49 players (max_samples 64, 50 segments) once answered 1e16 and NaN.
        for seed in 0..20 {
            let (phi, weights) = additive(49, 31, seed);
            let total: f64 = weights.iter().sum();
            assert!(
                phi.iter().all(|v| v.is_finite() && v.abs() < 10.0 * total),
                "seed {seed}: {phi:?}"
            );
            assert!((phi.iter().sum::<f64>() - total).abs() < 1e-9);
        }
    }

    #[test]
    fn a_determined_sample_solves_an_additive_game_exactly() {
        let (phi, weights) = additive(12, 400, 3);
        for (p, w) in phi.iter().zip(&weights) {
            assert!((p - w).abs() < 1e-9, "{phi:?} against {weights:?}");
        }
    }
}
