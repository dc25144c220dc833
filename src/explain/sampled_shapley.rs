//! Shapley value sampling (Strumbelj and Kononenko 2010, 2014; Captum's `ShapleyValueSampling`,
//! Vertex AI's sampled Shapley): random permutations of the players (tabular features, or an
//! image's superpixels), each player added to the baseline in the permutation's order, its value
//! the mean of the score changes it caused. As Captum: one baseline (`black`, zeros, by default),
//! `permutations` is its `n_samples`, and the rows of many steps share one model pass. Each
//! permutation's changes sum to f(input) - f(baseline), so the values do exactly; each value's
//! standard error is over the permutations. With `antithetic` each permutation is followed by its
//! reverse and a pair counts as one observation: exact for games without interactions of more
//! than two players, and a smaller error on models (measured in the tests). Seeded: the same seed
//! gives the same bytes.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::baselines::{self, Baseline};
use super::method::{
    bytes, check_range, mul, Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext, CONFIGURED_MAX_SAMPLES,
};
use super::method::{schemas_of, NamedSchemas};
use super::perturb::{compose, run_copies};
use super::players::{Players, TextUnit};
use super::{Cx, ExplainJob, TargetAttribution};
use crate::runtime::predict::Prediction;
use crate::runtime::RuntimeError;

/// Sampled Shapley parameters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SampledShapleyParams {
    /// Permutations of the players (Captum's `n_samples`, whose default is 25; Vertex's
    /// `pathCount`); each costs players - 1 model rows. With `antithetic`, an odd number is
    /// rounded up (they come in pairs).
    #[schema(default = 24, minimum = 1, extensions(("x-maximum" = json!(CONFIGURED_MAX_SAMPLES))))]
    pub permutations: usize,
    /// Follow each permutation by its reverse (antithetic sampling): exact when no more than two
    /// players interact, and a smaller error on the models measured.
    #[schema(default = true)]
    pub antithetic: bool,
    /// What an absent player takes (Captum's `baselines`; its default, zeros, is `black`): `black`
    /// (zeros for tabular features), `white`, `blur`, `uniform`, or `mean` (the background's mean
    /// row for tabular models).
    #[schema(default = "black")]
    pub baseline: Baseline,
    /// Image models: superpixels (players) asked of SLIC.
    #[schema(default = 50, minimum = 2, maximum = 500)]
    pub segments: u32,
    /// Image models: SLIC compactness, 1 to 20.
    #[schema(default = 10, minimum = 1, maximum = 20)]
    pub compactness: u8,
}

impl Default for SampledShapleyParams {
    fn default() -> Self {
        Self {
            permutations: 24,
            antithetic: true,
            baseline: Baseline::Black,
            segments: 50,
            compactness: 10,
        }
    }
}

/// Sampled Shapley values.
pub struct SampledShapley;

impl Method for SampledShapley {
    type Params = SampledShapleyParams;
    const NAME: &'static str = "sampled-shapley";
    const SUMMARY: &'static str =
        "Shapley values by sampling permutations of the features or segments (Strumbelj and Kononenko 2014)";
    const CAPABILITIES: Capabilities = Capabilities {
        passes: Passes::Forward,
        inputs: Inputs::Any,
        layer: false,
        random: true,
        examples: false,
        decision: false,
        text: false,
        makes_image: false,
    };

    fn details_schema() -> Option<NamedSchemas> {
        Some(schemas_of::<SampledShapleyDetails>())
    }

