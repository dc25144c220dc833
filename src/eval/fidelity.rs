//! Mu-fidelity (Bhatt et al., 2020; Quantus's `FaithfulnessCorrelation`): for random subsets of
//! features, the Pearson correlation between the attribution summed over the subset and the drop in
//! the target's raw output (logit; Quantus's `softmax=False`) when the subset is set to the
//! substrate. Subsets are drawn from the seed.

use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{elements, score_rows, substrate, Evaluation, Metric, Scorer, Subject, Substrate};
use crate::runtime::RuntimeError;

pub(super) fn run(
    subject: &Subject,
    runs: usize,
    subset: usize,
    kind: Substrate,
    score: &mut Scorer,
) -> Result<Evaluation, RuntimeError> {
    let features = subject.map.len();
    let mut rng = ChaCha8Rng::seed_from_u64(subject.seed ^ 0xf1de_11e7);
    let subsets: Vec<Vec<usize>> = (0..runs)
        .map(|_| sample(&mut rng, features, subset).into_vec())
        .collect();
    let other = substrate(subject, kind);
    let (input, other) = (subject.input.as_f32().unwrap_or(&[]), other.as_f32().unwrap_or(&[]));
    // Row 0 is the input itself; row r + 1 has subset r removed.
    let scores = score_rows(subject, runs + 1, false, score, |i, row| {
        row.copy_from_slice(input);
        if i > 0 {
            for &f in &subsets[i - 1] {
                for e in elements(subject.model, f) {
                    row[e] = other[e];
                }
            }
        }
    })?;
    let drops: Vec<f64> = scores[1..].iter().map(|s| scores[0] - s).collect();
    let sums: Vec<f64> = subsets
        .iter()
        .map(|s| s.iter().map(|&f| f64::from(subject.map[f])).sum())
        .collect();
    Ok(Evaluation {
        metric: Metric::MuFidelity,
        value: pearson(&sums, &drops),
        passes: runs + 1,
        curve: None,
        fraction: None,
        params: serde_json::json!({"nr_runs": runs, "subset_size": subset, "substrate": kind}),
    })
}

/// Pearson's correlation; `None` when either side is constant.
pub(super) fn pearson(a: &[f64], b: &[f64]) -> Option<f64> {
    let n = a.len().min(b.len()) as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        cov += (x - ma) * (y - mb);
        va += (x - ma).powi(2);
        vb += (y - mb).powi(2);
    }
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

#[cfg(test)]
mod tests {
    use super::pearson;

    #[test]
    fn pearson_is_one_for_a_line_and_undefined_for_a_constant() {
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]).unwrap() + 1.0).abs() < 1e-12);
        assert_eq!(pearson(&[1.0, 1.0], &[1.0, 2.0]), None);
    }
}
