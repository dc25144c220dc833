//! TCAV (Kim et al., ICML 2018): a concept's activation vector (CAV) at a layer, the normal of a
//! linear classifier separating the concept's examples' activations from a random set's, and the
//! TCAV score, the share of a class's inputs whose class logit grows along the CAV (a positive
//! directional derivative `grad_layer(logit) . cav`). Significance: the scores of CAVs trained
//! against several random sets compared, by a two-sided Student t-test (`scipy.stats.ttest_ind`,
//! equal variances), with those of CAVs trained between random sets, `p < 0.05` significant (as
//! tensorflow/tcav's `utils_plot.plot_results`, `min_p_val=0.05`).
//!
//! Two CAVs:
//! - `logistic`: L2-regularised logistic regression with an unpenalised intercept, scikit-learn's
//!   `LogisticRegression(C=1.0)` (tensorflow/tcav's `model_type='logistic'`, `cav.py`), solved to
//!   its optimum by Newton's method (not stopped early as lbfgs's default 100 iterations may be).
//!   The weights lie in the span of the examples (the representer theorem), so each Newton step
//!   runs in the examples' space on their Gram matrix: a CAV costs `O(n^2)` once the Gram matrix of
//!   every example is computed, whatever the layer's size. Fitted on every example (tcav holds out a
//!   third to report accuracy; the answer reports training accuracy instead).
//! - `mean-difference`: FastCAV (Schmalwasser et al., ICML 2025): the concept's mean activation
//!   minus the random set's (FastCAV's mean of the concept's examples centred on the mean of all
//!   examples, the same direction for balanced sets); no fitting.

use crate::runtime::kept::Rows;
use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How a CAV is found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CavKind {
    /// L2-regularised logistic regression (`C = 1`), as scikit-learn's `LogisticRegression()`.
    #[default]
    Logistic,
    /// FastCAV: the difference of the two sets' mean activations.
    MeanDifference,
}

/// A fitted CAV.
#[derive(Debug, Clone)]
pub struct Cav {
    /// The direction (not normalised: a score needs only its sign).
    pub weights: Vec<f64>,
    /// The classifier's intercept (0 for the mean difference).
    pub intercept: f64,
    /// Share of the examples the linear rule classifies right (for the mean difference: by the
    /// midpoint of the two means).
    pub accuracy: f64,
}

impl Cav {
    /// The direction scaled to unit length.
    pub fn unit(&self) -> Vec<f64> {
        let norm = self.weights.iter().map(|w| w * w).sum::<f64>().sqrt();
        self.weights
            .iter()
            .map(|w| if norm > 0.0 { w / norm } else { 0.0 })
            .collect()
    }
}

/// Rows of one layer's activations (flattened), and the entries of their Gram matrix that the
/// logistic CAVs read, computed once and shared by every CAV fitted on them.
pub struct Examples<'a> {
    /// Values per row.
    pub width: usize,
    /// The rows.
    pub rows: Rows<'a>,
    /// `gram[i * n + j] = rows[i] . rows[j]` for the pairs of rows asked for (0 elsewhere).
    gram: Vec<f64>,
}

/// Rows `index` of `ex`, one after another, as a matrix.
fn gathered(rows: &Rows, index: &[usize]) -> ndarray::Array2<f32> {
    let mut out = ndarray::Array2::zeros((index.len(), rows.row_len()));
    for (mut o, &i) in out.rows_mut().into_iter().zip(index) {
        let row = rows.row(i);
        if row.len() == rows.row_len() {
            o.assign(&ndarray::ArrayView1::from(row));
        }
    }
    out
}

impl<'a> Examples<'a> {
    /// The rows, and their Gram matrix's entries between the rows of each pair of row sets in
    /// `pairs` (both ways): a logistic CAV on sets `a` and `b` reads `(a, a)`, `(a, b)` and
    /// `(b, b)`. Only those blocks are multiplied (ndarray's matrix product): a TCAV run's CAVs
    /// share the concept's block and pair each random set with the concept and the next set, about
    /// a third of the products of the whole matrix. None for mean-difference CAVs. `check` runs
    /// before each block (a job's cancellation and deadline).
    pub fn new<E>(
        rows: Rows<'a>,
        pairs: &[(&[usize], &[usize])],
        mut check: impl FnMut() -> Result<(), E>,
    ) -> Result<Self, E> {
        let (n, width) = (rows.rows(), rows.row_len());
        let mut gram = match pairs.is_empty() {
            true => Vec::new(),
            false => vec![0.0; n * n],
        };
        for (a, b) in pairs {
            check()?;
            let (ma, mb) = (gathered(&rows, a), gathered(&rows, b));
            let block = ma.dot(&mb.t());
            for (&i, products) in a.iter().zip(block.rows()) {
                for (&j, &v) in b.iter().zip(products) {
                    if i < n && j < n {
                        gram[i * n + j] = v as f64;
                        gram[j * n + i] = v as f64;
                    }
                }
            }
        }
        Ok(Self { width, rows, gram })
    }

