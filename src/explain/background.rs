//! The background data a tabular model's missing features are drawn from: the manifest's CSV,
//! summarised by k-means when it is larger than asked (shap.kmeans: centroids weighted by their
//! cluster's size, each value rounded to the nearest value the feature takes in the data, so a
//! summary row never holds a value the model has not seen).

use serde::Serialize;
use utoipa::ToSchema;

use crate::runtime::manifest::FeatureType;
use crate::runtime::preprocess::InputError;
use crate::runtime::RuntimeError;

use super::ExplainJob;

/// Background rows with weights that sum to one.
#[derive(Debug, Clone)]
pub struct Background {
    pub rows: Vec<Vec<f32>>,
    pub weights: Vec<f64>,
    /// `all rows` or `k-means`.
    pub summary: &'static str,
}

impl Background {
    /// The weighted mean of `f` over the rows.
    pub fn mean(&self, f: impl Fn(usize) -> f64) -> f64 {
        self.weights.iter().enumerate().map(|(i, w)| w * f(i)).sum()
    }

    /// The details every answer built on a background carries.
    pub fn describe(&self, of: usize) -> BackgroundDetails {
        BackgroundDetails {
            rows: self.rows.len(),
            of,
            summary: self.summary.into(),
        }
    }
}

/// The background an answer was computed over, in its `details`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackgroundDetails {
    /// Rows used.
    pub rows: usize,
    /// Rows in the model's background data.
    pub of: usize,
    /// `all rows` or `k-means`.
    #[schema(pattern = "^(all rows|k-means)$")]
    pub summary: String,
}

/// Every row of the job's model's background data, or why there is none.
pub fn all_rows(job: &ExplainJob) -> Result<&[Vec<f32>], RuntimeError> {
    let rows = job.model.background.as_deref().ok_or_else(|| {
        InputError::BadFeatures(format!(
            "model `{}` names no background data (tabular.background in model.toml)",
            job.model.name
        ))
    })?;
    Ok(rows)
}

/// The job's model's background, summarised to at most `k` rows, and how many rows it had.
pub fn for_job(job: &ExplainJob, k: usize) -> Result<(Background, usize), RuntimeError> {
    let all = all_rows(job)?;
    Ok((summarize(all, k), all.len()))
}

/// At most `k` rows standing for `all`: every row when there are few enough, else k-means.
pub fn summarize(all: &[Vec<f32>], k: usize) -> Background {
    let k = k.max(1);
    if all.len() <= k {
        return Background {
            rows: all.to_vec(),
            weights: vec![1.0 / all.len().max(1) as f64; all.len()],
            summary: "all rows",
        };
    }
    let dim = all[0].len();
    let flat: Vec<f64> = all.iter().flatten().map(|v| f64::from(*v)).collect();
    // k-means++ seeding in neco-kmeans is deterministic (max-min), so the same data gives the same summary.
    let Ok(result) = neco_kmeans::kmeans(&flat, dim, k, 100) else {
        return summarize(&all[..k], k);
    };
    let mut sizes = vec![0usize; k];
    for a in &result.assignments {
        sizes[*a as usize] += 1;
    }
    let mut sorted: Vec<Vec<f32>> = (0..dim).map(|j| all.iter().map(|r| r[j]).collect()).collect();
    for column in &mut sorted {
        column.sort_by(f32::total_cmp);
    }
    let mut rows = Vec::new();
    let mut weights = Vec::new();
    for (c, &size) in sizes.iter().enumerate() {
        if size == 0 {
            continue;
        }
        let row = (0..dim)
            .map(|j| nearest(&sorted[j], result.centroid(c)[j] as f32))
            .collect();
        rows.push(row);
        weights.push(size as f64 / all.len() as f64);
    }
    Background {
        rows,
        weights,
        summary: "k-means",
    }
}

/// The value in sorted `column` closest to `v`.
fn nearest(column: &[f32], v: f32) -> f32 {
    let i = column.partition_point(|c| *c < v);
    match (i.checked_sub(1).map(|j| column[j]), column.get(i)) {
        (Some(a), Some(b)) => {
            if (v - a).abs() <= (b - v).abs() {
                a
            } else {
                *b
            }
        }
        (Some(a), None) => a,
        (None, Some(b)) => *b,
        (None, None) => v,
    }
}

