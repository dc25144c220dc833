//! The input's conditions and anchors' perturbation distribution, conditioned exactly on a rule.

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use crate::explain::background::Bins;
use crate::runtime::manifest::FeatureType;

/// How a condition compares its feature with its value.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Op {
    /// `feature <= cut`.
    AtMost,
    /// `feature > cut`.
    Above,
    /// `feature = value`: a categorical feature, whose categories have no order.
    Equals,
}

/// One condition on one feature.
pub(super) struct Condition {
    pub(super) feature: usize,
    pub(super) cut: f32,
    pub(super) op: Op,
}

impl Condition {
    pub(super) fn holds(&self, v: f32) -> bool {
        match self.op {
            Op::AtMost => v <= self.cut,
            Op::Above => v > self.cut,
            Op::Equals => v == self.cut,
        }
    }
}

/// Share of a sample's features the perturbation distribution keeps from its background row;
/// each other feature takes that feature's value in another background row drawn at random.
/// Kept high so samples stay close to real rows (the features of a real row move together): in
/// a prototype of this search at 0.5, the MLP's anchors grew longer and 5 of 20 breast-cancer
/// inputs missed 0.95 at 4,096 rows (none at 0.75).
pub(super) const KEEP: f64 = 0.75;

/// One word per 64 conditions: bit `c` set when condition `c` is in a rule, or holds for a row.
pub(super) type Mask = Vec<u64>;

pub(super) fn mask_of(rule: &[usize], words: usize) -> Mask {
    let mut m = vec![0u64; words];
    for &c in rule {
        m[c / 64] |= 1 << (c % 64);
    }
    m
}

/// Every bit of `a` is set in `b`.
pub(super) fn within(a: &[u64], b: &[u64]) -> bool {
    a.iter().zip(b).all(|(a, b)| a & !b == 0)
}

/// The input's conditions and anchors' perturbation distribution over the background rows.
pub(super) struct Sampler<'a> {
    pub(super) background: &'a [Vec<f32>],
    pub(super) x: &'a [f32],
    pub(super) conditions: Vec<Condition>,
    /// Per background row, the conditions it satisfies.
    pub(super) covers: Vec<Mask>,
    /// Per condition, the share of background rows that satisfy it, and their values of its
    /// feature (with repeats: a uniform pick is a draw from the feature's distribution given it).
    pub(super) share: Vec<f64>,
    pub(super) values: Vec<Vec<f32>>,
    pub(super) words: usize,
}

impl<'a> Sampler<'a> {
    pub(super) fn new(background: &'a [Vec<f32>], x: &'a [f32], types: &[FeatureType]) -> Self {
        let mut conditions = Vec::new();
        for (f, &v) in x.iter().enumerate() {
            // A category is a name, not a point on a line: its condition is `feature = value`
            // (alibi's categorical anchors), not a range of category codes.
            if let Some(FeatureType::Categorical { .. }) = types.get(f) {
                conditions.push(Condition {
                    feature: f,
                    cut: v,
                    op: Op::Equals,
                });
                continue;
            }
            let column: Vec<f32> = background.iter().filter_map(|r| r.get(f).copied()).collect();
            let bins = Bins::of_feature(&column, types.get(f));
            let b = Bins::bin_of(&bins.cuts, v);
            if b > 0 {
                conditions.push(Condition {
                    feature: f,
                    cut: bins.cuts[b - 1],
                    op: Op::Above,
                });
            }
            if b < bins.cuts.len() {
                conditions.push(Condition {
                    feature: f,
                    cut: bins.cuts[b],
                    op: Op::AtMost,
                });
            }
        }
        let words = conditions.len().div_ceil(64).max(1);
        let values: Vec<Vec<f32>> = conditions
            .iter()
            .map(|c| {
                background
                    .iter()
                    .map(|r| r[c.feature])
                    .filter(|v| c.holds(*v))
                    .collect()
            })
            .collect();
        let share = values
            .iter()
            .map(|v| v.len() as f64 / background.len().max(1) as f64)
            .collect();
        let mut sampler = Sampler {
            background,
            x,
            conditions,
            covers: Vec::new(),
            share,
            values,
            words,
        };
        sampler.covers = background.iter().map(|r| sampler.held(r)).collect();
        sampler
    }

    /// The conditions `row` satisfies.
    pub(super) fn held(&self, row: &[f32]) -> Mask {
        let held: Vec<usize> = (0..self.conditions.len())
            .filter(|&c| self.conditions[c].holds(row[self.conditions[c].feature]))
            .collect();
        mask_of(&held, self.words)
    }

    pub(super) fn satisfies(&self, rule: &[usize], row: &[f32]) -> bool {
        rule.iter().all(|&c| {
            let c = &self.conditions[c];
            c.holds(row[c.feature])
        })
    }

    /// Share of background rows the rule covers.
    pub(super) fn coverage(&self, rule: &[usize]) -> f64 {
        let mask = mask_of(rule, self.words);
        let covered = self.covers.iter().filter(|c| within(&mask, c)).count();
        covered as f64 / self.background.len().max(1) as f64
    }

