//! DiCE's random search (Mothilal et al. 2020, `method="random"`): candidates that each change a
//! random few features to values drawn from where the space lets them go, all scored in batched
//! forward passes. Needs neither gradients nor trees, so it serves models whose explained input
//! is integer or bool; integer features stay whole and categorical ones among their categories.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::space::Space;
use super::CounterfactualParams;
use crate::explain::{Cx, ExplainJob};
use crate::runtime::RuntimeError;

/// `steps x count` candidates, the k-th changing `1 + k mod m` of the `m` features free to move
/// (the sparsifier then takes back what the decision does not need).
pub(super) fn random_candidates(
    cx: &mut Cx,
    job: &ExplainJob,
    space: &Space,
    x: &[f32],
    p: &CounterfactualParams,
) -> Result<(Vec<Vec<f32>>, serde_json::Value), RuntimeError> {
    let draws = p.steps.saturating_mul(p.count).max(1);
    let mut rng = ChaCha8Rng::seed_from_u64(job.seed ^ 0xd1ce_5eed);
    let movable: Vec<usize> = (0..x.len()).filter(|&i| space.low[i] < space.high[i]).collect();
    let mut candidates = Vec::with_capacity(draws.min(4096));
    if !movable.is_empty() {
        for d in 0..draws {
            if d % 256 == 0 {
                cx.checkpoint()?;
            }
            let k = 1 + d % movable.len();
            let mut row = x.to_vec();
            let mut pool = movable.clone();
            for _ in 0..k {
                let i = pool.swap_remove(rng.random_range(0..pool.len()));
                if let Some(v) = draw(space, i, x[i], &mut rng) {
                    row[i] = v;
                }
            }
            candidates.push(row);
        }
    }
    let stats = json!({"draws": candidates.len(), "movable_features": movable.len()});
    Ok((candidates, stats))
}

/// A value of feature `i` where the space lets it go: one of its categories, or a number in its
/// interval (within three scales of the input's `v` where the interval is open), placed (rounded
/// for an integer feature).
fn draw(space: &Space, i: usize, v: f32, rng: &mut ChaCha8Rng) -> Option<f32> {
    let (lo, hi) = (space.low[i], space.high[i]);
    if let Some(categories) = &space.categories[i] {
        let allowed: Vec<f64> = categories.iter().copied().filter(|c| (lo..=hi).contains(c)).collect();
        let c = *allowed.get(rng.random_range(0..allowed.len().max(1)))?;
        return space.place(i, c, c, c);
    }
    let reach = 3.0 * space.scale[i];
    let lo = if lo.is_finite() { lo } else { f64::from(v) - reach };
    let hi = if hi.is_finite() { hi } else { f64::from(v) + reach };
    if lo.partial_cmp(&hi) != Some(std::cmp::Ordering::Less) {
        return None;
    }
    space.place(i, rng.random_range(lo..=hi), f64::NEG_INFINITY, f64::INFINITY)
}
