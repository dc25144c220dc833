//! LIME's local model: a weighted ridge regression with intercept (scikit-learn's `Ridge` with
//! `sample_weight`, as lime uses), fitted for every target at once, with each coefficient's
//! standard error from a grouped jackknife (leave one group of samples out, refit).
//!
//! The samples are kept (bit-packed features, weight, one value per target) rather than per-group
//! m x m sums: the features and weights are the same for every target, so memory grows with
//! samples x features, not with features squared x groups x targets. Each fit is solved where it is
//! smaller: in feature space (the m x m centred Gram matrix) when there are at least as many
//! samples as features, else in sample space (the n x n kernel matrix, by the push-through identity
//! `(X'X + aI)^-1 X' = X' (XX' + aI)^-1`), which gives the same coefficients.

use nalgebra::{DMatrix, DVector};

use crate::runtime::RuntimeError;

/// Jackknife groups.
const GROUPS: usize = 20;

/// Rows of the dense blocks the feature-space sums are built from (bounds their memory).
const CHUNK: usize = 256;

/// Called between the solver's steps: an `Err` (the job was cancelled or its deadline passed)
/// stops the fit.
pub type Check<'a> = dyn Fn() -> Result<(), RuntimeError> + 'a;

/// Bit-packed 0/1 features.
pub(super) fn pack(z: &[bool]) -> Vec<u64> {
    let mut bits = vec![0u64; z.len().div_ceil(64)];
    for (j, on) in z.iter().enumerate() {
        if *on {
            bits[j / 64] |= 1 << (j % 64);
        }
    }
    bits
}

/// Whether feature `j` is on in packed `bits`.
pub(super) fn bit(bits: &[u64], j: usize) -> bool {
    bits[j / 64] >> (j % 64) & 1 == 1
}

/// How many features two packed samples both have on.
pub(super) fn common(a: &[u64], b: &[u64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x & y).count_ones()).sum::<u32>() as f64
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

/// One target's point fit: coefficients, intercept, R^2.
type Point = (Vec<f64>, f64, f64);

/// Samples of every target's local model.
#[derive(Debug, Clone)]
pub struct LocalModel {
    m: usize,
    targets: usize,
    z: Vec<Vec<u64>>,
    w: Vec<f64>,
    /// Per sample, one value per target.
    y: Vec<Vec<f64>>,
}

impl LocalModel {
    /// A model over `m` interpretable features, for `targets` targets.
    pub fn new(m: usize, targets: usize) -> Self {
        Self {
            m,
            targets,
            z: Vec::new(),
            w: Vec::new(),
            y: Vec::new(),
        }
    }

    /// Adds a sample: interpretable features `z`, model values `y` (one per target), kernel weight `w`.
    pub fn add(&mut self, z: &[bool], y: Vec<f64>, w: f64) {
        self.z.push(pack(z));
        self.y.push(y);
        self.w.push(w);
    }

    /// The fit of every target on every sample, with standard errors.
    pub fn fit(&self, alpha: f64, check: &Check) -> Result<Vec<Fit>, RuntimeError> {
        let n = self.z.len();
        let all: Vec<usize> = (0..n).collect();
        // Sample i sits in group i % GROUPS; a leave-out keeps the other groups' samples.
        let used: Vec<usize> = (0..GROUPS.min(n)).collect();
        let keep = |g: usize| -> Vec<usize> { (0..n).filter(|i| i % GROUPS != g).collect() };
        let (points, leave_out) = if n >= self.m {
            // Feature space: the whole sample's sums, less each group's.
            let whole = self.sums(check)?;
            let points = whole.solve(alpha, check)?;
            let mut leave_out = Vec::new();
            if used.len() >= 2 {
                for &g in &used {
                    check()?;
                    let group: Vec<usize> = (g..n).step_by(GROUPS).collect();
                    let mut rest = whole.clone();
                    self.accumulate(&mut rest, &group, -1.0, check)?;
                    leave_out.push(rest.solve(alpha, check)?);
                }
            }
            (points, leave_out)
        } else {
            // Sample space: one n x n Gram matrix of the features, each fit on a principal part of it.
            let gram = self.gram(check)?;
            let points = self.dual(&gram, &all, alpha, check)?;
            let mut leave_out = Vec::new();
            if used.len() >= 2 {
                for &g in &used {
                    check()?;
                    leave_out.push(self.dual(&gram, &keep(g), alpha, check)?);
                }
            }
            (points, leave_out)
        };
        Ok(points
            .into_iter()
            .enumerate()
            .map(|(t, (coef, intercept, r2))| {
                let se = if leave_out.len() < 2 {
                    vec![f64::INFINITY; self.m]
                } else {
                    let k = leave_out.len() as f64;
                    (0..self.m)
                        .map(|j| {
                            let mean = leave_out.iter().map(|v| v[t].0[j]).sum::<f64>() / k;
                            let spread = leave_out.iter().map(|v| (v[t].0[j] - mean).powi(2)).sum::<f64>();
                            ((k - 1.0) / k * spread).sqrt()
                        })
                        .collect()
                };
                Fit {
                    coef,
                    intercept,
                    r2,
                    se,
                }
            })
            .collect())
    }