    fn plan(p: &mut SampledShapleyParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        check_range("permutations", p.permutations, 1, cx.limits.max_samples)?;
        check_range("segments", p.segments, 2, 500)?;
        check_range("compactness", p.compactness, 1, 20)?;
        baselines::planned(&mut p.baseline, cx)?;
        if p.antithetic {
            p.permutations = p.permutations.saturating_add(p.permutations % 2);
        }
        // SLIC may return a few more segments than asked: twice as many at most.
        let players = match &cx.model.spec.tabular {
            Some(t) => t.features.len(),
            None => (p.segments as usize).saturating_mul(2),
        };
        let samples = mul(p.permutations, players, "permutations x players")?;
        let rows = mul(p.permutations, players.saturating_sub(1), "permutations x players")?.saturating_add(1);
        // A round's rows and scores at a time, the permutations of the round, per target and
        // player the running mean and squared deviations, the segment map.
        let round = rows_per_round(cx.limits.max_batch, players, p.antithetic).max(1);
        Ok(Cost {
            samples,
            rows,
            bytes: cx
                .batch_bytes(cx.limits.max_batch, false)
                .saturating_add(bytes(round, 8).saturating_mul(cx.classes() as u64 + 1))
                .saturating_add(bytes(players, 8).saturating_mul(round.div_ceil(players.max(1)) as u64))
                .saturating_add(bytes(players, 8 * 4).saturating_mul(cx.targets as u64))
                .saturating_add(bytes(cx.pixels(), 32))
                .saturating_add(cx.answer_bytes()),
        })
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        p: &SampledShapleyParams,
        targets: &[Prediction],
        scores: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        explain(cx, job, p, targets, scores)
    }
}

/// Model rows a round of permutations runs: at least a pass's worth (a round is whole
/// permutations, whole pairs with `antithetic`), so small games still fill the batches.
fn rows_per_round(batch: usize, players: usize, antithetic: bool) -> usize {
    let per = players.saturating_sub(1).max(1) * if antithetic { 2 } else { 1 };
    batch.div_ceil(per).max(1).saturating_mul(per)
}

fn explain(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &SampledShapleyParams,
    targets: &[Prediction],
    scores: &[f64],
) -> Result<Vec<TargetAttribution>, RuntimeError> {
    let baseline = baselines::for_job(p.baseline, job);
    let hidden = baseline.as_f32().unwrap_or(&[]).to_vec();
    let x = job.input.as_f32().unwrap_or(&[]).to_vec();
    // The players: an image's superpixels (absent ones show the baseline), or the features.
    let players = match job.model.spec.tabular {
        Some(_) => None,
        None => Some(Players::of(
            &|| cx.checkpoint(),
            job,
            (p.segments, p.compactness),
            super::Hide::Black,
            TextUnit::Words,
        )?),
    };
    let indices: Vec<Vec<usize>> = match &players {
        Some(players) => players.indices.clone(),
        None => (0..x.len()).map(|j| vec![j]).collect(),
    };
    let m = indices.len();
    let weighed = job.weighed_scores(scores);
    let v_full: Vec<f64> = targets.iter().map(|t| weighed[t.index]).collect();
    let empty = run_copies(cx, &job.input, 1, |_, buf| buf.copy_from_slice(&hidden))?;
    let empty = job.weighed_scores(&empty[0]);
    let v_empty: Vec<f64> = targets.iter().map(|t| empty[t.index]).collect();
    let round = rows_per_round(cx.forward_rows(), m, p.antithetic);
    let input = job.input.clone();
    let mut evaluate = |orders: &[Vec<usize>]| -> Result<Vec<Vec<f64>>, RuntimeError> {
        cx.checkpoint()?;
        let steps = m - 1;
        let mut on = vec![false; m];
        let rows = run_copies(cx, &input, orders.len() * steps, |r, buf| {
            // The first k players of the permutation present, k = 1..m-1 (none and all are known).
            let (order, k) = (&orders[r / steps], r % steps + 1);
            on.iter_mut().for_each(|o| *o = false);
            order[..k].iter().for_each(|&j| on[j] = true);
            compose(buf, &x, &hidden, &on, &indices);
        })?;
        Ok(rows
            .iter()
            .map(|row| {
                let w = job.weighed_scores(row);
                targets.iter().map(|t| w[t.index]).collect()
            })
            .collect())
    };
    let sampled = sample(
        Game {
            players: m,
            v_empty: &v_empty,
            v_full: &v_full,
        },
        Plan {
            permutations: p.permutations,
            antithetic: p.antithetic,
            seed: job.seed,
            rows_per_round: round,
        },
        &mut evaluate,
    )?;
    let mut out = Vec::new();
    for (ti, t) in targets.iter().enumerate() {
        let estimate = &sampled[ti];
        let mut details = estimate.details(v_empty[ti], v_full[ti], p);
        out.push(match &players {
            Some(players) => {
                players.describe(&mut details);
                TargetAttribution::from_map(t, players.map(&estimate.values), None, Some(details))
            }
            None => TargetAttribution::from_values(t, &estimate.values, details),
        });
    }
    Ok(out)
}

