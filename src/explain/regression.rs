//! LIME's local model: a weighted ridge regression with intercept (scikit-learn's `Ridge` with
//! `sample_weight`, as lime uses), kept as sufficient statistics per jackknife group so that each
//! coefficient's standard error (grouped jackknife) costs a few small solves, not refits over the
//! samples, and can be checked after every round of samples.

use nalgebra::{DMatrix, DVector};

/// Jackknife groups.
const GROUPS: usize = 20;

/// Weighted sums of one group of samples.
#[derive(Debug, Clone)]
struct Stats {
    sw: f64,
    sz: DVector<f64>,
    sy: f64,
    szz: DMatrix<f64>,
    szy: DVector<f64>,
    syy: f64,
    n: usize,
}

impl Stats {
    fn new(m: usize) -> Self {
        Self {
            sw: 0.0,
            sz: DVector::zeros(m),
            sy: 0.0,
            szz: DMatrix::zeros(m, m),
            szy: DVector::zeros(m),
            syy: 0.0,
            n: 0,
        }
    }

    fn add(&mut self, z: &DVector<f64>, y: f64, w: f64) {
        self.sw += w;
        self.sz.axpy(w, z, 1.0);
        self.sy += w * y;
        self.szz.ger(w, z, z, 1.0);
        self.szy.axpy(w * y, z, 1.0);
        self.syy += w * y * y;
        self.n += 1;
    }

    fn merge(&mut self, o: &Stats) {
        self.sw += o.sw;
        self.sz += &o.sz;
        self.sy += o.sy;
        self.szz += &o.szz;
        self.szy += &o.szy;
        self.syy += o.syy;
        self.n += o.n;
    }
}

/// A fitted local model.
#[derive(Debug, Clone)]
pub struct Fit {
    pub coef: Vec<f64>,
    pub intercept: f64,
    /// Weighted R^2 on the samples.
    pub r2: f64,
    /// Grouped-jackknife standard error of each coefficient (infinite before two groups have samples).
    pub se: Vec<f64>,
}

fn solve(s: &Stats, alpha: f64) -> (Vec<f64>, f64, f64) {
    let m = s.sz.len();
    let sw = s.sw.max(f64::MIN_POSITIVE);
    // Centred by the weighted means, so the intercept is not penalised.
    let mut a = &s.szz - (&s.sz * s.sz.transpose()) / sw;
    let b = &s.szy - &s.sz * (s.sy / sw);
    let syy = s.syy - s.sy * s.sy / sw;
    let centred = a.clone();
    for j in 0..m {
        a[(j, j)] += alpha;
    }
    // With `alpha = 0` and fewer samples than segments the system is singular: the least-squares
    // solution of least norm then (numpy's lstsq), not an LU solve's values of any size.
    let coef = match a.clone().cholesky().filter(|_| alpha > 0.0) {
        Some(ch) => ch.solve(&b),
        None => {
            let svd = a.svd(true, true);
            let eps = svd.singular_values.max() * 1e-10;
            svd.solve(&b, eps).unwrap_or_else(|_| DVector::zeros(m))
        }
    };
    let intercept = (s.sy - coef.dot(&s.sz)) / sw;
    let ss_res = syy - 2.0 * coef.dot(&b) + coef.dot(&(&centred * &coef));
    let r2 = if syy > 0.0 { 1.0 - ss_res / syy } else { 0.0 };
    (coef.iter().copied().collect(), intercept, r2)
}

/// Samples of one target's local model, in jackknife groups.
#[derive(Debug, Clone)]
pub struct LocalModel {
    groups: Vec<Stats>,
    added: usize,
}

impl LocalModel {
    /// A model over `m` interpretable features.
    pub fn new(m: usize) -> Self {
        Self {
            groups: vec![Stats::new(m); GROUPS],
            added: 0,
        }
    }

    /// Adds a sample: interpretable features `z`, model value `y`, kernel weight `w`.
    pub fn add(&mut self, z: &[bool], y: f64, w: f64) {
        let v = DVector::from_iterator(z.len(), z.iter().map(|b| if *b { 1.0 } else { 0.0 }));
        self.groups[self.added % GROUPS].add(&v, y, w);
        self.added += 1;
    }

