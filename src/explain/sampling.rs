//! Standard errors of sampled means, shared by the samplers that stop when good enough (SmoothGrad,
//! RISE): per value, the sum and the sum of squares of the independent units a mean is taken over
//! (a sample, or an antithetic pair), and the summary an answer reports. Also the scrambled Halton
//! and Sobol sequences low-discrepancy samplers draw from, and the spread of their independent
//! randomizations (replicates) that gives such an estimate's standard error.

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

/// Means and standard errors over units split into independently randomized replicates (unit i in
/// replicate i mod R): with one replicate, the units' own spread; with several, the spread of the
/// replicates' means (a low-discrepancy sequence's units are not independent, so their spread would
/// overstate the error; its independent randomizations are). The means are over all units.
pub(super) fn replicate_errors(replicates: &[MeanError]) -> (Vec<f64>, Vec<f64>) {
    match replicates {
        [] => (Vec::new(), Vec::new()),
        [one] => (one.means(), one.standard_errors()),
        all if all.iter().any(|r| r.units == 0) => {
            let n = all[0].sum.len();
            let units = all.iter().map(|r| r.units).sum::<usize>().max(1) as f64;
            let means = (0..n)
                .map(|j| all.iter().map(|r| r.sum[j]).sum::<f64>() / units)
                .collect();
            (means, vec![f64::INFINITY; n])
        }
        all => {
            let n = all[0].sum.len();
            let units = all.iter().map(|r| r.units).sum::<usize>().max(1) as f64;
            let means = (0..n)
                .map(|j| all.iter().map(|r| r.sum[j]).sum::<f64>() / units)
                .collect();
            let mut spread = MeanError::new(n);
            for r in all {
                spread.add_unit(&mut r.means());
            }
            (means, spread.standard_errors())
        }
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

/// An Owen-scrambled Sobol sequence (Sobol 1967, Joe-Kuo direction numbers; Owen 1995
/// scrambling by Burley 2020's hash, the `sobol_burley` crate). In base 2, every aligned run of 2^k
/// points puts one point in each 1/2^k stratum of every dimension, and for k large enough one in
/// each quarter of every pair of dimensions' first halves: at `p` 0.5 each cell is kept by exactly
/// half of such a run and each pair of cells by a quarter. The scrambling makes each point uniform,
/// so means over the points are unbiased; independently seeded sequences (replicates) give the
/// standard error. The crate gives 256 dimensions and 2^16 points per seed: further blocks of
/// dimensions, and of points, take their own seeds (independent randomizations, still uniform: the
/// padded construction). Points depend only on the index and the seed.
pub(super) struct Sobol {
    seed: u32,
}

impl Sobol {
    /// Dimensions per seed, as `sobol_burley` gives them.
    const DIMS: usize = sobol_burley::NUM_DIMENSIONS as usize;

    /// A sequence scrambled by `rng`.
    pub(super) fn new(rng: &mut impl rand::Rng) -> Self {
        use rand::RngExt;
        Self { seed: rng.random() }
    }

    /// Point `index`, one coordinate in (0, 1) per dimension, into `out`: the crate's 24-bit
    /// value moved to its interval's middle, so an inverse CDF never sees 0.
    pub(super) fn point(&self, index: u64, out: &mut [f64]) {
        let (run, i) = ((index >> 16) as u32, (index & 0xffff) as u32);
        for (block, chunk) in out.chunks_mut(Self::DIMS).enumerate() {
            let seed = mix(self.seed, block as u32, run);
            for (d, o) in chunk.iter_mut().enumerate() {
                let u = sobol_burley::sample(i, d as u32, seed) as f64;
                *o = u + 0.5 / (1u64 << 24) as f64;
            }
        }
    }
}

/// A seed per block of dimensions and run of points, for `Sobol` (SplitMix-style mixing, so
/// neighbouring blocks get unrelated scramblings).
fn mix(seed: u32, block: u32, run: u32) -> u32 {
    let mut z = (u64::from(seed) << 32 | u64::from(block) << 16 | u64::from(run)).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as u32
}

/// The standard normal's quantile at `u` in (0, 1) (Acklam's rational approximation, relative
/// error under 1.2e-9), for Gaussian noise from uniform low-discrepancy points.
pub(super) fn normal_quantile(u: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let u = u.clamp(f64::MIN_POSITIVE, 1.0 - f64::EPSILON);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if u < 0.02425 {
        tail((-2.0 * u.ln()).sqrt())
    } else if u > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - u).ln()).sqrt())
    } else {
        let q = u - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
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
    fn sobol_points_are_stratified_seeded_and_padded() {
        use rand::SeedableRng;
        let draw = |seed, dims: usize, from: u64| {
            let s = Sobol::new(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
            (from..from + 64)
                .map(|i| {
                    let mut pt = vec![0.0; dims];
                    s.point(i, &mut pt);
                    pt
                })
                .collect::<Vec<_>>()
        };
        let a = draw(1, 300, 0);
        assert_eq!(a, draw(1, 300, 0));
        assert_ne!(a, draw(2, 300, 0));
        // Every dimension, the padded ones past 256 included, and a run past 2^16 points: 2^k
        // aligned points, one per 1/2^k stratum.
        for pts in [&a, &draw(1, 300, 1 << 16)] {
            for d in [0, 1, 50, 255, 256, 299] {
                for k in 1..=6u32 {
                    let n = 1usize << k;
                    let mut strata: Vec<usize> = pts[..n].iter().map(|pt| (pt[d] * n as f64) as usize).collect();
                    strata.sort();
                    assert_eq!(strata, (0..n).collect::<Vec<_>>(), "dimension {d}, {n} points");
                }
            }
        }
        assert!(a.iter().flatten().all(|u| *u > 0.0 && *u < 1.0));
    }

    #[test]
    fn normal_quantiles() {
        for (u, z) in [
            (0.5, 0.0),
            (0.975, 1.959_963_984_540_054),
            (0.001, -3.090_232_306_167_813_6),
        ] {
            assert!((normal_quantile(u) - z).abs() < 1e-8, "{u}");
        }
    }

    #[test]
    fn replicate_errors_are_the_spread_of_replicate_means() {
        // Replicates with means 1 and 3: mean 2, standard error 1.
        let mut r = vec![MeanError::new(1), MeanError::new(1)];
        for (i, v) in [1.0, 3.0, 1.0, 3.0].into_iter().enumerate() {
            r[i % 2].add_unit(&mut [v]);
        }
        let (m, se) = replicate_errors(&r);
        assert_eq!(m, vec![2.0]);
        assert!((se[0] - 1.0).abs() < 1e-12);
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
