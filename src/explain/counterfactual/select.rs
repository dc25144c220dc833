//! From candidates to answers: checked by ONNX Runtime, sparsified, and chosen for diversity
//! (DiCE's post-hoc steps), each answer described for `details`.

use super::space::Space;
use super::{CounterfactualFound, CounterfactualParams, FeatureChange, ScoredClass};
use crate::explain::Cx;
use crate::runtime::{LoadedModel, RuntimeError};

/// A counterfactual that ONNX Runtime has checked.
pub(super) struct Found {
    pub(super) values: Vec<f32>,
    prediction: usize,
    probabilities: Vec<f64>,
    cost: f64,
}

impl Found {
    pub(super) fn describe(&self, model: &LoadedModel, features: &[String], x: &[f32]) -> CounterfactualFound {
        let changes: Vec<FeatureChange> = features
            .iter()
            .zip(x.iter().zip(&self.values))
            .filter(|(_, (a, b))| a != b)
            .map(|(f, (a, b))| FeatureChange {
                feature: f.clone(),
                from: *a,
                to: *b,
            })
            .collect();
        CounterfactualFound {
            changes,
            values: self.values.clone(),
            prediction: ScoredClass {
                index: self.prediction,
                label: model.spec.labels.get(self.prediction).cloned(),
                score: self.probabilities.get(self.prediction).copied(),
            },
            cost: self.cost,
            valid: true,
        }
    }
}

/// DiCE's diversity of a set of two or more: the mean distance between its pairs, in the cost's
/// units.
pub(super) fn diversity(space: &Space, found: &[Found]) -> Option<f64> {
    if found.len() < 2 {
        return None;
    }
    let pairs: Vec<f64> = (0..found.len())
        .flat_map(|a| (a + 1..found.len()).map(move |b| (a, b)))
        .map(|(a, b)| space.cost(&found[a].values, &found[b].values))
        .collect();
    Some(pairs.iter().sum::<f64>() / pairs.len() as f64)
}

/// Greedy sparsity (DiCE's post-hoc step): reverts each counterfactual's changed features to the
/// input's values, smallest weighted change first, keeping every reversion that ONNX Runtime
/// still decides as the target. One batched pass per feature position, over all counterfactuals.
pub(super) fn sparsify(
    cx: &mut Cx,
    space: &Space,
    x: &[f32],
    target: usize,
    mut found: Vec<Found>,
    count: usize,
    diversity_weight: f64,
) -> Result<Vec<Found>, RuntimeError> {
    let n = x.len();
    let orders: Vec<Vec<usize>> = found
        .iter()
        .map(|f| {
            let mut changed: Vec<usize> = (0..n).filter(|&i| f.values[i] != x[i]).collect();
            let weight = |i: usize| (f64::from(f.values[i]) - f64::from(x[i])).abs() * space.unit_cost[i];
            changed.sort_by(|a, b| weight(*a).total_cmp(&weight(*b)));
            changed
        })
        .collect();
    let longest = orders.iter().map(Vec::len).max().unwrap_or(0);
    // A counterfactual keeps at least one change.
    for j in 0..longest.saturating_sub(1) {
        let trials: Vec<(usize, Vec<f32>)> = found
            .iter()
            .enumerate()
            .filter(|(k, _)| orders[*k].len() > j + 1)
            .map(|(k, f)| {
                let mut y = f.values.clone();
                y[orders[k][j]] = x[orders[k][j]];
                (k, y)
            })
            .collect();
        if trials.is_empty() {
            break;
        }
        let rows: Vec<Vec<f32>> = trials.iter().map(|(_, y)| y.clone()).collect();
        for ((k, y), (class, probs)) in trials.into_iter().zip(cx.decide(&rows)?) {
            if class == target {
                found[k].cost = space.cost(x, &y);
                found[k].values = y;
                found[k].probabilities = probs;
            }
        }
    }
    Ok(diverse(space, x, found, count, diversity_weight))
}

