//! Causal curves: features change from one image to another in the order the attribution ranks
//! them, a step at a time, and the target's probability is read after each step.
//! - deletion (Petsiuk et al., RISE): from the input towards the substrate (black), the first point
//!   the input itself; area by the trapezoid rule over x in [0, 1] (RISE's `auc`).
//! - insertion: from the substrate (blurred input) towards the input.
//! - pixel flipping (Bach et al.; Quantus `PixelFlipping`): from the input towards the substrate,
//!   `features_in_step` at a time, a point after each step (no first point), area the same way.

use super::{elements, ranked, score_rows, substrate, Evaluation, Metric, Scorer, Subject, Substrate};
use crate::runtime::RuntimeError;

/// Points of a curve over `features` changed `per_step` at a time.
pub(super) fn points(metric: Metric, features: usize, per_step: usize) -> usize {
    let steps = features.div_ceil(per_step.max(1));
    match metric {
        Metric::PixelFlipping => steps,
        _ => steps + 1,
    }
}

/// Normalised trapezoid area of evenly spaced points over [0, 1].
pub(super) fn area(curve: &[f64]) -> f64 {
    match curve {
        [] => f64::NAN,
        [one] => *one,
        [first, .., last] => (curve.iter().sum::<f64>() - first / 2.0 - last / 2.0) / (curve.len() - 1) as f64,
    }
}

pub(super) fn run(
    subject: &Subject,
    metric: Metric,
    per_step: usize,
    kind: Substrate,
    score: &mut Scorer,
) -> Result<Evaluation, RuntimeError> {
    let features = subject.map.len();
    let order = ranked(subject.map);
    let other = substrate(subject, kind);
    let input = subject.input.as_f32().unwrap_or(&[]);
    let other = other.as_f32().unwrap_or(&[]);
    let (from, to) = match metric {
        Metric::Insertion => (other, input),
        _ => (input, other),
    };
    let n = points(metric, features, per_step);
    let first_step = usize::from(metric == Metric::PixelFlipping);
    let changed = |i: usize| ((i + first_step) * per_step).min(features);
    let curve = score_rows(subject, n, true, score, |i, row| {
        row.copy_from_slice(from);
        for &f in &order[..changed(i)] {
            for e in elements(subject.model, f) {
                row[e] = to[e];
            }
        }
    })?;
    let params = match metric {
        Metric::PixelFlipping => serde_json::json!({"features_in_step": per_step, "substrate": kind}),
        _ => serde_json::json!({"steps": n - 1, "features_per_step": per_step, "substrate": kind}),
    };
    Ok(Evaluation {
        metric,
        value: Some(area(&curve)),
        passes: n,
        fraction: Some((0..n).map(|i| changed(i) as f64 / features.max(1) as f64).collect()),
        curve: Some(curve),
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_area_is_rises_normalised_trapezoid() {
        assert_eq!(area(&[1.0, 0.0]), 0.5);
        assert!((area(&[1.0, 0.5, 0.0]) - 0.5).abs() < 1e-12);
        assert!((area(&[1.0, 1.0, 0.0, 0.0]) - 0.5).abs() < 1e-12);
        assert_eq!(points(Metric::Deletion, 784, 27), 31);
        assert_eq!(points(Metric::PixelFlipping, 784, 7), 112);
    }
}
