//! KernelSHAP over superpixels (Lundberg and Lee 2017), in its unbiased form (Covert and Lee 2021):
//! coalitions drawn from the Shapley kernel distribution in complementary pairs, the exact kernel
//! matrix, and the efficiency constraint solved exactly, so values always sum to f(x) - f(hidden).
//! The paired samples' variance gives each value's standard error; `samples: "auto"` stops as soon
//! as every standard error is below `tolerance`. Seeded: the same seed gives the same bytes.

use nalgebra::{DMatrix, DVector};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::lime::Hide;
use super::lime::{check_positive, interpretable_features, perturbation_cost};
use super::method::{
    check_range, Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext, CONFIGURED_MAX_SAMPLES,
};
use super::method::{schemas_of, NamedSchemas};
use super::perturb::{compose, run_copies};
use super::players::{Players, TextUnit};
use super::regression::{bit, cholesky, cholesky_solve, pack, Check};
use super::{background, Cx, ExplainJob, TargetAttribution};
use crate::runtime::predict::Prediction;
use crate::runtime::preprocess::InputError;
use crate::runtime::RuntimeError;

/// A sample budget: a number, or `"auto"` (stop when every standard error is below `tolerance`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Samples {
    /// Exactly this many coalitions (rounded up to an even number: they come in pairs).
    Fixed(usize),
    /// `"auto"`.
    Auto(AutoSamples),
}

/// The word `auto`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AutoSamples {
    /// Stop at the tolerance.
    Auto,
}

/// Fewest coalitions a fixed KernelSHAP budget may name.
const MIN_SAMPLES: usize = 2;

/// The schema of a `samples` field: a number from `min` to the service's `max_samples`, or
/// `"auto"`. Written out because the bounds differ by method and a derived variant takes none.
pub(super) fn samples_schema(min: usize, description: &str, nullable: bool) -> utoipa::openapi::Schema {
    use utoipa::openapi::extensions::ExtensionsBuilder;
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    let fixed = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(min))
        .extensions(Some(
            ExtensionsBuilder::new()
                .add("x-maximum", CONFIGURED_MAX_SAMPLES)
                .build(),
        ));
    let auto = ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(["auto"]));
    let mut schema = OneOfBuilder::new()
        .description(Some(description))
        .item(fixed)
        .item(auto);
    if nullable {
        schema = schema.item(ObjectBuilder::new().schema_type(Type::Null));
    }
    utoipa::openapi::Schema::OneOf(schema.build())
}

/// The schema of KernelSHAP's `samples`.
fn samples_param_schema() -> utoipa::openapi::Schema {
    samples_schema(
        MIN_SAMPLES,
        "Coalitions: a number (default 2M + 2048, shap's \"auto\" budget; rounded up to an even number: they \
         come in pairs) or `\"auto\"` (stop when every standard error is below `tolerance`).",
        true,
    )
}

/// KernelSHAP parameters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct KernelShapParams {
    /// Superpixels (players) asked of SLIC.
    #[schema(default = 50, minimum = 2, maximum = 500)]
    pub segments: u32,
    /// SLIC compactness, 1 to 20.
    #[schema(default = 10, minimum = 1, maximum = 20)]
    pub compactness: u8,
    /// Coalitions: a number (default 2M + 2048, shap's "auto" budget) or `"auto"`.
    #[schema(schema_with = samples_param_schema)]
    pub samples: Option<Samples>,
    /// With `samples: "auto"`: the largest standard error accepted, in score units.
    #[schema(default = 0.01, exclusive_minimum = 0.0, maximum = 1000000.0)]
    pub tolerance: f64,
    /// What a missing player (segment) shows.
    #[schema(default = "gray")]
    pub hide: Hide,
    /// Tabular models: background rows a missing feature is drawn from (a k-means summary with
    /// this many rows when the file has more; shap's kmeans).
    #[schema(default = 20, minimum = 1, maximum = 1000)]
    pub background_rows: usize,
    /// Text models: the players are words (default) or tokens; a missing one shows the hide token.
    #[schema(default = "words")]
    pub text_features: TextUnit,
}

impl Default for KernelShapParams {
    fn default() -> Self {
        Self {
            segments: 50,
            compactness: 10,
            samples: None,
            tolerance: 0.01,
            hide: Hide::Gray,
            background_rows: 20,
            text_features: TextUnit::Words,
        }
    }
}

/// KernelSHAP.
pub struct KernelShap;

impl Method for KernelShap {
    type Params = KernelShapParams;
    const NAME: &'static str = "kernel-shap";
    const SUMMARY: &'static str = "Shapley values from coalitions drawn by the Shapley kernel (Lundberg and Lee 2017)";
    const CAPABILITIES: Capabilities = Capabilities {
        passes: Passes::Forward,
        inputs: Inputs::Any,
        layer: false,
        random: true,
        examples: false,
        decision: false,
        text: true,
    };