/// The game sampled: how many players, and every target's value with none and with all.
pub(super) struct Game<'a> {
    pub players: usize,
    pub v_empty: &'a [f64],
    pub v_full: &'a [f64],
}

/// How it is sampled.
pub(super) struct Plan {
    pub permutations: usize,
    pub antithetic: bool,
    pub seed: u64,
    /// Rows evaluated together (whole permutations).
    pub rows_per_round: usize,
}

/// Scores the steps of the given permutations: for permutation `p` and `k` in 1..players-1, row
/// `p * (players - 1) + k - 1` holds every target's value with the first `k` players present.
/// Checks the job's deadline and cancellation first (the rounds between are short loops).
pub(super) type Evaluate<'a> = dyn FnMut(&[Vec<usize>]) -> Result<Vec<Vec<f64>>, RuntimeError> + 'a;

/// One target's estimate: the values and their standard errors.
#[derive(Debug, Clone)]
pub(super) struct Estimate {
    pub values: Vec<f64>,
    /// `None` with fewer than two observations.
    pub standard_errors: Vec<Option<f64>>,
}

impl Estimate {
    fn details(&self, v0: f64, v1: f64, p: &SampledShapleyParams) -> serde_json::Value {
        let se: Vec<f64> = self.standard_errors.iter().flatten().copied().collect();
        let known = !se.is_empty() && se.len() == self.standard_errors.len();
        let rms = known.then(|| (se.iter().map(|s| s * s).sum::<f64>() / se.len() as f64).sqrt());
        let magnitude: f64 = self.values.iter().map(|v| v.abs()).sum();
        let total = known.then(|| se.iter().map(|s| s * s).sum::<f64>().sqrt());
        serde_json::json!({
            "shapley_values": self.values,
            "standard_errors": self.standard_errors,
            "base_value": v0,
            "value": v1,
            "efficiency_gap": self.values.iter().sum::<f64>() - (v1 - v0),
            "permutations": p.permutations,
            "antithetic": p.antithetic,
            "approximation_error": {
                "max_standard_error": known.then(|| se.iter().copied().fold(0f64, f64::max)),
                "rms_standard_error": rms,
                "relative": total.map(|t| if magnitude > 0.0 { t / magnitude } else { 0.0 }),
            },
        })
    }
}

/// Running mean and sum of squared deviations (Welford), per player.
struct Moments {
    n: usize,
    mean: Vec<f64>,
    m2: Vec<f64>,
}

impl Moments {
    fn new(players: usize) -> Self {
        Self {
            n: 0,
            mean: vec![0.0; players],
            m2: vec![0.0; players],
        }
    }

    fn add(&mut self, observation: &[f64]) {
        self.n += 1;
        let n = self.n as f64;
        for ((mean, m2), x) in self.mean.iter_mut().zip(&mut self.m2).zip(observation) {
            let d = x - *mean;
            *mean += d / n;
            *m2 += d * (x - *mean);
        }
    }

    fn estimate(self) -> Estimate {
        let n = self.n;
        let standard_errors = self
            .m2
            .iter()
            .map(|m2| (n >= 2).then(|| (m2 / (n - 1) as f64 / n as f64).sqrt()))
            .collect();
        Estimate {
            values: self.mean,
            standard_errors,
        }
    }
}