    fn n(&self) -> usize {
        self.rows.rows()
    }

    fn row(&self, i: usize) -> &[f32] {
        self.rows.row(i)
    }

    /// `rows[i] . rows[j]`, as [`Self::new`] multiplied it.
    fn product(&self, i: usize, j: usize) -> f64 {
        self.gram.get(i * self.n() + j).copied().unwrap_or(0.0)
    }

    /// `sum_i coef[i] * rows[index[i]]`.
    fn combine(&self, index: &[usize], coef: &[f64]) -> Vec<f64> {
        let mut w = vec![0.0; self.width];
        for (&i, &c) in index.iter().zip(coef) {
            for (o, &x) in w.iter_mut().zip(self.row(i)) {
                *o += c * x as f64;
            }
        }
        w
    }

    /// `w . rows[i]` for each row of `index`.
    fn project(&self, index: &[usize], w: &[f64]) -> Vec<f64> {
        index
            .iter()
            .map(|&i| self.row(i).iter().zip(w).map(|(&x, &wi)| x as f64 * wi).sum())
            .collect()
    }
}

/// The row-set pairs whose products a TCAV run's logistic CAVs read ([`Examples::new`]): the
/// concept with itself, and per random set `r` the set with itself, with the concept (the concept
/// CAV `r`) and with set `r + 1` (the random CAV `r`, around the ring).
pub fn cav_pairs<'s>(concept: &'s [usize], sets: &'s [Vec<usize>]) -> Vec<(&'s [usize], &'s [usize])> {
    let mut pairs = vec![(concept, concept)];
    for (r, set) in sets.iter().enumerate() {
        let next = &sets[(r + 1) % sets.len()];
        pairs.extend([
            (set.as_slice(), set.as_slice()),
            (concept, set.as_slice()),
            (next.as_slice(), set.as_slice()),
        ]);
    }
    pairs
}

/// The CAV separating rows `concept` from rows `random` (indices into `ex`).
pub fn fit(ex: &Examples, concept: &[usize], random: &[usize], kind: CavKind) -> Cav {
    match kind {
        CavKind::Logistic => logistic(ex, concept, random, 1.0),
        CavKind::MeanDifference => mean_difference(ex, concept, random),
    }
}

fn mean_difference(ex: &Examples, concept: &[usize], random: &[usize]) -> Cav {
    let index: Vec<usize> = concept.iter().chain(random).copied().collect();
    let coef: Vec<f64> = concept
        .iter()
        .map(|_| 1.0 / concept.len() as f64)
        .chain(random.iter().map(|_| -1.0 / random.len() as f64))
        .collect();
    let weights = ex.combine(&index, &coef);
    // w . x - (w . mu_c + w . mu_r) / 2 > 0 on the concept's side of the midpoint.
    let wx = ex.project(&index, &weights);
    let m = index.len();
    let mean_of = |range: std::ops::Range<usize>| -> f64 {
        let len = range.len() as f64;
        range.map(|i| wx[i]).sum::<f64>() / len.max(1.0)
    };
    let intercept = -(mean_of(0..concept.len()) + mean_of(concept.len()..m)) / 2.0;
    let accuracy = accuracy(&wx, intercept, concept.len());
    Cav {
        weights,
        intercept,
        accuracy,
    }
}

/// Share right: the first `positives` of `scores + intercept` should be > 0, the rest not.
fn accuracy(scores: &[f64], intercept: f64, positives: usize) -> f64 {
    let right = scores
        .iter()
        .enumerate()
        .filter(|(i, s)| (**s + intercept > 0.0) == (*i < positives))
        .count();
    right as f64 / scores.len().max(1) as f64
}

