//! What a layer knows about a label: the mutual information between a layer's pooled activations
//! (each channel's mean over its positions) and discrete labels, in nats, by Ross's k-nearest-
//! neighbour estimator for a continuous variable and a discrete one (Ross, PLoS ONE 2014; the
//! estimator of scikit-learn's `mutual_info_classif`, `_compute_mi_cd`, here on the whole vector):
//!
//! `I = psi(N) + <psi(k)> - <psi(N_y)> - <psi(m)>`, where for each row `d` is the distance to
//! its `k`-th nearest neighbour among the `N_y` rows of its label (`k = min(3, N_y - 1)`, as
//! scikit-learn's `n_neighbors=3`), and `m` counts the rows of any label closer than `d` (the row
//! itself included); rows whose label no other row has are left out; negative estimates read 0.
//!
//! As scikit-learn, each channel is first divided by its standard deviation (`ddof = 0`; constant
//! channels left alone) and ties are broken by a jitter of `1e-10 max(1, mean |x|)` per channel:
//! here uniform on [-1, 1) from SplitMix64 seeded by `seed` (scikit-learn draws normal noise), so
//! an independent implementation can reproduce the estimate exactly.
//!
//! Bias: where every row's `k` nearest neighbours of its label are nearer than any row of another
//! label (the layer separates the labels), `m = k` and the estimate is `psi(N) - <psi(N_y)>`,
//! which differs from `H(label) = -sum p ln p` by `O(1/N_y)` (`+0.005` nats for two balanced
//! labels of 50); with labels independent of the activations the estimate scatters around 0 by
//! about `0.5 / sqrt(N)` nats, clipped at 0 from below, so the answer gives the estimate for
//! shuffled labels beside each layer's as its floor. Distances in many channels concentrate, and
//! the estimator then underestimates large informations (Kraskov et al. 2004; Gao et al. 2015):
//! compare layers of similar width, or read the curve's shape rather than its values.
//!
//! Redundancy between two layers: the co-information `I(A;Y) + I(B;Y) - I(A,B;Y)` (McGill 1954),
//! each term by the same estimator (`A,B` the two pooled vectors side by side): positive when what
//! the layers know about the label is mostly shared (redundancy minus synergy in the partial
//! information decomposition of Williams and Beer 2010).

/// Neighbours the estimator counts (scikit-learn's `n_neighbors` default).
pub const NEIGHBOURS: usize = 3;

/// SplitMix64: the jitter's generator, simple to reproduce.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next value, uniform on [-1, 1).
    pub fn next_symmetric(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        2.0 * ((z >> 11) as f64 / (1u64 << 53) as f64) - 1.0
    }
}

/// Digamma, x > 0 (recurrence up to 10, then the asymptotic series: 1e-14 absolute).
pub fn digamma(mut x: f64) -> f64 {
    let mut acc = 0.0;
    while x < 10.0 {
        acc -= 1.0 / x;
        x += 1.0;
    }
    let f = 1.0 / (x * x);
    acc + x.ln() - 0.5 / x - f * (1.0 / 12.0 - f * (1.0 / 120.0 - f * (1.0 / 252.0 - f * (1.0 / 240.0 - f / 132.0))))
}

/// Rows of `width` values scaled per column by their standard deviation and jittered (the
/// estimator's preparation above), row-major.
pub fn prepare(rows: &[f64], width: usize, seed: u64) -> Vec<f64> {
    let n = rows.len().checked_div(width).unwrap_or(0);
    let mut out = rows.to_vec();
    for c in 0..width {
        let col = |i: usize| rows[i * width + c];
        let mean = (0..n).map(col).sum::<f64>() / n.max(1) as f64;
        let std = ((0..n).map(|i| (col(i) - mean).powi(2)).sum::<f64>() / n.max(1) as f64).sqrt();
        let scale = if std > 0.0 { std } else { 1.0 };
        for i in 0..n {
            out[i * width + c] /= scale;
        }
    }
    let mut rng = SplitMix64(seed);
    let amplitude: Vec<f64> = (0..width)
        .map(|c| 1e-10 * ((0..n).map(|i| out[i * width + c].abs()).sum::<f64>() / n.max(1) as f64).max(1.0))
        .collect();
    // Row-major order: row 0's channels, then row 1's.
    for i in 0..n {
        for c in 0..width {
            out[i * width + c] += amplitude[c] * rng.next_symmetric();
        }
    }
    out
}