    /// Adds (`sign` 1) or takes away (`sign` -1) the samples `idx` from the weighted sums `s`, a
    /// block of rows at a time (the m x m part by one matrix product per block).
    fn accumulate(&self, s: &mut Sums, idx: &[usize], sign: f64, check: &Check) -> Result<(), RuntimeError> {
        let m = self.m;
        for chunk in idx.chunks(CHUNK) {
            check()?;
            let z = DMatrix::from_fn(chunk.len(), m, |r, j| f64::from(u8::from(bit(&self.z[chunk[r]], j))));
            let wz = DMatrix::from_fn(chunk.len(), m, |r, j| z[(r, j)] * sign * self.w[chunk[r]]);
            add_tr_mul(&mut s.szz, &z, &wz, 1.0, check)?;
            for &i in chunk {
                let w = sign * self.w[i];
                s.sw += w;
                for j in ones(&self.z[i], m) {
                    s.sz[j] += w;
                    for (szy, y) in s.szy.iter_mut().zip(&self.y[i]) {
                        szy[j] += w * y;
                    }
                }
                for (k, y) in self.y[i].iter().enumerate() {
                    s.sy[k] += w * y;
                    s.syy[k] += w * y * y;
                }
            }
        }
        Ok(())
    }

    /// The whole sample's weighted sums.
    fn sums(&self, check: &Check) -> Result<Sums, RuntimeError> {
        let (m, t) = (self.m, self.targets);
        let mut s = Sums {
            sw: 0.0,
            sz: DVector::zeros(m),
            szz: DMatrix::zeros(m, m),
            sy: vec![0.0; t],
            szy: vec![DVector::zeros(m); t],
            syy: vec![0.0; t],
        };
        self.accumulate(&mut s, &(0..self.z.len()).collect::<Vec<_>>(), 1.0, check)?;
        Ok(s)
    }

    /// How many features each pair of samples has on together: the n x n Gram matrix Z Z'.
    fn gram(&self, check: &Check) -> Result<DMatrix<f64>, RuntimeError> {
        let n = self.z.len();
        let mut g = DMatrix::zeros(n, n);
        for i in 0..n {
            check()?;
            for k in 0..=i {
                let c = common(&self.z[i], &self.z[k]);
                g[(i, k)] = c;
                g[(k, i)] = c;
            }
        }
        Ok(g)
    }