/// Samples the game's Shapley values for every target: permutations drawn (each followed by its
/// reverse with `antithetic`) in rounds of about `rows_per_round` rows, scored by `evaluate`,
/// each player's marginal contributions averaged. Knows players only as indices.
pub(super) fn sample(game: Game, plan: Plan, evaluate: &mut Evaluate) -> Result<Vec<Estimate>, RuntimeError> {
    let m = game.players;
    let targets = game.v_empty.len();
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
    let mut moments: Vec<Moments> = (0..targets).map(|_| Moments::new(m)).collect();
    let per_unit = if plan.antithetic { 2 } else { 1 };
    let units_per_round = (plan.rows_per_round / (m.saturating_sub(1).max(1) * per_unit)).max(1);
    let mut order: Vec<usize> = (0..m).collect();
    let mut drawn = 0;
    let mut observation = vec![0f64; m];
    while drawn < plan.permutations {
        let units = units_per_round.min((plan.permutations - drawn).div_ceil(per_unit));
        let mut orders = Vec::with_capacity(units * per_unit);
        for _ in 0..units {
            order.shuffle(&mut rng);
            orders.push(order.clone());
            if plan.antithetic {
                orders.push(order.iter().rev().copied().collect());
            }
        }
        // Games of one player have no steps between none and all.
        let rows = if m > 1 { evaluate(&orders)? } else { Vec::new() };
        let steps = m.saturating_sub(1);
        for ti in 0..targets {
            let value = |p: usize, k: usize| match k {
                0 => game.v_empty[ti],
                k if k == m => game.v_full[ti],
                k => rows[p * steps + k - 1][ti],
            };
            for unit in 0..units {
                observation.iter_mut().for_each(|o| *o = 0.0);
                let first = unit * per_unit;
                for (p, order) in orders.iter().enumerate().skip(first).take(per_unit) {
                    for (k, &j) in order.iter().enumerate() {
                        observation[j] += (value(p, k + 1) - value(p, k)) / per_unit as f64;
                    }
                }
                moments[ti].add(&observation);
            }
        }
        drawn += units * per_unit;
    }
    Ok(moments.into_iter().map(Moments::estimate).collect())
}

/// Sampled Shapley's `details`, as `explain` writes them.
#[derive(ToSchema)]
#[allow(dead_code)] // The answer's shape for the document; `explain` writes it as JSON.
#[serde(deny_unknown_fields)]
pub struct SampledShapleyDetails {
    /// One value per player (feature or segment): the mean of its marginal contributions.
    shapley_values: Vec<f64>,
    /// Each value's standard error over the permutations (over the pairs with `antithetic`);
    /// null with one observation.
    standard_errors: Vec<Option<f64>>,
    /// The score with every player absent (the baseline's).
    base_value: f64,
    /// The score with every player present (the input's).
    value: f64,
    /// The values' sum minus (`value` - `base_value`): zero up to rounding.
    efficiency_gap: f64,
    /// Permutations run (rounded up to an even number with `antithetic`).
    permutations: usize,
    /// Whether each permutation was followed by its reverse.
    antithetic: bool,
    /// A summary of the standard errors.
    approximation_error: ApproximationError,
    /// Image models: the players (segments).
    segments: Option<usize>,
    /// Image models: each pixel's segment.
    segment_map: Option<super::players::SegmentMap>,
}

/// How far the sampled values may lie from the exact ones: a summary of their standard errors
/// (null with one observation).
#[derive(ToSchema)]
#[allow(dead_code)] // The answer's shape for the document; `explain` writes it as JSON.
#[serde(deny_unknown_fields)]
pub struct ApproximationError {
    /// The largest standard error.
    max_standard_error: Option<f64>,
    /// The root mean square of the standard errors.
    rms_standard_error: Option<f64>,
    /// The standard errors' root sum of squares over the sum of the values' magnitudes (0 when
    /// every value is 0): what Vertex AI calls the approximation error.
    relative: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact Shapley values of `v` over `m` players, by enumeration.
    fn exact(m: usize, v: &dyn Fn(&[bool]) -> f64) -> Vec<f64> {
        let fact = |n: usize| (1..=n).map(|k| k as f64).product::<f64>();
        let mut phi = vec![0.0; m];
        for mask in 0..1usize << m {
            let s: Vec<bool> = (0..m).map(|j| mask >> j & 1 == 1).collect();
            let size = s.iter().filter(|b| **b).count();
            for i in (0..m).filter(|i| !s[*i]) {
                let mut with = s.clone();
                with[i] = true;
                phi[i] += fact(size) * fact(m - size - 1) / fact(m) * (v(&with) - v(&s));
            }
        }
        phi
    }