    /// The fit on every sample, with standard errors.
    pub fn fit(&self, alpha: f64) -> Fit {
        let m = self.groups[0].sz.len();
        let mut all = Stats::new(m);
        for g in &self.groups {
            all.merge(g);
        }
        let (coef, intercept, r2) = solve(&all, alpha);
        let used: Vec<&Stats> = self.groups.iter().filter(|g| g.n > 0).collect();
        let se = if used.len() < 2 {
            vec![f64::INFINITY; m]
        } else {
            let leave_out: Vec<Vec<f64>> = used
                .iter()
                .map(|g| {
                    let mut rest = all.clone();
                    rest.sw -= g.sw;
                    rest.sz -= &g.sz;
                    rest.sy -= g.sy;
                    rest.szz -= &g.szz;
                    rest.szy -= &g.szy;
                    rest.syy -= g.syy;
                    solve(&rest, alpha).0
                })
                .collect();
            let k = leave_out.len() as f64;
            (0..m)
                .map(|j| {
                    let mean = leave_out.iter().map(|v| v[j]).sum::<f64>() / k;
                    ((k - 1.0) / k * leave_out.iter().map(|v| (v[j] - mean).powi(2)).sum::<f64>()).sqrt()
                })
                .collect()
        };
        Fit {
            coef,
            intercept,
            r2,
            se,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ridge_recovers_a_linear_function_and_its_errors_shrink_with_samples() {
        // y = 2 z0 - z1 + 0.5, exactly, with a tiny penalty.
        let rows: Vec<[bool; 2]> = vec![[false, false], [true, false], [false, true], [true, true]];
        let mut model = LocalModel::new(2);
        for r in rows.iter().cycle().take(40) {
            let y = 2.0 * f64::from(u8::from(r[0])) - f64::from(u8::from(r[1])) + 0.5;
            model.add(r, y, 1.0);
        }
        let fit = model.fit(1e-9);
        assert!((fit.coef[0] - 2.0).abs() < 1e-6 && (fit.coef[1] + 1.0).abs() < 1e-6);
        assert!((fit.intercept - 0.5).abs() < 1e-6 && (fit.r2 - 1.0).abs() < 1e-9);
        assert!(fit.se.iter().all(|s| *s < 1e-6), "exact data: no spread, {:?}", fit.se);
        // Noisy data: the errors fall roughly as 1/sqrt(n).
        let mut state = 7u64;
        let mut noise = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let mut se = Vec::new();
        let mut model = LocalModel::new(2);
        for n in 1..=1600 {
            let r = rows[n % 4];
            model.add(&r, f64::from(u8::from(r[0])) + noise(), 1.0);
            if n == 400 || n == 1600 {
                se.push(model.fit(1.0).se[0]);
            }
        }
        let ratio = se[0] / se[1];
        assert!((1.5..2.7).contains(&ratio), "4x samples should halve the error: {se:?}");
    }

    #[test]
    fn without_a_penalty_an_underdetermined_fit_stays_small() {
        // 64 samples over 80 features (LIME's draws and kernel), alpha 0: infinitely many exact
        // fits; the least-norm one.
        let mut state = 11u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let m = 80;
        let mut model = LocalModel::new(m);
        for k in 0..64 {
            let z: Vec<bool> = (0..m).map(|_| k == 0 || next() < 0.5).collect();
            let on = z.iter().filter(|b| **b).count() as f64;
            let distance = 1.0 - (on / m as f64).sqrt();
            model.add(&z, next(), (-distance * distance / 0.0625).exp());
        }
        let fit = model.fit(0.0);
        assert!(
            fit.coef.iter().all(|c| c.is_finite() && c.abs() < 1.0),
            "{:?}",
            fit.coef
        );
        assert!((fit.r2 - 1.0).abs() < 1e-6, "an exact fit: r2 {}", fit.r2);
    }
}