    /// Every target's fit on the samples `idx`, in sample space: with D the square roots of the
    /// weights and P the projection off the weighted mean, X = P D Z, the coefficients are
    /// X' (XX' + aI)^-1 P D y (with `alpha = 0`, XX''s pseudo-inverse: the least-norm solution).
    fn dual(&self, gram: &DMatrix<f64>, idx: &[usize], alpha: f64, check: &Check) -> Result<Vec<Point>, RuntimeError> {
        let (n, m, t) = (idx.len(), self.m, self.targets);
        let w: Vec<f64> = idx.iter().map(|&i| self.w[i]).collect();
        let sw = w.iter().sum::<f64>().max(f64::MIN_POSITIVE);
        let d = DVector::from_iterator(n, w.iter().map(|w| w.sqrt()));
        let u = &d / sw.sqrt();
        let project = |v: &mut DMatrix<f64>| {
            let along = u.tr_mul(v);
            *v -= &u * along;
        };
        // XX' = P (D G D) P, with P = I - uu'.
        let mut k = DMatrix::from_fn(n, n, |r, c| d[r] * gram[(idx[r], idx[c])] * d[c]);
        let ku = &k * &u;
        let uku = u.dot(&ku);
        for c in 0..n {
            for r in 0..n {
                k[(r, c)] += uku * u[r] * u[c] - u[r] * ku[c] - ku[r] * u[c];
            }
        }
        let mut y = DMatrix::from_fn(n, t, |r, k| d[r] * self.y[idx[r]][k]);
        project(&mut y);
        check()?;
        for j in 0..n {
            k[(j, j)] += alpha;
        }
        let factor = if alpha > 0.0 { cholesky(k.clone(), check)? } else { None };
        let mut sol = match factor {
            Some(l) => cholesky_solve(&l, &y, check)?,
            // y need not lie in K's range (more samples than features, or repeated coalitions
            // with different scores): first its part in the range, K^+ K y, then K^+ of that.
            None => least_norm(&k, &least_norm(&k, &(&k * &y), check)?, check)?,
        };
        check()?;
        // coef = Z' D P sol; b = X' y = Z' D y (y is already projected).
        project(&mut sol);
        let back = |v: &DMatrix<f64>| {
            let mut out = DMatrix::<f64>::zeros(m, t);
            for (r, &i) in idx.iter().enumerate() {
                for j in ones(&self.z[i], m) {
                    for c in 0..t {
                        out[(j, c)] += d[r] * v[(r, c)];
                    }
                }
            }
            out
        };
        let coef = back(&sol);
        let b = back(&y);
        // X coef, for the residual.
        let mut fitted = DMatrix::from_fn(n, t, |r, c| {
            d[r] * ones(&self.z[idx[r]], m).map(|j| coef[(j, c)]).sum::<f64>()
        });
        project(&mut fitted);
        let mut sz = DVector::<f64>::zeros(m);
        for (r, &i) in idx.iter().enumerate() {
            for j in ones(&self.z[i], m) {
                sz[j] += w[r];
            }
        }
        Ok((0..t)
            .map(|c| {
                let coef = coef.column(c);
                let sy: f64 = idx.iter().zip(&w).map(|(&i, w)| w * self.y[i][c]).sum();
                let intercept = (sy - coef.dot(&sz)) / sw;
                let syy = y.column(c).norm_squared();
                let ss_res = syy - 2.0 * coef.dot(&b.column(c)) + fitted.column(c).norm_squared();
                let r2 = if syy > 0.0 { 1.0 - ss_res / syy } else { 0.0 };
                (coef.iter().copied().collect(), intercept, r2)
            })
            .collect())
    }
}

/// Columns per step of [`cholesky`]: each step between two checks is a few milliseconds.
const BLOCK: usize = 64;

/// The Cholesky factor of the symmetric matrix `a` (its lower triangle; `None` when it is not
/// positive definite), blocked so that the work is matrix products and the job's `check` runs
/// between blocks: a factorisation of thousands of rows otherwise runs for seconds past a
/// cancellation.
pub(super) fn cholesky(mut a: DMatrix<f64>, check: &Check) -> Result<Option<DMatrix<f64>>, RuntimeError> {
    let n = a.nrows();
    for k in (0..n).step_by(BLOCK) {
        check()?;
        let kb = BLOCK.min(n - k);
        let Some(diag) = a.view((k, k), (kb, kb)).clone_owned().cholesky() else {
            return Ok(None);
        };
        let l11 = diag.l();
        a.view_mut((k, k), (kb, kb)).copy_from(&l11);
        let rest = n - k - kb;
        if rest == 0 {
            break;
        }
        // The panel below: L21 = A21 L11^-T, by a matrix product with the small block's inverse
        // (a triangular solve over thousands of columns is far slower unoptimised).
        let Some(inv) = l11.solve_lower_triangular(&DMatrix::identity(kb, kb)) else {
            return Ok(None);
        };
        let l21 = a.view((k + kb, k), (rest, kb)) * inv.transpose();
        let l21t = l21.transpose();
        a.view_mut((k + kb, k), (rest, kb)).copy_from(&l21);
        // The trailing matrix less L21 L21', a strip of columns at a time (lower part only).
        for c in (0..rest).step_by(BLOCK) {
            check()?;
            let cb = BLOCK.min(rest - c);
            let mut strip = a.view_mut((k + kb + c, k + kb + c), (rest - c, cb));
            strip.gemm(-1.0, &l21.rows(c, rest - c), &l21t.columns(c, cb), 1.0);
        }
    }
    // The strict upper triangle still holds the input: clear it, so the factor is L alone.
    a.fill_upper_triangle(0.0, 1);
    Ok(Some(a))
}