    fn details_schema() -> Option<NamedSchemas> {
        Some(schemas_of::<KernelShapDetails>())
    }

    fn plan(p: &mut KernelShapParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        check_range("segments", p.segments, 2, 500)?;
        check_range("compactness", p.compactness, 1, 20)?;
        check_range("background_rows", p.background_rows, 1, 1000)?;
        check_positive("tolerance", p.tolerance)?;
        let budget = cx.limits.max_samples.saturating_sub(1);
        let players = interpretable_features(cx, p.segments as usize, "KernelSHAP")?;
        let coalitions = match &p.samples {
            None => (2 * players + 2048).min(budget),
            Some(Samples::Fixed(n)) => {
                check_range("samples", *n, MIN_SAMPLES, cx.limits.max_samples)?;
                (*n).min(budget)
            }
            Some(Samples::Auto(_)) => budget,
        };
        // Tabular coalitions are each scored over the background rows.
        let per_coalition = match (&cx.model.spec.tabular, cx.model.background.as_deref()) {
            (Some(_), Some(rows)) => rows.len().min(p.background_rows),
            _ => 1,
        };
        Ok(perturbation_cost(cx, coalitions, players, per_coalition))
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        p: &KernelShapParams,
        targets: &[Prediction],
        scores: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        explain(cx, job, p, targets, scores)
    }
}