/// Ross's estimate (nats) of the mutual information between prepared rows (`width` values each)
/// and `labels`, with `k` neighbours; also returns the rows counted. Brute force: `O(N^2 width)`.
pub fn mutual_information(rows: &[f64], width: usize, labels: &[u32], k: usize) -> f64 {
    let n = labels.len();
    if n == 0 || width == 0 || rows.len() != n * width {
        return 0.0;
    }
    let classes = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
    let mut count = vec![0usize; classes];
    for &l in labels {
        count[l as usize] += 1;
    }
    let kept: Vec<usize> = (0..n).filter(|&i| count[labels[i] as usize] > 1).collect();
    if kept.is_empty() {
        return 0.0;
    }
    let row = |i: usize| &rows[i * width..(i + 1) * width];
    let dist = |a: usize, b: usize| -> f64 {
        row(a)
            .iter()
            .zip(row(b))
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f64>()
            .sqrt()
    };
    let (mut sum_k, mut sum_ny, mut sum_m) = (0.0, 0.0, 0.0);
    let mut all = Vec::with_capacity(kept.len());
    let mut same = Vec::new();
    for &i in &kept {
        let label = labels[i];
        let ny = count[label as usize];
        let kk = k.min(ny - 1).max(1);
        all.clear();
        same.clear();
        for &j in &kept {
            let d = dist(i, j);
            all.push(d);
            if j != i && labels[j] == label {
                same.push(d);
            }
        }
        same.select_nth_unstable_by(kk - 1, f64::total_cmp);
        let radius = same[kk - 1];
        let m = all.iter().filter(|&&d| d < radius).count().max(1);
        sum_k += digamma(kk as f64);
        sum_ny += digamma(ny as f64);
        sum_m += digamma(m as f64);
    }
    let len = kept.len() as f64;
    (digamma(len) + (sum_k - sum_ny - sum_m) / len).max(0.0)
}

/// The plug-in entropy (nats) of `labels`.
pub fn entropy(labels: &[u32]) -> f64 {
    let mut count = std::collections::HashMap::new();
    for l in labels {
        *count.entry(l).or_insert(0usize) += 1;
    }
    let n = labels.len() as f64;
    -count.values().map(|&c| c as f64 / n).map(|p| p * p.ln()).sum::<f64>()
}

/// Two prepared row sets side by side: `[a_i, b_i]` per row.
pub fn side_by_side(a: &[f64], wa: usize, b: &[f64], wb: usize) -> Vec<f64> {
    let n = a.len().checked_div(wa).unwrap_or(0);
    let mut out = Vec::with_capacity(n * (wa + wb));
    for i in 0..n {
        out.extend_from_slice(&a[i * wa..(i + 1) * wa]);
        out.extend_from_slice(&b[i * wb..(i + 1) * wb]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digamma_matches_known_values() {
        assert!((digamma(1.0) + 0.577_215_664_901_532_9).abs() < 1e-12);
        assert!((digamma(0.5) + 1.963_510_026_021_423).abs() < 1e-12);
        assert!((digamma(100.0) - 4.600_161_852_738_087).abs() < 1e-12);
    }

    #[test]
    fn a_copy_of_the_label_carries_its_entropy_and_noise_carries_none() {
        let labels: Vec<u32> = (0..200).map(|i| (i % 2) as u32).collect();
        let copy: Vec<f64> = labels.iter().map(|&l| l as f64).collect();
        let mi = mutual_information(&prepare(&copy, 1, 1), 1, &labels, NEIGHBOURS);
        let ceiling = digamma(200.0) - digamma(100.0);
        assert!((mi - ceiling).abs() < 1e-9, "{mi} {ceiling}");
        assert!((mi - entropy(&labels)).abs() < 0.01, "{mi}");
        let mut rng = SplitMix64(7);
        let noise: Vec<f64> = (0..400).map(|_| rng.next_symmetric()).collect();
        let none = mutual_information(&prepare(&noise, 2, 1), 2, &labels, NEIGHBOURS);
        assert!(none < 0.05, "{none}");
    }
}
