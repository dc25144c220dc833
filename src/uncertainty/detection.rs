//! A detector's uncertainty, detection by detection: each detection of the input's own pass is
//! looked for in every sample (MC-dropout masks, augmented views brought back onto the input's
//! grid, ensemble members), as sampling-based detectors merge their samples' detections (Miller et
//! al., ICRA 2018 and ICRA 2019): a sample's detection of the same class that overlaps it by an IoU
//! of at least 0.5 (PASCAL VOC's match), each sample detection matched once, best scores first. A
//! detection every sample finds in the same place is stable; one few samples find, or find
//! elsewhere, is not. The image-level figures (`mean`, `std`) are each class's best score in a
//! sample (0 where the sample has none), so the classes rank by how surely the image holds one.

use serde::Serialize;
use utoipa::ToSchema;

use super::stats::{self, Summary};
use crate::runtime::detect::{iou, Detection};

/// IoU at which a sample's detection of the same class is the same object (PASCAL VOC's).
pub const MATCH_IOU: f32 = 0.5;

/// How the samples saw a detector's input.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct DetectorUncertainty {
    /// The input's own detections (its pass without masks or views), best first, each with what
    /// the samples made of it.
    pub detections: Vec<DetectionUncertainty>,
    /// Mean number of a sample's detections that match none of the input's own: objects the
    /// samples see and the input's pass does not.
    pub unmatched_mean: f64,
}

/// One detection, as the samples saw it.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct DetectionUncertainty {
    /// Corner box `[x0, y0, x1, y1]` of the input's own pass, in the original image's pixels.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// Class label.
    pub label: String,
    /// Score of the input's own pass.
    pub score: f32,
    /// Share of the samples that found it (a detection of its class with IoU >= 0.5).
    pub found: f64,
    /// Mean of its score over the samples, 0 where a sample missed it.
    pub score_mean: f64,
    /// Standard deviation of that score over the samples (n - 1 in the divisor).
    pub score_std: f64,
    /// Mean IoU of the samples' matching boxes with its box (over the samples that found it; 0
    /// when none did): how steady its place is.
    pub iou_mean: f64,
}

/// The summary of one input's samples for a detector of `labels`: `own` the input's own
/// detections, `samples` each sample's (boxes on the input's grid).
pub(super) fn summarize(
    labels: &[String],
    own: &[Detection],
    samples: &[Vec<Detection>],
) -> (Summary, DetectorUncertainty) {
    let classes = labels.len();
    let best_scores: Vec<Vec<f64>> = samples
        .iter()
        .map(|found| {
            let mut best = vec![0f64; classes];
            for d in found {
                if let Some(b) = best.get_mut(d.class) {
                    *b = b.max(f64::from(d.score));
                }
            }
            best
        })
        .collect();
    let summary = stats::summarize(&best_scores, false);
    let n = samples.len().max(1) as f64;
    // Per own detection: the matched score (0 when missed) and IoU of every sample.
    let mut scores = vec![Vec::with_capacity(samples.len()); own.len()];
    let mut ious: Vec<Vec<f64>> = vec![Vec::new(); own.len()];
    let mut unmatched = 0usize;
    for found in samples {
        let mut taken = vec![false; found.len()];
        for (k, target) in own.iter().enumerate() {
            let best = found
                .iter()
                .enumerate()
                .filter(|(j, d)| !taken[*j] && d.class == target.class)
                .map(|(j, d)| (j, iou(&target.bbox, &d.bbox)))
                .filter(|(_, o)| *o >= MATCH_IOU)
                .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
            match best {
                Some((j, overlap)) => {
                    taken[j] = true;
                    scores[k].push(f64::from(found[j].score));
                    ious[k].push(f64::from(overlap));
                }
                None => scores[k].push(0.0),
            }
        }
        unmatched += taken.iter().filter(|t| !**t).count();
    }
    let label = |c: usize| labels.get(c).cloned().unwrap_or_else(|| format!("class_{c}"));
    let detections = own
        .iter()
        .zip(scores.iter().zip(&ious))
        .map(|(d, (s, o))| {
            let spread = stats::summarize(&s.iter().map(|v| vec![*v]).collect::<Vec<_>>(), false);
            DetectionUncertainty {
                bbox: d.bbox,
                label: label(d.class),
                score: d.score,
                found: o.len() as f64 / n,
                score_mean: spread.mean.first().copied().unwrap_or(0.0),
                score_std: spread.std.first().copied().unwrap_or(0.0),
                iou_mean: if o.is_empty() {
                    0.0
                } else {
                    o.iter().sum::<f64>() / o.len() as f64
                },
            }
        })
        .collect();
    (
        summary,
        DetectorUncertainty {
            detections,
            unmatched_mean: unmatched as f64 / n,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(bbox: [f32; 4], class: usize, score: f32) -> Detection {
        Detection {
            bbox,
            class,
            score,
            position: 0,
            objectness: 1.0,
            probs: vec![],
        }
    }

    #[test]
    fn each_sample_detection_matches_once_by_class_and_overlap() {
        let own = [det([0., 0., 10., 10.], 0, 0.9), det([20., 20., 30., 30.], 1, 0.6)];
        let samples = vec![
            // Both found; the first in place, the second shifted by 1 (IoU 81/119).
            vec![det([0., 0., 10., 10.], 0, 0.8), det([21., 21., 31., 31.], 1, 0.5)],
            // The first found twice over (one match only: the other is unmatched), the second as
            // another class (a miss, and unmatched).
            vec![
                det([0., 0., 10., 10.], 0, 0.7),
                det([1., 1., 10., 10.], 0, 0.6),
                det([20., 20., 30., 30.], 0, 0.9),
            ],
            // Nothing.
            vec![],
        ];
        let classes = ["a".to_string(), "b".to_string()];
        let (summary, found) = summarize(&classes, &own, &samples);
        let first = &found.detections[0];
        assert!((first.found - 2.0 / 3.0).abs() < 1e-12);
        assert!((first.score_mean - (0.8 + 0.7) / 3.0).abs() < 1e-6);
        assert!(
            (first.iou_mean - 1.0).abs() < 1e-12,
            "the best overlap is taken: {first:?}"
        );
        let second = &found.detections[1];
        assert!((second.found - 1.0 / 3.0).abs() < 1e-12);
        assert!((second.iou_mean - 81.0 / 119.0).abs() < 1e-6, "{second:?}");
        assert_eq!(second.label, "b");
        assert!((found.unmatched_mean - 2.0 / 3.0).abs() < 1e-12);
        // Class `a`'s best scores per sample: 0.8, 0.9 (the misclassified box), 0.
        assert!((summary.mean[0] - (0.8 + 0.9) / 3.0).abs() < 1e-6, "{summary:?}");
    }
}