/// One feature's quartile bins over the background (LIME's and anchors' discretisation): the cut points, and per bin the background
/// values that fall in it.
pub struct Bins {
    pub cuts: Vec<f32>,
    pub members: Vec<Vec<f32>>,
}

impl Bins {
    pub fn of(values: &[f32]) -> Self {
        let mut sorted = values.to_vec();
        sorted.sort_by(f32::total_cmp);
        // numpy's default (linear) percentiles, de-duplicated as lime's QuartileDiscretizer does.
        let pct = |q: f64| {
            let pos = q * (sorted.len() - 1) as f64;
            let (lo, frac) = (pos.floor() as usize, pos - pos.floor());
            let hi = (lo + 1).min(sorted.len() - 1);
            (f64::from(sorted[lo]) + frac * (f64::from(sorted[hi]) - f64::from(sorted[lo]))) as f32
        };
        let cuts: Vec<f32> = [0.25, 0.5, 0.75].iter().map(|q| pct(*q)).collect();
        Self::with_cuts(values, cuts)
    }

    /// [`Bins::of`] for a feature of type `t`: one that takes whole numbers only (integer, or
    /// categories all whole) is cut at whole numbers, since `v <= 31.25` and `v <= 31` split its
    /// values alike and the second reads as what the feature takes.
    pub fn of_feature(values: &[f32], t: Option<&FeatureType>) -> Self {
        let bins = Self::of(values);
        let whole = match t {
            Some(FeatureType::Integer) => true,
            Some(FeatureType::Categorical { categories, .. }) => categories.iter().all(|c| c.fract() == 0.0),
            _ => false,
        };
        match whole && values.iter().all(|v| v.fract() == 0.0) {
            true => Self::with_cuts(values, bins.cuts.iter().map(|c| c.floor()).collect()),
            false => bins,
        }
    }

    fn with_cuts(values: &[f32], mut cuts: Vec<f32>) -> Self {
        cuts.dedup();
        let mut members = vec![Vec::new(); cuts.len() + 1];
        for v in values {
            members[Self::bin_of(&cuts, *v)].push(*v);
        }
        Self { cuts, members }
    }

    /// numpy.searchsorted(cuts, v): values at a cut point fall in the lower bin.
    pub fn bin_of(cuts: &[f32], v: f32) -> usize {
        cuts.partition_point(|c| *c < v)
    }

    /// lime_tabular's name for bin `b` of feature `name`.
    pub fn condition(&self, name: &str, b: usize) -> String {
        let c = &self.cuts;
        match b {
            0 => format!("{name} <= {:.2}", c[0]),
            b if b == c.len() => format!("{name} > {:.2}", c[b - 1]),
            b => format!("{:.2} < {name} <= {:.2}", c[b - 1], c[b]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_backgrounds_are_kept_and_large_ones_summarised_by_weighted_real_values() {
        let few = vec![vec![1.0, 2.0], vec![3.0, 4.0]];
        let b = summarize(&few, 5);
        assert_eq!(b.rows, few);
        assert_eq!(b.summary, "all rows");
        // Two tight clusters of 30 and 10 rows.
        let mut many = Vec::new();
        for i in 0..30 {
            many.push(vec![i as f32 * 0.01, 10.0]);
        }
        for i in 0..10 {
            many.push(vec![100.0 + i as f32 * 0.01, -10.0]);
        }
        let b = summarize(&many, 2);
        assert_eq!(b.summary, "k-means");
        assert_eq!(b.rows.len(), 2);
        let mut pairs: Vec<(f64, f32)> = b.weights.iter().copied().zip(b.rows.iter().map(|r| r[1])).collect();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert_eq!(pairs, vec![(0.25, -10.0), (0.75, 10.0)]);
        for row in &b.rows {
            assert!(many.iter().any(|r| r[0] == row[0]), "centroid values are real values");
        }
        assert!((b.weights.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
}