/// At most `count` of `found`, mutually distinct, cheapest first: the cheapest, then greedily the
/// one that most raises `weight x det(K) - 0.5 x proximity` of the set (DiCE's objective without
/// its prediction term, which every candidate here already meets): `K_ij = 1 / (1 + cost(i, j))`,
/// proximity the mean scaled change per answer and feature.
fn diverse(space: &Space, x: &[f32], found: Vec<Found>, count: usize, weight: f64) -> Vec<Found> {
    let mut pool: Vec<Option<Found>> = distinct(space, x, found, usize::MAX).into_iter().map(Some).collect();
    if weight == 0.0 || pool.len() <= count {
        return pool.into_iter().flatten().take(count).collect();
    }
    let score = |set: &[&Found]| {
        let k = set.len();
        let kernel = nalgebra::DMatrix::from_fn(k, k, |i, j| match i == j {
            // DiCE's small jitter keeps the determinant of near-duplicates from vanishing exactly.
            true => 1.0 + 1e-4,
            false => 1.0 / (1.0 + space.cost(&set[i].values, &set[j].values)),
        });
        // DiCE's proximity: the mean over answers and features of the scaled change.
        let proximity = set.iter().map(|f| f.cost).sum::<f64>() / (k * x.len().max(1)) as f64;
        weight * kernel.determinant() - 0.5 * proximity
    };
    let mut chosen: Vec<Found> = pool[0].take().into_iter().collect();
    while chosen.len() < count {
        let best = (0..pool.len())
            .filter(|&i| pool[i].is_some())
            .map(|i| {
                let mut set: Vec<&Found> = chosen.iter().collect();
                set.extend(pool[i].as_ref());
                (i, score(&set))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
        match best.and_then(|(i, _)| pool[i].take()) {
            Some(f) => chosen.push(f),
            None => break,
        }
    }
    chosen.sort_by(|a, b| a.cost.total_cmp(&b.cost));
    chosen
}

/// The cheapest of `found`, at most `count`, each distinct from those kept before it: it changes
/// another set of features, or lies at least one scale unit (weighted) from each of them.
fn distinct(space: &Space, x: &[f32], mut found: Vec<Found>, count: usize) -> Vec<Found> {
    found.sort_by(|a, b| a.cost.total_cmp(&b.cost));
    let changed = |v: &[f32]| -> Vec<bool> { v.iter().zip(x).map(|(a, b)| a != b).collect() };
    let mut kept: Vec<Found> = Vec::new();
    for f in found {
        if kept.len() == count {
            break;
        }
        let set = changed(&f.values);
        let far = |k: &Found| {
            let d: f64 = k
                .values
                .iter()
                .zip(&f.values)
                .zip(&space.unit_cost)
                .map(|((a, b), c)| (f64::from(*a) - f64::from(*b)).abs() * c)
                .sum();
            changed(&k.values) != set || d >= 1.0
        };
        if kept.iter().all(far) {
            kept.push(f);
        }
    }
    kept
}

/// Runs every candidate through ONNX Runtime in one batched pass and keeps the `count` cheapest
/// that it decides as `target`, distinct from each other.
pub(super) fn checked(
    cx: &mut Cx,
    space: &Space,
    x: &[f32],
    candidates: Vec<Vec<f32>>,
    target: usize,
    p: &CounterfactualParams,
) -> Result<Vec<Found>, RuntimeError> {
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let decisions = cx.decide(&candidates)?;
    let found: Vec<Found> = candidates
        .into_iter()
        .zip(decisions)
        .filter_map(|(values, (prediction, probs))| {
            (prediction == target).then(|| Found {
                cost: space.cost(x, &values),
                values,
                prediction,
                probabilities: probs,
            })
        })
        .collect();
    // Sparsifying may bring two together, and diversity chooses among them: keep spares.
    Ok(distinct(space, x, found, p.count.saturating_mul(8)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::counterfactual::Distance;

    fn found(values: [f32; 3], cost: f64) -> Found {
        Found {
            values: values.to_vec(),
            prediction: 1,
            probabilities: vec![0.0, 1.0],
            cost,
        }
    }

    #[test]
    fn diversity_trades_a_little_cost_for_answers_that_change_other_things() {
        let space = Space {
            low: vec![f64::NEG_INFINITY; 3],
            high: vec![f64::INFINITY; 3],
            integer: vec![false; 3],
            categories: vec![None; 3],
            unit_cost: vec![1.0; 3],
            scale: vec![1.0; 3],
            scale_source: "test",
            distance: Distance::L1,
        };
        let x = [0.0f32; 3];
        // Two near one another on feature 0, one a little dearer on feature 2.
        let pool = || {
            vec![
                found([1.0, 0.0, 0.0], 1.0),
                found([1.2, 0.1, 0.0], 1.3),
                found([0.0, 0.0, 1.4], 1.4),
            ]
        };
        let cheapest = diverse(&space, &x, pool(), 2, 0.0);
        assert_eq!(cheapest.iter().map(|f| f.cost).collect::<Vec<_>>(), vec![1.0, 1.3]);
        let spread = diverse(&space, &x, pool(), 2, 1.0);
        assert_eq!(spread.iter().map(|f| f.cost).collect::<Vec<_>>(), vec![1.0, 1.4]);
        // Fewer candidates than asked: all of them, cheapest first.
        assert_eq!(diverse(&space, &x, pool(), 5, 1.0).len(), 3);
    }
}