fn softplus(z: f64) -> f64 {
    if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    }
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// `min 0.5 |w|^2 + c sum(log(1 + exp(z_i)) - y_i z_i)`, `z = X w + b`, by Newton's method with
/// `w = X^T a`: the step's `w` part solved through the Woodbury identity on
/// `M = I + S K S` (`S = sqrt(c p (1 - p))`, `K` the Gram matrix), the intercept by its Schur
/// complement; backtracking (Armijo) keeps each step a descent.
fn logistic(ex: &Examples, concept: &[usize], random: &[usize], c: f64) -> Cav {
    let index: Vec<usize> = concept.iter().chain(random).copied().collect();
    let m = index.len();
    let k = DMatrix::from_fn(m, m, |i, j| ex.product(index[i], index[j]));
    let y = DVector::from_fn(m, |i, _| if i < concept.len() { 1.0 } else { 0.0 });
    let objective = |a: &DVector<f64>, b: f64| -> f64 {
        let z = &k * a;
        let reg = 0.5 * a.dot(&z);
        reg + c * z
            .iter()
            .zip(y.iter())
            .map(|(zi, yi)| softplus(zi + b) - yi * (zi + b))
            .sum::<f64>()
    };
    let mut a = DVector::zeros(m);
    let mut b = 0.0;
    let mut f = objective(&a, b);
    for _ in 0..100 {
        let z = &k * &a;
        let p = DVector::from_fn(m, |i, _| sigmoid(z[i] + b));
        let r = &p - &y;
        let d = p.map(|pi| pi * (1.0 - pi));
        // The gradient, in the span: w-part X^T (a + c r), intercept c sum(r).
        let cg = &a + &r * c;
        let gb = c * r.sum();
        let ch = &d * c;
        let s = c * d.sum();
        let sq = d.map(|di| (c * di).sqrt());
        let mut mm = DMatrix::from_fn(m, m, |i, j| sq[i] * k[(i, j)] * sq[j]);
        for i in 0..m {
            mm[(i, i)] += 1.0;
        }
        let Some(chol) = mm.cholesky() else { break };
        // A^-1 X^T v = X^T (v - S M^-1 S K v).
        let ainv = |v: &DVector<f64>| -> DVector<f64> {
            let skv = (&k * v).component_mul(&sq);
            v - chol.solve(&skv).component_mul(&sq)
        };
        let (ag, ah) = (ainv(&cg), ainv(&ch));
        let schur = s - ch.dot(&(&k * &ah));
        let db = if schur.abs() > 1e-300 {
            (-gb + ch.dot(&(&k * &ag))) / schur
        } else {
            0.0
        };
        let da = -(&ag) - &ah * db;
        // Newton decrement: -(gradient . step).
        let decrement = -(cg.dot(&(&k * &da)) + gb * db);
        if decrement.abs() < 1e-14 * (1.0 + f.abs()) {
            break;
        }
        let mut t = 1.0;
        let mut moved = false;
        while t > 1e-10 {
            let (na, nb) = (&a + &da * t, b + db * t);
            let nf = objective(&na, nb);
            if nf <= f - 1e-4 * t * decrement {
                a = na;
                b = nb;
                f = nf;
                moved = true;
                break;
            }
            t *= 0.5;
        }
        if !moved {
            break;
        }
    }
    let z = &k * &a;
    let scores: Vec<f64> = z.iter().copied().collect();
    Cav {
        weights: ex.combine(&index, a.as_slice()),
        intercept: b,
        accuracy: accuracy(&scores, b, concept.len()),
    }
}

/// The TCAV score: the share of `grads` rows (the class logit's gradient at the layer, one row per
/// input of the class) whose product with `cav` is positive.
pub fn score(grads: &Rows, cav: &[f64]) -> f64 {
    let rows = grads.rows();
    if rows == 0 {
        return 0.0;
    }
    let positive = (0..rows)
        .map(|i| grads.row(i))
        .filter(|g| g.iter().zip(cav).map(|(&gi, &ci)| gi as f64 * ci).sum::<f64>() > 0.0)
        .count();
    positive as f64 / rows as f64
}

/// Mean and sample standard deviation (`ddof = 1`; 0 for fewer than two values).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n.max(1.0);
    let var = match v.len() {
        0 | 1 => 0.0,
        _ => v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0),
    };
    (mean, var.sqrt())
}

