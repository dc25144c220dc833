//! Standard errors of sampled means, shared by the samplers that stop when good enough (SmoothGrad,
//! RISE): per value, the sum and the sum of squares of the independent units a mean is taken over
//! (a sample, or an antithetic pair), and the summary an answer reports. Also the scrambled Halton
//! sequence low-discrepancy samplers draw from.

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

/// A randomly scrambled Halton sequence (Halton 1960; random linear digit scrambling, Matousek
/// 1998): dimension d is the radical inverse of the point's index in the d-th prime base, each digit
/// mapped by its own seeded bijection `a digit + c (mod base)`. The first n points of every
/// dimension fall one per 1/n stratum (about), so a sampler drawing from them balances each
/// coordinate where independent draws leave it to chance; the scrambling makes each point uniform,
/// so a mean over the points is unbiased, and independent scramblings (replicates) give its
/// standard error. The points depend only on the index and the scrambling, so a run that stops
/// after m points drew the same m points as a longer one.
pub(super) struct Halton {
    /// Per dimension: its base and each digit's scrambling (a, c), least significant first.
    dims: Vec<(u64, Vec<(u64, u64)>)>,
}

impl Halton {
    /// `dims` dimensions, scrambled by `rng`.
    pub(super) fn new(dims: usize, rng: &mut impl rand::Rng) -> Self {
        use rand::RngExt;
        let dims = primes(dims)
            .into_iter()
            .map(|b| {
                // Digits until a digit's weight is below f64's resolution of [0, 1).
                let levels = (52.0 / (b as f64).log2()).ceil() as usize;
                let digits = (0..levels)
                    .map(|_| (rng.random_range(1..b), rng.random_range(0..b)))
                    .collect();
                (b, digits)
            })
            .collect();
        Self { dims }
    }

    /// Point `index`, one coordinate in [0, 1) per dimension, into `out`.
    pub(super) fn point(&self, index: u64, out: &mut [f64]) {
        for ((b, digits), o) in self.dims.iter().zip(out.iter_mut()) {
            let (mut i, mut weight, mut u) = (index, 1.0 / *b as f64, 0.0);
            for (a, c) in digits {
                u += ((a * (i % b) + c) % b) as f64 * weight;
                i /= b;
                weight /= *b as f64;
            }
            *o = u.min(1.0 - f64::EPSILON);
        }
    }
}

/// The first `n` primes.
fn primes(n: usize) -> Vec<u64> {
    let mut found: Vec<u64> = Vec::with_capacity(n);
    let mut k = 2u64;
    while found.len() < n {
        if found.iter().take_while(|p| *p * *p <= k).all(|p| !k.is_multiple_of(*p)) {
            found.push(k);
        }
        k += 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halton_points_are_stratified_and_seeded() {
        use rand::SeedableRng;
        assert_eq!(primes(6), vec![2, 3, 5, 7, 11, 13]);
        let draw = |seed| {
            let h = Halton::new(5, &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
            (0..64u64)
                .map(|i| {
                    let mut pt = [0.0; 5];
                    h.point(i, &mut pt);
                    pt
                })
                .collect::<Vec<_>>()
        };
        let (a, b) = (draw(1), draw(2));
        assert_eq!(a, draw(1));
        assert_ne!(a, b);
        // In base 2, any 2^k consecutive-from-zero points put one in each 1/2^k stratum.
        for k in 1..=6u32 {
            let n = 1usize << k;
            let mut strata: Vec<usize> = a[..n].iter().map(|pt| (pt[0] * n as f64) as usize).collect();
            strata.sort();
            assert_eq!(strata, (0..n).collect::<Vec<_>>(), "{k}");
        }
        // Base 5: 25 points, one per 1/25 stratum.
        let h = Halton::new(3, &mut rand_chacha::ChaCha8Rng::seed_from_u64(3));
        let mut strata: Vec<usize> = (0..25u64)
            .map(|i| {
                let mut pt = [0.0; 3];
                h.point(i, &mut pt);
                (pt[2] * 25.0) as usize
            })
            .collect();
        strata.sort();
        assert_eq!(strata, (0..25).collect::<Vec<_>>());
    }

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
