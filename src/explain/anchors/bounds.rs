//! KL-LUCB's confidence bounds on a Bernoulli mean (Kaufmann and Kalyanakrishnan 2013).

/// KL-LUCB's exploration rate (Kaufmann and Kalyanakrishnan 2013, as alibi computes it).
pub(super) fn beta(arms: usize, t: usize, delta: f64) -> f64 {
    let temp = (405.5 * arms as f64 * (t as f64).powf(1.1) / delta).ln();
    temp + temp.ln()
}

/// Bernoulli KL divergence.
pub(super) fn kl(p: f64, q: f64) -> f64 {
    let p = p.clamp(1e-7, 1.0 - 1e-7);
    let q = q.clamp(1e-7, 1.0 - 1e-7);
    p * (p / q).ln() + (1.0 - p) * ((1.0 - p) / (1.0 - q)).ln()
}

/// The largest q >= p with KL(p, q) <= level (bisection).
pub(super) fn upper_bound(p: f64, level: f64) -> f64 {
    let (mut lo, mut hi) = (p, 1.0f64);
    for _ in 0..20 {
        let q = (lo + hi) / 2.0;
        if kl(p, q) > level {
            hi = q;
        } else {
            lo = q;
        }
    }
    hi
}

/// The smallest q <= p with KL(p, q) <= level (bisection).
pub(super) fn lower_bound(p: f64, level: f64) -> f64 {
    let (mut lo, mut hi) = (0.0f64, p);
    for _ in 0..20 {
        let q = (lo + hi) / 2.0;
        if kl(p, q) > level {
            lo = q;
        } else {
            hi = q;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_bounds_bracket_the_mean_and_tighten_with_samples() {
        for p in [0.0, 0.3, 0.9, 1.0] {
            let (l1, u1) = (lower_bound(p, 1.0 / 10.0), upper_bound(p, 1.0 / 10.0));
            let (l2, u2) = (lower_bound(p, 1.0 / 1000.0), upper_bound(p, 1.0 / 1000.0));
            assert!(l1 <= p + 1e-6 && p <= u1 + 1e-6, "{p}: {l1} {u1}");
            assert!(l2 >= l1 - 1e-6 && u2 <= u1 + 1e-6, "{p}");
            assert!(kl(p, u1) <= 0.1 + 1e-3 && kl(p, l1) <= 0.1 + 1e-3);
        }
    }
}