/// Two-sided p-value of Student's two-sample t-test with pooled variance (`ttest_ind`). With no
/// spread in either sample: 1 when the means agree, 0 when they differ (scipy answers NaN and
/// infinity's p-value 0).
pub fn t_test(a: &[f64], b: &[f64]) -> f64 {
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    if a.len() < 2 || b.len() < 2 {
        return 1.0;
    }
    let ((m1, s1), (m2, s2)) = (mean_std(a), mean_std(b));
    let df = n1 + n2 - 2.0;
    let pooled = ((n1 - 1.0) * s1 * s1 + (n2 - 1.0) * s2 * s2) / df;
    let se = (pooled * (1.0 / n1 + 1.0 / n2)).sqrt();
    if se == 0.0 || !se.is_finite() {
        return if (m1 - m2).abs() < 1e-15 { 1.0 } else { 0.0 };
    }
    let t = (m1 - m2) / se;
    // P(|T| > t) = I_{df / (df + t^2)}(df / 2, 1 / 2).
    incomplete_beta(df / 2.0, 0.5, df / (df + t * t)).clamp(0.0, 1.0)
}

/// ln Gamma(x), x > 0 (Lanczos, g = 7, 9 terms; 1e-15 relative).
pub fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let sum = G[1..]
        .iter()
        .enumerate()
        .fold(G[0], |s, (i, g)| s + g / (x + i as f64 + 1.0));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// The regularised incomplete beta function `I_x(a, b)` (continued fraction, Lentz's method).
pub fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front = (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x > (a + 1.0) / (a + b + 2.0) {
        return 1.0 - incomplete_beta(b, a, 1.0 - x);
    }
    let tiny = 1e-300;
    let (mut c, mut d) = (1.0, 1.0 - (a + b) * x / (a + 1.0));
    if d.abs() < tiny {
        d = tiny;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        for numerator in [
            m * (b - m) * x / ((a + m2 - 1.0) * (a + m2)),
            -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0)),
        ] {
            d = 1.0 + numerator * d;
            if d.abs() < tiny {
                d = tiny;
            }
            c = 1.0 + numerator / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            h *= d * c;
        }
        if (d * c - 1.0).abs() < 1e-15 {
            break;
        }
    }
    front * h / a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_t_test_matches_scipy() {
        // scipy.stats.ttest_ind([1, 2, 3, 4], [2, 4, 6, 8.5]) -> pvalue 0.13760
        let p = t_test(&[1.0, 2.0, 3.0, 4.0], &[2.0, 4.0, 6.0, 8.5]);
        assert!((p - 0.137_597_4).abs() < 1e-6, "{p}");
        assert_eq!(t_test(&[0.5; 5], &[0.5; 5]), 1.0);
        assert_eq!(t_test(&[1.0; 5], &[0.0; 5]), 0.0);
    }

    #[test]
    fn logistic_cavs_separate_and_mean_differences_point_between_the_means() {
        // Two clusters in 3-D, apart along the first axis.
        let rows: Vec<f32> = (0..20)
            .flat_map(|i| {
                let side = if i < 10 { 1.0 } else { -1.0 };
                [side + 0.1 * (i % 3) as f32, 0.2 * (i % 4) as f32 - 0.3, 0.05 * i as f32]
            })
            .collect();
        let concept: Vec<usize> = (0..10).collect();
        let random: Vec<usize> = (10..20).collect();
        let sets = [random.clone()];
        let ex = Examples::new(Rows::contiguous(&rows, 3), &cav_pairs(&concept, &sets), || {
            Ok::<(), ()>(())
        })
        .unwrap();
        for kind in [CavKind::Logistic, CavKind::MeanDifference] {
            let cav = fit(&ex, &concept, &random, kind);
            assert_eq!(cav.accuracy, 1.0, "{kind:?}");
            let u = cav.unit();
            assert!(u[0] > 0.9, "{kind:?} {u:?}");
        }
        let grads = [1.0f32, 0.0, 0.0, -1.0, 0.0, 0.0, 0.5, 0.1, 0.0];
        let cav = fit(&ex, &concept, &random, CavKind::Logistic);
        assert!((score(&Rows::contiguous(&grads, 3), &cav.weights) - 2.0 / 3.0).abs() < 1e-12);
    }
}