/// Solves L L' x = b for every column of `b` at once, with the factor from [`cholesky`]: by blocks
/// of rows, each block's update from the others a matrix product, `check` between blocks (a
/// triangular solve of thousands of rows is otherwise a generic loop of a second in a debug build).
pub(super) fn cholesky_solve(l: &DMatrix<f64>, b: &DMatrix<f64>, check: &Check) -> Result<DMatrix<f64>, RuntimeError> {
    let n = l.nrows();
    let mut x = b.clone();
    // Forward: L y = b.
    for k in (0..n).step_by(BLOCK) {
        check()?;
        let kb = BLOCK.min(n - k);
        if k > 0 {
            let update = l.view((k, 0), (kb, k)) * x.rows(0, k);
            let mut rows = x.rows_mut(k, kb);
            rows -= update;
        }
        let mut xk = x.rows(k, kb).clone_owned();
        l.view((k, k), (kb, kb)).solve_lower_triangular_mut(&mut xk);
        x.rows_mut(k, kb).copy_from(&xk);
    }
    // Backward: L' x = y.
    for k in (0..n).step_by(BLOCK).rev() {
        check()?;
        let kb = BLOCK.min(n - k);
        let end = k + kb;
        if end < n {
            let update = l.view((end, k), (n - end, kb)).transpose() * x.rows(end, n - end);
            let mut rows = x.rows_mut(k, kb);
            rows -= update;
        }
        let mut xk = x.rows(k, kb).clone_owned();
        l.view((k, k), (kb, kb)).tr_solve_lower_triangular_mut(&mut xk);
        x.rows_mut(k, kb).copy_from(&xk);
    }
    Ok(x)
}

/// Output columns per step of [`add_tr_mul`]: at 2,048 features and 256 rows a step is 34 Mflop.
const STRIP: usize = 64;

/// `acc += scale z' y`, a strip of `acc`'s columns at a time with `check` between strips, as a
/// plain matrix product (nalgebra's `gemm`, which runs `matrixmultiply`'s optimised kernels; its
/// `tr_mul` is a generic loop, a thousand times slower in a debug build, and one call).
pub(super) fn add_tr_mul(
    acc: &mut DMatrix<f64>,
    z: &DMatrix<f64>,
    y: &DMatrix<f64>,
    scale: f64,
    check: &Check,
) -> Result<(), RuntimeError> {
    let zt = z.transpose();
    let cols = y.ncols();
    for c in (0..cols).step_by(STRIP) {
        check()?;
        let cb = STRIP.min(cols - c);
        acc.columns_mut(c, cb).gemm(scale, &zt, &y.columns(c, cb), 1.0);
    }
    Ok(())
}