    /// `n` rows from the perturbation distribution conditioned on `rule`, drawn exactly: a
    /// background row, weighted by the chance that its perturbations satisfy the rule, then per
    /// feature its own value or (with probability `1 - KEEP`) a random background row's, both
    /// conditioned on the rule's condition on that feature. Conditioning (not forcing the
    /// anchored features, as Ribeiro et al.'s and alibi's samplers do) is what makes a rule's
    /// samples that satisfy one more condition exact samples of the longer rule.
    pub(super) fn conditioned(&self, rule: &[usize], n: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<f32>> {
        if self.background.is_empty() {
            return Vec::new();
        }
        let mut on = vec![None; self.x.len()];
        for &c in rule {
            on[self.conditions[c].feature] = Some(c);
        }
        // A condition no background value meets has no weight under the distribution: it is
        // met with the input's own value instead (which meets it: the bins are the input's).
        let factor = |covers: &Mask, c: usize| match self.values[c].is_empty() {
            true => 1.0,
            false => {
                let held = covers[c / 64] >> (c % 64) & 1 == 1;
                KEEP * f64::from(u8::from(held)) + (1.0 - KEEP) * self.share[c]
            }
        };
        let mut cumulative = Vec::with_capacity(self.background.len());
        let mut total = 0.0;
        for covers in &self.covers {
            total += rule.iter().map(|&c| factor(covers, c)).product::<f64>();
            cumulative.push(total);
        }
        let rows = self.background.len();
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let u = rng.random::<f64>() * total;
            let b = cumulative.partition_point(|&w| w <= u).min(rows - 1);
            let mut row = self.background[b].clone();
            for (f, v) in row.iter_mut().enumerate() {
                match on[f] {
                    None => {
                        if rng.random::<f64>() >= KEEP {
                            *v = self.background[rng.random_range(0..rows)][f];
                        }
                    }
                    Some(c) => {
                        let values = &self.values[c];
                        if values.is_empty() {
                            *v = self.x[f];
                            continue;
                        }
                        let held = self.covers[b][c / 64] >> (c % 64) & 1 == 1;
                        let keep = KEEP / (KEEP + (1.0 - KEEP) * self.share[c]);
                        if !(held && rng.random::<f64>() < keep) {
                            *v = values[rng.random_range(0..values.len())];
                        }
                    }
                }
            }
            out.push(row);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// 300 rows of 4 features that move together (a shared factor plus noise).
    fn correlated_background(rng: &mut ChaCha8Rng) -> Vec<Vec<f32>> {
        let mut normal = || {
            let (u1, u2) = (rng.random::<f64>().max(1e-12), rng.random::<f64>());
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        };
        (0..300)
            .map(|_| {
                let z = normal();
                (0..4).map(|_| z + 0.4 * normal()).collect()
            })
            .collect()
    }

    fn column_means(rows: &[Vec<f32>]) -> Vec<f64> {
        let n = rows.len().max(1) as f64;
        (0..rows.first().map_or(0, Vec::len))
            .map(|f| rows.iter().map(|r| f64::from(r[f])).sum::<f64>() / n)
            .collect()
    }

    fn assert_close(a: &[f64], b: &[f64], what: &str) {
        for (f, (a, b)) in a.iter().zip(b).enumerate() {
            assert!((a - b).abs() < 0.03, "{what}: feature {f}: {a} vs {b}");
        }
    }

    #[test]
    fn a_categorical_feature_gets_one_equality_condition() {
        // Feature 1 is categorical (codes 0, 1, 2): its condition is `= 2`, not a range of codes
        // (which would lump 1 with 2, or 0 with 1, as if the codes were ordered).
        let background: Vec<Vec<f32>> = (0..30).map(|i| vec![i as f32, (i % 3) as f32]).collect();
        let types = [
            FeatureType::Continuous,
            FeatureType::Categorical {
                categories: vec![0.0, 1.0, 2.0],
                names: vec![],
            },
        ];
        let sampler = Sampler::new(&background, &[12.0, 1.0], &types);
        let on: Vec<&Condition> = sampler.conditions.iter().filter(|c| c.feature == 1).collect();
        assert_eq!(on.len(), 1);
        assert_eq!((on[0].op, on[0].cut), (Op::Equals, 1.0));
        assert!(on[0].holds(1.0) && !on[0].holds(0.0) && !on[0].holds(2.0));
        assert!((sampler.share[sampler.conditions.len() - 1] - 1.0 / 3.0).abs() < 1e-9);
        assert!(sampler
            .conditions
            .iter()
            .filter(|c| c.feature == 0)
            .all(|c| c.op != Op::Equals));
    }

    #[test]
    fn conditioned_samples_match_rejection_and_nest() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let background = correlated_background(&mut rng);
        let x = [1.2f32, 1.0, 0.9, -0.2];
        let sampler = Sampler::new(&background, &x, &[]);
        let on = |f: usize| -> Vec<usize> {
            (0..sampler.conditions.len())
                .filter(|&c| sampler.conditions[c].feature == f)
                .take(1)
                .collect()
        };
        let (first, second) = (on(0), on(1));
        let rule: Vec<usize> = first.iter().chain(&second).copied().collect();
        let n = 40_000;
        // The distribution itself, conditioned by rejection.
        let mut rejected = Vec::new();
        while rejected.len() < n {
            let mut row = background[rng.random_range(0..background.len())].clone();
            for (f, v) in row.iter_mut().enumerate() {
                if rng.random::<f64>() >= KEEP {
                    *v = background[rng.random_range(0..background.len())][f];
                }
            }
            if sampler.satisfies(&rule, &row) {
                rejected.push(row);
            }
        }
        let exact = sampler.conditioned(&rule, n, &mut rng);
        assert!(exact.iter().all(|r| sampler.satisfies(&rule, r)));
        assert_close(&column_means(&exact), &column_means(&rejected), "exact vs rejection");
        // Samples of the shorter rule that satisfy the longer one are samples of the longer one;
        // forcing the anchored feature (the old sampler) would leave the other features' means
        // where the shorter rule has them.
        let shorter: Vec<Vec<f32>> = sampler
            .conditioned(&first, 4 * n, &mut rng)
            .into_iter()
            .filter(|r| sampler.satisfies(&rule, r))
            .collect();
        assert!(shorter.len() > n / 4, "{}", shorter.len());
        assert_close(&column_means(&shorter), &column_means(&exact), "nested vs exact");
    }
}