    /// The sampler on a game given as a function of the present players, without a model.
    fn sampled(m: usize, permutations: usize, antithetic: bool, seed: u64, v: &dyn Fn(&[bool]) -> f64) -> Estimate {
        let steps = m - 1;
        let evaluate = |orders: &[Vec<usize>]| -> Vec<Vec<f64>> {
            let mut rows = Vec::new();
            for order in orders {
                for k in 1..=steps {
                    let mut on = vec![false; m];
                    order[..k].iter().for_each(|&j| on[j] = true);
                    rows.push(vec![v(&on)]);
                }
            }
            rows
        };
        let (v0, v1) = (v(&vec![false; m]), v(&vec![true; m]));
        let game = Game {
            players: m,
            v_empty: &[v0],
            v_full: &[v1],
        };
        let plan = Plan {
            permutations,
            antithetic,
            seed,
            rows_per_round: 64,
        };
        let mut eval = |orders: &[Vec<usize>]| Ok(evaluate(orders));
        sample(game, plan, &mut eval).unwrap().remove(0)
    }

    /// A game of six players with interactions of order three and four.
    fn rich(s: &[bool]) -> f64 {
        let x: Vec<f64> = s.iter().map(|b| if *b { 1.0 } else { 0.0 }).collect();
        0.7 * x[0] - 0.4 * x[1] + 1.2 * x[0] * x[2] + 2.0 * x[1] * x[3] * x[4] - 1.5 * x[2] * x[3] * x[4] * x[5]
            + 0.3 * x[5]
    }

    #[test]
    fn additive_games_are_exact_and_efficiency_holds() {
        let w = [0.5, -1.0, 2.0, 0.0, 3.0];
        let v = |s: &[bool]| s.iter().zip(&w).map(|(b, w)| if *b { *w } else { 0.0 }).sum::<f64>();
        for antithetic in [false, true] {
            let e = sampled(5, 4, antithetic, 1, &v);
            for (a, b) in e.values.iter().zip(&w) {
                assert!((a - b).abs() < 1e-12, "{:?}", e.values);
            }
            assert!(e.standard_errors.iter().all(|s| s.unwrap() < 1e-12));
        }
        let e = sampled(6, 10, false, 2, &rich);
        let total: f64 = e.values.iter().sum();
        assert!((total - (rich(&[true; 6]) - rich(&[false; 6]))).abs() < 1e-12);
    }

    #[test]
    fn antithetic_pairs_are_exact_for_pairwise_games() {
        let v = |s: &[bool]| {
            let x: Vec<f64> = s.iter().map(|b| if *b { 1.0 } else { 0.0 }).collect();
            x[0] + 2.0 * x[0] * x[1] - 3.0 * x[2] * x[3] + 0.5 * x[1] * x[3]
        };
        let want = exact(4, &v);
        let e = sampled(4, 2, true, 7, &v);
        for (a, b) in e.values.iter().zip(&want) {
            assert!((a - b).abs() < 1e-12, "{:?} vs {want:?}", e.values);
        }
    }

    /// Over seeds, at the same number of permutations (so the same model rows), antithetic pairs
    /// err less on a game with interactions of order three and four; and each way the reported
    /// standard errors are the size of the true errors.
    #[test]
    fn antithetic_pairs_err_less_and_standard_errors_are_honest() {
        let want = exact(6, &rich);
        let mut report = Vec::new();
        for antithetic in [false, true] {
            let (mut err2, mut se2, mut n) = (0.0, 0.0, 0.0);
            for seed in 0..200 {
                let e = sampled(6, 20, antithetic, seed, &rich);
                for ((v, s), w) in e.values.iter().zip(&e.standard_errors).zip(&want) {
                    err2 += (v - w).powi(2);
                    se2 += s.unwrap().powi(2);
                    n += 1.0;
                }
            }
            let (rmse, rms_se) = ((err2 / n).sqrt(), (se2 / n).sqrt());
            let ratio = rmse / rms_se;
            assert!(
                (0.5..2.0).contains(&ratio),
                "antithetic {antithetic}: RMSE {rmse} vs SE {rms_se}"
            );
            report.push(rmse);
        }
        eprintln!(
            "sampled Shapley, 6 players, 20 permutations, 200 seeds: RMSE {:.4} plain, {:.4} antithetic",
            report[0], report[1]
        );
        assert!(report[1] < report[0] * 0.9, "{report:?}");
    }
}