/// The least-norm solution of `a x = b` for each column of `b`, `a` symmetric positive
/// semi-definite and `b` in its range (a pseudo-inverse's solution, numpy's `lstsq`): conjugate
/// gradients from zero, whose steps stay in `a`'s range, with the job's `check` at every step (an
/// SVD or eigen-decomposition is one call that runs for seconds on thousands of rows). Stops at a
/// residual of 1e-13 of `b`'s, or after `3n + 50` steps (rounding on a near-singular matrix).
pub(super) fn least_norm(a: &DMatrix<f64>, b: &DMatrix<f64>, check: &Check) -> Result<DMatrix<f64>, RuntimeError> {
    let n = a.nrows();
    let mut x = DMatrix::<f64>::zeros(n, b.ncols());
    for (c, mut out) in x.column_iter_mut().enumerate() {
        let mut r = b.column(c).into_owned();
        let goal = r.norm_squared() * 1e-26;
        let mut p = r.clone();
        let mut rr = r.norm_squared();
        for _ in 0..3 * n + 50 {
            if rr <= goal || rr == 0.0 {
                break;
            }
            check()?;
            let ap = a * &p;
            let pap = p.dot(&ap);
            if pap <= 0.0 || !pap.is_finite() {
                break;
            }
            let step = rr / pap;
            out.axpy(step, &p, 1.0);
            r.axpy(-step, &ap, 1.0);
            let next = r.norm_squared();
            p.axpy(1.0, &r, next / rr);
            rr = next;
        }
    }
    Ok(x)
}

/// The largest eigenvalue of the symmetric positive semi-definite `a`, by power iteration (to
/// 1e-3), with `check` at every step.
pub(super) fn largest_eigenvalue(a: &DMatrix<f64>, check: &Check) -> Result<f64, RuntimeError> {
    let n = a.nrows();
    // Not the ones vector alone: a matrix of nonnegative sums has its top eigenvector near it,
    // but a difference of such sums need not.
    let mut v = DVector::from_fn(n, |i, _| 1.0 + 0.5 * ((i * 7919 % 101) as f64 / 101.0));
    v /= v.norm().max(f64::MIN_POSITIVE);
    let mut value = 0.0;
    for _ in 0..100 {
        check()?;
        let w = a * &v;
        let next = v.dot(&w);
        let norm = w.norm();
        if norm == 0.0 || !norm.is_finite() {
            return Ok(next.max(0.0));
        }
        v = w / norm;
        if (next - value).abs() <= 1e-3 * next.abs() {
            return Ok(next);
        }
        value = next;
    }
    Ok(value)
}

/// The smallest eigenvalue of the matrix whose Cholesky factor is `l`, by inverse iteration (to
/// 1e-3) through the factor, with `check` at every step.
pub(super) fn smallest_eigenvalue(l: &DMatrix<f64>, check: &Check) -> Result<f64, RuntimeError> {
    let n = l.nrows();
    let mut v = DMatrix::from_fn(n, 1, |i, _| 1.0 + 0.5 * ((i * 104729 % 97) as f64 / 97.0) - 0.7);
    v /= v.norm().max(f64::MIN_POSITIVE);
    let mut inverse = 0.0;
    for _ in 0..100 {
        let w = cholesky_solve(l, &v, check)?;
        let next = v.dot(&w);
        let norm = w.norm();
        if norm == 0.0 || !norm.is_finite() {
            return Ok(0.0);
        }
        v = w / norm;
        if (next - inverse).abs() <= 1e-3 * next.abs() {
            inverse = next;
            break;
        }
        inverse = next;
    }
    Ok(if inverse > 0.0 { 1.0 / inverse } else { 0.0 })
}

/// The features on in packed `bits` (of `m`).
fn ones(bits: &[u64], m: usize) -> impl Iterator<Item = usize> + '_ {
    bits.iter().enumerate().flat_map(move |(word, b)| {
        let mut rest = *b;
        std::iter::from_fn(move || {
            (rest != 0).then(|| {
                let j = word * 64 + rest.trailing_zeros() as usize;
                rest &= rest - 1;
                j
            })
        })
        .filter(move |j| *j < m)
    })
}

/// Weighted sums of samples: shared by the targets (weights, features) and per target.
#[derive(Debug, Clone)]
struct Sums {
    sw: f64,
    sz: DVector<f64>,
    szz: DMatrix<f64>,
    sy: Vec<f64>,
    szy: Vec<DVector<f64>>,
    syy: Vec<f64>,
}