/// The Shapley kernel's size distribution over 1..M-1, and E[z zT] under it: every diagonal entry
/// is `diag`, every other `off`.
fn kernel(m: usize) -> (Vec<f64>, f64, f64) {
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
/// sample is solved with the exact matrix instead (Covert and Lee's unbiased estimator).
fn well_conditioned(a: &DMatrix<f64>) -> bool {
    let eigen = a.clone().symmetric_eigen();
    let (lo, hi) = eigen
        .eigenvalues
        .iter()
        .fold((f64::INFINITY, 0f64), |(lo, hi), e| (lo.min(*e), hi.max(e.abs())));
    hi > 0.0 && lo > hi * 1e-6
}

/// Scores the given coalitions: one score row per coalition.
type Evaluate<'a> = dyn FnMut(&mut Cx, &[Vec<bool>]) -> Result<Vec<Vec<f64>>, RuntimeError> + 'a;

/// Jackknife groups of pairs for the standard errors.
const GROUPS: usize = 20;

/// Sampled coalitions' outcome for every target: values, standard errors, samples drawn, why it stopped.
struct Solved {
    phi: Vec<Vec<f64>>,
    se: Vec<Vec<f64>>,
    drawn: usize,
    stopped: &'static str,
}

impl Solved {
    /// The details every KernelSHAP answer carries for target `ti`; callers add their own fields.
    fn details(&self, ti: usize, v0: f64, v1: f64) -> serde_json::Value {
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
fn solve(
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
        let mut coalitions: Vec<Vec<bool>> = Vec::with_capacity(2 * n_pairs);
        for _ in 0..n_pairs {
            cx.checkpoint()?;
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
            players.shuffle(&mut rng);
            let mut z = vec![false; m];
            for &i in &players[..size] {
                z[i] = true;
            }
            let complement: Vec<bool> = z.iter().map(|b| !b).collect();
            coalitions.push(z);
            coalitions.push(complement);
        }
        let outputs = evaluate(cx, &coalitions)?;
        for k in 0..n_pairs {
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

fn explain(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &KernelShapParams,
    targets: &[Prediction],
    scores: &[f64],
) -> Result<Vec<TargetAttribution>, RuntimeError> {
    let weighed = job.weighed_scores(scores);
    let v1: Vec<f64> = targets.iter().map(|t| weighed[t.index]).collect();
    if job.model.spec.tabular.is_some() {
        return explain_tabular(cx, job, p, targets, &v1);
    }
    let players = Players::of(job, (p.segments, p.compactness), p.hide, p.text_features)?;
    players.at_least(2, "KernelSHAP")?;
    let (m, pixels, hidden) = (players.count, &players.indices, &players.hidden);
    let x = job.input.as_f32().unwrap_or(&[]).to_vec();
    let empty = run_copies(cx, &job.input, 1, |_, buf| buf.copy_from_slice(hidden))?;
    let empty = job.weighed_scores(&empty[0]);
    let v0: Vec<f64> = targets.iter().map(|t| empty[t.index]).collect();
    let input = job.input.clone();
    let mut evaluate = |cx: &mut Cx, coalitions: &[Vec<bool>]| -> Result<Vec<Vec<f64>>, RuntimeError> {
        let rows = run_copies(cx, &input, coalitions.len(), |r, buf| {
            compose(buf, &x, hidden, &coalitions[r], pixels)
        })?;
        Ok(rows.iter().map(|row| job.weighed_scores(row)).collect())
    };
    let solved = solve(cx, job, p, targets, m, &v0, &v1, &mut evaluate)?;
    let mut out = Vec::new();
    for (ti, t) in targets.iter().enumerate() {
        let phi = &solved.phi[ti];
        let map = players.map(phi);
        let mut details = solved.details(ti, v0[ti], v1[ti]);
        players.describe(&mut details);
        out.push(TargetAttribution::from_map(t, map, None, Some(details)));
    }
    Ok(out)
}

/// Tabular KernelSHAP: features are the players; a missing feature takes the background rows'
/// values, and a coalition's value is the mean score over those rows (shap's KernelExplainer).
fn explain_tabular(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &KernelShapParams,
    targets: &[Prediction],
    v1: &[f64],
) -> Result<Vec<TargetAttribution>, RuntimeError> {
    let (bg, of) = background::for_job(job, p.background_rows)?;
    let b = bg.rows.len();
    let m = job.input.as_f32().map(<[f32]>::len).unwrap_or(0);
    if m < 2 {
        return Err(InputError::BadFeatures("KernelSHAP needs at least 2 features".into()).into());
    }
    let x = job.input.as_f32().unwrap_or(&[]).to_vec();
    // v0, the expected value: the mean over the background rows of each row's own value.
    let own = run_copies(cx, &job.input, b, |r, buf| buf.copy_from_slice(&bg.rows[r]))?;
    let own: Vec<Vec<f64>> = own.iter().map(|row| job.weighed_scores(row)).collect();
    let v0: Vec<f64> = targets.iter().map(|t| bg.mean(|r| own[r][t.index])).collect();
    let mut evaluate = |cx: &mut Cx, coalitions: &[Vec<bool>]| -> Result<Vec<Vec<f64>>, RuntimeError> {
        let all = run_copies(cx, &job.input, coalitions.len() * b, |r, buf| {
            let (z, row) = (&coalitions[r / b], &bg.rows[r % b]);
            for j in 0..m {
                buf[j] = if z[j] { x[j] } else { row[j] };
            }
        })?;
        // Per coalition, per class: the weighted mean over the background rows of the weighed
        // scores (the mean of probabilities, not the probability of mean logits).
        Ok(all
            .chunks(b)
            .map(|chunk| {
                let weighed: Vec<Vec<f64>> = chunk.iter().map(|row| job.weighed_scores(row)).collect();
                (0..weighed[0].len()).map(|k| bg.mean(|r| weighed[r][k])).collect()
            })
            .collect())
    };
    let solved = solve(cx, job, p, targets, m, &v0, v1, &mut evaluate)?;
    let mut out = Vec::new();
    for (ti, t) in targets.iter().enumerate() {
        let phi = &solved.phi[ti];
        let mut details = solved.details(ti, v0[ti], v1[ti]);
        details["background"] = serde_json::json!(bg.describe(of));
        out.push(TargetAttribution::from_values(t, phi, details));
    }
    Ok(out)
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
        a += z.tr_mul(&z) * 0.5;
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
        Some(pair_sums(&pairs.iter().collect::<Vec<_>>(), m, check)?).filter(well_conditioned)
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
        let factor = match (&whole, skip) {
            (None, _) => None,
            (Some(a), None) => cholesky(a / n, check)?,
            (Some(a), Some(g)) => {
                let a = a - pair_sums(&in_group(g), m, check)?;
                if well_conditioned(&a) {
                    cholesky(a / n, check)?
                } else {
                    None
                }
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

/// KernelSHAP's `details`, as `explain` writes them.
#[derive(ToSchema)]
#[allow(dead_code)] // The answer's shape for the document; `explain` writes it as JSON.
#[serde(deny_unknown_fields)]
pub struct KernelShapDetails {
    /// One value per player (feature, segment or word).
    shapley_values: Vec<f64>,
    /// Each value's standard error (null until two pairs of samples exist).
    standard_errors: Vec<Option<f64>>,
    /// The score with every player absent.
    base_value: f64,
    /// The score with every player present.
    value: f64,
    /// The values' sum minus (`value` - `base_value`).
    efficiency_gap: f64,
    /// Coalitions drawn.
    samples: usize,
    /// Why sampling stopped.
    stopped: String,
    /// Image and text models: the players (segments or words).
    segments: Option<usize>,
    /// Image models: each pixel's segment.
    segment_map: Option<super::players::SegmentMap>,
    /// Text models: each player's token positions.
    player_tokens: Option<Vec<Vec<usize>>>,
    /// Tabular models: the background rows absent features take.
    background: Option<super::background::BackgroundDetails>,
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
