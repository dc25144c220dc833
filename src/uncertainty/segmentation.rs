//! A segmenter's uncertainty, pixel by pixel, as Kendall & Gal (NeurIPS 2017) and Mukhoti & Gal
//! (2018) measure a segmentation's: each sample gives every pixel its class probabilities (the
//! softmax over the classes at that pixel; with sigmoid classes, each class its own yes / no), each
//! pixel gets the figures a classifier's input gets (predictive and expected entropy, mutual
//! information, variation ratio), and the answer's figures are their means over the output's
//! pixels. `mean` and `std` are each class's share of the image (its mean probability over the
//! pixels) over the samples, so the classes rank as predict's areas do.

use super::stats::{self, Summary};
use crate::runtime::manifest::{Activation, Layout, ScoreKind};
use crate::runtime::LoadedModel;

/// The summary of one input's samples, each a raw row of the segmenter's output (`classes x
/// height x width` values laid out as the manifest says), over the pixels `inside` says (row-major
/// on the output's grid; every pixel without it); `None` for a model that is not a segmenter, rows
/// that do not hold whole pixels of its classes, or no pixel inside.
pub(super) fn summarize(model: &LoadedModel, samples: &[Vec<f64>], inside: Option<&[bool]>) -> Option<Summary> {
    let seg = model.spec.segmentation.as_ref()?;
    let classes = model.spec.labels.len().max(1);
    let len = samples.first()?.len();
    if len % classes != 0 || samples.iter().any(|s| s.len() != len) {
        return None;
    }
    let pixels = len / classes;
    if inside.is_some_and(|m| m.len() != pixels) {
        return None;
    }
    let counted_pixels = inside.map_or(pixels, |m| m.iter().filter(|v| **v).count());
    if counted_pixels == 0 {
        return None;
    }
    let at = |p: usize, c: usize| match seg.layout {
        Layout::NCHW => c * pixels + p,
        Layout::NHWC => p * classes + c,
    };
    let sigmoid = |v: f64| match model.spec.scores {
        ScoreKind::Logits => 1.0 / (1.0 + (-v).exp()),
        _ => v,
    };
    let mut shares = vec![vec![0f64; classes]; samples.len()];
    let (mut predictive, mut expected, mut mutual, mut variation) = (0f64, 0f64, 0f64, 0f64);
    let mut counted = 0usize;
    // Each pixel's categorical distributions, one row per sample: the classes (softmax), or each
    // class's yes / no (sigmoid).
    let mut add = |rows: &[Vec<f64>]| {
        let s = stats::summarize(rows, true);
        predictive += s.predictive_entropy.unwrap_or(0.0);
        expected += s.expected_entropy.unwrap_or(0.0);
        mutual += s.mutual_information.unwrap_or(0.0);
        variation += s.variation_ratio.unwrap_or(0.0);
        counted += 1;
    };
    let mut rows: Vec<Vec<f64>> = vec![Vec::with_capacity(classes); samples.len()];
    for p in (0..pixels).filter(|&p| inside.is_none_or(|m| m[p])) {
        match seg.activation {
            Activation::Softmax => {
                for ((row, sample), share) in rows.iter_mut().zip(samples).zip(&mut shares) {
                    row.clear();
                    row.extend((0..classes).map(|c| sample[at(p, c)]));
                    if model.spec.scores == ScoreKind::Logits {
                        let top = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        row.iter_mut().for_each(|v| *v = (*v - top).exp());
                        let sum: f64 = row.iter().sum();
                        row.iter_mut().for_each(|v| *v /= sum);
                    }
                    for (s, v) in share.iter_mut().zip(row.iter()) {
                        *s += v / counted_pixels as f64;
                    }
                }
                add(&rows);
            }
            Activation::Sigmoid => {
                for c in 0..classes {
                    for ((row, sample), share) in rows.iter_mut().zip(samples).zip(&mut shares) {
                        let q = sigmoid(sample[at(p, c)]);
                        share[c] += q / counted_pixels as f64;
                        row.clear();
                        row.extend([q, 1.0 - q]);
                    }
                    add(&rows);
                }
            }
        }
    }
    let n = counted.max(1) as f64;
    let by_class = stats::summarize(&shares, false);
    Some(Summary {
        mean: by_class.mean,
        std: by_class.std,
        predictive_entropy: Some(predictive / n),
        expected_entropy: Some(expected / n),
        mutual_information: Some(mutual / n),
        variation_ratio: Some(variation / n),
    })
}

/// The view that undoes `view` on the output's grid (a mirror is its own inverse, also after a
/// turn; a turn alone is undone by the turns left to four); `None` for a zoom, whose cropped or
/// padded margins cannot be brought back.
pub(super) fn inverse(view: &super::tta::View) -> Option<super::tta::View> {
    if view.scale != 1.0 {
        return None;
    }
    Some(super::tta::View {
        hflip: view.hflip,
        quarter_turns: match view.hflip {
            true => view.quarter_turns,
            false => (4 - view.quarter_turns % 4) % 4,
        },
        scale: 1.0,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tta::View;
    use super::*;

    #[test]
    fn each_view_and_its_inverse_give_the_identity() {
        for hflip in [false, true] {
            for quarter_turns in 0..4 {
                let v = View {
                    hflip,
                    quarter_turns,
                    scale: 1.0,
                };
                let img: Vec<f32> = (0..16).map(|i| i as f32).collect();
                let mut once = vec![0.0; 16];
                super::super::tta::apply(&v, &img, &mut once, Layout::NCHW, 1, 4, 4);
                let mut back = vec![0.0; 16];
                super::super::tta::apply(&inverse(&v).unwrap(), &once, &mut back, Layout::NCHW, 1, 4, 4);
                assert_eq!(back, img, "{v:?}");
            }
        }
        assert!(inverse(&View {
            hflip: false,
            quarter_turns: 0,
            scale: 1.1
        })
        .is_none());
    }
}
