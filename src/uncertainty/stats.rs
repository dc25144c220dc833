//! The summary of one input's samples: mean probabilities and their spread, predictive and expected
//! entropy, mutual information (BALD) and variation ratio, as Baal and TorchUncertainty define them.
//! Entropies are in nats.

use serde::Serialize;
use utoipa::ToSchema;

/// How sure the model is about one input, from its samples.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct Summary {
    /// Mean class probability over the samples (a regression model: the mean value).
    pub mean: Vec<f64>,
    /// Standard deviation of each class probability (value) over the samples (n - 1 in the divisor).
    pub std: Vec<f64>,
    /// Entropy of the mean probabilities, H[mean p] (classifiers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predictive_entropy: Option<f64>,
    /// Mean entropy of the samples' probabilities, mean_t H[p_t] (classifiers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_entropy: Option<f64>,
    /// Mutual information between prediction and model (BALD): H[mean p] - mean_t H[p_t] (classifiers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mutual_information: Option<f64>,
    /// 1 - (samples voting for the most voted class) / samples (classifiers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variation_ratio: Option<f64>,
}

/// Entropy of a probability vector, in nats (0 ln 0 = 0).
pub fn entropy(p: &[f64]) -> f64 {
    -p.iter().filter(|&&v| v > 0.0).map(|&v| v * v.ln()).sum::<f64>()
}

/// Summarises `samples` (one row of class probabilities, or of one regression value, per sample).
pub fn summarize(samples: &[Vec<f64>], classifier: bool) -> Summary {
    let n = samples.len().max(1) as f64;
    let width = samples.first().map_or(0, Vec::len);
    let mut mean = vec![0.0; width];
    for s in samples {
        for (m, v) in mean.iter_mut().zip(s) {
            *m += v / n;
        }
    }
    let mut var = vec![0.0; width];
    for s in samples {
        for ((acc, v), m) in var.iter_mut().zip(s).zip(&mean) {
            *acc += (v - m) * (v - m);
        }
    }
    let divisor = (samples.len().saturating_sub(1)).max(1) as f64;
    let std = var.into_iter().map(|v| (v / divisor).sqrt()).collect();
    if !classifier {
        return Summary {
            mean,
            std,
            predictive_entropy: None,
            expected_entropy: None,
            mutual_information: None,
            variation_ratio: None,
        };
    }
    let predictive = entropy(&mean);
    let expected = samples.iter().map(|s| entropy(s)).sum::<f64>() / n;
    let mut votes = vec![0usize; width];
    for s in samples {
        if let Some(top) = argmax(s) {
            votes[top] += 1;
        }
    }
    let mode = votes.iter().copied().max().unwrap_or(0) as f64;
    Summary {
        mean,
        std,
        predictive_entropy: Some(predictive),
        expected_entropy: Some(expected),
        // Jensen makes it non-negative; rounding may not.
        mutual_information: Some((predictive - expected).max(0.0)),
        variation_ratio: Some(1.0 - mode / n),
    }
}

/// Index of the largest value (the first among equals).
pub fn argmax(v: &[f64]) -> Option<usize> {
    v.iter()
        .enumerate()
        .fold(None, |best: Option<(usize, f64)>, (i, &x)| match best {
            Some((_, b)) if b >= x => best,
            _ => Some((i, x)),
        })
        .map(|(i, _)| i)
}

/// Area under the ROC curve of `scores` as a detector of `positive` (ties count half): the chance
/// that a random positive scores above a random negative. `None` without both kinds.
pub fn auroc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let (pos, neg): (Vec<f64>, Vec<f64>) = {
        let p = scores
            .iter()
            .zip(positive)
            .filter(|(_, &p)| p)
            .map(|(s, _)| *s)
            .collect();
        let n = scores
            .iter()
            .zip(positive)
            .filter(|(_, &p)| !p)
            .map(|(s, _)| *s)
            .collect();
        (p, n)
    };
    if pos.is_empty() || neg.is_empty() {
        return None;
    }
    let wins: f64 = pos
        .iter()
        .flat_map(|p| {
            neg.iter().map(move |n| match p.total_cmp(n) {
                std::cmp::Ordering::Greater => 1.0,
                std::cmp::Ordering::Equal => 0.5,
                std::cmp::Ordering::Less => 0.0,
            })
        })
        .sum();
    Some(wins / (pos.len() * neg.len()) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_of_two_disagreeing_samples_match_their_definitions() {
        let s = summarize(&[vec![1.0, 0.0], vec![0.0, 1.0]], true);
        assert_eq!(s.mean, vec![0.5, 0.5]);
        let ln2 = 2f64.ln();
        assert!((s.predictive_entropy.unwrap() - ln2).abs() < 1e-12);
        assert_eq!(s.expected_entropy, Some(0.0));
        assert!(
            (s.mutual_information.unwrap() - ln2).abs() < 1e-12,
            "all disagreement is model uncertainty"
        );
        assert_eq!(s.variation_ratio, Some(0.5));
        // Sample standard deviation of {1, 0}.
        assert!((s.std[0] - 0.5f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn identical_samples_have_no_mutual_information_and_all_entropy_is_data_uncertainty() {
        let s = summarize(&vec![vec![0.5, 0.5]; 4], true);
        assert_eq!(s.mutual_information, Some(0.0));
        assert!((s.expected_entropy.unwrap() - 2f64.ln()).abs() < 1e-12);
        assert_eq!(s.std, vec![0.0, 0.0]);
        assert_eq!(s.variation_ratio, Some(0.0));
    }

    #[test]
    fn regression_samples_give_mean_and_spread_only() {
        let s = summarize(&[vec![1.0], vec![3.0]], false);
        assert_eq!((s.mean.clone(), s.predictive_entropy), (vec![2.0], None));
        assert!((s.std[0] - 2f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn auroc_counts_ordered_pairs_and_ties_half() {
        assert_eq!(auroc(&[0.9, 0.1], &[true, false]), Some(1.0));
        assert_eq!(auroc(&[0.1, 0.9], &[true, false]), Some(0.0));
        assert_eq!(auroc(&[0.5, 0.5], &[true, false]), Some(0.5));
        assert_eq!(auroc(&[0.5], &[true]), None);
    }
}
