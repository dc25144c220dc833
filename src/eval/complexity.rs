//! Properties of the map alone (no model passes), as Quantus defines them on |attribution|:
//! sparseness, the Gini index (Chalasani et al.): sum_k (2k - n - 1) a_k / (n sum a) over the values
//! sorted ascending (k from 1); complexity, the entropy of a / sum a in nats (Bhatt et al.).

use super::{Evaluation, Metric};

pub(super) fn run(map: &[f32], metric: Metric) -> Evaluation {
    let mut a: Vec<f64> = map.iter().map(|v| f64::from(v.abs())).collect();
    let total: f64 = a.iter().sum();
    let value = match metric {
        Metric::Sparseness => {
            a.sort_by(f64::total_cmp);
            let n = a.len() as f64;
            let weighted: f64 = a
                .iter()
                .enumerate()
                .map(|(k, v)| (2.0 * (k as f64 + 1.0) - n - 1.0) * v)
                .sum();
            (total > 0.0).then(|| weighted / (n * total))
        }
        _ => (total > 0.0).then(|| {
            -a.iter()
                .filter(|v| **v > 0.0)
                .map(|v| (v / total) * (v / total).ln())
                .sum::<f64>()
        }),
    };
    Evaluation {
        metric,
        value,
        passes: 0,
        curve: None,
        fraction: None,
        params: serde_json::json!({}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_hot_maps_are_sparse_and_simple_flat_ones_are_neither() {
        let one_hot = [0.0, 0.0, 0.0, 5.0];
        let flat = [1.0, 1.0, 1.0, 1.0];
        assert!((run(&one_hot, Metric::Sparseness).value.unwrap() - 0.75).abs() < 1e-12);
        assert_eq!(run(&flat, Metric::Sparseness).value, Some(0.0));
        assert_eq!(run(&one_hot, Metric::Complexity).value, Some(0.0));
        assert!((run(&flat, Metric::Complexity).value.unwrap() - 4f64.ln()).abs() < 1e-12);
        assert_eq!(run(&[0.0, 0.0], Metric::Complexity).value, None);
    }
}
