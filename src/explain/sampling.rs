//! Standard errors of sampled means, shared by the samplers that stop when good enough (SmoothGrad,
//! RISE): per value, the sum and the sum of squares of the independent units a mean is taken over
//! (a sample, or an antithetic pair), and the summary an answer reports.

use serde::Serialize;
use utoipa::ToSchema;

/// Per value, a mean over independent units, with its standard error.
#[derive(Debug, Clone)]
pub(super) struct MeanError {
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
    units: usize,
}

impl MeanError {
    /// No units yet, over `n` values.
    pub(super) fn new(n: usize) -> Self {
        Self {
            sum: vec![0.0; n],
            sum_sq: vec![0.0; n],
            units: 0,
        }
    }

    /// Adds one unit's values, and zeroes `unit` for the next.
    pub(super) fn add_unit(&mut self, unit: &mut [f64]) {
        for ((s, q), u) in self.sum.iter_mut().zip(&mut self.sum_sq).zip(unit.iter_mut()) {
            *s += *u;
            *q += *u * *u;
            *u = 0.0;
        }
        self.units += 1;
    }

    /// Each value's mean over the units.
    pub(super) fn means(&self) -> Vec<f64> {
        let m = self.units.max(1) as f64;
        self.sum.iter().map(|s| s / m).collect()
    }

    /// Each value's standard error: the units' sample standard deviation over sqrt(units)
    /// (infinite with fewer than two units).
    pub(super) fn standard_errors(&self) -> Vec<f64> {
        let m = self.units as f64;
        if self.units < 2 {
            return vec![f64::INFINITY; self.sum.len()];
        }
        self.sum
            .iter()
            .zip(&self.sum_sq)
            .map(|(s, q)| ((q - s * s / m).max(0.0) / (m * (m - 1.0))).sqrt())
            .collect()
    }
}

/// The largest standard error over the largest |estimate|: what a relative tolerance bounds.
pub(super) fn relative(se: &[f64], estimate: &[f64]) -> f64 {
    let top = estimate.iter().fold(0f64, |m, v| m.max(v.abs()));
    let worst = se.iter().fold(0f64, |m, v| m.max(*v));
    if worst == 0.0 {
        0.0
    } else {
        worst / top.max(f64::MIN_POSITIVE)
    }
}

/// A summary of per-value standard errors, as answers report it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorSummary {
    /// The largest standard error.
    pub max: f64,
    /// Their root mean square: the expected root-mean-square error of the values.
    pub rms: f64,
    /// The largest over the largest |value| (what a relative `tolerance` bounds).
    pub relative: f64,
}

/// `se`'s summary, against the `estimate` it belongs to.
pub(super) fn error_summary(se: &[f64], estimate: &[f64]) -> serde_json::Value {
    let finite = |v: f64| if v.is_finite() { v } else { f64::MAX };
    let n = se.len().max(1) as f64;
    let summary = ErrorSummary {
        max: finite(se.iter().fold(0f64, |m, v| m.max(*v))),
        rms: finite((se.iter().map(|v| v * v).sum::<f64>() / n).sqrt()),
        relative: finite(relative(se, estimate)),
    };
    serde_json::to_value(summary).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_error_of_a_mean() {
        // Units 1, 2, 3, 4: mean 2.5, sample variance 5/3, standard error sqrt(5/12).
        let mut m = MeanError::new(1);
        for v in [1.0, 2.0, 3.0, 4.0] {
            m.add_unit(&mut [v]);
        }
        assert_eq!(m.means(), vec![2.5]);
        assert!((m.standard_errors()[0] - (5.0f64 / 12.0).sqrt()).abs() < 1e-12);
        assert!(MeanError::new(2).standard_errors()[0].is_infinite());
    }
}