impl Sums {
    /// Every target's fit in feature space, centred by the weighted means so that the intercept is
    /// not penalised.
    fn solve(&self, alpha: f64, check: &Check) -> Result<Vec<Point>, RuntimeError> {
        let (m, t) = (self.sz.len(), self.sy.len());
        let sw = self.sw.max(f64::MIN_POSITIVE);
        let mut a = &self.szz - (&self.sz * self.sz.transpose()) / sw;
        for j in 0..m {
            a[(j, j)] += alpha;
        }
        let b = DMatrix::from_fn(m, t, |j, c| self.szy[c][j] - self.sz[j] * (self.sy[c] / sw));
        // With `alpha = 0` and fewer samples than segments the system is singular: the least-squares
        // solution of least norm then (numpy's lstsq), not an LU solve's values of any size.
        let factor = if alpha > 0.0 { cholesky(a.clone(), check)? } else { None };
        let coef = match factor {
            Some(l) => cholesky_solve(&l, &b, check)?,
            None => least_norm(&a, &b, check)?,
        };
        Ok((0..t)
            .map(|c| {
                let coef = coef.column(c);
                let intercept = (self.sy[c] - coef.dot(&self.sz)) / sw;
                let syy = self.syy[c] - self.sy[c] * self.sy[c] / sw;
                // coef' (centred Gram) coef, without a copy of the centred matrix.
                let mean = self.sz.dot(&coef);
                let quad = coef.dot(&(&self.szz * coef)) - mean * mean / sw;
                let ss_res = syy - 2.0 * coef.dot(&b.column(c)) + quad;
                let r2 = if syy > 0.0 { 1.0 - ss_res / syy } else { 0.0 };
                (coef.iter().copied().collect(), intercept, r2)
            })
            .collect())
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn fit_one(model: &LocalModel, alpha: f64) -> Fit {
        model.fit(alpha, &|| Ok(())).unwrap().remove(0)
    }

    /// A seeded uniform stream in [0, 1).
    fn stream(mut state: u64) -> impl FnMut() -> f64 {
        move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn the_blocked_cholesky_solves_like_nalgebras_and_stops_when_asked() {
        let mut next = stream(9);
        let n = 3 * BLOCK + 17;
        let x = DMatrix::from_fn(n, n + 5, |_, _| next() - 0.5);
        let a = &x * x.transpose() + DMatrix::identity(n, n) * 0.1;
        let b = DMatrix::from_fn(n, 2, |_, _| next());
        let ok = || Ok(());
        let l = cholesky(a.clone(), &ok).unwrap().unwrap();
        assert!((&l * l.transpose() - &a).amax() < 1e-9);
        let ours = cholesky_solve(&l, &b, &ok).unwrap();
        let theirs = a.clone().cholesky().unwrap().solve(&b);
        assert!((ours - theirs).amax() < 1e-8);
        // Not positive definite: no factor. A cancelled job: an error, not a factor.
        assert!(cholesky(-a.clone(), &ok).unwrap().is_none());
        assert!(cholesky(a, &|| Err(RuntimeError::Cancelled)).is_err());
    }

    #[test]
    fn the_iterative_solvers_match_nalgebras_decompositions_and_stop_when_asked() {
        let mut next = stream(3);
        let n = 70;
        // Rank 30: the least-norm solution is the pseudo-inverse's.
        let x = DMatrix::from_fn(n, 30, |_, _| next() - 0.5);
        let a = &x * x.transpose();
        let b = &a * DMatrix::from_fn(n, 2, |_, _| next());
        let ok = || Ok(());
        let ours = least_norm(&a, &b, &ok).unwrap();
        let svd = a.clone().svd(true, true);
        let theirs = svd.solve(&b, svd.singular_values.max() * 1e-10).unwrap();
        assert!(
            (&ours - &theirs).amax() < 1e-8 * theirs.amax(),
            "{}",
            (ours - theirs).amax()
        );
        let eigen = a.clone().symmetric_eigen();
        let hi = eigen.eigenvalues.max();
        assert!((largest_eigenvalue(&a, &ok).unwrap() - hi).abs() < 0.02 * hi);
        let spd = &a + DMatrix::identity(n, n) * 0.05;
        let lo = spd.clone().symmetric_eigen().eigenvalues.min();
        let l = cholesky(spd, &ok).unwrap().unwrap();
        assert!((smallest_eigenvalue(&l, &ok).unwrap() - lo).abs() < 0.02 * lo);
        let stop = || Err(RuntimeError::Cancelled);
        assert!(least_norm(&a, &b, &stop).is_err());
        assert!(largest_eigenvalue(&a, &stop).is_err());
        assert!(smallest_eigenvalue(&l, &stop).is_err());
    }

    #[test]
    fn sample_space_and_feature_space_give_the_same_fit() {
        // Fewer samples than features (where `fit` works in sample space) and more, two targets,
        // with a penalty and without: the two solvers agree, on all samples and on a leave-out.
        let mut next = stream(5);
        for (m, n) in [(40usize, 25usize), (12, 60)] {
            let mut model = LocalModel::new(m, 2);
            for _ in 0..n {
                let z: Vec<bool> = (0..m).map(|_| next() < 0.5).collect();
                model.add(&z, vec![next(), 3.0 * next() - 1.0], 0.1 + next());
            }
            let check = || Ok(());
            let gram = model.gram(&check).unwrap();
            let whole = model.sums(&check).unwrap();
            let keep: Vec<usize> = (0..n).filter(|i| i % GROUPS != 3).collect();
            let mut rest = whole.clone();
            let group: Vec<usize> = (3..n).step_by(GROUPS).collect();
            model.accumulate(&mut rest, &group, -1.0, &check).unwrap();
            for alpha in [1.0, 0.0] {
                for (primal, dual) in [
                    (
                        whole.solve(alpha, &check).unwrap(),
                        model.dual(&gram, &(0..n).collect::<Vec<_>>(), alpha, &check).unwrap(),
                    ),
                    (
                        rest.solve(alpha, &check).unwrap(),
                        model.dual(&gram, &keep, alpha, &check).unwrap(),
                    ),
                ] {
                    for (p, d) in primal.iter().zip(&dual) {
                        for (a, b) in p.0.iter().zip(&d.0) {
                            assert!(
                                (a - b).abs() < 1e-7,
                                "m {m} n {n} alpha {alpha}: {:?} vs {:?}",
                                p.0,
                                d.0
                            );
                        }
                        assert!((p.1 - d.1).abs() < 1e-7 && (p.2 - d.2).abs() < 1e-7, "{p:?} vs {d:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn ridge_recovers_a_linear_function_and_its_errors_shrink_with_samples() {
        // y = 2 z0 - z1 + 0.5, exactly, with a tiny penalty.
        let rows: Vec<[bool; 2]> = vec![[false, false], [true, false], [false, true], [true, true]];
        let mut model = LocalModel::new(2, 1);
        for r in rows.iter().cycle().take(40) {
            let y = 2.0 * f64::from(u8::from(r[0])) - f64::from(u8::from(r[1])) + 0.5;
            model.add(r, vec![y], 1.0);
        }
        let fit = fit_one(&model, 1e-9);
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
        let mut model = LocalModel::new(2, 1);
        for n in 1..=1600 {
            let r = rows[n % 4];
            model.add(&r, vec![f64::from(u8::from(r[0])) + noise()], 1.0);
            if n == 400 || n == 1600 {
                se.push(fit_one(&model, 1.0).se[0]);
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
        let mut model = LocalModel::new(m, 1);
        for k in 0..64 {
            let z: Vec<bool> = (0..m).map(|_| k == 0 || next() < 0.5).collect();
            let on = z.iter().filter(|b| **b).count() as f64;
            let distance = 1.0 - (on / m as f64).sqrt();
            model.add(&z, vec![next()], (-distance * distance / 0.0625).exp());
        }
        let fit = fit_one(&model, 0.0);
        assert!(
            fit.coef.iter().all(|c| c.is_finite() && c.abs() < 1.0),
            "{:?}",
            fit.coef
        );
        assert!((fit.r2 - 1.0).abs() < 1e-6, "an exact fit: r2 {}", fit.r2);
    }
}
