//! The search space both engines share: where each feature may go (the constraints, the
//! background rows' range) and what moving it costs (scaled by the median absolute deviation).

use super::Distance;
use crate::runtime::manifest::{Constraints, Direction, FeatureType};
use crate::runtime::LoadedModel;

/// Where each feature may go, and what moving it costs.
pub(super) struct Space {
    /// Per feature: the interval the constraints allow (a single point for immutable ones).
    pub(super) low: Vec<f64>,
    pub(super) high: Vec<f64>,
    pub(super) integer: Vec<bool>,
    /// Per feature: its categories, sorted, when it is categorical (the manifest's types).
    pub(super) categories: Vec<Option<Vec<f64>>>,
    /// Per feature: cost of one unit of change (its cost over its scale).
    pub(super) unit_cost: Vec<f64>,
    pub(super) scale: Vec<f64>,
    pub(super) scale_source: &'static str,
    pub(super) distance: Distance,
}

impl Space {
    pub(super) fn new(
        model: &LoadedModel,
        features: &[String],
        c: &Constraints,
        x: &[f32],
        distance: Distance,
    ) -> Self {
        let n = features.len();
        let at = |name: &str| features.iter().position(|f| f == name);
        // Without a bound of its own, a feature stays within the background rows' range (widened
        // to the input's value), as DiCE keeps to the training data's: a counterfactual outside
        // everything seen is no advice.
        let (mut low, mut high) = (vec![f64::NEG_INFINITY; n], vec![f64::INFINITY; n]);
        if let Some(rows) = model.background.as_ref().filter(|rows| !rows.is_empty()) {
            for i in 0..n {
                let column = rows.iter().filter_map(|r| r.get(i)).map(|v| f64::from(*v));
                let (lo, hi) = column.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(v), h.max(v)));
                let v = f64::from(x[i]);
                (low[i], high[i]) = (lo.min(v), hi.max(v));
            }
        }
        let mut integer = vec![false; n];
        for (f, v) in &c.min {
            if let Some(i) = at(f) {
                low[i] = *v;
            }
        }
        for (f, v) in &c.max {
            if let Some(i) = at(f) {
                high[i] = *v;
            }
        }
        for (f, d) in &c.monotone {
            if let Some(i) = at(f) {
                match d {
                    Direction::Increase => low[i] = low[i].max(f64::from(x[i])),
                    Direction::Decrease => high[i] = high[i].min(f64::from(x[i])),
                }
            }
        }
        for f in &c.immutable {
            if let Some(i) = at(f) {
                (low[i], high[i]) = (f64::from(x[i]), f64::from(x[i]));
            }
        }
        // The manifest's feature types (its integer ones are in `c.integer` already), and the
        // integer features a request added.
        for f in &c.integer {
            if let Some(i) = at(f) {
                integer[i] = true;
            }
        }
        let types = model
            .spec
            .tabular
            .as_ref()
            .map(|t| t.feature_types.as_slice())
            .unwrap_or_default();
        let categories: Vec<Option<Vec<f64>>> = (0..n)
            .map(|i| match types.get(i) {
                Some(FeatureType::Categorical { categories, .. }) => {
                    let mut sorted = categories.clone();
                    sorted.sort_by(f64::total_cmp);
                    Some(sorted)
                }
                _ => None,
            })
            .collect();
        // An input already outside its bounds keeps its own value as the allowed one, so the
        // interval never empties because of where the input starts.
        for i in 0..n {
            let v = f64::from(x[i]);
            if low[i] > high[i] {
                (low[i], high[i]) = (v, v);
            }
        }
        let (scale, scale_source) = match model.background.as_ref().filter(|rows| rows.len() > 1) {
            Some(rows) => (mad_scales(rows, n), "median absolute deviation of the background rows"),
            None => (vec![1.0; n], "none (the model has no background rows)"),
        };
        let unit_cost = (0..n)
            .map(|i| c.costs.get(&features[i]).copied().unwrap_or(1.0) / scale[i])
            .collect();
        Space {
            low,
            high,
            integer,
            categories,
            unit_cost,
            scale,
            scale_source,
            distance,
        }
    }

    pub(super) fn cost(&self, x: &[f32], y: &[f32]) -> f64 {
        let terms = x
            .iter()
            .zip(y)
            .zip(&self.unit_cost)
            .map(|((a, b), c)| (f64::from(*b) - f64::from(*a)).abs() * c);
        match self.distance {
            Distance::L1 => terms.sum(),
            Distance::L2 => terms.map(|t| t * t).sum::<f64>().sqrt(),
        }
    }

    /// `v` moved into the allowed interval of feature `i`, rounded when the feature is integer.
    /// `None` when no allowed value lies in [lo, hi].
    pub(super) fn place(&self, i: usize, v: f64, lo: f64, hi: f64) -> Option<f32> {
        let (lo, hi) = (lo.max(self.low[i]), hi.min(self.high[i]));
        if lo > hi {
            return None;
        }
        let mut w = v.clamp(lo, hi);
        if let Some(categories) = &self.categories[i] {
            // The allowed category nearest `v`.
            w = categories
                .iter()
                .filter(|c| (lo..=hi).contains(*c))
                .min_by(|a, b| (*a - v).abs().total_cmp(&(*b - v).abs()))
                .copied()?;
        } else if self.integer[i] {
            w = w.round();
            if w < lo {
                w += 1.0;
            }
            if w > hi {
                w -= 1.0;
            }
            if w < lo || w > hi {
                return None;
            }
        }
        let f = w as f32;
        // f32 rounding must not step outside the interval.
        let f = if f64::from(f) < lo { step_up(f) } else { f };
        let f = if f64::from(f) > hi { step_down(f) } else { f };
        (f64::from(f) >= lo && f64::from(f) <= hi).then_some(f)
    }
}

/// The next float above `f` (`f32::next_up`, stable only since Rust 1.86).
pub(super) fn step_up(f: f32) -> f32 {
    if f.is_nan() || f == f32::INFINITY {
        f
    } else if f == 0.0 {
        f32::from_bits(1)
    } else if f > 0.0 {
        f32::from_bits(f.to_bits() + 1)
    } else {
        f32::from_bits(f.to_bits() - 1)
    }
}

/// The next float below `f`.
pub(super) fn step_down(f: f32) -> f32 {
    -step_up(-f)
}

/// Median absolute deviation per feature (1 where a feature does not vary).
fn mad_scales(rows: &[Vec<f32>], n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let mut col: Vec<f64> = rows.iter().filter_map(|r| r.get(i)).map(|v| f64::from(*v)).collect();
            let med = median(&mut col);
            let mut dev: Vec<f64> = col.iter().map(|v| (v - med).abs()).collect();
            let mad = median(&mut dev);
            if mad > 0.0 && mad.is_finite() {
                mad
            } else {
                1.0
            }
        })
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}
